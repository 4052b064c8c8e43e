"""A non-Python client: the Node.js example (@grpc/grpc-js + the .proto alone) against the daemon."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import test_tls

CLIENT = Path(__file__).resolve().parent.parent / "examples" / "node-client"

CONFIG = """
providers:
  fake: {api_key: test-key}
routes:
  - name: everything
    use: fake/echo
"""
pki = test_tls.pki  # the fixture of the TLS tests: a CA, a server and a client certificate (PEM files)
TOKEN = "node-tok-0123456789-secret"
CLIENT_VARIABLES = ("MMROUTER_TOKEN", "MMROUTER_TLS_CA", "MMROUTER_TLS_CERT", "MMROUTER_TLS_KEY")


def run_client(address: str, prompt: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the example against ``address``; its ``MMROUTER_*`` variables come from ``env`` alone."""
    node = shutil.which("node")
    if node is None or not (CLIENT / "node_modules" / "@grpc" / "grpc-js").exists():
        pytest.fail("node and the example's npm packages are needed: run `make test`")
    full_env = {k: v for k, v in os.environ.items() if k not in CLIENT_VARIABLES}
    return subprocess.run([node, str(CLIENT / "client.js"), address, prompt], capture_output=True, text=True,
                          timeout=60, env={**full_env, **(env or {})})


def assert_answered(result: subprocess.CompletedProcess, prompt: str) -> None:
    assert result.returncode == 0, result.stderr
    unary, stream = (json.loads(line) for line in result.stdout.splitlines())
    assert f"fake/echo says: {prompt}" in unary["text"] and stream["text"] == unary["text"]


def test_node_client_calls_generate_and_stream_generate(start_daemon) -> None:
    daemon = start_daemon(CONFIG)
    result = run_client(daemon.address, "hello from node")
    assert result.returncode == 0, result.stderr
    unary, stream = (json.loads(line) for line in result.stdout.splitlines())
    assert unary["call"] == "Generate"
    assert "fake/echo says: hello from node" in unary["text"]
    assert (unary["route"]["rule"], unary["route"]["provider"], unary["route"]["model"]) == ("everything", "fake", "echo")
    assert unary["usage"]["output_tokens"] > 0
    assert stream["kinds"][0] == "route_chosen" and stream["kinds"][-1] == "done"
    assert stream["kinds"].count("text_delta") > 1
    assert stream["text"] == unary["text"]
    assert stream["route"]["provider"] == "fake"


def test_node_client_sends_the_token_and_reports_unauthenticated(start_daemon) -> None:
    daemon = start_daemon('server:\n  auth_token: "${MMROUTER_TEST_TOKEN}"\n' + CONFIG,
                          env={"MMROUTER_TEST_TOKEN": TOKEN})
    result = run_client(daemon.address, "with a token", {"MMROUTER_TOKEN": TOKEN})
    assert_answered(result, "with a token")
    assert TOKEN not in result.stdout + result.stderr

    # a token read from a secret file keeps its newline, which no header can carry: it is stripped
    assert_answered(run_client(daemon.address, "from a file", {"MMROUTER_TOKEN": f"{TOKEN}\n"}), "from a file")

    for env, message in (({}, "this router needs a token"), ({"MMROUTER_TOKEN": "wrong"}, "the token was not accepted")):
        refused = run_client(daemon.address, "without a token", env)
        assert refused.returncode == 1 and refused.stdout == ""
        assert f"error: UNAUTHENTICATED {message}" in refused.stderr, refused.stderr
        assert "MMROUTER_TOKEN" in refused.stderr and TOKEN not in refused.stderr
        # the google.rpc.Status details, decoded in JS from the grpc-status-details-bin trailer
        assert re.search(r"^reason=UNAUTHENTICATED request_id=[0-9a-f]+", refused.stderr, re.M), refused.stderr


def test_node_client_decodes_the_retry_delay_and_field_violations(start_daemon) -> None:
    daemon = start_daemon(CONFIG)
    limited = run_client(daemon.address, "FAIL:429")  # the scripted provider's rate limit: Retry-After 7 s
    assert limited.returncode == 1 and "error: RESOURCE_EXHAUSTED" in limited.stderr, limited.stderr
    assert re.search(r"^reason=PROVIDER_RATE_LIMITED request_id=[0-9a-f]+ retry_after_seconds=7$", limited.stderr,
                     re.M), limited.stderr
    blank = run_client(daemon.address, "   ")  # a blank question: a field violation, named as the proto does
    assert blank.returncode == 1 and "reason=INVALID_REQUEST" in blank.stderr, blank.stderr
    assert re.search(r"^  request\.messages: the request has no content", blank.stderr, re.M), blank.stderr


def tls_config(certs: dict[str, Path], client_ca: bool) -> str:
    extra = f"\n    client_ca_file: {certs['ca']}" if client_ca else ""
    return CONFIG + f"server:\n  tls:\n    cert_file: {certs['server_cert']}\n    key_file: {certs['server_key']}{extra}\n"


def test_node_client_trusts_the_ca_of_a_tls_daemon(start_daemon, pki) -> None:
    daemon = start_daemon(tls_config(pki, client_ca=False))
    assert_answered(run_client(daemon.address, "over tls", {"MMROUTER_TLS_CA": str(pki["ca"])}), "over tls")

    untrusted = run_client(daemon.address, "x", {"MMROUTER_TLS_CA": str(pki["other_ca"])})
    assert untrusted.returncode == 1 and "error: UNAVAILABLE" in untrusted.stderr, untrusted.stderr

    plaintext = run_client(daemon.address, "x")
    assert plaintext.returncode == 1 and "error: UNAVAILABLE" in plaintext.stderr, plaintext.stderr

    missing = run_client(daemon.address, "x", {"MMROUTER_TLS_CA": "/nonexistent/ca.pem"})
    assert missing.returncode == 1 and "MMROUTER_TLS_CA: cannot read /nonexistent/ca.pem" in missing.stderr


def test_node_client_presents_its_certificate_to_a_mutual_tls_daemon(start_daemon, pki) -> None:
    daemon = start_daemon(tls_config(pki, client_ca=True))
    tls_env = {"MMROUTER_TLS_CA": str(pki["ca"]), "MMROUTER_TLS_CERT": str(pki["client_cert"]),
               "MMROUTER_TLS_KEY": str(pki["client_key"])}
    assert_answered(run_client(daemon.address, "with a certificate", tls_env), "with a certificate")

    anonymous = run_client(daemon.address, "x", {"MMROUTER_TLS_CA": str(pki["ca"])})
    assert anonymous.returncode == 1 and "error: UNAVAILABLE" in anonymous.stderr, anonymous.stderr
