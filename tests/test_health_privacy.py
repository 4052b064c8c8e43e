"""What a failed provider call leaves where others read it: ``ListProviders`` (which any client with the
token may call, and `mmrouter providers` prints) shows only what the daemon writes itself (the model,
the HTTP status, a fixed description of the reason), never the provider's or the plugin's message,
which may repeat what the failed request held, quoted or not: a file name, the prompt, a signed URL.
The daemon log keeps that message, with every URL's query (a signed URL's signature) cut off.

The daemon runs for real (tests/conftest.py) against the fake OpenAI and Anthropic servers
(tests/fakes), which the official SDKs call, or with the bundled ``local`` plugin.
"""

from __future__ import annotations

import io
import json
import logging
import sys

import grpc
import pytest
from grpc_helpers import error_details, providers_by_name, text_request
from mmrouter.v1 import router_pb2 as pb
from test_cli import Cli, ok
from test_observability import FALLBACK

from router.redact import JsonFormatter, SecretFilter, TextFormatter, without_url_secrets
from tests.fakes.anthropic import API_KEY as ANTHROPIC_KEY
from tests.fakes.openai import API_KEY as OPENAI_KEY
from tests.fakes.openai import error_body

FILE_NAME = "Patient-Jane-Roe-HIV-results.pdf"
PROMPT = "FAILME-ECHO my SSN is 078-05-1120 please check"
SIGNED = ("https://bucket.example.com/private/erin-passport.png"
          "?X-Amz-Signature=SIGSECRETfeedface&X-Amz-Credential=AKIACRED2")


def keys() -> dict[str, str]:
    return {"OPENAI_TEST_KEY": OPENAI_KEY, "ANTHROPIC_TEST_KEY": ANTHROPIC_KEY}


def failure_line(address: str) -> str:
    """The line of `mmrouter providers` that tells the last failure of openai."""
    shown = ok(Cli("providers", "--address", address, env={"COLUMNS": "400"}).result()).stdout
    [line] = [line for line in shown.splitlines() if line.startswith("last failure of openai, ")]
    return line


def test_list_providers_shows_no_unquoted_file_name_nor_prompt_an_upstream_error_echoed(
        start_daemon, upstreams) -> None:
    openai, anthropic = upstreams
    daemon = start_daemon(FALLBACK.format(openai=openai.base_url, anthropic=anthropic.url), plugins=(), env=keys())
    openai.fail_next(400, error_body(f"Invalid prompt: your prompt was flagged: {PROMPT} (cannot read {FILE_NAME})"))
    with pytest.raises(grpc.RpcError) as caught:  # a bad request: not tried on the fallback
        daemon.stub.Generate(pb.GenerateRequest(request=text_request(PROMPT)), timeout=30)
    assert error_details(caught.value).reason == "PROVIDER_BAD_REQUEST"

    listed = providers_by_name(daemon.stub)
    health = listed["openai"].health
    assert health.failed_calls == 1 and health.last_failure_reason == "PROVIDER_BAD_REQUEST"
    assert health.last_failure_message == ("gpt-4o: HTTP 400: the provider refused the request as invalid; its whole "
                                           "message is in the daemon log")
    for private in ("078-05-1120", "SSN", FILE_NAME, "Jane"):
        assert private not in str(listed)
        assert private in daemon.logs()  # the operator still finds it where only they look
    line = failure_line(daemon.address)
    assert "PROVIDER_BAD_REQUEST: gpt-4o: HTTP 400: the provider refused the request" in line
    assert "078-05-1120" not in line and FILE_NAME not in line


def test_a_revoked_key_is_still_recognisable_in_list_providers_and_the_cli(start_daemon, upstreams) -> None:
    openai, anthropic = upstreams
    daemon = start_daemon(FALLBACK.format(openai=openai.base_url, anthropic=anthropic.url), plugins=(),
                          env={**keys(), "OPENAI_TEST_KEY": "sk-REVOKED-key-333333333333"})
    answer = daemon.stub.Generate(pb.GenerateRequest(request=text_request("hi")), timeout=30).answer
    assert answer.route.provider == "anthropic"  # the fallback answers
    health = providers_by_name(daemon.stub)["openai"].health
    assert health.last_failure_reason == "PROVIDER_AUTH"
    assert health.last_failure_message.startswith("gpt-4o: HTTP 401: the provider refused the credentials "
                                                  "(a wrong, revoked or expired API key")
    assert "PROVIDER_AUTH: gpt-4o: HTTP 401: the provider refused the credentials" in failure_line(daemon.address)


def test_the_status_shown_is_the_one_answered_not_one_the_provider_text_names(start_daemon, upstreams) -> None:
    """The HTTP status comes with the plugin's error, not from its message: the provider's text (quoted in
    the message after the plugin's words) may name another status first."""
    openai, anthropic = upstreams
    daemon = start_daemon(FALLBACK.format(openai=openai.base_url, anthropic=anthropic.url), plugins=(), env=keys())
    openai.fail_next(404, error_body("The model was retired (HTTP 410 Gone upstream)", code="model_not_found"))
    answer = daemon.stub.Generate(pb.GenerateRequest(request=text_request("hi")), timeout=30).answer
    assert answer.route.provider == "anthropic"  # the fallback answers
    health = providers_by_name(daemon.stub)["openai"].health
    assert health.last_failure_reason == "PROVIDER_MODEL_NOT_FOUND"
    assert health.last_failure_message.startswith("gpt-4o: HTTP 404: the provider does not know the model")
    assert "HTTP 410 Gone upstream" in daemon.logs()  # the whole message, for the operator


def test_list_providers_shows_no_file_name_local_could_not_read(start_daemon) -> None:
    """``local`` names the file it cannot read without quotes (``local: cannot read <name>: ...``)."""
    daemon = start_daemon(None, plugins=())  # a fresh install: the embedded default, with local
    bad = pb.Media(modality=pb.MODALITY_DOCUMENT, mime_type="application/pdf", data=b"%PDF-1.4\n" + b"garbage" * 50,
                   filename=FILE_NAME)
    request = text_request("read", media=[bad], hints=pb.RoutingHints(provider="local", model="extract"))
    with pytest.raises(grpc.RpcError) as caught:
        daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=60)
    assert FILE_NAME in caught.value.details()  # the client's own file, named to it
    listed = providers_by_name(daemon.stub)
    health = listed["local"].health
    assert health.failed_calls == 1 and health.last_failure_reason == "PROVIDER_BAD_REQUEST"
    assert health.last_failure_message.startswith("extract: the provider refused the request as invalid")
    assert FILE_NAME not in str(listed) and "Jane" not in str(listed)
    assert FILE_NAME in daemon.logs()


URL_FALLBACK = FALLBACK + "server: {{allow_urls: true, log_format: {log_format}}}\n"


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_the_daemon_log_never_holds_the_signature_of_a_media_url_an_upstream_error_echoed(
        start_daemon, upstreams, log_format: str) -> None:
    """OpenAI's "Error while downloading <url>" repeats a signed URL whole: the daemon log (the provider
    call's WARNING, the access line) names the file, not the signature, which is a live capability."""
    openai, anthropic = upstreams
    daemon = start_daemon(URL_FALLBACK.format(openai=openai.base_url, anthropic=anthropic.url, log_format=log_format),
                          plugins=(), env=keys())
    openai.fail_next(400, error_body(f"Error while downloading {SIGNED}."))
    image = pb.Media(modality=pb.MODALITY_IMAGE, mime_type="image/png", url=SIGNED)
    with pytest.raises(grpc.RpcError) as caught:
        daemon.stub.Generate(pb.GenerateRequest(request=text_request("describe", media=[image])), timeout=30)
    assert error_details(caught.value).reason == "PROVIDER_BAD_REQUEST"
    logs = daemon.logs()
    said = [line for line in logs.splitlines() if "erin-passport.png" in line]
    assert len(said) >= 2, logs  # the provider call's failure and the access line
    assert "https://bucket.example.com/private/erin-passport.png?…." in logs
    if log_format == "json":
        assert all(json.loads(line)["level"] == "WARNING" for line in said)
    for secret in ("SIGSECRETfeedface", "AKIACRED2", "X-Amz-"):
        assert secret not in logs
        assert secret not in str(providers_by_name(daemon.stub))


def test_every_url_in_a_log_record_loses_its_query_and_login() -> None:
    """The filter sees every logger's records (it is on the root logger's handlers): the message, the
    traceback and the ``extra=`` fields, text and JSON alike; sentence punctuation after a URL stays."""
    assert without_url_secrets(f"see {SIGNED}, then http://user:pw@host:8080/a/b#token=x: refused.") == (
        "see https://bucket.example.com/private/erin-passport.png?…, then http://host:8080/a/b?…: refused.")
    assert without_url_secrets("https://api.example.com/v1 is up?") == "https://api.example.com/v1 is up?"
    for formatter in (TextFormatter("%(levelname)s %(name)s: %(message)s"), JsonFormatter()):
        out = io.StringIO()
        handler = logging.StreamHandler(out)
        handler.setFormatter(formatter)
        handler.addFilter(SecretFilter([]))  # no secret configured: the URLs are cut all the same
        logger = logging.getLogger("some.library")
        logger.addHandler(handler)
        try:
            try:
                raise RuntimeError(f"fetching {SIGNED} failed")
            except RuntimeError:
                logger.error("download of %s failed", SIGNED, exc_info=sys.exc_info(), extra={"url": SIGNED})
        finally:
            logger.removeHandler(handler)
        written = out.getvalue()
        assert "erin-passport.png?…" in written and "RuntimeError" in written
        assert "SIGSECRET" not in written and "AKIACRED2" not in written
