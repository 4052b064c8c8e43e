"""The embedded hybrid policy with all four cloud fakes and local: routing, fallbacks, bridging, sessions.

The daemon runs the embedded default configuration; only the providers' keys and base URLs
come from the environment and a tiny override file, exactly as an operator would set them.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator

import grpc
import pytest
from grpc_helpers import error_details, text_request, wait_for
from media_factory import mp4, pdf, png, wav
from mmrouter.v1 import router_pb2 as pb

from tests.fakes.anthropic import API_KEY as ANTHROPIC_KEY
from tests.fakes.anthropic import FakeAnthropic, media_blocks
from tests.fakes.assemblyai import FakeAssemblyAI
from tests.fakes.gemini import FakeGemini
from tests.fakes.openai import API_KEY as OPENAI_KEY
from tests.fakes.openai import FakeOpenAI
from tests.fakes.openai import error_body as openai_error

GEMINI_KEY = "gemini-hybrid-key"
AAI_KEY = "aai-hybrid-key"

#: The embedded rules, with each provider pointed at its fake.
CONFIG = """
extend_default_routes: true
providers:
  openai: {{api_key: "${{OPENAI_API_KEY}}", base_url: "{openai}", timeout: 20}}
  anthropic: {{api_key: "${{ANTHROPIC_API_KEY}}", base_url: "{anthropic}", timeout: 20}}
  gemini: {{api_key: "${{GEMINI_API_KEY}}", base_url: "{gemini}", timeout: 20, poll_interval: 0.02}}
  assemblyai: {{api_key: "${{ASSEMBLYAI_API_KEY}}", base_url: "{assemblyai}", timeout: 20, poll_interval: 0.02}}
  local: {{}}
"""

ALL_KEYS = {"OPENAI_API_KEY": OPENAI_KEY, "ANTHROPIC_API_KEY": ANTHROPIC_KEY, "GEMINI_API_KEY": GEMINI_KEY,
            "ASSEMBLYAI_API_KEY": AAI_KEY}


@contextlib.contextmanager
def cloud_fakes() -> Iterator[dict]:
    """The four cloud providers' fakes, started, by provider name (CONFIG's placeholders)."""
    servers = {"openai": FakeOpenAI(), "anthropic": FakeAnthropic(), "gemini": FakeGemini(api_key=GEMINI_KEY),
               "assemblyai": FakeAssemblyAI(api_key=AAI_KEY)}
    for server in servers.values():
        server.start()
    try:
        yield servers
    finally:
        for server in servers.values():
            server.stop()


#: What :func:`resetter` leaves as it is: the files the Gemini fake holds, which a daemon that uploaded them
#: may name again in a later call.
KEPT_ON_RESET = frozenset({"files", "_uploads"})


def resetter(servers: dict) -> Callable[[], None]:
    """A function that puts the fakes back as they were started (:meth:`FakeUpstream.reset`), but for the Gemini
    fake's files (:data:`KEPT_ON_RESET`); for fakes shared by a module's tests. It first waits (10 s at most)
    until the daemon deleted the AssemblyAI transcripts it read, which it does in the background: a late delete
    would be recorded as the next test's request."""
    def reset() -> None:
        transcriber = servers.get("assemblyai")
        if transcriber is not None:
            wait_for(lambda: set(transcriber.delete_requests) >= set(transcriber.transcripts), timeout=10)
        for fake in servers.values():
            fake.reset(keep=KEPT_ON_RESET)

    return reset


def config_for(fakes, without: str = "") -> str:
    """The config with every provider pointed at its fake, except ``without`` (left unconfigured)."""
    text = CONFIG.format(openai=fakes["openai"].base_url, anthropic=fakes["anthropic"].url,
                         gemini=fakes["gemini"].url, assemblyai=fakes["assemblyai"].url)
    return "\n".join(line for line in text.splitlines() if not (without and line.startswith(f"  {without}:")))


def with_200k_claude(config: str) -> str:
    """``config`` with claude-sonnet-4-6 at a 200k context (as on an account without its 1M window),
    where Anthropic's limit is 100 PDF pages per request instead of 600."""
    claude = ('timeout: 20, models: [{name: claude-sonnet-4-6, context_tokens: 200000, '
              'price: {input_per_mtok: 3, output_per_mtok: 15}}]}\n  gemini:')
    changed = config.replace('timeout: 20}\n  gemini:', claude, 1)
    assert changed != config
    return changed


def media(modality: int, mime: str, data: bytes, name: str = "") -> pb.Media:
    return pb.Media(modality=modality, mime_type=mime, data=data, filename=name)


AUDIO = media(pb.MODALITY_AUDIO, "audio/wav", wav(1.0), "call.wav")
IMAGE = media(pb.MODALITY_IMAGE, "image/png", png("chart"), "chart.png")
DOCUMENT = media(pb.MODALITY_DOCUMENT, "application/pdf", pdf(["Quarterly report", "Page two"]), "q.pdf")
VIDEO = media(pb.MODALITY_VIDEO, "video/mp4", mp4(), "clip.mp4")

KINDS = {
    "diarization": (text_request("", media=[AUDIO], options=pb.Options(task=pb.TASK_TRANSCRIBE, diarization=True)),
                    "assemblyai/best"),
    "cross-modal": (text_request("What does the chart show?", media=[IMAGE]), "openai/gpt-4o"),
    "documents": (text_request("Summarise this", media=[DOCUMENT]), "anthropic/claude-sonnet-4-6"),
    "video": (text_request("What happens here?", media=[VIDEO]), "gemini/gemini-2.5-pro"),
    "transcription": (text_request("", media=[AUDIO], options=pb.Options(task=pb.TASK_TRANSCRIBE)),
                      "openai/whisper-1"),
    "general": (text_request("Write a haiku about routers"), "openai/gpt-4o"),
}


def generate(daemon, request: pb.MultimodalRequest) -> pb.Answer:
    return daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=60).answer


def own_audio(seconds: float) -> pb.Media:
    """A recording like :data:`AUDIO` (call.wav) of its own bytes (``seconds`` long), for a test bridging it on
    the shared daemon, which keeps bridged transcripts by content."""
    return media(pb.MODALITY_AUDIO, "audio/wav", wav(seconds), "call.wav")


def test_six_kinds_of_request_reach_the_right_provider(shared) -> None:
    daemon, fakes = shared
    for rule, (request, target) in KINDS.items():
        answer = generate(daemon, request)
        assert (answer.route.rule, f"{answer.route.provider}/{answer.route.model}") == (rule, target)
        assert answer.usage.cost_usd > 0, f"{rule}: no cost"
    assert [r["speaker_labels"] for r in fakes["assemblyai"].created] == [True]
    assert [r["model"] for r in fakes["openai"].chat_requests()] == ["gpt-4o", "gpt-4o"]
    assert [u.field("model") for u in fakes["openai"].uploads()] == ["whisper-1"]
    assert fakes["anthropic"].last_body()["model"] == "claude-sonnet-4-6"
    assert any(b.get("type") == "document" for b in fakes["anthropic"].last_body()["messages"][-1]["content"])
    gemini_calls = fakes["gemini"].calls("generate") + fakes["gemini"].calls("stream")
    assert [r.path.split("/")[-1].split(":")[0] for r in gemini_calls] == ["gemini-2.5-pro"]


@pytest.mark.parametrize(
    ("provider", "missing_key", "rule", "expected"),
    [
        ("anthropic", "ANTHROPIC_API_KEY", "documents", "gemini/gemini-2.5-pro"),
        ("openai", "OPENAI_API_KEY", "cross-modal", "anthropic/claude-sonnet-4-6"),
        ("openai", "OPENAI_API_KEY", "transcription", "assemblyai/best"),
        ("gemini", "GEMINI_API_KEY", "video", "openai/gpt-4o"),  # the video bridged: its text and speech
    ],
)
def test_removing_a_key_moves_traffic_to_the_documented_fallback(start_daemon, fakes, provider, missing_key, rule,
                                                                 expected) -> None:
    env = {k: v for k, v in ALL_KEYS.items() if k != missing_key}
    daemon = start_daemon(config_for(fakes, without=provider), env=env, plugins=())
    answer = generate(daemon, KINDS[rule][0])
    assert (answer.route.rule, f"{answer.route.provider}/{answer.route.model}") == (rule, expected)
    skipped = next(t for t in answer.route.trace if t.rule == rule)
    assert missing_key in skipped.reason


def test_diarization_and_an_image_question_give_both_in_one_response(shared) -> None:
    daemon, fakes = shared
    request = text_request("Who spoke, and does the chart match what they said?",
                           media=[own_audio(1.1), IMAGE],
                           options=pb.Options(diarization=True))
    answer = generate(daemon, request)
    assert (answer.route.provider, answer.route.model) == ("openai", "gpt-4o")
    assert answer.text == "".join(fakes["openai"].reply_chunks)
    assert {u.speaker for u in answer.transcript.utterances} >= {"A", "B"}
    steps = [(s.purpose.split(" ")[0], s.provider, s.model) for s in answer.route.steps]
    assert steps == [("bridge:audio->transcript", "assemblyai", "best"), ("answer", "openai", "gpt-4o")]
    assert all(s.latency_ms > 0 and s.usage.cost_usd > 0 for s in answer.route.steps)
    sent = fakes["openai"].chat_requests()[-1]["messages"][-1]
    texts = [p.text for p in fakes["openai"].parts(sent) if p.kind == "text"]
    assert any(t.startswith("[Audio transcript]") and "Speaker A:" in t for t in texts)
    assert [p.kind for p in fakes["openai"].parts(sent)].count("image") == 1


def test_a_session_moves_between_providers_and_survives_a_restart(start_daemon, fakes, tmp_path) -> None:
    data = tmp_path / "data"
    daemon = start_daemon(config_for(fakes), env=ALL_KEYS, plugins=(), data_dir=data)
    first = generate(daemon, text_request("Remember the word walrus.", session_id="trip"))
    assert first.route.provider == "openai"
    second = generate(daemon, text_request("What is in this report?", media=[DOCUMENT], session_id="trip"))
    assert second.route.provider == "anthropic"
    claude_messages = fakes["anthropic"].last_body()["messages"]
    assert [m["role"] for m in claude_messages] == ["user", "assistant", "user"]
    assert "walrus" in str(claude_messages[0]["content"])
    assert daemon.stop() == 0

    restarted = start_daemon(config_for(fakes), env=ALL_KEYS, plugins=(), data_dir=data)
    third = generate(restarted, text_request("And the word?", session_id="trip",
                                             hints=pb.RoutingHints(provider="gemini")))
    assert third.route.provider == "gemini"
    body = (fakes["gemini"].calls("generate") + fakes["gemini"].calls("stream"))[-1].json()
    roles = [c["role"] for c in body["contents"]]
    assert roles == ["user", "model", "user", "model", "user"]
    assert "walrus" in str(body["contents"][0]) and "inline_data" in str(body["contents"][2]).replace("inlineData", "inline_data")


def test_explain_shows_every_decision(start_daemon, fakes) -> None:
    daemon = start_daemon(config_for(fakes, without="anthropic").replace("  gemini:", "  #"),
                          env={"OPENAI_API_KEY": OPENAI_KEY}, plugins=())
    route = daemon.stub.ExplainRoute(pb.ExplainRouteRequest(request=KINDS["documents"][0])).route
    outcomes = {t.rule: (t.outcome, t.reason) for t in route.trace}
    assert list(outcomes)[:5] == ["diarization", "video-transcription", "video", "long-audio", "documents"]
    assert outcomes["documents"][0] == pb.RULE_OUTCOME_MATCHED
    assert "ANTHROPIC_API_KEY" in outcomes["documents"][1] and "GEMINI_API_KEY" in outcomes["documents"][1]
    assert (route.provider, route.model) == ("local", "extract")
    assert all(t.reason for t in route.trace)


TRANSCRIPTIONS = "/v1/audio/transcriptions"
CHAT = "/v1/chat/completions"


def stream(daemon, request: pb.MultimodalRequest) -> list[pb.StreamGenerateResponse]:
    return list(daemon.stub.StreamGenerate(pb.StreamGenerateRequest(request=request), timeout=60))


def test_an_empty_answer_behind_a_bridge_is_empty_and_keeps_no_turn(shared) -> None:
    """gpt-4o says nothing about a bridged recording (a refusal, a filter): the answer is empty, not
    the user's own words from whisper, and the session keeps no reply the model never gave."""
    daemon, fakes = shared
    fakes["openai"].reply_chunks = []
    events = stream(daemon, text_request("Summarise this recording", media=[own_audio(1.2)],
                                         session_id="empty-answer"))
    assert [e.WhichOneof("event") for e in events].count("text_delta") == 0
    answer = events[-1].done.answer
    assert (answer.route.model, answer.text) == ("gpt-4o", "")
    assert answer.transcript.text == "Hello there. General Kenobi."  # whisper's, still carried
    fakes["openai"].reply_chunks = ["Fine."]
    generate(daemon, text_request("Anything else?", session_id="empty-answer"))
    sent = fakes["openai"].chat_requests()[-1]["messages"]
    assert [m["role"] for m in sent] == ["user"], "no empty or made-up assistant turn was kept"


def test_a_bridged_request_falls_back_when_the_answering_model_is_down(shared) -> None:
    """whisper transcribes, gpt-4o answers 503: claude answers with the same transcript, which is
    neither paid for nor sent to the client twice, and every paid step is in the total."""
    daemon, fakes = shared
    fakes["openai"].fail_next(503, openai_error("The server is overloaded", "server_error"), path=CHAT)
    events = stream(daemon, text_request("What was said?", media=[own_audio(1.3)]))
    answer = events[-1].done.answer
    assert (answer.route.provider, answer.route.model) == ("anthropic", "claude-sonnet-4-6")
    assert [e.WhichOneof("event") for e in events].count("transcript") == 1
    assert len(fakes["openai"].uploads()) == 1
    assert [(s.provider, s.model) for s in answer.route.steps] == [
        ("openai", "whisper-1"), ("anthropic", "claude-sonnet-4-6")]
    assert answer.usage.cost_usd == pytest.approx(sum(s.usage.cost_usd for s in answer.route.steps))
    sent = fakes["anthropic"].last_body()["messages"][-1]["content"]
    assert any("[Audio transcript]" in b.get("text", "") for b in sent)


AUDIO_TOO_LARGE = openai_error("Maximum content size limit (26214400) exceeded (31457280 bytes read)", "server_error")


def test_whisper_refusing_a_large_file_gives_way_to_assemblyai(shared) -> None:
    daemon, fakes = shared
    fakes["openai"].fail_next(413, AUDIO_TOO_LARGE, path=TRANSCRIPTIONS)
    answer = generate(daemon, KINDS["transcription"][0])
    assert (answer.route.provider, answer.route.model) == ("assemblyai", "best")
    assert [(a.provider, a.ok) for a in answer.route.attempts] == [("openai", False), ("assemblyai", True)]
    assert answer.text and len(fakes["assemblyai"].created) == 1


def test_a_bridge_refusing_a_large_file_gives_way_to_the_next_bridge(shared) -> None:
    daemon, fakes = shared
    fakes["openai"].fail_next(413, AUDIO_TOO_LARGE, path=TRANSCRIPTIONS)
    answer = generate(daemon, text_request("What was said?", media=[own_audio(1.4)]))
    assert (answer.route.provider, answer.route.model) == ("openai", "gpt-4o")
    assert list(answer.route.bridges) == ["audio->transcript via assemblyai/best"]
    assert [(s.provider, s.model) for s in answer.route.steps] == [("assemblyai", "best"), ("openai", "gpt-4o")]
    assert any("openai/whisper-1 failed" in n and "INPUT_TOO_LARGE" in n for n in answer.route.notes)


@pytest.mark.parametrize(("rule", "refuse", "expected"), [
    ("documents", lambda f: f["anthropic"].fail_next_api(400, "invalid_request_error",
                                                         "A maximum of 100 PDF pages may be provided."),
     "gemini/gemini-2.5-pro"),
    ("documents", lambda f: f["anthropic"].fail_next_api(413, "request_too_large",
                                                         "Request exceeds the maximum allowed number of bytes."),
     "gemini/gemini-2.5-pro"),
    ("general", lambda f: f["openai"].fail_next(400, openai_error(
        "This model's maximum context length is 128000 tokens. However, your messages resulted in 180000 tokens.",
        code="context_length_exceeded", param="messages"), path=CHAT),
     "anthropic/claude-sonnet-4-6"),
])
def test_a_model_refusing_the_size_gives_way_to_the_rules_fallback(shared, rule, refuse, expected) -> None:
    daemon, fakes = shared
    refuse(fakes)
    answer = generate(daemon, KINDS[rule][0])
    assert (answer.route.rule, f"{answer.route.provider}/{answer.route.model}") == (rule, expected)
    assert [a.ok for a in answer.route.attempts] == [False, True]


def test_a_malformed_request_is_not_tried_on_the_fallbacks(shared) -> None:
    daemon, fakes = shared
    fakes["anthropic"].fail_next_api(400, "invalid_request_error", "messages.0.content: Field required")
    with pytest.raises(grpc.RpcError) as caught:
        generate(daemon, KINDS["documents"][0])
    details = error_details(caught.value)
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "PROVIDER_BAD_REQUEST")
    assert fakes["gemini"].calls("generate") + fakes["gemini"].calls("stream") == []


def route_of(answer: pb.Answer) -> tuple[str, str]:
    return answer.route.rule, f"{answer.route.provider}/{answer.route.model}"


TRANSCRIBE = pb.Options(task=pb.TASK_TRANSCRIBE)


def test_a_session_turn_is_routed_by_what_it_sends(shared) -> None:
    """An image earlier in a session does not keep Whisper or AssemblyAI from a transcription, and audio sent
    alone in a dictation session is transcribed on every turn, not only the first."""
    daemon, fakes = shared
    first = generate(daemon, text_request("What does the chart show?", media=[IMAGE], session_id="s1"))
    assert route_of(first) == ("cross-modal", "openai/gpt-4o")
    spoken = generate(daemon, text_request("", media=[AUDIO], session_id="s1", options=TRANSCRIBE))
    assert route_of(spoken) == ("transcription", "openai/whisper-1")
    assert spoken.transcript.text
    diarized = generate(daemon, text_request("", media=[AUDIO], session_id="s1",
                                             options=pb.Options(task=pb.TASK_TRANSCRIBE, diarization=True)))
    assert route_of(diarized) == ("diarization", "assemblyai/best")
    assert {u.speaker for u in diarized.transcript.utterances} >= {"A", "B"}

    for _ in range(2):  # a dictation client: audio alone, turn after turn
        dictated = generate(daemon, text_request("", media=[AUDIO], session_id="dictation"))
        assert route_of(dictated) == ("transcription", "openai/whisper-1")
        assert dictated.transcript.text
    assert [u.field("model") for u in fakes["openai"].uploads()] == ["whisper-1"] * 3


def test_a_long_text_goes_past_a_model_whose_context_cannot_hold_it(shared) -> None:
    daemon, fakes = shared
    long_text = "lorem ipsum dolor " * 40_000 + "\nSummarise."  # ~180k tokens; gpt-4o holds 128k
    answer = generate(daemon, text_request(long_text))
    assert route_of(answer) == ("general", "anthropic/claude-sonnet-4-6")
    assert not any("gpt-4o" in f for f in answer.route.fallbacks) and answer.route.fallbacks
    general = next(t for t in answer.route.trace if t.rule == "general")
    assert "skipped openai/gpt-4o: input of ~180002 tokens exceeds its context of 128000" in general.reason
    assert fakes["openai"].chat_requests() == []
    # in a session, the follow-up goes to the rule's first target that holds the whole conversation;
    # gpt-4o stays a fallback
    generate(daemon, text_request(long_text, session_id="long", hints=pb.RoutingHints(provider="gemini")))
    follow_up = generate(daemon, text_request("And in one word?", session_id="long"))
    assert route_of(follow_up) == ("general", "anthropic/claude-sonnet-4-6")


def test_a_video_to_transcribe_goes_to_assemblyai(shared) -> None:
    daemon, fakes = shared
    spoken = media(pb.MODALITY_VIDEO, "video/mp4", mp4(tone=True), "talk.mp4")  # a silent one is refused
    answer = generate(daemon, text_request("", media=[spoken], options=TRANSCRIBE))
    assert route_of(answer) == ("video-transcription", "assemblyai/best")
    assert answer.transcript.text and fakes["assemblyai"].uploads == [spoken.data]
    asked = generate(daemon, KINDS["video"][0])
    assert route_of(asked) == ("video", "gemini/gemini-2.5-pro")


def test_with_only_an_openai_key_diarization_uses_openai_s_diarizing_model(start_daemon, fakes) -> None:
    daemon = start_daemon(config_for(fakes), env={"OPENAI_API_KEY": OPENAI_KEY}, plugins=())
    answer = generate(daemon, KINDS["diarization"][0])
    assert route_of(answer) == ("diarization", "openai/gpt-4o-transcribe-diarize")
    assert {u.speaker for u in answer.transcript.utterances} >= {"A", "B"}
    asked = generate(daemon, text_request("Who spoke first?", media=[AUDIO], options=pb.Options(diarization=True)))
    assert route_of(asked) == ("general", "openai/gpt-4o")
    steps = [(s.purpose.split(" ")[0], s.provider, s.model) for s in asked.route.steps]
    assert steps == [("bridge:audio->transcript", "openai", "gpt-4o-transcribe-diarize"), ("answer", "openai", "gpt-4o")]
    assert [u.field("model") for u in fakes["openai"].uploads()] == ["gpt-4o-transcribe-diarize"] * 2


def big_wav(size: int) -> bytes:
    """A WAV of about ``size`` bytes (48 kHz stereo: ~190 KB a second), made in memory in well under a second."""
    import io
    import wave

    second = wav(1.0, rate=48_000)[44:] * 2  # one second of tone, as stereo's worth of frames
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(2)
        out.setsampwidth(2)
        out.setframerate(48_000)
        out.writeframes(second * (size // len(second) + 1))
    return buf.getvalue()


def upload(daemon, data: bytes, modality: int, mime: str, filename: str) -> pb.Media:
    """``data`` sent with UploadMedia (it is over the inline limit), as a Media to refer to it."""
    metadata = pb.UploadMetadata(modality=modality, mime_type=mime, filename=filename, size_bytes=len(data))
    chunks = [pb.UploadMediaRequest(metadata=metadata)]
    chunks += [pb.UploadMediaRequest(chunk=data[i:i + 1024 * 1024]) for i in range(0, len(data), 1024 * 1024)]
    media_id = daemon.stub.UploadMedia(iter(chunks), timeout=60).media_id
    return pb.Media(modality=modality, mime_type=mime, media_id=media_id)


def test_audio_over_whisper_s_25_mb_goes_to_assemblyai_without_reaching_openai(shared) -> None:
    """A 30 MB recording: whisper-1 declares its 25 MB limit (ModelInfo.max_media_bytes), so routing plans
    the rule's fallback, AssemblyAI, which transcribes it; ExplainRoute says the same."""
    daemon, fakes = shared
    audio = big_wav(30 * 1024 * 1024)
    media = upload(daemon, audio, pb.MODALITY_AUDIO, "audio/wav", "all-hands.wav")
    request = text_request("", media=[media], options=TRANSCRIBE)
    answer = generate(daemon, request)
    assert route_of(answer) == ("transcription", "assemblyai/best")
    [took] = answer.route.attempts
    assert (took.provider, took.ok) == ("assemblyai", True)
    assert any("whisper-1: 30 MiB of audio is larger than its 25 MiB per file" in t.reason for t in answer.route.trace)
    explained = daemon.stub.ExplainRoute(pb.ExplainRouteRequest(request=request), timeout=30).route
    assert (explained.provider, explained.model) == ("assemblyai", "best")
    assert fakes["openai"].requests == [], "nothing was uploaded to OpenAI"
    assert fakes["assemblyai"].uploads == [audio] and answer.transcript.text


def test_a_pdf_over_claude_s_100_pages_is_answered_by_the_fallback_without_reaching_anthropic(
    start_daemon, fakes
) -> None:
    """A 120-page PDF for a 200k-context Claude: the router counts its pages, Claude declares its limit of 100
    (ModelInfo.max_document_pages), so routing passes it by, with the reason in the trace, and the documents
    rule's fallback (Gemini) answers."""
    daemon = start_daemon(with_200k_claude(config_for(fakes)), env=ALL_KEYS, plugins=())
    report = media(pb.MODALITY_DOCUMENT, "application/pdf", pdf([f"Page {n + 1}" for n in range(120)]), "annual.pdf")
    answer = generate(daemon, text_request("Summarise this", media=[report]))
    assert route_of(answer) == ("documents", "gemini/gemini-2.5-pro")
    assert [(a.provider, a.ok) for a in answer.route.attempts] == [("gemini", True)]
    assert any("anthropic/claude-sonnet-4-6: 120 PDF pages is more than its 100 per PDF" in t.reason
               for t in answer.route.trace), answer.route.trace
    assert fakes["anthropic"].requests == [], "nothing was sent to Anthropic"
    assert answer.text


def whisper_uploads(fakes) -> list[tuple[bytes, str | None]]:
    """Each audio sent to OpenAI's transcription endpoint: its bytes (a bridge sends no file name) and the
    language asked."""
    return [(u.files["file"][2], u.field("language")) for u in fakes["openai"].uploads()]


def test_a_follow_up_s_language_does_not_reach_the_history_s_audio(start_daemon, fakes) -> None:
    """Turn 2 sends French audio with language=fr: turn 1's English audio keeps its kept transcript, and
    audio nothing was kept of (heard natively by Gemini) is bridged without turn 2's language."""
    daemon = start_daemon(config_for(fakes), env=ALL_KEYS, plugins=())
    english = media(pb.MODALITY_AUDIO, "audio/wav", wav(1.0), "english.wav")
    french = media(pb.MODALITY_AUDIO, "audio/wav", wav(2.0), "french.wav")
    generate(daemon, text_request("Summarise this call", media=[english], session_id="s",
                                  options=pb.Options(language="en")))
    second = generate(daemon, text_request("Compare it with this one", media=[french], session_id="s",
                                           options=pb.Options(language="fr")))
    assert route_of(second) == ("general", "openai/gpt-4o")
    assert whisper_uploads(fakes) == [(english.data, "en"), (french.data, "fr")], "turn 1's audio paid again"

    heard = media(pb.MODALITY_AUDIO, "audio/wav", wav(0.5), "heard.wav")
    generate(daemon, text_request("Listen", media=[heard], session_id="native",
                                  options=pb.Options(language="en"), hints=pb.RoutingHints(provider="gemini")))
    generate(daemon, text_request("And this?", media=[french], session_id="native",
                                  options=pb.Options(language="fr")))
    assert whisper_uploads(fakes)[2:] == [(heard.data, None)], "the history's audio got this turn's language"


def test_a_diarized_transcript_in_the_history_is_reused_by_a_plain_follow_up(start_daemon, fakes) -> None:
    """Turn 1 asks who spoke (AssemblyAI bridges with speakers); turn 2 without diarization would bridge
    through Whisper: it gets turn 1's transcript with its speakers instead, paid once. A follow-up asking
    for speakers of audio kept without them has it diarized."""
    daemon = start_daemon(config_for(fakes), env=ALL_KEYS, plugins=())
    first = generate(daemon, text_request("Who spoke?", media=[AUDIO], session_id="s",
                                          options=pb.Options(diarization=True)))
    assert list(first.route.bridges) == ["audio->transcript via assemblyai/best"]
    second = generate(daemon, text_request("Summarise it in one line", session_id="s"))
    assert [s.purpose for s in second.route.steps] == ["answer"]
    assert fakes["openai"].uploads() == [] and len(fakes["assemblyai"].created) == 1
    sent = fakes["openai"].chat_requests()[-1]["messages"][0]
    assert any("Speaker A:" in p.text for p in fakes["openai"].parts(sent) if p.kind == "text")

    # the other way round: a follow-up asking for speakers gets them, not the kept text without any
    clip = media(pb.MODALITY_AUDIO, "audio/wav", wav(0.5), "clip.wav")
    generate(daemon, text_request("Summarise", media=[clip], session_id="plain"))
    asked = generate(daemon, text_request("Who said what?", session_id="plain", options=pb.Options(diarization=True)))
    assert list(asked.route.bridges) == ["audio->transcript via assemblyai/best"]
    assert len(fakes["openai"].uploads()) == 1 and len(fakes["assemblyai"].created) == 2
    sent = fakes["openai"].chat_requests()[-1]["messages"][0]
    assert any("Speaker A:" in p.text for p in fakes["openai"].parts(sent) if p.kind == "text")


def test_a_transcription_turn_s_transcript_is_reused_and_sent_once(start_daemon, fakes) -> None:
    """Turn 1 is audio alone, transcribed by Whisper; turn 2 asks gpt-4o about it: no second transcription,
    and the transcript reaches gpt-4o once (as the reply of turn 1), not also as turn 1's user part."""
    daemon = start_daemon(config_for(fakes), env=ALL_KEYS, plugins=())
    first = generate(daemon, text_request("", media=[AUDIO], session_id="s"))
    assert route_of(first) == ("transcription", "openai/whisper-1")
    second = generate(daemon, text_request("Summarise what was said", session_id="s"))
    assert route_of(second) == ("general", "openai/gpt-4o")
    assert [s.purpose for s in second.route.steps] == ["answer"] and len(fakes["openai"].uploads()) == 1
    sent = json.dumps(fakes["openai"].chat_requests()[-1]["messages"])
    assert sent.count(first.text) == 1, sent
    assert "[Audio transcript] call.wav" in sent


def test_a_bridged_history_pdf_counts_as_its_text_when_the_history_is_trimmed(shared) -> None:
    """An 80-page PDF is 120k tokens as pages but a few thousand as the text gpt-4o gets: turn 2 keeps it."""
    daemon, fakes = shared
    book = media(pb.MODALITY_DOCUMENT, "application/pdf",
                 pdf([f"Chapter {i}: the secret word is PINEAPPLE{i}" for i in range(80)]), "book.pdf")
    gpt = pb.RoutingHints(model="gpt-4o")
    first = generate(daemon, text_request("Summarise this book", media=[book], session_id="book", hints=gpt))
    assert list(first.route.bridges) == ["document->text via local/extract"]
    second = generate(daemon, text_request("What is the secret word of chapter 3?", session_id="book",
                                           hints=gpt))
    assert not any("history trimmed" in n for n in second.route.notes), second.route.notes
    sent = fakes["openai"].chat_requests()[-1]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"] and "PINEAPPLE3" in json.dumps(sent)


def test_a_bridged_turn_over_claude_s_pages_drops_history_without_bridging_again(start_daemon, fakes) -> None:
    """Turn 3 brings a 35-page PDF and a recording to Claude after two 35-page PDFs: whisper transcribes
    the recording, Claude refuses the 105 pages before sending, and the same bridged request goes again
    without the oldest turn: one transcription, sent to the client once, and Claude (200k context: 100
    pages) answers."""
    # Gemini left out (no key): it would take the whole conversation before Claude drops any of it
    config = "\n".join(line for line in with_200k_claude(config_for(fakes)).splitlines()
                       if not line.startswith("  gemini:"))
    daemon = start_daemon(config, env={k: v for k, v in ALL_KEYS.items() if k != "GEMINI_API_KEY"}, plugins=())
    reports = [media(pb.MODALITY_DOCUMENT, "application/pdf", pdf([f"Report {n} page {p}" for p in range(35)]),
                     f"report-{n}.pdf") for n in range(3)]
    for report in reports[:2]:
        generate(daemon, text_request("Read this", media=[report], session_id="s"))
    events = stream(daemon, text_request("Does the call match the reports?", media=[reports[2], AUDIO],
                                         session_id="s"))
    answer = events[-1].done.answer
    assert route_of(answer) == ("documents", "anthropic/claude-sonnet-4-6")
    assert list(answer.route.bridges) == ["audio->transcript via openai/whisper-1"]
    assert [e.WhichOneof("event") for e in events].count("transcript") == 1
    assert len(fakes["openai"].uploads()) == 1, "the recording was transcribed twice"
    assert [(a.model, a.ok) for a in answer.route.attempts] == [
        ("whisper-1", True), ("claude-sonnet-4-6", False), ("claude-sonnet-4-6", True)]
    assert [(s.provider, s.model) for s in answer.route.steps] == [
        ("openai", "whisper-1"), ("anthropic", "claude-sonnet-4-6")]
    assert any("history trimmed: dropped the 2 oldest" in n and "105 PDF pages" in n for n in answer.route.notes)
    body = fakes["anthropic"].last_body()
    assert [b.title for b in media_blocks(body)] == ["report-1.pdf", "report-2.pdf"]
    assert "[Audio transcript]" in json.dumps(body["messages"][-1])


def test_assemblyai_failing_on_its_side_gives_diarization_to_openai_s_diarizing_model(shared) -> None:
    """A transcript AssemblyAI failed on its side ("Server error, developers have been alerted.") is
    UNAVAILABLE: the embedded diarization rule's fallback, gpt-4o-transcribe-diarize, answers. The speaker count
    AssemblyAI was sent, which OpenAI's model takes no such option for, is said not to reach it."""
    daemon, fakes = shared
    fakes["assemblyai"].statuses = ("queued", "error")
    fakes["assemblyai"].error_message = "Server error, developers have been alerted."
    request = pb.MultimodalRequest()
    request.CopyFrom(KINDS["diarization"][0])
    request.options.speakers_expected = 2
    answer = generate(daemon, request)
    assert route_of(answer) == ("diarization", "openai/gpt-4o-transcribe-diarize")
    assert fakes["assemblyai"].created[0]["speakers_expected"] == 2
    assert "openai/gpt-4o-transcribe-diarize: speakers_expected not sent: gpt-4o-transcribe-diarize takes no " \
           "speaker count (it labels the speakers it tells apart)" in answer.route.notes, answer.route.notes
    assert [(a.provider, a.ok) for a in answer.route.attempts] == [("assemblyai", False), ("openai", True)]
    assert "Server error, developers have been alerted." in answer.route.attempts[0].error
    assert answer.transcript.text and len(fakes["assemblyai"].created) == 1


def test_assemblyai_failing_for_the_media_does_not_fall_back(shared) -> None:
    """A transcript failed for its media ("Transcoding failed. File does not appear to contain audio.")
    would fail elsewhere too: INVALID_ARGUMENT at once, OpenAI is not called."""
    daemon, fakes = shared
    fakes["assemblyai"].statuses = ("queued", "error")
    with pytest.raises(grpc.RpcError) as caught:
        generate(daemon, KINDS["diarization"][0])
    details = error_details(caught.value)
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "PROVIDER_BAD_REQUEST")
    assert "File does not appear to contain audio" in caught.value.details()
    assert fakes["openai"].uploads() == []
