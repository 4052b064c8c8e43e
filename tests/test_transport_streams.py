"""HTTP/2 streams per connection: one client connection cannot take every call slot from the others."""

from __future__ import annotations

import grpc
from grpc_helpers import text_request, wait_for
from mmrouter.v1 import router_pb2 as pb
from mmrouter.v1 import router_pb2_grpc

CONFIG = """
providers:
  fake: {{api_key: k, marker_dir: "{markers}"}}
default: fake/echo
server:
  max_concurrent_streams: 2
"""


def _connection(address: str) -> tuple[grpc.Channel, router_pb2_grpc.RouterServiceStub]:
    """A channel with a connection of its own (channels to one address otherwise share theirs)."""
    channel = grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
    return channel, router_pb2_grpc.RouterServiceStub(channel)


def _ask(text: str) -> pb.GenerateRequest:
    return pb.GenerateRequest(request=text_request(text))


def test_a_connection_has_at_most_max_concurrent_streams_calls_in_flight(start_daemon, tmp_path) -> None:
    """Without a cap one connection could run as many calls as server.max_concurrent_calls allows, and
    the other clients' calls were refused TOO_MANY_CALLS. Past server.max_concurrent_streams a
    connection's next call waits on its client until one of its calls ends; another connection is served."""
    daemon = start_daemon(CONFIG.format(markers=tmp_path))
    greedy_channel, greedy = _connection(daemon.address)
    other_channel, other = _connection(daemon.address)
    try:
        first = greedy.Generate.future(_ask("SLOW:3"), timeout=60)
        held = greedy.StreamGenerate(pb.StreamGenerateRequest(request=text_request("SLOW:60")), timeout=60)
        assert wait_for(lambda: len(list(tmp_path.glob("started-*"))) == 2), "the two slow calls did not start"
        third = greedy.Generate.future(_ask("third"), timeout=60)  # over the cap: waits for a stream

        answer = other.Generate(_ask("from another connection"), timeout=30).answer
        assert answer.text.startswith("fake/echo says: from another connection")
        assert not first.done(), "the other connection's call should not have waited for the slow one"

        assert third.result().answer.text.startswith("fake/echo says: third")
        assert first.done(), "the third call ran beside two others on its connection"
        assert first.result().answer.text.startswith("fake/echo says: SLOW:3")
        assert not held.done(), "the held call ended early"
        held.cancel()
    finally:
        greedy_channel.close()
        other_channel.close()
