"""Long sessions and long inputs with the embedded rules: a follow-up goes to the rule's target that holds the
whole conversation, explain says what the history would lose, and an input no language model can hold says so.

The daemon runs the embedded rules on the four cloud fakes (see ``test_hybrid``), and the real SDKs call them.
"""

from __future__ import annotations

from grpc_helpers import text_request
from mmrouter.v1 import router_pb2 as pb
from test_hybrid import ALL_KEYS, config_for

from tests.fakes.openai import API_KEY as OPENAI_KEY
from tests.fakes.openai import FakeOpenAI

#: ~136,000 tokens (4 characters a token): over gpt-4o's context of 128,000, well within Claude's 1M.
BOOK = "BOOKSTART " + "whales and ships at sea. " * 21_800 + " BOOKEND"

#: gpt-4o alone: no rule, no other target.
GPT_ONLY = """
providers:
  openai: {{api_key: "{key}", base_url: "{url}"}}
default: openai/gpt-4o
"""


def turn(text: str, session: str) -> pb.MultimodalRequest:
    request = text_request(text)
    request.session_id = session
    return request


def generate(daemon, request: pb.MultimodalRequest) -> pb.Answer:  # type: ignore[no-untyped-def]
    return daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=60).answer


def explain(daemon, request: pb.MultimodalRequest) -> pb.RouteInfo:  # type: ignore[no-untyped-def]
    return daemon.stub.ExplainRoute(pb.ExplainRouteRequest(request=request), timeout=60).route


def general_reason(route: pb.RouteInfo) -> str:
    return next(t.reason for t in route.trace if t.rule == "general")


def test_a_follow_up_goes_to_the_rule_target_that_holds_the_whole_book(start_daemon, fakes) -> None:
    """The book went to Claude (gpt-4o's context is too small for it): the follow-up question goes there too,
    with the book, rather than to gpt-4o without it. gpt-4o stays a fallback, with the history trimmed."""
    daemon = start_daemon(config_for(fakes), env=ALL_KEYS, plugins=())
    openai, anthropic = fakes["openai"], fakes["anthropic"]
    first = generate(daemon, turn("I will paste a book next.", "s-book"))
    assert (first.route.provider, first.route.model) == ("openai", "gpt-4o")  # no history: as before
    assert general_reason(first.route) == "conditions hold; using openai/gpt-4o"
    book = generate(daemon, turn("Here is the book: " + BOOK, "s-book"))
    assert (book.route.provider, book.route.model) == ("anthropic", "claude-sonnet-4-6")
    asked_openai = len(openai.chat_requests())

    question = turn("What happens in chapter 1?", "s-book")
    planned = explain(daemon, question)
    assert (planned.provider, planned.model) == ("anthropic", "claude-sonnet-4-6")
    # the others that hold it (Gemini) before those that must trim it (gpt-4o), each in the rule's order
    assert list(planned.fallbacks) == ["gemini/gemini-2.5-pro", "openai/gpt-4o", "local/extract"]
    reason = general_reason(planned)
    assert reason.startswith("conditions hold; using anthropic/claude-sonnet-4-6: openai/gpt-4o would drop the "
                             "session's oldest messages (~"), reason
    assert "tokens with the history, context 128000" in reason, reason
    assert not any("trimmed" in note for note in planned.notes), planned.notes

    answer = generate(daemon, question)
    assert (answer.route.provider, answer.route.model) == ("anthropic", "claude-sonnet-4-6")
    assert general_reason(answer.route) == reason and not any("trimmed" in n for n in answer.route.notes)
    sent = anthropic.last_body()["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant"] * 2 + ["user"]
    assert BOOK in str(sent[2]["content"]), "the book did not reach Claude whole"
    assert len(openai.chat_requests()) == asked_openai

    # Claude failing, the rule's next target that holds the book answers with it (Gemini), not gpt-4o without it
    anthropic.fail_next_api(529, "overloaded_error", "Overloaded")
    fallback = generate(daemon, turn("And in chapter 2?", "s-book"))
    assert (fallback.route.provider, fallback.route.model) == ("gemini", "gemini-2.5-pro")
    assert not any("trimmed" in note for note in fallback.route.notes), fallback.route.notes
    assert "BOOKSTART" in fakes["gemini"].requests[-1].body.decode()
    assert len(openai.chat_requests()) == asked_openai


def test_explain_says_what_the_history_would_lose(start_daemon) -> None:
    """With no roomier target, the follow-up goes to gpt-4o trimmed; explain says so as Generate then does."""
    chapter = "whales and ships at sea. " * 12_000  # ~75,000 tokens: two do not fit gpt-4o together
    with FakeOpenAI() as fake:
        daemon = start_daemon(GPT_ONLY.format(key=OPENAI_KEY, url=fake.base_url), plugins=())
        for n in (1, 2):
            generate(daemon, turn(f"CHAPTER{n} " + chapter, "s-chapters"))
        question = turn("What happens in chapter 2?", "s-chapters")
        planned = explain(daemon, question)
        answer = generate(daemon, question)
    note = ("the 2 oldest message(s) of session 's-chapters' to fit openai/gpt-4o's context of 128000 tokens "
            "with room for its answer")
    assert list(planned.notes) == ["history would be trimmed: Generate would drop " + note]
    assert list(answer.route.notes) == ["history trimmed: dropped " + note]
    sent = str(fake.chat_requests()[-1]["messages"])
    assert "CHAPTER2" in sent and "CHAPTER1" not in sent


def test_an_input_longer_than_every_context_says_so(start_daemon, fakes) -> None:
    """~1,125,000 tokens: no language model holds it, and local/extract's answer does not blame the config."""
    daemon = start_daemon(config_for(fakes), env=ALL_KEYS, plugins=())
    request = text_request("abcd " * 900_000)
    note = ("no language model could take the input: ~1125000 tokens exceed the context of every configured one "
            "(largest: gemini/gemini-2.5-pro, 1048576)")
    assert note in explain(daemon, request).notes
    answer = generate(daemon, request)
    assert (answer.route.provider, answer.route.model) == ("local", "extract")
    assert note in answer.route.notes
    assert "or the input is longer than their contexts): read its notes and trace" in answer.text
    assert not any(fake.requests for fake in fakes.values())
    # a short question: no such note
    short = generate(daemon, text_request("hi"))
    assert short.route.provider == "openai"
    assert not any(n.startswith("no language model") for n in short.route.notes), short.route.notes

