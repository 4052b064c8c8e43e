"""What the answering model is sent, through the daemon with the real OpenAI SDK pointed at its fake.

- A document, a clip or a video bridged to GPT-4o through ``local/extract`` reaches the model as its text
  alone: local's banner for people ("[Extracted by local provider — no language model was used]") is not in
  the prompt (it told the answering model that no language model was used, on every later turn too). A
  direct answer of local's still opens with it.
- ``options.temperature`` is a proto ``float`` (32 bits): a client's 0.7 reaches the provider as 0.7, not
  as the widened 0.699999988079071.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import grpc
import pytest
from grpc_helpers import error_details, text_request
from media_factory import mp4, pdf, wav
from mmrouter.v1 import router_pb2 as pb
from mmrouter_local.provider import HEADER

from tests.fakes.openai import API_KEY, FakeOpenAI

CONFIG = """
providers:
  openai: {{api_key: "${{OPENAI_API_KEY}}", base_url: "{url}", timeout: 20}}
  local: {{}}
routes:
  - name: offline
    match: {{tags: [offline]}}
    use: local/extract
default: openai/gpt-4o
bridges:
  document: [local/extract]
  audio: [local/extract]
  video: [local/extract]
"""

MEMO = pb.Media(modality=pb.MODALITY_DOCUMENT, mime_type="application/pdf", filename="memo.pdf",
                data=pdf(["Quarterly revenue rose 12%"]))


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


@pytest.fixture
def daemon(start_daemon, fake):
    return start_daemon(CONFIG.format(url=fake.base_url), env={"OPENAI_API_KEY": API_KEY}, plugins=())


def generate(daemon, request: pb.MultimodalRequest) -> pb.Answer:
    return daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=60).answer


def test_bridged_texts_reach_the_model_without_locals_banner(daemon, fake) -> None:
    clip = pb.Media(modality=pb.MODALITY_AUDIO, mime_type="audio/wav", filename="call.wav", data=wav(0.5))
    video = pb.Media(modality=pb.MODALITY_VIDEO, mime_type="video/mp4", filename="demo.mp4", data=mp4(tone=True))
    answer = generate(daemon, text_request("What changed?", media=[MEMO, clip, video]))
    assert (answer.route.provider, answer.route.model) == ("openai", "gpt-4o")
    assert sorted(s.purpose for s in answer.route.steps) == [
        "answer", "bridge:audio->transcript via local/extract", "bridge:document->text via local/extract",
        "bridge:video->transcript via local/extract"]
    prompt = "\n".join(p.text for m in fake.chat_requests()[-1]["messages"] for p in fake.parts(m) if p.kind == "text")
    # each framing is followed at once by local's first section
    assert "[Document text] memo.pdf\n[PDF memo.pdf, page 1]\nQuarterly revenue rose 12%" in prompt, prompt
    assert "[Audio transcript] call.wav\n[Audio call.wav: transcript, " in prompt, prompt
    assert "[Video transcript] demo.mp4\n[Video demo.mp4: audio transcript, " in prompt, prompt
    assert "no language model was used" not in prompt, prompt


def test_a_direct_local_answer_keeps_its_banner(daemon, fake) -> None:
    answer = generate(daemon, text_request("What changed?", media=[MEMO], hints=pb.RoutingHints(tags=["offline"])))
    assert answer.route.provider == "local" and not fake.chat_requests()
    assert answer.text.startswith(HEADER + "\n") and "Quarterly revenue rose 12%" in answer.text


def test_a_temperature_reaches_the_provider_as_the_client_wrote_it(daemon, fake) -> None:
    for temperature in (0.7, 0.123457, 1.0, 0.0):
        answer = generate(daemon, text_request("Pick a number.", options=pb.Options(temperature=temperature)))
        assert answer.route.provider == "openai"
        assert fake.chat_requests()[-1]["temperature"] == temperature


def test_a_temperature_near_float32s_largest_is_refused_as_out_of_range(daemon, fake) -> None:
    """FLT_MAX's shortest decimals round past float32's range: refused as out of range, not INTERNAL."""
    largest = struct.unpack("<f", b"\xff\xff\x7f\x7f")[0]
    for temperature in (largest, -largest):
        with pytest.raises(grpc.RpcError) as refused:
            generate(daemon, text_request("Pick a number.", options=pb.Options(temperature=temperature)))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
        assert error_details(refused.value).violations == [("request.options.temperature", "must be between 0 and 2")]
    assert not fake.chat_requests()


def test_ask_sends_its_temperature_and_leaves_it_unset_without_one(daemon, fake) -> None:
    """``mmrouter ask --temperature`` (session 23: the CLI had no way to set the API's options.temperature)."""
    from test_cli import Cli, ok

    ok(Cli("ask", "Pick a number.", "--temperature", "0.3", "--address", daemon.address).result())
    assert fake.chat_requests()[-1]["temperature"] == 0.3
    ok(Cli("ask", "Pick a number.", "--address", daemon.address).result())
    assert "temperature" not in fake.chat_requests()[-1]
    refused = Cli("ask", "Pick a number.", "--temperature", "2.5", "--address", daemon.address).result()
    assert refused.returncode == 2 and "--temperature" in refused.stderr, refused.stderr
    assert len(fake.chat_requests()) == 2
