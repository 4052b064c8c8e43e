"""Audio given by URL (``server.allow_urls: true``) on the embedded hybrid policy.

whisper-1 and the offline ``local`` provider are sent bytes only: their models declare that they take
no audio by URL (``ModelInfo.url_inputs``), so routing passes over them for the rule's fallback or the
next audio bridge (AssemblyAI, which fetches URLs itself), with no refused attempt. A model that does
not declare it (a third-party plugin's) is still planned, and when it refuses the URL at call time as
a form it does not take (``UNSUPPORTED_INPUT``, retryable), the rule's fallback answers. Each daemon runs
the real ``openai`` and ``assemblyai`` SDKs against their fakes; the AssemblyAI fake is given the URL, as
the real API is.
"""

from __future__ import annotations

import contextlib
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import make_dist_info
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

#: A third-party plugin written before ``url_inputs``: its model does not declare it (so routing plans it for
#: media given by URL), and it refuses such media at call time, as a form it does not take (retryable).
LEGACY_PLUGIN = '''
import router
from router import OUTPUT_TRANSCRIPT, Modality, ModelInfo, ProviderUnsupportedInput


class LegacyEars(router.Provider):
    name = "legacy"
    models = [ModelInfo("ears", frozenset({Modality.AUDIO}), outputs=frozenset({OUTPUT_TRANSCRIPT}),
                        features=frozenset())]

    async def generate(self, request, model, ctx):
        for media in request.current_media():
            if media.data is None and media.path is None:
                raise ProviderUnsupportedInput(self.name, f"{model.name} takes bytes, not {media.url}")
        yield router.TranscriptReady(router.Transcript("heard"))


@router.hookimpl
def register_providers(register, settings):
    register(LegacyEars())
'''

#: A rule sending audio transcription to that plugin first, AssemblyAI after it.
LEGACY_FIRST = """
routes:
  - name: legacy-first
    match: {inputs_any: [audio], task: [transcribe]}
    use: legacy/ears
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


def start(start_daemon, upstream: tuple[FakeOpenAI, FakeAssemblyAI], extra: str = "",
          sites: tuple[Path, ...] = ()):
    openai, assemblyai = upstream
    return start_daemon(CONFIG.format(openai=openai.base_url, assemblyai=assemblyai.url, extra=extra),
                        env=KEYS, plugins=(), extra_sites=sites)


def legacy_site(tmp_path: Path) -> Path:
    """A site directory holding :data:`LEGACY_PLUGIN`, installed as a distribution (entry point ``legacy``)."""
    site = tmp_path / "site-legacy"
    site.mkdir()
    (site / "mmrouter_legacy.py").write_text(textwrap.dedent(LEGACY_PLUGIN))
    make_dist_info(site, "mmrouter-legacy", "legacy", "mmrouter_legacy")
    return site


def generate(daemon, request: pb.MultimodalRequest) -> pb.Answer:
    return daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=60).answer


def failed(answer: pb.Answer) -> list[tuple[str, str, str]]:
    """The failed attempts of the answer's route: provider, model, error."""
    return [(a.provider, a.model, a.error) for a in answer.route.attempts if not a.ok]


def test_a_url_transcription_goes_to_assemblyai_without_trying_whisper(start_daemon, upstream) -> None:
    openai, assemblyai = upstream
    daemon = start(start_daemon, upstream)
    answer = generate(daemon, text_request("", media=[PODCAST], options=pb.Options(task=pb.TASK_TRANSCRIBE)))
    assert (answer.route.rule, answer.route.provider, answer.route.model) == ("transcription", "assemblyai", "best")
    assert [u.text for u in answer.transcript.utterances] == HEARD
    assert [r["audio_url"] for r in assemblyai.created] == [URL]
    assert assemblyai.uploads == [], "the URL was given to AssemblyAI, not fetched by the router"
    assert [(a.provider, a.model) for a in answer.route.attempts] == [("assemblyai", "best")]
    assert failed(answer) == [], "whisper-1, which takes no audio by URL, was not tried"
    assert openai.uploads() == [], "nothing was sent to whisper-1"


def test_a_question_about_url_audio_is_bridged_by_assemblyai(start_daemon, upstream) -> None:
    """gpt-4o cannot hear: its first audio bridge (whisper-1) takes no audio by URL, so the next one
    (AssemblyAI) is planned and transcribes it, and whisper-1 is never called."""
    openai, assemblyai = upstream
    daemon = start(start_daemon, upstream)
    answer = generate(daemon, text_request("Summarise this podcast", media=[PODCAST]))
    assert (answer.route.provider, answer.route.model) == ("openai", "gpt-4o")
    assert list(answer.route.bridges) == ["audio->transcript via assemblyai/best"]
    assert [r["audio_url"] for r in assemblyai.created] == [URL]
    [chat] = openai.chat_requests()
    assert DEFAULT_TURNS[0][3] in str(chat["messages"]), "gpt-4o was not given AssemblyAI's transcript"
    assert failed(answer) == []
    assert openai.uploads() == []


def test_local_is_passed_over_for_a_url_and_the_fallback_answers(start_daemon, upstream) -> None:
    """The offline provider cannot fetch a URL and says so in its model: the rule's fallback (AssemblyAI)
    is chosen by routing, with no refused attempt of ``local``."""
    _, assemblyai = upstream
    daemon = start(start_daemon, upstream, LOCAL_FIRST)
    answer = generate(daemon, text_request("", media=[PODCAST], options=pb.Options(task=pb.TASK_TRANSCRIBE)))
    assert (answer.route.rule, answer.route.provider, answer.route.model) == ("offline-first", "assemblyai", "best")
    assert [u.text for u in answer.transcript.utterances] == HEARD
    assert failed(answer) == []
    assert [r["audio_url"] for r in assemblyai.created] == [URL]


def test_a_model_not_declaring_url_inputs_refuses_a_url_retryably_and_the_fallback_answers(
        start_daemon, upstream, tmp_path) -> None:
    """A model that does not declare ``url_inputs`` is assumed to take URLs, so it is planned first; its
    refusal at call time (``UNSUPPORTED_INPUT``, retryable) gives way to the rule's fallback (AssemblyAI)."""
    _, assemblyai = upstream
    daemon = start(start_daemon, upstream, LEGACY_FIRST, sites=(legacy_site(tmp_path),))
    answer = generate(daemon, text_request("", media=[PODCAST], options=pb.Options(task=pb.TASK_TRANSCRIBE)))
    assert (answer.route.rule, answer.route.provider, answer.route.model) == ("legacy-first", "assemblyai", "best")
    assert [u.text for u in answer.transcript.utterances] == HEARD
    [(provider, model, error)] = failed(answer)
    assert (provider, model) == ("legacy", "ears")
    assert "ears takes bytes, not " + URL in error
    assert [r["audio_url"] for r in assemblyai.created] == [URL]
