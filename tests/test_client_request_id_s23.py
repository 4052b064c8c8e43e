"""A client may name its call itself: the request id it sends in ``x-mmrouter-request-id`` is the call's.

A unary ``Generate`` cut by its client's own deadline gets no trailers, so its client never learnt the id the
daemon gave it and could not find the call in the daemon's log. A client that sends its own id knows it
before any answer; the daemon logs the call, answers, errors and trailers under it. An id the access log
could not hold as one word (empty, too long, with spaces) is refused with INVALID_ARGUMENT and a field
violation naming the metadata key; the refusal names an id of the daemon's own.
"""

from __future__ import annotations

import re

import grpc
import pytest
from grpc_helpers import error_details, text_request
from mmrouter.v1 import router_pb2 as pb
from test_request_id_early_s22 import logged as access_line

KEY = "x-mmrouter-request-id"

#: A daemon whose provider is the testkit's (``SLOW:<s>`` holds the call that long), logging JSON lines.
CONFIG = """
providers:
  fake: {api_key: k}
default: fake/echo
server: {log_format: json}
"""


@pytest.fixture
def daemon(start_daemon):
    return start_daemon(CONFIG)


def test_a_unary_call_answers_and_is_logged_under_its_clients_id(daemon) -> None:
    own = "order-42:try/2=a+b_c.d"
    response, call = daemon.stub.Generate.with_call(pb.GenerateRequest(request=text_request("hello")),
                                                    metadata=((KEY, own),), timeout=30)
    assert response.answer.text
    assert dict(call.trailing_metadata())[KEY] == own
    assert (access_line(daemon, own)["method"], access_line(daemon, own)["code"]) == ("Generate", "OK")

    # without one the daemon makes its own, as before
    _, plain = daemon.stub.Generate.with_call(pb.GenerateRequest(request=text_request("hello")), timeout=30)
    assert re.fullmatch(r"[0-9a-f]{32}", dict(plain.trailing_metadata())[KEY])


def test_a_unary_call_cut_by_its_clients_deadline_is_found_by_its_clients_id(daemon) -> None:
    own = "5b0f3c1e-3c2a-4e8e-9a57-0f4d5b6c7d8e"
    with pytest.raises(grpc.RpcError) as cut:
        daemon.stub.Generate(pb.GenerateRequest(request=text_request("SLOW:30")), metadata=((KEY, own),), timeout=2)
    assert cut.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert not dict(cut.value.trailing_metadata() or ()).get(KEY)  # nothing came back: the client's id is all it has
    line = access_line(daemon, own)
    assert (line["method"], line["code"]) == ("Generate", "DEADLINE_EXCEEDED")


def test_a_stream_and_its_errors_carry_the_clients_id(daemon) -> None:
    stream = daemon.stub.StreamGenerate(pb.StreamGenerateRequest(request=text_request("hi")),
                                        metadata=((KEY, "stream-1"),), timeout=30)
    assert [event.WhichOneof("event") for event in stream][-1] == "done"
    assert dict(stream.initial_metadata())[KEY] == dict(stream.trailing_metadata())[KEY] == "stream-1"

    with pytest.raises(grpc.RpcError) as refused:  # a request refused for itself still names the client's id
        daemon.stub.Generate(pb.GenerateRequest(), metadata=((KEY, "empty-request"),), timeout=30)
    details = error_details(refused.value)
    assert details.reason == "INVALID_REQUEST" and details.request_id == "empty-request"
    assert access_line(daemon, "empty-request")["code"] == "INVALID_ARGUMENT"


@pytest.mark.parametrize(("sent", "why"), [
    ("two words", "holds characters other than letters, digits and . _ : / + = -"),
    ("x" * 129, "has 129 characters (at most 128)"),
    ("", "is empty"),
])
def test_an_id_the_log_could_not_hold_is_refused(daemon, sent: str, why: str) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        daemon.stub.Generate(pb.GenerateRequest(request=text_request("hello")), metadata=((KEY, sent),), timeout=30)
    details = error_details(refused.value)
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
    assert details.violations == [(KEY, why)]
    assert re.fullmatch(r"[0-9a-f]{32}", details.request_id)  # the daemon's own id names the refusal
    assert access_line(daemon, details.request_id)["code"] == "INVALID_ARGUMENT"
