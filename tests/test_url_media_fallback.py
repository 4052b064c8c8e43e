"""Audio given by URL (``server.allow_urls: true``) on the embedded hybrid policy.

whisper-1 and the offline ``local`` provider are sent bytes only: they refuse media given by URL as
a form they do not take (``UNSUPPORTED_INPUT``, retryable), so the rule's fallback or the next audio
bridge (AssemblyAI, which fetches URLs itself) answers. Each daemon runs the real ``openai`` and
``assemblyai`` SDKs against their fakes; the AssemblyAI fake is given the URL, as the real API is.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
from grpc_helpers import text_request
from mmrouter.v1 import router_pb2 as pb

from tests.fakes.assemblyai import DEFAULT_TURNS, FakeAssemblyAI
from tests.fakes.openai import API_KEY as OPENAI_KEY
from tests.fakes.openai import FakeOpenAI

AAI_KEY = "aai-url-key"

#: The embedded rules and bridges (transcription: whisper-1, then assemblyai/best, then local/extract;
#: audio bridges: whisper-1 first, then assemblyai/best), with URLs allowed and OpenAI and AssemblyAI
#: pointed at their fakes (Anthropic and Gemini are left unconfigured).
CONFIG = """
server: {{allow_urls: true}}
extend_default_routes: true
providers:
  openai: {{api_key: "${{OPENAI_API_KEY}}", base_url: "{openai}", timeout: 20}}
  assemblyai: {{api_key: "${{ASSEMBLYAI_API_KEY}}", base_url: "{assemblyai}", timeout: 20, poll_interval: 0.02}}
  local: {{}}
{extra}"""

#: A rule sending audio transcription to the offline provider first, AssemblyAI after it.
LOCAL_FIRST = """
routes:
  - name: offline-first
    match: {inputs_any: [audio], task: [transcribe]}
    use: local/extract
    fallback: [assemblyai/best]
"""

KEYS = {"OPENAI_API_KEY": OPENAI_KEY, "ASSEMBLYAI_API_KEY": AAI_KEY}
URL = "https://cdn.example.com/podcast.mp3"
PODCAST = pb.Media(modality=pb.MODALITY_AUDIO, mime_type="audio/mpeg", url=URL)
HEARD = [text for _, _, _, text in DEFAULT_TURNS]


@contextlib.contextmanager
def fakes() -> Iterator[tuple[FakeOpenAI, FakeAssemblyAI]]:
    """The OpenAI and AssemblyAI fakes, started (port 0), stopped at the end."""
    openai, assemblyai = FakeOpenAI().start(), FakeAssemblyAI(api_key=AAI_KEY).start()
    try:
        yield openai, assemblyai
    finally:
        openai.stop()
        assemblyai.stop()


@pytest.fixture
def upstream() -> Iterator[tuple[FakeOpenAI, FakeAssemblyAI]]:
    with fakes() as servers:
        yield servers


def start(start_daemon, upstream: tuple[FakeOpenAI, FakeAssemblyAI], extra: str = ""):
    openai, assemblyai = upstream
    return start_daemon(CONFIG.format(openai=openai.base_url, assemblyai=assemblyai.url, extra=extra),
                        env=KEYS, plugins=())


def generate(daemon, request: pb.MultimodalRequest) -> pb.Answer:
    return daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=60).answer


def failed(answer: pb.Answer) -> list[tuple[str, str, str]]:
    """The failed attempts of the answer's route: provider, model, error."""
    return [(a.provider, a.model, a.error) for a in answer.route.attempts if not a.ok]


def test_a_url_transcription_falls_back_from_whisper_to_assemblyai(start_daemon, upstream) -> None:
    openai, assemblyai = upstream
    daemon = start(start_daemon, upstream)
    answer = generate(daemon, text_request("", media=[PODCAST], options=pb.Options(task=pb.TASK_TRANSCRIBE)))
    assert (answer.route.rule, answer.route.provider, answer.route.model) == ("transcription", "assemblyai", "best")
    assert [u.text for u in answer.transcript.utterances] == HEARD
    assert [r["audio_url"] for r in assemblyai.created] == [URL]
    assert assemblyai.uploads == [], "the URL was given to AssemblyAI, not fetched by the router"
    [(provider, model, error)] = failed(answer)
    assert (provider, model) == ("openai", "whisper-1")
    assert "whisper-1 cannot fetch audio by URL" in error
    assert openai.uploads() == [], "nothing was sent to whisper-1"


def test_a_question_about_url_audio_is_bridged_by_assemblyai(start_daemon, upstream) -> None:
    """gpt-4o cannot hear: its first audio bridge (whisper-1) refuses the URL, the next one transcribes it."""
    openai, assemblyai = upstream
    daemon = start(start_daemon, upstream)
    answer = generate(daemon, text_request("Summarise this podcast", media=[PODCAST]))
    assert (answer.route.provider, answer.route.model) == ("openai", "gpt-4o")
    assert list(answer.route.bridges) == ["audio->transcript via assemblyai/best"]
    assert [r["audio_url"] for r in assemblyai.created] == [URL]
    [chat] = openai.chat_requests()
    assert DEFAULT_TURNS[0][3] in str(chat["messages"]), "gpt-4o was not given AssemblyAI's transcript"
    [(provider, model, error)] = failed(answer)
    assert (provider, model) == ("openai", "whisper-1")
    assert "cannot fetch audio by URL" in error
    assert openai.uploads() == []


def test_local_refuses_a_url_retryably_and_the_fallback_answers(start_daemon, upstream) -> None:
    """The offline provider cannot fetch a URL: the rule's fallback (AssemblyAI) transcribes it."""
    _, assemblyai = upstream
    daemon = start(start_daemon, upstream, LOCAL_FIRST)
    answer = generate(daemon, text_request("", media=[PODCAST], options=pb.Options(task=pb.TASK_TRANSCRIBE)))
    assert (answer.route.rule, answer.route.provider, answer.route.model) == ("offline-first", "assemblyai", "best")
    assert [u.text for u in answer.transcript.utterances] == HEARD
    [(provider, model, error)] = failed(answer)
    assert (provider, model) == ("local", "extract")
    assert "is given by URL" in error and URL in error
    assert [r["audio_url"] for r in assemblyai.created] == [URL]
