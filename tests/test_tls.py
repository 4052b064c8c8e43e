"""TLS on the gRPC port: server certificates, optional client certificates, the CLI over TLS."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_helpers import text_request, wait_for
from mmrouter.v1 import router_pb2 as pb
from mmrouter.v1 import router_pb2_grpc

BASE = """
providers:
  fake: {api_key: test-key}
routes:
  - name: everything
    use: fake/echo
"""


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _certificate(subject: str, key, issuer_name: x509.Name | None, issuer_key, *, ca: bool,
                 server: bool = False) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name or name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _issue(out: Path, name: str, ca_name: str) -> dict[str, Path]:
    """A fresh CA and a server certificate for 127.0.0.1 it signed, written as ``<name>_*.pem``."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate(ca_name, ca_key, None, ca_key, ca=True)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _certificate(f"{ca_name} server", key, ca.subject, ca_key, ca=False, server=True)
    files = {"ca": ca.public_bytes(serialization.Encoding.PEM), "cert": cert.public_bytes(serialization.Encoding.PEM),
             "key": _pem_key(key)}
    paths = {}
    for kind, data in files.items():
        paths[kind] = out / f"{name}_{kind}.pem"
        paths[kind].write_bytes(data)
    return paths


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""
    out = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("mmrouter test CA", ca_key, None, ca_key, ca=True)
    files = {"ca": ca.public_bytes(serialization.Encoding.PEM)}
    for who in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _certificate(f"mmrouter test {who}", key, ca.subject, ca_key, ca=False, server=who == "server")
        files[f"{who}_cert"] = cert.public_bytes(serialization.Encoding.PEM)
        files[f"{who}_key"] = _pem_key(key)
    other_key = ec.generate_private_key(ec.SECP256R1())
    files["other_ca"] = _certificate("someone else", other_key, None, other_key, ca=True).public_bytes(
        serialization.Encoding.PEM)
    paths = {}
    for name, data in files.items():
        paths[name] = out / f"{name}.pem"
        paths[name].write_bytes(data)
    return paths


def _tls_config(pki: dict[str, Path], client_ca: bool = False) -> str:
    extra = f"\n    client_ca_file: {pki['ca']}" if client_ca else ""
    return BASE + f"""
server:
  tls:
    cert_file: {pki['server_cert']}
    key_file: {pki['server_key']}{extra}
"""


def _secure_stub(address: str, ca: Path, cert: Path | None = None, key: Path | None = None):
    credentials = grpc.ssl_channel_credentials(ca.read_bytes(), private_key=key.read_bytes() if key else None,
                                               certificate_chain=cert.read_bytes() if cert else None)
    channel = grpc.secure_channel(address, credentials)
    return channel, router_pb2_grpc.RouterServiceStub(channel)


def _ask(stub, text: str = "hello over tls") -> pb.Answer:
    return stub.Generate(pb.GenerateRequest(request=text_request(text)), timeout=20).answer


def test_a_tls_daemon_answers_tls_clients_and_refuses_plaintext_and_unknown_cas(start_daemon, pki) -> None:
    daemon = start_daemon(_tls_config(pki))
    channel, stub = _secure_stub(daemon.address, pki["ca"])
    with channel:
        answer = _ask(stub)
        assert "hello over tls" in answer.text and answer.route.provider == "fake"
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING

    with pytest.raises(grpc.RpcError) as plaintext:  # the fixture's channel is plaintext
        _ask(daemon.stub)
    assert plaintext.value.code() == grpc.StatusCode.UNAVAILABLE

    channel, stub = _secure_stub(daemon.address, pki["other_ca"])
    with channel, pytest.raises(grpc.RpcError) as untrusted:
        _ask(stub)
    assert untrusted.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "TLS" in daemon.logs() and daemon.proc.poll() is None


def test_with_a_client_ca_the_daemon_requires_a_client_certificate(start_daemon, pki) -> None:
    daemon = start_daemon(_tls_config(pki, client_ca=True))
    channel, stub = _secure_stub(daemon.address, pki["ca"])
    with channel, pytest.raises(grpc.RpcError) as anonymous:
        _ask(stub)
    assert anonymous.value.code() == grpc.StatusCode.UNAVAILABLE

    channel, stub = _secure_stub(daemon.address, pki["ca"], pki["client_cert"], pki["client_key"])
    with channel:
        assert "with a certificate" in _ask(stub, "with a certificate").text
    assert "client certificates required" in daemon.logs()


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **env}
    return subprocess.run([sys.executable, "-m", "router", *args], capture_output=True, text=True,
                          timeout=60, env=full_env)


def test_the_cli_talks_tls_with_the_ca_and_client_certificate_from_the_environment(start_daemon, pki) -> None:
    daemon = start_daemon(_tls_config(pki, client_ca=True))
    tls_env = {"MMROUTER_TLS_CA": str(pki["ca"]), "MMROUTER_TLS_CERT": str(pki["client_cert"]),
               "MMROUTER_TLS_KEY": str(pki["client_key"])}
    result = _cli("ask", "cli over tls", "--json", "--address", daemon.address, env=tls_env)
    assert result.returncode == 0, result.stderr
    assert "cli over tls" in json.loads(result.stdout)["text"]

    missing = _cli("ask", "x", "--address", daemon.address, env={**tls_env, "MMROUTER_TLS_CA": "/nonexistent/ca.pem"})
    assert missing.returncode == 2 and "MMROUTER_TLS_CA" in missing.stderr and "Traceback" not in missing.stderr


@pytest.mark.parametrize("field", ["cert_file", "key_file", "client_ca_file"])
def test_unreadable_or_non_pem_tls_files_are_configuration_errors(tmp_path, pki, field) -> None:
    bad = tmp_path / "not-a-pem.txt"
    bad.write_text("hello")
    files = {"cert_file": pki["server_cert"], "key_file": pki["server_key"], "client_ca_file": pki["ca"]}
    for problem, path in (("is not a PEM file", bad), ("cannot read", tmp_path / "missing.pem")):
        config = tmp_path / "router.yaml"
        lines = "".join(f"    {k}: {path if k == field else v}\n" for k, v in files.items())
        config.write_text(BASE + "server:\n  tls:\n" + lines)
        result = _cli("config", "check", str(config), env={})
        message = " ".join(result.stderr.split())  # rich wraps long lines
        assert result.returncode != 0
        assert f"server.tls.{field}" in message and problem in message and "Traceback" not in message, message


def _answers(address: str, ca: Path) -> bool:
    """Whether a new TLS connection that trusts only ``ca`` gets an answer."""
    channel, stub = _secure_stub(address, ca)
    with channel:
        try:
            return "rotated" in _ask(stub, "rotated").text
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
            return False


def test_sighup_serves_a_rotated_certificate_and_refuses_a_key_that_does_not_match(start_daemon, tmp_path) -> None:
    old, new = _issue(tmp_path, "old", "old CA"), _issue(tmp_path, "new", "new CA")
    served = {"cert": tmp_path / "server_cert.pem", "key": tmp_path / "server_key.pem"}
    for kind in served:
        shutil.copy(old[kind], served[kind])
    config = BASE + f"server:\n  tls:\n    cert_file: {served['cert']}\n    key_file: {served['key']}\n"
    daemon = start_daemon(config)
    assert _answers(daemon.address, old["ca"]) and not _answers(daemon.address, new["ca"])
    kept_channel, kept_stub = _secure_stub(daemon.address, old["ca"])
    assert "before" in _ask(kept_stub, "before").text

    def sighup(log_line: str) -> None:
        seen = daemon.logs().count(log_line)
        daemon.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: daemon.logs().count(log_line) > seen), daemon.logs()

    for kind in served:  # what a certificate manager does: new files at the same paths, then SIGHUP
        shutil.copy(new[kind], served[kind])
    sighup("TLS certificate reloaded")
    assert _answers(daemon.address, new["ca"]) and not _answers(daemon.address, old["ca"])
    with kept_channel:  # a connection made before the rotation keeps working
        assert "after" in _ask(kept_stub, "after").text

    shutil.copy(old["key"], served["key"])  # a half-done rotation: the key of another certificate
    sighup("reload refused")
    assert "is not the key of" in daemon.logs()
    assert _answers(daemon.address, new["ca"])  # the running certificate stays
    assert daemon.proc.poll() is None


def test_a_key_that_does_not_match_the_certificate_is_a_configuration_error(tmp_path, pki) -> None:
    config = tmp_path / "router.yaml"
    config.write_text(BASE + f"server:\n  tls:\n    cert_file: {pki['server_cert']}\n    key_file: {pki['client_key']}\n")
    result = _cli("config", "check", str(config), env={})
    message = " ".join(result.stderr.split())
    assert result.returncode != 0 and "server.tls" in message and "is not the key of" in message, message
    assert "Traceback" not in message


def test_client_certificates_cannot_be_turned_on_or_off_by_a_reload(pki) -> None:
    from router.config import TlsSettings
    from router.errors import ConfigError
    from router.tls import ServerCertificates

    plain = TlsSettings(cert_file=pki["server_cert"], key_file=pki["server_key"])
    mutual = TlsSettings(cert_file=pki["server_cert"], key_file=pki["server_key"], client_ca_file=pki["ca"])
    for running, wanted in ((plain, mutual), (mutual, plain)):
        certificates = ServerCertificates(running)
        with pytest.raises(ConfigError, match="needs a restart"):
            certificates.reload(wanted)
        assert certificates.fetch() is None  # nothing waits to be swapped in
        certificates.reload(running)
        assert certificates.fetch() is not None and certificates.fetch() is None  # handed over once


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o600])
def test_a_private_key_others_may_read_is_warned_of_at_start(start_daemon, pki, tmp_path, mode) -> None:
    """A key_file of mode 0644 lets every local user pass for the daemon: nothing said so."""
    key = tmp_path / "server_key.pem"
    shutil.copy(pki["server_key"], key)
    key.chmod(mode)
    daemon = start_daemon(_tls_config({**pki, "server_key": key}))
    warning = f"other local users may read the TLS private key {key} ({mode:04o}): run chmod 600 {key}"
    assert (warning in daemon.logs()) == (mode != 0o600), daemon.logs()
