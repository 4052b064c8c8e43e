"""Transcription and deadline fixes of round 19 (QA podcast §1-4, §7; plugin3p §7; chat §5).

The daemon runs for real (tests/conftest.py): the AssemblyAI and OpenAI plugins call the fakes of
tests/fakes through their official SDKs; the testkit's ``fake`` provider hangs on ``SLOW:<s>``.
"""

from __future__ import annotations

import json

import grpc
import media_factory
import pytest
from grpc_helpers import error_details, providers_by_name, text_request
from mmrouter.v1 import router_pb2 as pb

from tests.fakes.assemblyai import FakeAssemblyAI

AAI_KEY = "aai-s19-key-5e6f"


def failed_call(daemon, request: pb.MultimodalRequest, streamed: bool) -> pytest.ExceptionInfo[grpc.RpcError]:
    """Call Generate (or StreamGenerate, to its end) with ``request``, which must fail; its error."""
    with pytest.raises(grpc.RpcError) as caught:
        if streamed:
            for _ in daemon.stub.StreamGenerate(pb.StreamGenerateRequest(request=request), timeout=60):
                pass
        else:
            daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=60)
    return caught

def wav_bytes(seconds: float = 0.5, rate: int = 8000) -> bytes:
    """A mono 16-bit WAV of ``seconds`` (a quiet tone)."""
    return media_factory.wav(seconds, rate)


def wav_media(name: str = "call.wav", seconds: float = 0.5) -> pb.Media:
    return pb.Media(modality=pb.MODALITY_AUDIO, mime_type="audio/wav", data=wav_bytes(seconds), filename=name)


def transcribe(*media: pb.Media, diarization: bool = True) -> pb.MultimodalRequest:
    return text_request("", media=list(media), options=pb.Options(task=pb.TASK_TRANSCRIBE, diarization=diarization))


# -- §1 (podcast) and §7 (plugin3p): a call cut at server.max_call_seconds names the provider answering ----


HANGING = """
providers:
  fake: {api_key: k}
routes:
  - name: all
    use: fake/echo
server: {max_call_seconds: 1}
"""


@pytest.mark.parametrize("streamed", [False, True])
def test_a_call_cut_at_max_call_seconds_names_the_provider_still_answering(start_daemon, streamed) -> None:
    """CALL_TIMEOUT names the provider and model whose attempt the limit cut (ErrorInfo metadata and the
    message), and says a long job needs a higher limit; it used to say only "a provider may hang"."""
    daemon = start_daemon(HANGING)
    request = text_request("SLOW:30")
    caught = failed_call(daemon, request, streamed)  # no client deadline: the daemon's limit cuts the call
    details = error_details(caught.value)
    assert (details.code, details.reason) == (grpc.StatusCode.DEADLINE_EXCEEDED, "CALL_TIMEOUT")
    assert (details.metadata.get("provider"), details.metadata.get("model")) == ("fake", "echo")
    assert "while fake/echo was still answering" in details.message
    assert "higher server.max_call_seconds" in details.message and "set a deadline" not in details.message
    assert providers_by_name(daemon.stub)["fake"].health.last_failure_reason == "PROVIDER_TIMEOUT"


AAI_SLOW = """
providers:
  assemblyai: {{api_key: "${{AAI_TEST_KEY}}", base_url: "{url}", timeout: 10, poll_interval: 0.2}}
routes:
  - name: diarization
    match: {{inputs_any: [audio, video]}}
    use: assemblyai/best
default: assemblyai/best
server: {{max_call_seconds: 2}}
"""


@pytest.mark.parametrize("streamed", [False, True])
def test_a_transcript_still_processing_at_max_call_seconds_is_the_plugins_provider_timeout(
        start_daemon, streamed) -> None:
    """The plugin's own error, PROVIDER_TIMEOUT as the proto's table says, naming the transcript and its
    status, comes before the daemon's cut (it used to be unreachable: CALL_TIMEOUT "a provider may hang")."""
    with FakeAssemblyAI(api_key=AAI_KEY, statuses=("queued",) + ("processing",) * 100_000) as fake:
        daemon = start_daemon(AAI_SLOW.format(url=fake.url), env={"AAI_TEST_KEY": AAI_KEY})
        request = transcribe(wav_media())
        caught = failed_call(daemon, request, streamed)
        details = error_details(caught.value)
        assert (details.code, details.reason) == (grpc.StatusCode.DEADLINE_EXCEEDED, "PROVIDER_TIMEOUT")
        assert {k: details.metadata.get(k) for k in ("provider", "model", "transcript_id", "transcript_status")} \
            == {"provider": "assemblyai", "model": "best", "transcript_id": "tr-1", "transcript_status": "processing"}
        assert "transcript tr-1 (best) still processing" in details.message
        assert "server.max_call_seconds" in details.message
        assert len(fake.created) == 1  # no fallback started with no time left


# -- §2 (podcast): StreamGenerate sends each recording's transcript as it is done ---------------------------


BOTH = """
providers:
  openai: {{api_key: "${{OPENAI_TEST_KEY}}", base_url: "{openai}", timeout: 30}}
  assemblyai: {{api_key: "${{AAI_TEST_KEY}}", base_url: "{aai}", timeout: 30, poll_interval: 0.05}}
routes:
  - {{name: whisper, match: {{tags: [whisper]}}, use: openai/whisper-1}}
  - {{name: aai, match: {{tags: [aai]}}, use: assemblyai/best}}
  - {{name: diarized, match: {{inputs_any: [audio], diarization: true}}, use: assemblyai/best}}
default: openai/whisper-1
"""


@pytest.fixture
def both(start_daemon):
    """A daemon with the OpenAI and AssemblyAI plugins on their fakes (routed by the tags whisper and aai)."""
    from tests.fakes.openai import API_KEY as OPENAI_KEY
    from tests.fakes.openai import FakeOpenAI

    with FakeOpenAI() as openai, FakeAssemblyAI(api_key=AAI_KEY) as aai:
        daemon = start_daemon(BOTH.format(openai=openai.base_url, aai=aai.url),
                              env={"OPENAI_TEST_KEY": OPENAI_KEY, "AAI_TEST_KEY": AAI_KEY}, plugins=())
        daemon.extra["aai"] = aai
        yield daemon


@pytest.mark.parametrize("tag", ["whisper", "aai"])
def test_a_stream_sends_one_transcript_per_recording_and_the_answer_merges_them(both, tag) -> None:
    """Two clips: a transcript event for each, with its own times, as each is done (before its usage), as
    the proto's Answer.transcript says; the answer's transcript is the merged one (it used to be the only
    event, after the last clip)."""
    request = transcribe(wav_media("part1.wav", 0.5), wav_media("part2.wav", 0.5))
    request.hints.tags.append(tag)
    events = list(both.stub.StreamGenerate(pb.StreamGenerateRequest(request=request), timeout=60))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[:5] == ["route_chosen", "transcript", "usage", "transcript", "usage"], kinds
    assert kinds[-1] == "done"
    first, second = events[1].transcript, events[3].transcript
    merged = events[-1].done.answer.transcript
    assert len(merged.utterances) == len(first.utterances) + len(second.utterances) > 0
    assert second.utterances[0].start_seconds == first.utterances[0].start_seconds  # its own times
    shifted = merged.utterances[len(first.utterances)]
    assert shifted.start_seconds > second.utterances[0].start_seconds  # after the first clip in the merged one
    answer = both.stub.Generate(pb.GenerateRequest(request=request), timeout=60).answer
    assert answer.transcript == merged


# -- §7 (podcast): the CLI's --speakers turns diarization on, as the proto's speakers_expected does --------


def test_the_cli_s_speakers_without_diarize_asks_for_speakers(both, tmp_path) -> None:
    """``ask --speakers 3`` without ``--diarize`` was refused (exit 2, "give it with --diarize"), while the
    proto says speakers_expected turns diarization on: it is now sent diarized, routed and labelled so."""
    from test_cli import ok, run_cli

    clip = tmp_path / "meeting.wav"
    clip.write_bytes(wav_bytes())
    result = ok(run_cli("ask", "--audio", clip, "--task", "transcribe", "--speakers", "3", "--json",
                        "--address", both.address))
    answer = json.loads(result.stdout)
    assert answer["route"]["rule"] == "diarized" and answer["route"]["provider"] == "assemblyai"
    [created] = both.extra["aai"].created
    assert (created["speaker_labels"], created["speakers_expected"]) == (True, 3)


# -- §5 (chat): `mmrouter prune` piped without COLUMNS prints its summary on one line ----------------------


def test_prune_piped_without_columns_prints_its_summary_on_one_line(tmp_path) -> None:
    """From cron or a script's capture (no terminal, no COLUMNS) the summary was broken over three lines
    ("… and\\n0 media file(s) …;\\n1 media kept …"): it is one line now (a width known still breaks it)."""
    import os
    import subprocess
    import sys

    from router.sessions import SessionStore

    data = tmp_path / "data"
    (data / "media").mkdir(parents=True)
    SessionStore(data / "sessions.sqlite").close()
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    result = subprocess.run([sys.executable, "-m", "router", "prune", "--older-than", "1", "--data-dir", str(data)],
                            capture_output=True, text=True, timeout=60, env=env)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == ("removed 0 session(s), 0 statistics row(s) and 0 media file(s) (0.0 MiB); "
                             "0 media kept for sessions\n")
