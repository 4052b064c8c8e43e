"""Fixes from an operator's test of the daemon: a session turn lost on a full disk says so, prune finds old
statistics rows by an index, the CLI takes a DER CA certificate, prune's and serve's start-up messages say
what to do, and an openai timeout is PROVIDER_TIMEOUT and still falls back."""

from __future__ import annotations

import datetime
import ipaddress
import json
import logging
import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import typer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from mmrouter.v1 import router_pb2 as pb

from router import Message, Part, Role
from router.cli_calls import ca_certificates
from router.core import _unsaved_reason
from router.sessions import _SCHEMA, SessionStore

MMROUTER = Path(sys.executable).parent / "mmrouter"
DAY = 86_400


def _turn(text: str) -> list[Message]:
    return [Message(Role.USER, [Part(text=text)])]


def _no_media(media) -> str:
    raise AssertionError("no media in these turns")


# -- a session turn on a full disk ----------------------------------------------------------------------------


def test_a_turn_that_finds_the_disk_full_says_so_and_the_store_stays_usable(tmp_path) -> None:
    """SQLite rolls a transaction back itself on SQLITE_FULL: the ROLLBACK that followed failed with "cannot
    rollback - no transaction is active", and that error, not the full disk, reached the client's note."""
    store = SessionStore(tmp_path / "sessions.sqlite")
    try:
        store.append("s", _turn("first"), _no_media)
        (pages,) = store._db.execute("PRAGMA page_count").fetchone()
        store._db.execute(f"PRAGMA max_page_count = {pages}")  # no page more: as a full disk
        with pytest.raises(sqlite3.OperationalError) as info:
            store.append("s", _turn("x" * 200_000), _no_media)
        assert "database or disk is full" in str(info.value)
        assert _unsaved_reason(info.value) == "the sessions database could not be written (database or disk is full)"
        assert not store._db.in_transaction

        store._db.execute(f"PRAGMA max_page_count = {1 << 30}")  # room again: the next turn is kept
        store.append("s", _turn("second"), _no_media)
        assert store.turn_count("s") == 2
    finally:
        store.close()


def test_an_error_that_leaves_the_transaction_open_is_still_rolled_back(tmp_path) -> None:
    """An error SQLite does not end the transaction for (a constraint): the ROLLBACK runs, as before."""
    store = SessionStore(tmp_path / "sessions.sqlite")
    try:
        with pytest.raises(sqlite3.IntegrityError), store._writing():
            store._db.execute("INSERT INTO turns (session_id, position, role, parts, at) VALUES ('s', 0, 'user', '[]', 1)")
            store._db.execute("INSERT INTO turns (session_id, position, role, parts, at) VALUES ('s', 0, 'user', '[]', 1)")
        assert not store._db.in_transaction and store.turn_count("s") == 0
    finally:
        store.close()


# -- prune and the index on calls.at --------------------------------------------------------------------------


def _statistics_rows(path: Path, ats: list[float]) -> None:
    """A sessions database of a version before the index on calls.at, holding statistics rows made at ``ats``."""
    db = sqlite3.connect(path)
    db.executescript(_SCHEMA)
    with db:
        db.executemany("INSERT INTO calls VALUES (?, 'chat', 'fake', 'echo', 'answer', 1, 0, 1, 1, 0)",
                       [(at,) for at in ats])
    db.close()


def test_prune_finds_old_statistics_rows_by_an_index_on_their_time(tmp_path) -> None:
    """prune took the write lock, then looked for old rows with a scan of the whole calls table (no index on
    `at`), once per batch: the store now indexes them, in a database of an older version too."""
    path = tmp_path / "sessions.sqlite"
    now = time.time()
    _statistics_rows(path, [now - 10 * DAY] * 700 + [now] * 300)  # more than a batch of old rows
    store = SessionStore(path)
    try:
        statements: list[str] = []
        store._db.set_trace_callback(statements.append)
        try:
            sessions, calls, _ = store.prune(now - DAY)
        finally:
            store._db.set_trace_callback(None)
        assert (sessions, calls) == (0, 700)
        (left,) = store._db.execute("SELECT COUNT(*) FROM calls").fetchone()
        assert left == 300
        searches = [s for s in statements if s.lstrip().upper().startswith("SELECT") and " FROM calls" in s]
        assert searches, statements
        for sql in searches:
            plan = " ".join(row[3] for row in store._db.execute(f"EXPLAIN QUERY PLAN {sql}"))
            assert "calls_at" in plan and "SCAN calls" not in plan, (sql, plan)
    finally:
        store.close()


def test_a_disk_too_full_for_the_index_does_not_stop_the_store_from_opening(tmp_path, caplog) -> None:
    """The index is made when the store opens; on a full disk that fails, and the daemon (or prune) must open
    the database all the same (prune is slower without the index, not wrong)."""
    path = tmp_path / "sessions.sqlite"
    _statistics_rows(path, [time.time() - i for i in range(5000)])
    store = SessionStore(path)
    try:
        store._db.execute("DROP INDEX calls_at")
        store._db.execute("VACUUM")  # the index's pages, free now, would hold it again
        (pages,) = store._db.execute("PRAGMA page_count").fetchone()
        store._db.execute(f"PRAGMA max_page_count = {pages}")
        with caplog.at_level(logging.WARNING, logger="router.sessions"):
            store._index_call_times()
        assert "could not be indexed by time (database or disk is full)" in caplog.text
        assert store._db.execute("SELECT name FROM sqlite_master WHERE name = 'calls_at'").fetchone() is None
    finally:
        store.close()


# -- prune's and serve's messages -------------------------------------------------------------------------------


def test_prune_on_a_full_disk_does_not_tell_to_run_prune(tmp_path) -> None:
    """prune on a full disk said "free space, e.g. with `mmrouter prune`": itself."""
    data = tmp_path / "data"
    store = SessionStore(data / "sessions.sqlite")
    store.append("idle", _turn("old"), _no_media)
    store._db.execute("UPDATE turns SET at = at - ?", (3 * DAY,))
    store.close()  # as a stopped daemon: no -shm, which prune cannot make on a full disk
    result = subprocess.run(["sh", "-c", f'ulimit -f 0 && exec "{MMROUTER}" prune --older-than 1 --data-dir "$0"',
                             str(data)], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "COLUMNS": "300"})
    assert result.returncode == 0, result.stderr
    assert " ".join(result.stderr.split()) == (
        f"sessions and statistics rows are not pruned, media are: the data directory's disk is full (File too "
        f"large; {data}): free space on it (a smaller --older-than removes more media), then prune again")


def _taken_port() -> socket.socket:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    return taken


@pytest.mark.parametrize("given", ["environment", "option"])
def test_serve_that_cannot_listen_names_where_the_address_came_from(tmp_path, given: str) -> None:
    """An MMROUTER_ADDRESS exported for the client commands also moves serve: the error named only --address
    and server.address."""
    with _taken_port() as taken:
        busy = f"127.0.0.1:{taken.getsockname()[1]}"
        env = {k: v for k, v in os.environ.items() if k != "MMROUTER_ADDRESS"} | {"COLUMNS": "400"}
        args = [str(MMROUTER), "serve", "--data-dir", str(tmp_path / "data")]
        if given == "environment":
            env["MMROUTER_ADDRESS"] = busy
        else:
            args += ["--address", busy]
        result = subprocess.run(args, capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    last = result.stderr.splitlines()[-1]
    assert last.startswith(f"cannot listen on {busy}: the address is in use or invalid; "), last
    if given == "environment":
        assert "it came from the environment's MMROUTER_ADDRESS, which serve reads before server.address: " \
               "unset MMROUTER_ADDRESS (for server.address), or give it or --address a free host:port" in last, last
    else:
        assert "MMROUTER_ADDRESS" not in last and "give --address (or server.address) a free host:port" in last, last


# -- a DER CA certificate for the CLI ---------------------------------------------------------------------------


def _certificate(subject: str, key, issuer: x509.Certificate | None, issuer_key, *, ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer.subject if issuer else name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    """A CA (as PEM, as DER, and as DER with a second CA after it), a server certificate for 127.0.0.1 and its key."""
    out = tmp_path_factory.mktemp("pki")
    ca_key, other_key, key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca = _certificate("ops test CA", ca_key, None, ca_key, ca=True)
    other = _certificate("ops other CA", other_key, None, other_key, ca=True)
    server = _certificate("ops test server", key, ca, ca_key, ca=False)
    der = ca.public_bytes(serialization.Encoding.DER)
    files = {
        "ca.pem": ca.public_bytes(serialization.Encoding.PEM),
        "ca.der": der,
        "two.der": other.public_bytes(serialization.Encoding.DER) + der,
        # a bundle with a comment naming its CA in UTF-8, as certifi's has
        "bundle.pem": "# Issuer: CN=Főtanúsítvány\n".encode() + ca.public_bytes(serialization.Encoding.PEM),
        "server.pem": server.public_bytes(serialization.Encoding.PEM),
        "server.key": key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()),
        "binary.bin": bytes(range(256)) * 4,
    }
    paths = {}
    for name, data in files.items():
        paths[name] = out / name
        paths[name].write_bytes(data)
    return paths


def test_a_der_ca_is_given_to_grpc_as_pem(pki) -> None:
    pem = ca_certificates(str(pki["ca.der"]), pki["ca.der"].read_bytes())
    assert pem == pki["ca.pem"].read_bytes()
    two = ca_certificates(str(pki["two.der"]), pki["two.der"].read_bytes())
    assert two.count(b"-----BEGIN CERTIFICATE-----") == 2 and two.endswith(pki["ca.pem"].read_bytes())
    bundle = pki["bundle.pem"].read_bytes()
    assert ca_certificates(str(pki["bundle.pem"]), bundle) == bundle
    for bad in (pki["binary.bin"].read_bytes(), pki["ca.der"].read_bytes()[:-10], b""):
        with pytest.raises(typer.Exit) as info:
            ca_certificates("ca", bad)
        assert info.value.exit_code == 2


def test_the_cli_reaches_a_tls_daemon_with_a_der_ca_and_says_what_is_wrong_with_a_binary_file(start_daemon,
                                                                                               pki) -> None:
    """A DER CA (binary, as many PKIs hand a .der or .crt out) crashed every command that reaches the daemon
    with a traceback (TypeError: cadata should be an ASCII string or a bytes-like object)."""
    daemon = start_daemon(f"""
providers:
  fake: {{api_key: test-key}}
routes:
  - name: everything
    use: fake/echo
server:
  tls:
    cert_file: {pki['server.pem']}
    key_file: {pki['server.key']}
""")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MMROUTER_", "GRPC_"))} | {"COLUMNS": "300"}

    def ask(ca: Path) -> subprocess.CompletedProcess:
        return subprocess.run([str(MMROUTER), "ask", "over tls", "--json", "--address", daemon.address],
                              capture_output=True, text=True, timeout=60, env=env | {"MMROUTER_TLS_CA": str(ca)})

    for ca in (pki["ca.der"], pki["two.der"], pki["bundle.pem"]):
        result = ask(ca)
        assert result.returncode == 0, (ca, result.stderr)
        assert "over tls" in json.loads(result.stdout)["text"]
    result = ask(pki["binary.bin"])
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip() == (f"MMROUTER_TLS_CA {pki['binary.bin']} holds no valid PEM certificate: give "
                                     "the certificate of the CA that signed the daemon's server.tls certificate")


# -- an openai timeout falls back -------------------------------------------------------------------------------


def test_an_openai_timeout_is_unavailable_and_the_fallback_answers(start_daemon) -> None:
    """The openai plugin's own HTTP timeout is PROVIDER_UNAVAILABLE, as every plugin's (the proto says so:
    a provider past its own HTTP timeout), and lets the rule's fallback answer."""
    from tests.fakes.openai import API_KEY, FakeOpenAI

    with FakeOpenAI() as fake:
        fake.chunk_delay = 3.0
        daemon = start_daemon(f"""
providers:
  fake: {{api_key: test-key}}
  openai: {{api_key: "${{OPS_TEST_OPENAI_KEY}}", base_url: "{fake.base_url}", timeout: 0.5}}
routes:
  - name: sturdy
    use: openai/gpt-4o
    fallback: [fake/echo]
""", env={"OPS_TEST_OPENAI_KEY": API_KEY})
        request = pb.MultimodalRequest(messages=[pb.Message(role=pb.ROLE_USER, parts=[pb.Part(text="hi")])])
        answer = daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=30).answer
    assert (answer.route.provider, answer.route.model) == ("fake", "echo")
    [failed, answered] = answer.route.attempts
    assert (failed.provider, failed.ok, answered.ok) == ("openai", False, True)
    assert "PROVIDER_UNAVAILABLE" in " ".join(answer.route.notes) and "timed out after 0.5s" in failed.error


def _sessions_of_text(store: SessionStore, count: int, at: float) -> None:
    """``count`` sessions of one long turn each, made at ``at`` (a time.time())."""
    text = "a long conversation turn " * 400  # ~10 KB
    for i in range(count):
        store.append(f"s{i}", [Message(Role.USER, [Part(text=text)])], lambda part: "")
    store._db.execute("UPDATE turns SET at = ?", (at,))


def test_prune_gives_the_freed_pages_back_to_the_file_system(tmp_path) -> None:
    """prune deleted old sessions but the sessions database kept its size: SQLite keeps freed pages for
    later writes, so an operator freeing disk space got none. A database the store makes now shrinks."""
    path = tmp_path / "sessions.sqlite"
    store = SessionStore(path)
    try:
        _sessions_of_text(store, 300, time.time() - 10 * DAY)
        store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        full = path.stat().st_size
        assert full > 2 << 20
        sessions, _, _ = store.prune(time.time() - DAY)
        assert sessions == 300
        assert store._free_pages() == 0
    finally:
        store.close()
    assert path.stat().st_size < full / 4, (full, path.stat().st_size)


def test_prune_of_a_database_made_before_auto_vacuum_still_works(tmp_path) -> None:
    """A database made by an older version (no auto_vacuum, which only a VACUUM could turn on) is pruned as
    before: its freed pages stay for later writes, and nothing fails."""
    path = tmp_path / "sessions.sqlite"
    _statistics_rows(path, [time.time() - 10 * DAY] * 50)
    store = SessionStore(path)
    try:
        assert store._db.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
        _sessions_of_text(store, 20, time.time() - 10 * DAY)
        assert store.prune(time.time() - DAY)[:2] == (20, 50)
        assert store._db.execute("SELECT COUNT(*) FROM turns").fetchone()[0] == 0
    finally:
        store.close()
