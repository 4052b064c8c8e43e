"""The daemon's log never holds a session id, also where an error message names it.

Sessions are logged as the first 12 hex digits of the sha256 of their id (``session=`` of the access line): the
id is the key to the conversation. A turn asked again under its ``turn_id`` with another question is refused
with a message naming the session (``turn 't-1' of session 'tenant-…' was answered at …``), and the access line
logged that message whole: the tag in ``session=``, the id in clear a few characters later (QA tenant, session
23). The client's message still names its own session; the log names the tag instead.
"""

from __future__ import annotations

import grpc
import pytest
from grpc_helpers import text_request, wait_for
from mmrouter.v1 import router_pb2 as pb

from router.redact import session_tag

CONFIG = """
providers:
  fake: {api_key: k}
default: fake/echo
"""

SESSION = "tenant-globex-c33d6192ce207ff368a815b2d367c739"


def test_a_refusal_naming_the_session_logs_its_tag_not_its_id(start_daemon) -> None:
    daemon = start_daemon(CONFIG)
    daemon.stub.Generate(pb.GenerateRequest(request=text_request("What is 2+2?", session_id=SESSION, turn_id="t-1")),
                         timeout=30)
    with pytest.raises(grpc.RpcError) as refused:
        daemon.stub.Generate(pb.GenerateRequest(
            request=text_request("Something else", session_id=SESSION, turn_id="t-1")), timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"of session {SESSION!r} was answered at" in refused.value.details()  # the client knows its own id

    line = wait_for(lambda: next((line for line in daemon.logs().splitlines() if "INVALID_REQUEST" in line), None))
    assert f"turn 't-1' of session <{session_tag(SESSION)}> was answered at" in line, line
    assert SESSION not in daemon.logs()
