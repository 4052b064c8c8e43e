"""The shape of a conversation, checked before routing, and generation options a model does not take.

Through the running daemon (one the module's tests share, ``shared_daemon``), with the real OpenAI, Anthropic
and Gemini SDKs pointed at their fakes:

- media in an assistant message is refused up front as INVALID_REQUEST naming the part (OpenAI and Claude
  refused it as a final PROVIDER_BAD_REQUEST, no fallback tried, and a session started on Gemini kept it, so
  that every later turn there failed);
- a blank user message (no media, text empty or only whitespace) is refused up front naming the message
  (Claude 4.6 took ``[user q, assistant a, user ""]`` for "continue your answer"); a blank assistant
  message (an answer a content filter withheld) is still taken;
- ``options.temperature`` answered by Claude, whose plugin leaves it out, is said in a route note.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc
import pytest
from conftest import launch_daemon
from grpc_helpers import error_details, text_request
from media_factory import png
from mmrouter.v1 import router_pb2 as pb
from test_hybrid import ALL_KEYS, cloud_fakes

from tests.fakes.openai import error_body as openai_error

KEYS = ALL_KEYS  # the fakes of test_hybrid.cloud_fakes take them

#: GPT first with Claude and Gemini as fallbacks (as the embedded default), Claude first for ``claude``.
CONFIG = """
providers:
  openai: {{api_key: "${{OPENAI_API_KEY}}", base_url: "{openai}", timeout: 20}}
  anthropic: {{api_key: "${{ANTHROPIC_API_KEY}}", base_url: "{anthropic}", timeout: 20}}
  gemini: {{api_key: "${{GEMINI_API_KEY}}", base_url: "{gemini}", timeout: 20, poll_interval: 0.02}}
routes:
  - name: claude-first
    match: {{tags: [claude]}}
    use: anthropic/claude-sonnet-4-6
    fallback: [openai/gpt-4o]
  - name: chat
    match: {{}}
    use: openai/gpt-4o
    fallback: [anthropic/claude-sonnet-4-6, gemini/gemini-2.5-pro]
default: openai/gpt-4o
overrides: {{allow: true}}
"""

ASSISTANT_MEDIA = "only user messages may carry media"
BLANK_USER = "a user message needs text or media"
TEMPERATURE_NOTE = "temperature not sent: anthropic/claude-sonnet-4-6 takes no sampling temperature"


def config_for(fakes) -> str:
    return CONFIG.format(openai=fakes["openai"].base_url, anthropic=fakes["anthropic"].url,
                         gemini=fakes["gemini"].url)


@pytest.fixture(scope="module")
def shared_fakes() -> Iterator[dict]:
    """The cloud fakes of the module (``fakes`` resets them for each test)."""
    with cloud_fakes() as servers:
        yield servers


@pytest.fixture
def fakes(shared_fakes) -> dict:
    """The module's fakes as new (:meth:`FakeUpstream.reset`): what they received, the failures queued for them
    and what a test scripted are forgotten."""
    for fake in shared_fakes.values():
        fake.reset()
    return shared_fakes


@pytest.fixture(scope="module")
def shared_daemon(shared_fakes, tmp_path_factory):
    """One daemon of CONFIG for the module: starting one per test (and its SDKs' imports) took minutes of the
    suite. Tests sharing it must not make a fake answer with a retry delay (a 429, or a 503/529 with
    Retry-After: a cool-down; those here have none), read its health, stats or logs, or use another test's
    session id."""
    daemon = launch_daemon(config_for(shared_fakes), tmp=tmp_path_factory.mktemp("conversation-shape"), env=KEYS,
                           sites=[])
    yield daemon
    daemon.stop()


@pytest.fixture
def daemon(shared_daemon, fakes):
    """The module's daemon, its fakes reset."""
    return shared_daemon


def provider_calls(fakes) -> dict[str, int]:
    """How many answering calls each fake received."""
    return {"openai": len(fakes["openai"].chat_requests()), "anthropic": len(fakes["anthropic"].message_calls()),
            "gemini": len(fakes["gemini"].calls("generate") + fakes["gemini"].calls("stream"))}


def message(role: int, *parts: str | pb.Media) -> pb.Message:
    return pb.Message(role=role, parts=[pb.Part(media=p) if isinstance(p, pb.Media) else pb.Part(text=p)
                                        for p in parts])


def conversation(*messages: pb.Message, **fields) -> pb.MultimodalRequest:
    return pb.MultimodalRequest(messages=list(messages), **fields)


def generate(daemon, request: pb.MultimodalRequest) -> pb.Answer:
    return daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=30).answer


def stream_answer(daemon, request: pb.MultimodalRequest) -> pb.Answer:
    events = list(daemon.stub.StreamGenerate(pb.StreamGenerateRequest(request=request), timeout=30))
    assert events[-1].WhichOneof("event") == "done"
    return events[-1].done.answer


def calls(daemon, request: pb.MultimodalRequest) -> dict[str, Callable[[], object]]:
    """The three RPCs that take a MultimodalRequest, each as a call of ``request``."""
    return {"Generate": lambda: generate(daemon, request),
            "StreamGenerate": lambda: stream_answer(daemon, request),
            "ExplainRoute": lambda: daemon.stub.ExplainRoute(pb.ExplainRouteRequest(request=request), timeout=30)}


def refusal(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


CHART = pb.Media(modality=pb.MODALITY_IMAGE, mime_type="image/png", data=png())


def chart_conversation(**fields) -> pb.MultimodalRequest:
    """An agent's conversation with an image the assistant produced."""
    return conversation(message(pb.ROLE_USER, "Draw me a chart"),
                        message(pb.ROLE_ASSISTANT, "Here it is:", CHART),
                        message(pb.ROLE_USER, "What colour is it?"), **fields)


# -- media in an assistant message ---------------------------------------------------------------------------

def test_media_in_an_assistant_message_is_refused_before_any_provider_is_called(daemon, fakes) -> None:
    """Refused as the client's own mistake, naming the part, by every RPC that takes a request: it went to
    GPT (then Claude), which refused it as PROVIDER_BAD_REQUEST "messages[1]: only user messages may carry
    media", no fallback tried, and ExplainRoute planned GPT for it."""
    for name, call in calls(daemon, chart_conversation()).items():
        details = error_details(refusal(call))
        assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST"), name
        [(field, description)] = details.violations
        assert field == "request.messages[1].parts[1]", name
        assert ASSISTANT_MEDIA in description and "user message" in description.split(":", 1)[1], name
    assert provider_calls(fakes) == {"openai": 0, "anthropic": 0, "gemini": 0}


def test_media_in_a_system_message_is_still_refused_as_before(daemon) -> None:
    request = conversation(message(pb.ROLE_SYSTEM, "Logo:", CHART), message(pb.ROLE_USER, "Is this ours?"))
    [(field, _)] = error_details(refusal(lambda: generate(daemon, request))).violations
    assert field == "request.messages[0].parts[1].media"


def test_a_session_never_keeps_media_in_an_assistant_message(daemon, fakes) -> None:
    """A session started from such a conversation on Gemini (which takes it) kept it, and every later turn
    the rules sent to GPT failed. Now the first turn is refused and keeps nothing: the next turns answer."""
    first = chart_conversation(session_id="agent-1", hints=pb.RoutingHints(provider="gemini"))
    assert error_details(refusal(lambda: generate(daemon, first))).reason == "INVALID_REQUEST"
    for question in ("Thanks. And what is 2+2?", "Hello?"):
        answer = generate(daemon, text_request(question, session_id="agent-1"))
        assert (answer.route.provider, answer.text) == ("openai", "Hello from the fake GPT.")
    sent = fakes["openai"].chat_requests()[-1]["messages"]
    assert [(m["role"], m["content"]) for m in sent] == [
        ("user", "Thanks. And what is 2+2?"), ("assistant", "Hello from the fake GPT."), ("user", "Hello?")]
    assert provider_calls(fakes)["gemini"] == 0


def test_text_only_assistant_messages_and_media_in_user_messages_are_taken(daemon, fakes) -> None:
    request = conversation(message(pb.ROLE_USER, "Draw me a chart"), message(pb.ROLE_ASSISTANT, "Here it is."),
                           message(pb.ROLE_USER, "Is it like this one?", CHART))
    assert generate(daemon, request).route.provider == "openai"
    assert [m["role"] for m in fakes["openai"].chat_requests()[-1]["messages"]] == ["user", "assistant", "user"]


# -- blank user messages -----------------------------------------------------------------------------------

@pytest.mark.parametrize("blank", ["", "   ", " \n\t"])
@pytest.mark.parametrize("session_id", ["", "new-session"])
def test_a_blank_last_user_message_is_refused(daemon, fakes, blank, session_id) -> None:
    """[user q, assistant a, user ""] asked nothing: GPT got an empty turn, Claude 4.6 was told to continue
    "Paris." and Gemini got a conversation ending with the model. Refused, naming the message."""
    if session_id:  # a session no other case (on the shared daemon) has used
        session_id += f"-{blank.encode().hex()}"
    request = conversation(message(pb.ROLE_USER, "What is the capital of France?"),
                           message(pb.ROLE_ASSISTANT, "Paris."), message(pb.ROLE_USER, blank),
                           session_id=session_id, hints=pb.RoutingHints(tags=["claude"]))
    for name, call in calls(daemon, request).items():
        details = error_details(refusal(call))
        assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST"), name
        [(field, description)] = details.violations
        assert field == "request.messages[2]" and BLANK_USER in description, name
    assert provider_calls(fakes) == {"openai": 0, "anthropic": 0, "gemini": 0}


def test_every_blank_user_message_is_named(daemon) -> None:
    request = conversation(message(pb.ROLE_USER, " ", ""), message(pb.ROLE_USER, "What is 2+2?"),
                           message(pb.ROLE_ASSISTANT, "4"), message(pb.ROLE_USER, "\n"))
    fields = [field for field, _ in error_details(refusal(lambda: generate(daemon, request))).violations]
    assert fields == ["request.messages[0]", "request.messages[3]"]


def test_a_blank_turn_of_a_session_that_holds_turns_is_refused(daemon, fakes) -> None:
    generate(daemon, text_request("What is the capital of France?", session_id="s"))
    request = conversation(message(pb.ROLE_SYSTEM, "Be brief."), message(pb.ROLE_USER, "  "), session_id="s")
    [(field, _)] = error_details(refusal(lambda: generate(daemon, request))).violations
    assert field == "request.messages[1]"
    assert provider_calls(fakes)["openai"] == 1


def test_a_request_with_no_content_at_all_is_still_refused_as_such(daemon) -> None:
    [(field, description)] = error_details(refusal(lambda: generate(daemon, text_request("   ")))).violations
    assert field == "request.messages" and "no content" in description


@pytest.mark.parametrize("tags", [[], ["claude"]], ids=["gpt", "claude"])
def test_a_blank_assistant_message_is_taken(daemon, fakes, tags) -> None:
    """An answer a content filter withheld is empty, and a client replays the conversation with it."""
    request = conversation(message(pb.ROLE_USER, "Tell me something."), message(pb.ROLE_ASSISTANT, ""),
                           message(pb.ROLE_USER, "Try again, please."), hints=pb.RoutingHints(tags=tags))
    answer = generate(daemon, request)
    assert answer.route.provider == ("anthropic" if tags else "openai") and answer.text


def test_a_user_message_with_media_and_no_text_is_taken(daemon, fakes) -> None:
    request = conversation(message(pb.ROLE_USER, "What is in this image?"), message(pb.ROLE_ASSISTANT, "A chart."),
                           message(pb.ROLE_USER, "", CHART))
    assert generate(daemon, request).route.provider == "openai"


# -- options.temperature -------------------------------------------------------------------------------------

def with_temperature(temperature: float | None, tags: list[str]) -> pb.MultimodalRequest:
    options = pb.Options() if temperature is None else pb.Options(temperature=temperature)
    return text_request("Pick a number.", options=options, hints=pb.RoutingHints(tags=tags))


def temperature_notes(answer: pb.Answer) -> list[str]:
    """The answer's route notes about the temperature (others, such as a wait for an SDK to load, may come)."""
    return [note for note in answer.route.notes if "temperature" in note]


@pytest.mark.parametrize("answer_of", [generate, stream_answer], ids=["Generate", "StreamGenerate"])
def test_a_temperature_claude_is_not_sent_is_noted_once(daemon, fakes, answer_of) -> None:
    answer = answer_of(daemon, with_temperature(0.0, ["claude"]))
    assert answer.route.provider == "anthropic"
    assert "temperature" not in fakes["anthropic"].last_body()
    assert temperature_notes(answer) == [TEMPERATURE_NOTE]


def test_no_temperature_note_without_a_temperature_or_for_a_model_that_takes_it(daemon, fakes) -> None:
    assert not temperature_notes(generate(daemon, with_temperature(None, ["claude"])))
    answer = generate(daemon, with_temperature(0.0, []))
    assert answer.route.provider == "openai" and fakes["openai"].chat_requests()[-1]["temperature"] == 0.0
    assert not temperature_notes(answer)


def test_the_temperature_note_is_of_the_model_that_answered(daemon, fakes) -> None:
    """GPT down, Claude answers: noted. Claude down, GPT answers: not noted (GPT was sent the temperature)."""
    fakes["openai"].fail_next(503, openai_error("The server is overloaded", "server_error"))
    answer = generate(daemon, with_temperature(0.5, []))
    assert answer.route.provider == "anthropic"
    assert temperature_notes(answer) == [TEMPERATURE_NOTE]
    fakes["anthropic"].fail_next_api(529, "overloaded_error", "Overloaded")
    answer = generate(daemon, with_temperature(0.5, ["claude"]))
    assert answer.route.provider == "openai" and fakes["openai"].chat_requests()[-1]["temperature"] == 0.5
    assert not temperature_notes(answer)


def test_no_claude_model_takes_a_temperature_nor_one_added_by_configuration() -> None:
    """A model added under ``providers.anthropic.models`` takes what it leaves unset from the typical one."""
    from mmrouter_anthropic.models import MODELS, TYPICAL

    from router.settings import ModelSpec, with_configured_models

    added = ModelSpec(name="claude-opus-5", price={"input_per_mtok": 5, "output_per_mtok": 25})
    catalogue = with_configured_models(MODELS, [added], TYPICAL, provider="anthropic")
    assert [m.name for m in catalogue if m.takes_temperature] == []
    assert catalogue[-1].name == "claude-opus-5"


def test_a_session_kept_with_assistant_media_before_they_were_refused_goes_on(start_daemon, fakes, tmp_path) -> None:
    """A session an older daemon kept with media in an assistant turn (started on Gemini, which takes it) failed
    every later turn sent to OpenAI or Claude; its history now sends that media as a note."""
    from router.media import MediaStore
    from router.sessions import SessionStore
    from router.types import Media, Message, Modality, Part, Role

    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    stored = MediaStore(data_dir / "media", 1 << 20).put_bytes(png(), "image/png", Modality.IMAGE)
    chart = Media(Modality.IMAGE, "image/png", path=stored.path, media_id=stored.media_id, size=stored.size)
    store = SessionStore(data_dir / "sessions.sqlite")
    try:
        store.append("agent", [Message(Role.USER, [Part(text="Draw me a chart")]),
                               Message(Role.ASSISTANT, [Part(text="Here it is:"), Part(media=chart)])],
                     lambda media: media.media_id)
    finally:
        store.close()
    daemon = start_daemon(config_for(fakes), env=KEYS, plugins=(), data_dir=data_dir)
    answer = generate(daemon, conversation(message(pb.ROLE_USER, "What colour is it?"), session_id="agent"))
    assert answer.route.provider == "openai"
    sent = fakes["openai"].chat_requests()[-1]["messages"]
    assistant = next(m for m in sent if m["role"] == "assistant")
    assert "image left out: only user messages may carry media" in str(assistant["content"])
    assert "image_url" not in str(assistant["content"])
