"""The log filter that keeps secrets out of the daemon's log."""

from __future__ import annotations

import logging

import pytest

from router.redact import SecretFilter, longest_first, mask


def test_a_secret_that_holds_another_is_masked_whole() -> None:
    short, long = "sk-abcd1234", "sk-abcd1234-extended-999"
    for order in ([short, long], [long, short]):
        assert mask(f"keys {long} and {short}", longest_first(order)) == "keys *** and ***"


def test_the_filter_masks_arguments_and_survives_a_call_whose_arguments_do_not_fit(caplog) -> None:
    log = logging.getLogger("test.redact")
    secret_filter = SecretFilter(["sk-live-0123456789"])
    log.addFilter(secret_filter)
    try:
        with caplog.at_level(logging.INFO, logger="test.redact"):
            log.info("calling with %s", "sk-live-0123456789")
            log.info("two places %s %s", "only one sk-live-0123456789")  # a bug in a plugin's log call
    finally:
        log.removeFilter(secret_filter)
    first, second = (r.getMessage() for r in caplog.records)
    assert first == "calling with ***"
    assert "do not fit" in second and "***" in second and "sk-live" not in second


def test_keys_a_plugin_resolves_reach_the_log_filters_and_secrets_of(monkeypatch) -> None:
    from router import ProviderSettings
    from router.core import secrets_of

    class OddlyNamed(ProviderSettings):
        api_key_env = ("ODDLY_NAMED_ACCESS",)  # no secret-name pattern matches this variable

    monkeypatch.setenv("ODDLY_NAMED_ACCESS", " odd-env-key-0001 ")
    live = SecretFilter([])
    OddlyNamed.load("odd", {})
    assert "odd-env-key-0001" in live.secrets
    assert "odd-env-key-0001" in secrets_of({})


def test_secrets_of_walks_nested_settings_and_broader_variable_names(monkeypatch) -> None:
    from router.core import secrets_of

    monkeypatch.setenv("SPEECH_KEY", "speech-key-0002")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", "/secret/creds-0003.json")
    found = secrets_of({"x": {"account": {"api_key": "nested-0004", "user": "bob-the-user"},
                              "headers": [{"token": "listed-0005"}], "max_output_tokens": "64000"}})
    assert {"speech-key-0002", "/secret/creds-0003.json", "nested-0004", "listed-0005"} <= found
    assert "bob-the-user" not in found and "64000" not in found


@pytest.mark.parametrize("name", ["bearer", "pat", "gh_pat", "passwd", "db_passphrase", "session_cookie",
                                  "request_signature", "private_pem", "Bearer-Token"])
def test_settings_named_like_other_secrets_are_secrets(name) -> None:
    """Only names holding key, token, secret, password or credential were masked: a plugin's `bearer` or
    `pat` setting reached client errors, the log and `providers`."""
    from router.core import secrets_of

    assert "value-of-the-secret-0007" in secrets_of({"acme": {name: "value-of-the-secret-0007"}})


@pytest.mark.parametrize("name", ["Authorization", "proxy_auth", "auth", "basic_auth_header", "X-Auth-Token"])
def test_settings_named_like_auth_are_secrets(name) -> None:
    """A gateway's ``Authorization`` header (``extra_headers: {Authorization: ...}``), whose name the operator
    chooses, reached client errors and the log: ``auth`` was none of the secret names."""
    from router.core import secrets_of

    assert "value-of-the-secret-0009" in secrets_of({"acme": {"extra_headers": {name: "value-of-the-secret-0009"}}})


@pytest.mark.parametrize("value", ["Bearer gw-TOKEN-abcdef123", "basic dXNlcjpwYXNzd29yZA==", " Bearer  gw-TOKEN-abcdef123\n"])
def test_a_bearer_or_basic_value_is_a_secret_whatever_its_key(value) -> None:
    """A credential under a header named otherwise (``X-Gateway``) is masked whole, and so is the credential
    after its scheme, which an error may quote alone."""
    from router.core import secrets_of

    found = secrets_of({"acme": {"extra_headers": {"X-Gateway": value}, "notes": [value]}})
    assert value.strip() in found and value.split()[-1] in found
    assert "Bearer" not in found and "basic" not in found


@pytest.mark.parametrize("name", ["author", "authority", "default_author"])
def test_settings_named_author_stay_shown(name) -> None:
    from router.core import secrets_of

    assert "Jane Doe 0010" not in secrets_of({"acme": {name: "Jane Doe 0010"}})


@pytest.mark.parametrize("name", ["path", "patience", "model_path", "spatial", "dispatch"])
def test_settings_merely_containing_pat_stay_shown(name) -> None:
    from router.core import secrets_of

    assert "/var/lib/models-0008" not in secrets_of({"acme": {name: "/var/lib/models-0008"}})


GATEWAY_PASSWORD = "GatewayPass-42xyz"


def closed_port() -> int:
    """A loopback port nobody listens on (bound then released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_url_credentials_from_an_environment_base_url_reach_the_log_filters(monkeypatch) -> None:
    from mmrouter_openai.settings import OpenAISettings

    monkeypatch.setenv("OPENAI_BASE_URL", f"http://gwuser:{GATEWAY_PASSWORD}@gateway.example/v1")
    live = SecretFilter([])
    OpenAISettings.load("openai", {"api_key": "sk-config-key-0006"})
    assert GATEWAY_PASSWORD in live.secrets and f"gwuser:{GATEWAY_PASSWORD}" in live.secrets


def test_gateway_credentials_in_openai_base_url_reach_neither_the_client_nor_the_log(start_daemon) -> None:
    import grpc
    import pytest
    from grpc_helpers import error_details, everything_said, text_request
    from mmrouter.v1 import router_pb2 as pb

    config = """
    server: {log_level: DEBUG}
    providers:
      openai: {api_key: sk-config-key-0007, timeout: 3}
    default: openai/gpt-4o
    """
    url = f"http://gwuser:{GATEWAY_PASSWORD}@127.0.0.1:{closed_port()}/v1"
    daemon = start_daemon(config, env={"OPENAI_BASE_URL": url})
    with pytest.raises(grpc.RpcError) as info:
        daemon.stub.Generate(pb.GenerateRequest(request=text_request("hi")), timeout=30)
    assert error_details(info.value).reason == "PROVIDER_UNAVAILABLE"
    assert "cannot reach http://***@127.0.0.1:" in info.value.details()  # where it went, without the login
    daemon.stop()
    assert GATEWAY_PASSWORD not in everything_said(info.value, daemon)


def test_url_credentials_hold_the_basic_authorization_an_http_client_makes_of_them() -> None:
    """httpx sends a URL's ``user:password`` as ``Authorization: Basic base64(user:password)``, decoded."""
    import base64

    from router.redact import url_credentials

    found = url_credentials("http://gw%20user:Pass%2199word@gateway.example/v1")
    assert base64.b64encode(b"gw user:Pass!99word").decode() in found
    assert base64.b64encode(b"gw%20user:Pass%2199word").decode() in found
    token = "tok_0123456789abcdef"
    assert base64.b64encode(f"{token}:".encode()).decode() in url_credentials(f"https://{token}@gateway.example")
    assert url_credentials("https://bob@gateway.example") == set()  # a short user name alone is no secret


def test_a_base_url_login_echoed_by_the_upstream_as_basic_auth_is_masked_everywhere(start_daemon) -> None:
    """An upstream that echoes its request headers in an error showed the ``Basic`` header httpx made
    of the base_url's login to the client and in the log: only the raw ``user:password`` was masked."""
    import base64
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import grpc
    import pytest
    from grpc_helpers import everything_said, text_request
    from mmrouter.v1 import router_pb2 as pb

    class Echo(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", 0)))
            body = json.dumps({"error": {"message": f"bad request; you sent {dict(self.headers)}",
                                         "type": "invalid_request_error"}}).encode()
            self.send_response(400)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    upstream = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    try:
        config = f"""
        server: {{log_level: DEBUG}}
        providers:
          openai:
            api_key: sk-config-key-0008
            base_url: http://gwuser:{GATEWAY_PASSWORD}%21@127.0.0.1:{upstream.server_address[1]}/v1
            max_retries: 0
        default: openai/gpt-4o
        """
        daemon = start_daemon(config)
        with pytest.raises(grpc.RpcError) as info:
            daemon.stub.Generate(pb.GenerateRequest(request=text_request("hi")), timeout=30)
        daemon.stop()
    finally:
        upstream.shutdown()
        upstream.server_close()
    said = everything_said(info.value, daemon)
    basic = base64.b64encode(f"gwuser:{GATEWAY_PASSWORD}!".encode()).decode()
    assert "Basic ***" in info.value.details(), info.value.details()  # the upstream did echo it
    assert basic not in said and GATEWAY_PASSWORD not in said


def test_the_json_log_masks_secrets_in_extra_fields() -> None:
    """``log.warning("key %s", key, extra={"hdr": key})`` wrote the key in the JSON line's ``hdr``."""
    import io
    import json

    from router.redact import JsonFormatter

    secret = "sk-extra-0123456789"
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(SecretFilter([secret]))
    log = logging.getLogger("test.redact.json")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("key %s", secret, extra={"hdr": secret, "headers": {"authorization": f"Bearer {secret}"},
                                             "keys": [secret, 3], "code": 7})
    finally:
        log.removeHandler(handler)
        log.propagate = True
    assert secret not in stream.getvalue()
    entry = json.loads(stream.getvalue())
    assert (entry["message"], entry["hdr"], entry["keys"], entry["code"]) == ("key ***", "***", ["***", 3], 7)
    assert entry["headers"] == {"authorization": "Bearer ***"}
