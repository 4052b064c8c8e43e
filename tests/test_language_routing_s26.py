"""The language a request names (``options.language``) in routing: ``local/extract``, whose speech model is en-US,
declares the languages it transcribes (``ModelInfo.languages``), so ExplainRoute and Generate pass it over, as a
target and as a bridge of audio or of a video's speech, for speech said to be in another language, with the reason
(``local/extract: does not transcribe language 'de' (takes en, eng)``), instead of planning a route the call then
refuses; a tag of English in any case or region still goes to it. Plain audio no other bridge can take goes to
``gpt-4o-transcribe-diarize``, the last audio bridge of the embedded config, as its README says."""

from __future__ import annotations

import grpc
import pytest
from grpc_helpers import error_details, text_request
from media_factory import mp4, wav
from mmrouter.v1 import router_pb2 as pb
from test_hybrid import ALL_KEYS, config_for
from test_local_e2e import needs_espeak

from tests.fakes import local as speech
from tests.fakes.openai import error_body as openai_error

TRANSCRIPTIONS = "/v1/audio/transcriptions"
WHISPER_DOWN = openai_error("overloaded", "server_error")
GERMAN = "local/extract: does not transcribe language 'de' (takes en, eng)"

PROVIDERS = """
providers:
  openai: {{api_key: "${{OPENAI_API_KEY}}", base_url: "{openai}", timeout: 20}}
  assemblyai: {{api_key: "${{ASSEMBLYAI_API_KEY}}", base_url: "{assemblyai}", timeout: 20, poll_interval: 0.02}}
  local: {{}}
"""

#: Questions go to GPT-4o, which takes neither audio nor video: they are bridged.
QUESTIONS = """
routes:
  - name: questions
    match: {{task: [chat]}}
    use: openai/gpt-4o
  - name: transcription
    use: local/extract
    fallback: [assemblyai/best]
bridges:
  audio: [{audio}]
  video: [local/extract, assemblyai/best]
"""


def start(start_daemon, fakes, audio_bridges: str = "local/extract, openai/whisper-1"):
    """A daemon on the fakes: questions to GPT-4o (audio bridged by ``audio_bridges``, video by local, else
    AssemblyAI), transcriptions to local/extract, else AssemblyAI."""
    config = PROVIDERS.format(openai=fakes["openai"].base_url, assemblyai=fakes["assemblyai"].url)
    return start_daemon(config + QUESTIONS.format(audio=audio_bridges), env=ALL_KEYS, plugins=())


def explain(daemon, request: pb.MultimodalRequest) -> pb.Route:
    return daemon.stub.ExplainRoute(pb.ExplainRouteRequest(request=request), timeout=30).route


def generate(daemon, request: pb.MultimodalRequest) -> pb.Answer:
    return daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=60).answer


def clip(modality: str, name: str) -> pb.Media:
    """A short silent clip: audio (WAV) or a video with a sound track (MP4)."""
    if modality == "audio":
        return pb.Media(modality=pb.MODALITY_AUDIO, mime_type="audio/wav", data=wav(0.5), filename=name)
    return pb.Media(modality=pb.MODALITY_VIDEO, mime_type="video/mp4", data=mp4(tone=True), filename=name)


def question(media: pb.Media, language: str) -> pb.MultimodalRequest:
    return text_request("What is said?", media=[media], options=pb.Options(language=language))


def transcription(media: pb.Media, language: str) -> pb.MultimodalRequest:
    return text_request("", media=[media], options=pb.Options(task=pb.TASK_TRANSCRIBE, language=language))


@pytest.mark.parametrize("modality", ["audio", "video"])
def test_local_is_passed_by_as_the_bridge_of_speech_in_another_language(start_daemon, fakes, modality) -> None:
    """German speech for GPT-4o: ExplainRoute plans the next bridge, saying why local was passed by, and Generate
    takes that route (local is not called); English in any case or region keeps local as the bridge."""
    daemon = start(start_daemon, fakes)
    request = question(clip(modality, f"anruf.{'wav' if modality == 'audio' else 'mp4'}"), "de-DE")
    planned = explain(daemon, request)
    via = "openai/whisper-1" if modality == "audio" else "assemblyai/best"
    assert list(planned.bridges) == [f"{modality}->transcript via {via}"], planned.bridges
    note = (f"bridging: local/extract passed by as the {modality} bridge: does not transcribe language 'de-DE' "
            "(takes en, eng)")
    assert note in planned.notes, planned.notes

    answer = generate(daemon, request)
    assert len(answer.route.bridges) == 1 and answer.route.bridges[0].endswith(f"via {via}"), answer.route.bridges
    assert note in answer.route.notes, answer.route.notes
    assert "local" not in {step.provider for step in answer.route.steps}, answer.route.steps

    for english in ("en", "EN-gb", "eng"):
        kept = explain(daemon, question(clip(modality, "call.wav"), english))
        assert list(kept.bridges) == [f"{modality}->transcript via local/extract"], (english, kept.bridges)


def test_a_later_bridge_that_cannot_take_the_language_is_not_tried(start_daemon, fakes) -> None:
    """Whisper bridges German audio and fails (503): the bridge after it is AssemblyAI, not local, which would
    refuse the language; no local step, and AssemblyAI gets the clip."""
    daemon = start(start_daemon, fakes, "openai/whisper-1, local/extract, assemblyai/best")
    fakes["openai"].fail_next(503, WHISPER_DOWN, path=TRANSCRIPTIONS)
    answer = generate(daemon, question(clip("audio", "anruf.wav"), "de"))
    assert [(s.purpose, s.provider) for s in answer.route.steps if s.purpose != "answer"] == [
        ("bridge:audio->transcript via assemblyai/best", "assemblyai")], answer.route.steps
    assert len(fakes["assemblyai"].created) == 1
    assert not any("local" in note for note in answer.route.notes), answer.route.notes


@pytest.mark.parametrize("modality", ["audio", "video"])
def test_local_is_skipped_as_a_target_for_speech_in_another_language(start_daemon, fakes, modality) -> None:
    """A German transcription: the rule's first target, local/extract, is skipped with the reason, and AssemblyAI,
    its fallback, is planned and answers at the first attempt (the call no longer tries local first)."""
    daemon = start(start_daemon, fakes)
    request = transcription(clip(modality, "anruf"), "de")
    planned = explain(daemon, request)
    assert (planned.provider, planned.model) == ("assemblyai", "best")
    reason = next(t.reason for t in planned.trace if t.rule == "transcription")
    assert f"(skipped {GERMAN})" in reason, reason

    answer = generate(daemon, request)
    assert [(a.provider, a.ok) for a in answer.route.attempts] == [("assemblyai", True)], answer.route.attempts
    assert fakes["assemblyai"].created[-1].get("language_code") == "de"


def test_offline_speech_in_another_language_has_no_route(start_daemon) -> None:
    """Offline (the embedded config, no keys), Spanish speech to transcribe: nothing can take it, and ExplainRoute
    and Generate both say so, naming local's languages, rather than planning local for a call it refuses."""
    daemon = start_daemon(None, plugins=())
    request = transcription(clip("audio", "q_es.wav"), "es")
    for call in (lambda: explain(daemon, request), lambda: generate(daemon, request)):
        with pytest.raises(grpc.RpcError) as caught:
            call()
        details = error_details(caught.value)
        assert (details.code, details.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "NO_ROUTE"), details.message
        assert "local/extract: does not transcribe language 'es' (takes en, eng)" in details.message, details.message
    (local,) = [p for p in daemon.stub.ListProviders(pb.ListProvidersRequest(), timeout=10).providers
                if p.name == "local"]
    assert [list(m.languages) for m in local.models] == [["en", "eng"]]  # as ListProviders tells clients


@needs_espeak
def test_english_named_in_another_case_is_transcribed_offline(start_daemon) -> None:
    """``EN-us`` is English: the offline daemon plans local/extract for it and transcribes the speech."""
    daemon = start_daemon(None, plugins=())
    audio = pb.Media(modality=pb.MODALITY_AUDIO, mime_type="audio/wav", filename="call.wav",
                     data=speech.speech_wav("please call me tomorrow morning"))
    request = transcription(audio, "EN-us")
    planned = explain(daemon, request)
    assert (planned.rule, planned.provider) == ("transcription", "local"), planned.trace
    answer = generate(daemon, request)
    assert "call me tomorrow morning" in answer.text, answer.text


def test_plain_audio_no_other_bridge_takes_goes_to_the_diarizing_bridge(start_daemon, fakes) -> None:
    """The embedded audio bridges, German audio for GPT-4o with AssemblyAI not configured and Whisper failing:
    local cannot take the language, and gpt-4o-transcribe-diarize, the last bridge, transcribes it (speaker labels
    and all) rather than the call failing."""
    daemon = start_daemon(config_for(fakes, without="assemblyai"), env=ALL_KEYS, plugins=())
    fakes["openai"].fail_next(503, WHISPER_DOWN, path=TRANSCRIPTIONS)
    request = question(clip("audio", "anruf.wav"), "de")
    planned = explain(daemon, request)
    assert list(planned.bridges) == ["audio->transcript via openai/whisper-1"], planned.bridges
    answer = generate(daemon, request)
    assert (answer.route.provider, answer.route.model) == ("openai", "gpt-4o")
    models = [upload.field("model") for upload in fakes["openai"].uploads()]
    assert models == ["whisper-1", "gpt-4o-transcribe-diarize"], models
    sent = fakes["openai"].chat_requests()[-1]["messages"][-1]
    assert "Speaker A: Hello there." in str(sent), sent


@pytest.mark.parametrize(("languages", "problem"), [
    (frozenset({"en-US"}), "languages holds 'en-US', not a primary language subtag such as 'en'"),
    (frozenset({"EN"}), "languages holds 'EN', not a primary language subtag"),
    (["en"], "languages is list, not a frozenset of str"),
])
def test_the_daemon_s_check_refuses_a_bad_language_list(languages, problem) -> None:
    """A plugin declares ``ModelInfo.languages`` as primary subtags in lower case, as routing compares them."""
    from router import Modality, ModelInfo
    from router.plugins import model_problem

    model = ModelInfo("m", frozenset({Modality.AUDIO}), languages=languages)
    assert (model_problem(model) or "").startswith(problem), model_problem(model)
    assert model_problem(ModelInfo("m", frozenset({Modality.AUDIO}), languages=frozenset({"en", "yue"}))) is None
