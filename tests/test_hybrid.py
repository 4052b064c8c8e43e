"""The embedded hybrid policy with all four cloud fakes and local: routing, fallbacks, bridging, sessions.

The daemon runs the embedded default configuration; only the providers' keys and base URLs
come from the environment and a tiny override file, exactly as an operator would set them.
"""

from __future__ import annotations

import pytest
from grpc_helpers import text_request
from media_factory import mp4, pdf, png, wav
from mmrouter.v1 import router_pb2 as pb

from tests.fakes.anthropic import API_KEY as ANTHROPIC_KEY
from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.assemblyai import FakeAssemblyAI
from tests.fakes.gemini import FakeGemini
from tests.fakes.openai import API_KEY as OPENAI_KEY
from tests.fakes.openai import FakeOpenAI

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


@pytest.fixture
def fakes():
    servers = {"openai": FakeOpenAI(), "anthropic": FakeAnthropic(), "gemini": FakeGemini(api_key=GEMINI_KEY),
               "assemblyai": FakeAssemblyAI(api_key=AAI_KEY)}
    for server in servers.values():
        server.start()
    yield servers
    for server in servers.values():
        server.stop()


def config_for(fakes, without: str = "") -> str:
    """The config with every provider pointed at its fake, except ``without`` (left unconfigured)."""
    text = CONFIG.format(openai=fakes["openai"].base_url, anthropic=fakes["anthropic"].url,
                         gemini=fakes["gemini"].url, assemblyai=fakes["assemblyai"].url)
    return "\n".join(line for line in text.splitlines() if not (without and line.startswith(f"  {without}:")))


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


def test_six_kinds_of_request_reach_the_right_provider(start_daemon, fakes) -> None:
    daemon = start_daemon(config_for(fakes), env=ALL_KEYS, plugins=())
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
        ("gemini", "GEMINI_API_KEY", "video", "local/extract"),
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


def test_diarization_and_an_image_question_give_both_in_one_response(start_daemon, fakes) -> None:
    daemon = start_daemon(config_for(fakes), env=ALL_KEYS, plugins=())
    request = text_request("Who spoke, and does the chart match what they said?", media=[AUDIO, IMAGE],
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
    assert list(outcomes)[:4] == ["diarization", "video", "long-audio", "documents"]
    assert outcomes["documents"][0] == pb.RULE_OUTCOME_MATCHED
    assert "ANTHROPIC_API_KEY" in outcomes["documents"][1] and "GEMINI_API_KEY" in outcomes["documents"][1]
    assert (route.provider, route.model) == ("local", "extract")
    assert all(t.reason for t in route.trace)
