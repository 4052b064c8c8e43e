"""A target that refused a session's history for its size: routing counts it as one that must trim the history,
and ExplainRoute shows the trim Generate would make.

The daemon runs the embedded rules on the four cloud fakes (see ``test_hybrid``), and the real SDKs call them. The
OpenAI fake answers one request of a session of photos with 413 ``request_too_large``, as OpenAI does for a body
too large: Claude, the rule's next target, answers that turn with both photos, and the router remembers it (``HistoryCuts``).
"""

from __future__ import annotations

from grpc_helpers import text_request
from media_factory import png
from mmrouter.v1 import router_pb2 as pb
from test_hybrid import ALL_KEYS, config_for

from tests.fakes.anthropic import media_blocks
from tests.fakes.openai import error_body

SESSION = "photos"
PHOTOS = [png(f"photo {n}") for n in range(2)]
TOO_LARGE = error_body("Request too large for gpt-4o.", code="request_too_large")


def photo_turn(text: str, *photos: int, model: str = "") -> pb.MultimodalRequest:
    media = [pb.Media(modality=pb.MODALITY_IMAGE, mime_type="image/png", data=PHOTOS[n], filename=f"p{n}.png")
             for n in photos]
    return text_request(text, media=media, session_id=SESSION, hints=pb.RoutingHints(model=model))


def generate(daemon, request: pb.MultimodalRequest) -> pb.Answer:  # type: ignore[no-untyped-def]
    return daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=60).answer


def explain(daemon, request: pb.MultimodalRequest) -> pb.RouteInfo:  # type: ignore[no-untyped-def]
    return daemon.stub.ExplainRoute(pb.ExplainRouteRequest(request=request), timeout=60).route


def trim_notes(route: pb.RouteInfo) -> list[str]:
    return [note for note in route.notes if note.startswith("history")]


def refused_once(daemon, fakes) -> None:  # type: ignore[no-untyped-def]
    """Two photo turns on the rule ``cross-modal``, the second refused once by gpt-4o for its size: Claude, the
    rule's next target, answers it with both photos (not gpt-4o without the first), and gpt-4o is then known
    to refuse the session's first turn."""
    first = generate(daemon, photo_turn("Look at this photo.", 0))
    assert (first.route.rule, first.route.provider, first.route.model) == ("cross-modal", "openai", "gpt-4o")
    fakes["openai"].fail_next(413, TOO_LARGE, path="/v1/chat/completions")
    second = generate(daemon, photo_turn("And this one?", 1))
    assert (second.route.provider, second.route.model) == ("anthropic", "claude-sonnet-4-6")
    assert [(a.provider, a.ok) for a in second.route.attempts] == [("openai", False), ("anthropic", True)]
    assert not trim_notes(second.route), second.route.notes
    assert [b.data for b in media_blocks(fakes["anthropic"].last_body())] == PHOTOS


def test_a_target_known_to_refuse_the_history_gives_way_to_one_that_holds_it(start_daemon, fakes) -> None:
    """The next turn goes to Claude, the rule's next target, with every photo, not to gpt-4o without the first;
    gpt-4o stays a fallback, after those that hold the conversation. Explain says the same."""
    daemon = start_daemon(config_for(fakes), env=ALL_KEYS, plugins=())
    refused_once(daemon, fakes)
    asked_openai = len(fakes["openai"].chat_requests())
    question = photo_turn("Which was best?")

    planned = explain(daemon, question)
    assert (planned.provider, planned.model) == ("anthropic", "claude-sonnet-4-6")
    assert list(planned.fallbacks) == ["gemini/gemini-2.5-pro", "openai/gpt-4o", "local/extract"]
    reason = next(t.reason for t in planned.trace if t.rule == "cross-modal")
    assert reason == ("conditions hold; using anthropic/claude-sonnet-4-6: openai/gpt-4o would drop the session's "
                      "oldest messages (it refused the request for its size on an earlier turn: openai: HTTP 413 from "
                      "gpt-4o: Request too large for gpt-4o.)"), reason
    assert not trim_notes(planned), planned.notes

    answer = generate(daemon, question)
    assert (answer.route.provider, answer.route.model) == ("anthropic", "claude-sonnet-4-6")
    assert next(t.reason for t in answer.route.trace if t.rule == "cross-modal") == reason
    assert not trim_notes(answer.route), answer.route.notes
    assert [b.data for b in media_blocks(fakes["anthropic"].last_body())] == PHOTOS
    assert len(fakes["openai"].chat_requests()) == asked_openai


def test_explain_shows_the_trim_of_a_target_known_to_refuse_the_history(start_daemon, fakes) -> None:
    """With gpt-4o chosen by the client, explain gives the note Generate then gives, said of what it would do."""
    daemon = start_daemon(config_for(fakes), env=ALL_KEYS, plugins=())
    refused_once(daemon, fakes)
    question = photo_turn("Which was best?", model="gpt-4o")

    [planned] = trim_notes(explain(daemon, question))
    assert planned.startswith("history would be trimmed: Generate would drop the 2 oldest message(s) of session "
                              "'photos' because openai/gpt-4o refused the request for its size on an earlier turn ("
                              ), planned

    answer = generate(daemon, question)
    assert (answer.route.provider, answer.route.model) == ("openai", "gpt-4o")
    assert trim_notes(answer.route) == [planned.replace("would be trimmed: Generate would drop", "trimmed: dropped")]
    sent = fakes["openai"].chat_requests()[-1]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]  # the first turn left out


def test_a_target_deferred_for_its_size_is_still_tried_with_less_history_after_a_cooled_one(start_daemon, fakes) -> None:
    """gpt-4o is cooling (rate-limited), so the rule tries Claude, Gemini, then gpt-4o. Claude refuses the session's
    second photo turn for its size and is deferred behind those that hold the conversation; Gemini then refuses
    the request outright (400), which leaves only the targets the rule puts before it: gpt-4o, rate-limited again,
    and Claude's owed last resort, which answers without the oldest turn (QA regress24: it was never tried, and the
    call failed as rate-limited)."""
    daemon = start_daemon(config_for(fakes), env=ALL_KEYS, plugins=())
    fakes["openai"].fail_next(429, error_body("Rate limit reached for gpt-4o", code="rate_limit_exceeded"),
                              {"Retry-After": "30"}, path="/v1/chat/completions")
    cooled = generate(daemon, text_request("Describe it.", media=[pb.Media(
        modality=pb.MODALITY_IMAGE, mime_type="image/png", data=png("warm-up"), filename="w.png")]))
    assert (cooled.route.provider, cooled.route.model) == ("anthropic", "claude-sonnet-4-6")
    first = generate(daemon, photo_turn("Look at this photo.", 0))
    assert (first.route.provider, first.route.model) == ("anthropic", "claude-sonnet-4-6")

    fakes["anthropic"].fail_next_api(413, "request_too_large", "Request exceeds the maximum allowed number of bytes.")
    fakes["gemini"].fail_next(400, {"error": {"code": 400, "status": "INVALID_ARGUMENT",
                                              "message": "Request contains an invalid argument."}})
    fakes["openai"].fail_next(429, error_body("Rate limit reached for gpt-4o", code="rate_limit_exceeded"),
                              {"Retry-After": "30"}, path="/v1/chat/completions")
    second = generate(daemon, photo_turn("And this one?", 1))
    assert (second.route.provider, second.route.model) == ("anthropic", "claude-sonnet-4-6")
    assert [(a.provider, a.ok) for a in second.route.attempts] == [
        ("anthropic", False), ("gemini", False), ("openai", False), ("anthropic", True)]
    [note] = trim_notes(second.route)
    assert "dropped the 2 oldest message(s) of session 'photos'" in note, note
    assert any("then anthropic/claude-sonnet-4-6 again with less of the session's history" in n
               for n in second.route.notes), second.route.notes
    assert [b.data for b in media_blocks(fakes["anthropic"].last_body())] == [PHOTOS[1]]
