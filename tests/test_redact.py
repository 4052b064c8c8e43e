"""The log filter that keeps secrets out of the daemon's log."""

from __future__ import annotations

import logging

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
    found = secrets_of({"x": {"auth": {"api_key": "nested-0004", "user": "bob-the-user"},
                              "headers": [{"token": "listed-0005"}], "max_output_tokens": "64000"}})
    assert {"speech-key-0002", "/secret/creds-0003.json", "nested-0004", "listed-0005"} <= found
    assert "bob-the-user" not in found and "64000" not in found


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
