"""``mmrouter ask`` on a bad network, and with an answer over 64 MiB.

- A connection lost during a call (reset mid-answer, mid-upload, or while the provider thinks; silent past
  a keepalive ping's timeout) is not "the daemon was not reached" (exit 3, "is the daemon running?"): it
  says the connection was lost during the call, that the daemon may have completed it (and kept its
  session turn), and exits 7.
- An answer over 64 MiB (a daemon's server.max_message_bytes may be up to 2 GiB) is received whole, its
  final ``Done`` too: the CLI no longer refused that ``Done`` and then sent the call again "with every
  file uploaded" (the provider called and billed twice, the answer printed twice). A refusal of an answer
  for its size is never taken for a request too large.

The real CLI (tests/test_cli.py's ``mmrouter``) against the real daemon (tests/conftest.py), reached
through :class:`Proxy` (a TCP proxy in this file that forwards, resets or holds the connections); the real
OpenAI plugin and SDK against tests/fakes/openai.py, the scripted ``fake`` provider of tests/testkit where
the provider must be slow. A few checks use gRPC itself in process where the CLI cannot be made to meet
the error (a ping timeout needs a keepalive shorter than the CLI's 30 s; a refused answer, a daemon
sending more than 2 GiB).
"""

from __future__ import annotations

import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures

import grpc
import pytest
from grpc_helpers import wait_for
from mmrouter.v1 import router_pb2 as pb
from mmrouter.v1 import router_pb2_grpc
from test_cli import CONFIG, Cli, make_png

from router.cli_calls import (
    EXIT_CONNECTION_LOST,
    EXIT_FAILED,
    MESSAGE_BYTES,
    call_with_media,
    exit_code,
    fail,
    too_large_inline,
)
from tests.fakes.openai import API_KEY, FakeOpenAI

#: The hint's start and end for a connection lost during the call (its address in between).
LOST = "the connection to the daemon at "
LOST_END = (" was lost during the call: the daemon may have completed it (answered, counted its cost and kept "
            "its session turn), so retrying may repeat it")


class Proxy:
    """A TCP proxy from a free port of 127.0.0.1 to ``target`` (host:port). :attr:`mode` says what it does
    with its connections: ``fwd`` forwards, ``rst`` resets both sides of each (the connection drops),
    ``hold`` stops moving bytes but keeps both sockets open (a stuck path). With ``cut_after`` bytes sent
    by clients, it resets once it has forwarded that many (an upload cut mid-file)."""

    def __init__(self, target: str, cut_after: int | None = None) -> None:
        self.target, self.cut_after, self.mode, self.sent = target, cut_after, "fwd", 0
        self.server = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.server.getsockname()[1]}"
        self.closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            host, port = self.target.rsplit(":", 1)
            threading.Thread(target=self._pipe, args=(client, socket.create_connection((host, int(port)))),
                             daemon=True).start()

    def _pipe(self, client: socket.socket, upstream: socket.socket) -> None:
        while not self.closed.is_set():
            if self.cut_after is not None and self.sent >= self.cut_after:
                self.mode = "rst"
            if self.mode == "rst":
                for sock in (client, upstream):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    sock.close()
                return
            if self.mode == "hold":
                time.sleep(0.05)
                continue
            for sock in select.select([client, upstream], [], [], 0.05)[0]:
                data = sock.recv(65536)
                if not data:
                    client.close()
                    upstream.close()
                    return
                if sock is client:
                    self.sent += len(data)
                (upstream if sock is client else client).sendall(data)
        client.close()
        upstream.close()

    def close(self) -> None:
        self.closed.set()
        self.server.close()


@pytest.fixture
def proxies() -> Iterator[Callable[..., Proxy]]:
    """Start proxies for a test; all are closed at its end."""
    started: list[Proxy] = []

    def start(target: str, cut_after: int | None = None) -> Proxy:
        started.append(Proxy(target, cut_after))
        return started[-1]

    yield start
    for proxy in started:
        proxy.close()


def read_until(cli: Cli, text: str, timeout: float = 30) -> str:
    """What ``cli`` printed on stdout up to ``text``, read as it comes (at most ``timeout`` seconds)."""
    seen, end, fd = "", time.monotonic() + timeout, cli.proc.stdout.fileno()
    while text not in seen:
        left = end - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            cli.proc.kill()
            pytest.fail(f"{text!r} not printed in {timeout} s: {seen!r}")
        chunk = os.read(fd, 65536).decode()
        if not chunk:
            pytest.fail(f"stdout ended before {text!r}: {seen!r}")
        seen += chunk
    return seen


def lost_lines(stderr: str, address: str) -> None:
    """Assert that ``stderr`` says the connection to ``address`` was lost during the call, and nothing of
    an unreachable daemon or of TLS."""
    lines = stderr.splitlines()
    assert lines[0].startswith("UNAVAILABLE: Stream removed ("), stderr
    assert lines[1] == f"{LOST}{address}{LOST_END}", stderr
    assert "mmrouter serve" not in stderr and "TLS" not in stderr, stderr


@pytest.fixture
def slow_openai() -> Iterator[FakeOpenAI]:
    """The fake OpenAI streaming 200 chunks ``chunk<N> ``, 0.1 s apart."""
    fake = FakeOpenAI()
    fake.reply_chunks = [f"chunk{i} " for i in range(200)]
    fake.chunk_delay = 0.1
    yield fake.start()
    fake.stop()


def openai_config(fake: FakeOpenAI, server: str = "") -> str:
    """Rules sending every call to the real OpenAI plugin at ``fake``, with ``server`` settings."""
    return (f"{server}providers:\n  openai:\n    api_key: \"{API_KEY}\"\n    base_url: \"{fake.base_url}\"\n"
            "routes:\n  - name: all\n    use: openai/gpt-4o\n")


# -- a connection lost during the call -----------------------------------------------------------------


def test_a_connection_reset_mid_answer_says_it_was_lost_not_that_the_daemon_is_down(
        start_daemon, proxies, slow_openai):
    """The answer had begun to stream when the connection was reset: exit 7, "lost during the call", not
    exit 3 with the TLS advice and "is the daemon running?"."""
    daemon = start_daemon(openai_config(slow_openai))
    proxy = proxies(daemon.address)
    cli = Cli("ask", "tell me", "--address", proxy.address)
    printed = read_until(cli, "chunk2 ")
    proxy.mode = "rst"
    result = cli.result(60)
    assert result.returncode == EXIT_CONNECTION_LOST, result.stderr
    assert (printed + result.stdout).startswith("chunk0 chunk1 chunk2 ") and result.stdout.endswith("\n")
    lost_lines(result.stderr, proxy.address)


def test_a_connection_reset_while_the_provider_thinks_says_it_was_lost(start_daemon, proxies, tmp_path):
    """The call was under way, its answer not begun (a slow provider), when the connection was reset: the
    daemon got the call, so it too was lost during the call (exit 7)."""
    marks = tmp_path / "marks"
    marks.mkdir()
    daemon = start_daemon(CONFIG.replace("fake: {api_key: k}", f"fake: {{api_key: k, marker_dir: '{marks}'}}"))
    proxy = proxies(daemon.address)
    cli = Cli("ask", "SLOW:60", "--address", proxy.address)
    wait_for(lambda: any(marks.glob("started-*")), timeout=30)
    proxy.mode = "rst"
    result = cli.result(60)
    assert result.returncode == EXIT_CONNECTION_LOST, result.stderr
    lost_lines(result.stderr, proxy.address)


def test_a_connection_reset_mid_upload_says_it_was_lost(start_daemon, proxies, tmp_path):
    """An upload cut mid-file (after 8 MiB of 32): exit 7, "lost during the call"."""
    daemon = start_daemon(CONFIG)
    proxy = proxies(daemon.address, cut_after=8 << 20)
    audio = tmp_path / "long.wav"
    audio.write_bytes(b"RIFF" + struct.pack("<I", 32 << 20) + b"WAVEfmt " + os.urandom(32 << 20))
    result = Cli("ask", "--audio", audio, "--address", proxy.address).result(60)
    assert result.returncode == EXIT_CONNECTION_LOST, result.stderr
    lost_lines(result.stderr, proxy.address)


def test_a_ping_timeout_on_a_silent_path_is_a_lost_connection(start_daemon, proxies, tmp_path):
    """A path that stops moving bytes mid-call: gRPC's keepalive ping times out ("Stream removed (ping
    timeout)"), which the CLI takes for a lost connection (exit 7). In process with a 1 s keepalive: the
    CLI's is 30 s (plus 10 s for the ping's answer), too long for a test."""
    marks = tmp_path / "marks"
    marks.mkdir()
    daemon = start_daemon(CONFIG.replace("fake: {api_key: k}", f"fake: {{api_key: k, marker_dir: '{marks}'}}"))
    proxy = proxies(daemon.address)
    # a ping 2 s after the last data (the path is held by then: none reaches the daemon), failed after 1 s
    options = [("grpc.keepalive_time_ms", 2000), ("grpc.keepalive_timeout_ms", 1000),
               ("grpc.http2.ping_timeout_ms", 1000), ("grpc.http2.max_pings_without_data", 0)]
    with grpc.insecure_channel(proxy.address, options=options) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        request = pb.MultimodalRequest(messages=[pb.Message(role=pb.ROLE_USER, parts=[pb.Part(text="SLOW:60")])])
        call = stub.StreamGenerate(pb.StreamGenerateRequest(request=request), timeout=60)
        wait_for(lambda: any(marks.glob("started-*")), timeout=30)
        proxy.mode = "hold"
        with pytest.raises(grpc.RpcError) as failed:
            list(call)
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE and "ping timeout" in failed.value.details()
    assert exit_code(failed.value) == EXIT_CONNECTION_LOST


class Broken(router_pb2_grpc.RouterServiceServicer):
    """A gRPC server in the daemon's place that streams one delta, then fails with a plain UNAVAILABLE
    (no ErrorInfo), as a proxy in front of a daemon does when the daemon goes away."""

    def StreamGenerate(self, request, context):  # gRPC names the method
        yield pb.StreamGenerateResponse(text_delta=pb.TextDelta(text="begun "))
        context.abort(grpc.StatusCode.UNAVAILABLE, "upstream connection went away")


def test_an_unavailable_after_the_answer_began_is_a_lost_connection():
    """Whatever gRPC says, an UNAVAILABLE of its own after some of the answer arrived is a connection lost
    during the call (exit 7), not a daemon not reached."""
    server = grpc.server(futures.ThreadPoolExecutor(2))
    router_pb2_grpc.add_RouterServiceServicer_to_server(Broken(), server)
    address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    server.start()
    try:
        result = Cli("ask", "hi", "--address", address).result(60)
    finally:
        server.stop(None)
    assert result.returncode == EXIT_CONNECTION_LOST, result.stderr
    assert result.stdout == "begun \n"
    assert result.stderr.splitlines() == ["UNAVAILABLE: upstream connection went away", f"{LOST}{address}{LOST_END}"]


# -- an answer over 64 MiB -----------------------------------------------------------------------------


def test_an_answer_over_64_mib_is_printed_once_with_its_route(start_daemon, tmp_path):
    """A daemon allowed messages of 256 MiB answers 66 MiB: its final Done (the text again, with the route
    and cost) is over 64 MiB. The CLI takes it: the answer printed once, its usage, one provider call. (It
    took the CLI's refusal of that Done for a request too large, and asked again with the image uploaded.)"""
    fake = FakeOpenAI()
    fake.reply_chunks = ["x" * (1 << 20)] * 66
    fake.start()
    try:
        daemon = start_daemon(openai_config(fake, "server:\n  max_message_bytes: 268435456\n"))
        result = Cli("ask", "describe", "--image", make_png(tmp_path / "red.png", (255, 0, 0)),
                     "--address", daemon.address).result(120)
        assert result.returncode == 0, result.stderr[-2000:]
        assert len(result.stdout) == 66 * (1 << 20) + 1 and set(result.stdout) == {"x", "\n"}
        assert "usage: 1234 in, 56 out" in result.stderr and "uploading" not in result.stderr
        assert len(fake.chat_requests()) == 1
    finally:
        fake.stop()


class Sizes:
    """A gRPC method ``/t.Sizes/Echo`` answering ``answer_bytes`` bytes, counting its calls."""

    def __init__(self, answer_bytes: int) -> None:
        self.answer_bytes, self.calls = answer_bytes, 0
        self.server = grpc.server(futures.ThreadPoolExecutor(2))
        handler = grpc.unary_unary_rpc_method_handler(self.echo)
        self.server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("t.Sizes", {"Echo": handler})])
        self.address = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.server.start()

    def echo(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self.calls += 1
        return b"x" * self.answer_bytes


def request_with_image(limit: int) -> pb.MultimodalRequest:
    """A request whose image is inline (``limit`` > 0) or uploaded (0)."""
    media = pb.Media(modality=pb.MODALITY_IMAGE, mime_type="image/png")
    if limit:
        media.data = b"\x89PNG" + b"p" * 4096
    else:
        media.media_id = "m-uploaded"
    return pb.MultimodalRequest(messages=[pb.Message(role=pb.ROLE_USER, parts=[pb.Part(media=media)])])


def test_an_answer_refused_for_its_size_is_not_sent_again(capsys):
    """gRPC's refusal of an answer over this side's receive limit ("CLIENT: Received message larger than
    max") is not a request too large: the call is not made again with the files uploaded; the message
    says the answer was over the CLI's receive limit, and the exit is 1. A request over this side's send
    limit is still sent again with its files uploaded."""
    sizes = Sizes(answer_bytes=5000)
    try:
        with grpc.insecure_channel(sizes.address, options=[("grpc.max_receive_message_length", 1000)]) as channel:
            method = channel.unary_unary("/t.Sizes/Echo")
            with pytest.raises(grpc.RpcError) as refused:
                call_with_media(request_with_image, lambda r: method(r.SerializeToString(), timeout=30), 1 << 20)
        assert "CLIENT: Received message larger than max" in refused.value.details()
        assert sizes.calls == 1 and too_large_inline(refused.value) is None
        with pytest.raises(Exception) as exited:
            fail(refused.value, sizes.address)
        assert exited.value.exit_code == EXIT_FAILED
        hint = capsys.readouterr().err.splitlines()[1]
        assert hint == (f"the answer's last message was over the CLI's receive limit ({2**31 - 1} bytes): the text "
                        "printed above is the whole answer if it was streamed, but its route and cost were not "
                        "received; the call was not retried")

        sizes.answer_bytes = 10
        with grpc.insecure_channel(sizes.address, options=[("grpc.max_send_message_length", 1000)]) as channel:
            method = channel.unary_unary("/t.Sizes/Echo")
            sent = call_with_media(request_with_image, lambda r: method(r.SerializeToString(), timeout=30), 1 << 20)
        assert sent == b"x" * 10 and sizes.calls == 2  # the inline request never left; the uploaded one did
    finally:
        sizes.server.stop(None)
    assert MESSAGE_BYTES == 64 << 20  # what the CLI still sends at most


def test_a_session_turn_lost_mid_answer_is_asked_again_by_its_turn_id_without_repeating_it(
        start_daemon, proxies, tmp_path):
    """ask --session sends a turn id of its own and names it when the connection is lost: asked again with
    it, a turn the daemon did not keep (its client left: the call was cancelled) is answered, and once kept
    it is answered from the session, without a second provider call."""
    import re
    import sqlite3

    with FakeOpenAI() as fake:
        fake.reply_chunks, fake.chunk_delay = [f"chunk{i} " for i in range(40)], 0.05
        daemon = start_daemon(openai_config(fake))
        proxy = proxies(daemon.address)
        cli = Cli("ask", "tell me", "--address", proxy.address, env={"MMROUTER_SESSION": "s-again"})
        read_until(cli, "chunk2 ")
        proxy.mode = "rst"
        lost = cli.result(60)
        assert lost.returncode == EXIT_CONNECTION_LOST, lost.stderr
        found = re.search(r"ask again with --turn-id ([0-9a-f]{32}) \(and the same --session\) to get its answer "
                          r"if it was kept, without a second call", lost.stderr)
        assert found, lost.stderr
        again = ["ask", "tell me", "--address", daemon.address, "--turn-id", found[1]]
        first = Cli(*again, env={"MMROUTER_SESSION": "s-again"}).result(60)
        assert first.returncode == 0 and first.stdout.startswith("chunk0 chunk1"), first.stderr
        calls = len(fake.chat_requests())
        second = Cli(*again, env={"MMROUTER_SESSION": "s-again"}).result(60)
        assert second.returncode == 0 and second.stdout == first.stdout, second.stderr
        assert "outcome" not in second.stderr, "an empty rule table for a kept answer (it has no trace)"
        assert f"turn '{found[1]}' of session 's-again' was answered at" in " ".join(second.stderr.split())
        assert len(fake.chat_requests()) == calls
    with sqlite3.connect(daemon.data_dir / "sessions.sqlite") as db:
        roles = [role for (role,) in db.execute("SELECT role FROM turns WHERE session_id = 's-again' ORDER BY position")]
    assert roles == ["user", "assistant"]


def test_a_turn_id_without_a_session_is_a_usage_error():
    result = Cli("ask", "hi", "--turn-id", "t-1", "--address", "127.0.0.1:1").result(30)
    assert result.returncode == 2 and "--turn-id names a turn of a session: give --session" in result.stderr


def test_a_session_turn_past_its_deadline_names_its_turn_id(start_daemon, slow_openai):
    """A deadline passing as the answer left is the other way to miss a kept answer: the id is given, on
    stderr and in --json's error."""
    import json as json_module

    daemon = start_daemon(openai_config(slow_openai))
    result = Cli("ask", "tell me", "--address", daemon.address, "--timeout", "8", "--json",
                 env={"MMROUTER_SESSION": "s-late"}).result(60)
    assert result.returncode == 6, result.stderr
    error = json_module.loads(result.stdout)["error"]
    assert error["code"] == "DEADLINE_EXCEEDED" and len(error["turn_id"]) == 32
    assert (f"ask again with --turn-id {error['turn_id']} (and the same --session) to get its answer if it was "
            "kept, without a second call") in " ".join(result.stderr.split())
