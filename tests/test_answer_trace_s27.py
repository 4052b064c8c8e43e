"""An answer's route leaves out the rules after the one that chose (RULE_OUTCOME_NOT_EVALUATED: their entries said
only that), while ExplainRoute lists every rule: with thousands of rules a short answer was hundreds of KB.

Through the running daemon: the embedded hybrid policy with the cloud fakes behind the real SDKs.
"""

from __future__ import annotations

from grpc_helpers import text_request
from media_factory import png
from mmrouter.v1 import router_pb2 as pb


def test_an_answer_s_trace_ends_with_the_rule_that_chose_and_explain_has_every_rule(shared) -> None:
    daemon, _ = shared
    request = text_request("What does this say?", media=[pb.Media(modality=pb.MODALITY_IMAGE, mime_type="image/png",
                                                                  data=png("trace", size=(160, 24)))])
    explained = daemon.stub.ExplainRoute(pb.ExplainRouteRequest(request=request), timeout=30).route
    later = [t for t in explained.trace if t.outcome == pb.RULE_OUTCOME_NOT_EVALUATED]
    assert later, [(t.rule, t.outcome) for t in explained.trace]  # rules after the chosen one: not evaluated
    answered = daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=60).answer.route
    assert answered.rule == explained.rule
    assert list(answered.trace) == [t for t in explained.trace if t.outcome != pb.RULE_OUTCOME_NOT_EVALUATED]
    assert answered.trace[-1].rule == answered.rule and answered.trace[-1].outcome == pb.RULE_OUTCOME_MATCHED
    streamed = list(daemon.stub.StreamGenerate(pb.StreamGenerateRequest(request=request), timeout=60))
    [done] = [e.done.answer.route for e in streamed if e.WhichOneof("event") == "done"]
    assert list(done.trace) == list(answered.trace)
