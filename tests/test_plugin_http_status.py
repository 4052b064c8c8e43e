"""The bundled plugins' failures that carry an HTTP status give it to the router (``ProviderError.http_status``),
so ``ListProviders`` shows it with the last failure ("best: HTTP 404: ..."): health reads the status from the
error alone, never from its text.

Each case runs the daemon with the real SDK against the provider's fake: AssemblyAI at a wrong base_url (404
on the first call), AssemblyAI forgetting a transcript while it is polled (404), and Gemini's Files API
losing an uploaded file twice while it is processing (404).
"""

from __future__ import annotations

import grpc
import pytest
from grpc_helpers import error_details, providers_by_name, text_request
from media_factory import wav
from mmrouter.v1 import router_pb2 as pb

from tests.fakes.assemblyai import FakeAssemblyAI
from tests.fakes.gemini import FakeGemini

AAI_KEY = "aai-status-key"
GEMINI_KEY = "AIza-status-secret-0123456789"

CONFIG = """
providers:
  assemblyai: {{api_key: "{aai_key}", base_url: "{aai_url}", timeout: 20, poll_interval: 0.02}}
  wrongurl: {{plugin: assemblyai, api_key: "{aai_key}", base_url: "{aai_url}/nope", timeout: 20}}
  gemini: {{api_key: "{gemini_key}", base_url: "{gemini_url}", timeout: 20, poll_interval: 0.02,
           inline_limit_bytes: 0}}
plugins:
  disabled: [openai, anthropic, local]
default: gemini/gemini-2.5-flash
overrides: {{allow: true}}
"""


@pytest.fixture
def daemon_and_fakes(start_daemon):
    """The daemon with AssemblyAI (right and wrong base_url) and Gemini pointed at their fakes, and the fakes."""
    assemblyai, gemini = FakeAssemblyAI(api_key=AAI_KEY), FakeGemini(api_key=GEMINI_KEY)
    with assemblyai, gemini:
        config = CONFIG.format(aai_key=AAI_KEY, aai_url=assemblyai.url, gemini_key=GEMINI_KEY, gemini_url=gemini.url)
        yield start_daemon(config, plugins=()), assemblyai, gemini


def fails(daemon, provider: str, task: int, model: str = "") -> str:
    """The message of the failed call of a second of speech sent to ``provider`` (and ``model``, if given),
    chosen by the client."""
    audio = pb.Media(modality=pb.MODALITY_AUDIO, mime_type="audio/wav", data=wav(1.0), filename="clip.wav")
    request = text_request("" if task == pb.TASK_TRANSCRIBE else "What is said?", media=[audio],
                           options=pb.Options(task=task), hints=pb.RoutingHints(provider=provider, model=model))
    with pytest.raises(grpc.RpcError) as caught:
        daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=60)
    return error_details(caught.value).message


def last_failure(daemon, provider: str) -> str:
    return providers_by_name(daemon.stub)[provider].health.last_failure_message


def test_assemblyai_at_a_wrong_base_url_shows_its_404(daemon_and_fakes) -> None:
    daemon, _, _ = daemon_and_fakes
    assert "(HTTP 404:" in fails(daemon, "wrongurl", pb.TASK_TRANSCRIBE)
    assert last_failure(daemon, "wrongurl").startswith("best: HTTP 404: "), last_failure(daemon, "wrongurl")


def test_assemblyai_not_knowing_a_polled_transcript_shows_its_404(daemon_and_fakes) -> None:
    daemon, assemblyai, _ = daemon_and_fakes
    assemblyai.poll_failures = [404]
    assert "AssemblyAI does not know transcript" in fails(daemon, "assemblyai", pb.TASK_TRANSCRIBE)
    assert last_failure(daemon, "assemblyai").startswith("best: HTTP 404: "), last_failure(daemon, "assemblyai")


def test_gemini_s_files_api_losing_a_file_twice_shows_its_404(daemon_and_fakes) -> None:
    daemon, _, gemini = daemon_and_fakes
    gemini.poll_failures = [404, 404]
    assert "the Files API lost" in fails(daemon, "gemini", pb.TASK_CHAT, "gemini-2.5-flash")
    assert last_failure(daemon, "gemini").startswith("gemini-2.5-flash: HTTP 404: "), last_failure(daemon, "gemini")
