"""Providers' odd bytes and language codes, through the running daemon: the real SDKs against the fakes.

- A streamed (or whole) answer that is not valid UTF-8 is a clear ``UNAVAILABLE`` saying so: from Gemini
  (its SDK decodes strictly through aiohttp: it was INTERNAL "the plugin failed" with an ERROR traceback)
  and from OpenAI (whose error quoted the whole event as if it were the provider's message).
- A requested language Whisper codes otherwise reaches the API as Whisper's code (``nb`` -> ``no``).
- A text document that starts with UTF-8's byte order mark reaches the model without it.
"""

from __future__ import annotations

import base64

import grpc
import pytest
from conftest import launch_daemon
from grpc_helpers import error_details, text_request
from mmrouter.v1 import router_pb2 as pb

from tests.fakes.anthropic import API_KEY as ANTHROPIC_KEY
from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.gemini import FakeGemini
from tests.fakes.openai import API_KEY as OPENAI_KEY
from tests.fakes.openai import FakeOpenAI
from tests.test_openai_e2e import wav_bytes

GEMINI_KEY = "AIza-text-edges-7c1d"

CONFIG = """
providers:
  openai:
    api_key: "${{OPENAI_TEST_KEY}}"
    base_url: "{openai}"
    timeout: 10
  anthropic:
    api_key: "${{ANTHROPIC_TEST_KEY}}"
    base_url: "{anthropic}"
    timeout: 10
  gemini:
    api_key: "${{GEMINI_TEST_KEY}}"
    base_url: "{gemini}"
    timeout: 10
  gemini-whole:
    plugin: gemini
    api_key: "${{GEMINI_TEST_KEY}}"
    base_url: "{gemini}"
    timeout: 10
    streaming: false
routes:
  - name: transcription
    match: {{inputs_any: [audio], task: [transcribe]}}
    use: openai/whisper-1
  - name: claude
    match: {{tags: [claude]}}
    use: anthropic/claude-sonnet-4-6
  - name: gemini
    match: {{tags: [gemini]}}
    use: gemini/gemini-2.5-flash
  - name: gemini-whole
    match: {{tags: [gemini-whole]}}
    use: gemini-whole/gemini-2.5-flash
default: openai/gpt-4o
"""

#: Bytes that are not UTF-8 in the middle of the answer: a BOM of UTF-16, a cut character, an overlong "/".
BAD_BYTES = [b"\xff\xfe", b"\xe6\x97", b"\xc0\xaf"]
#: The text of the fakes' answer that the bad bytes replace.
MARK = "BADBYTES"


@pytest.fixture(scope="module")
def fakes():
    servers = FakeOpenAI().start(), FakeAnthropic().start(), FakeGemini(api_key=GEMINI_KEY).start()
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def shared_daemon(fakes, plugin_sites, tmp_path_factory):
    """One daemon for the module (each test resets the fakes): starting one per case would take minutes."""
    openai, anthropic, gemini = fakes
    daemon = launch_daemon(CONFIG.format(openai=openai.base_url, anthropic=anthropic.url, gemini=gemini.url),
                           tmp=tmp_path_factory.mktemp("text-edges"), sites=[plugin_sites["testkit"]],
                           env={"OPENAI_TEST_KEY": OPENAI_KEY, "ANTHROPIC_TEST_KEY": ANTHROPIC_KEY,
                                "GEMINI_TEST_KEY": GEMINI_KEY})
    yield daemon
    daemon.stop()


@pytest.fixture
def daemon(shared_daemon, fakes):
    """The module's daemon, with the fakes' requests and scripted bytes cleared."""
    openai, _anthropic, gemini = fakes
    for fake in fakes:
        fake.requests.clear()
    openai.event_bytes, gemini.answer_bytes = {}, {}
    return shared_daemon


def failed(daemon, request: pb.MultimodalRequest, streamed: bool) -> grpc.RpcError:
    """The error a Generate (or StreamGenerate, read to its end) of ``request`` failed with."""
    with pytest.raises(grpc.RpcError) as info:
        if streamed:
            list(daemon.stub.StreamGenerate(pb.StreamGenerateRequest(request=request), timeout=30))
        else:
            daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=30)
    return info.value


def no_plugin_failure_logged(daemon) -> None:
    """The daemon logged no traceback and no plugin failure."""
    logs = daemon.logs()
    assert "Traceback" not in logs and "UnicodeDecodeError" not in logs and "raised while answering" not in logs


@pytest.mark.parametrize("bad", BAD_BYTES, ids=lambda b: b.hex())
@pytest.mark.parametrize("tag", ["gemini", "gemini-whole"])
def test_gemini_answer_that_is_not_utf8_is_a_clear_unavailable(daemon, fakes, tag: str, bad: bytes) -> None:
    """Through the SDK's aiohttp transport a stream line (or whole body) that is not UTF-8 raised
    UnicodeDecodeError out of the SDK: INTERNAL PROVIDER_FAILED with an ERROR traceback."""
    gemini = fakes[2]
    gemini.reply_chunks = [f"before{MARK}after", " end"]
    gemini.answer_bytes = {MARK: bad}
    streamed = tag == "gemini"
    for client_streams in (False, True):
        error = failed(daemon, text_request("hi", hints=pb.RoutingHints(tags=[tag])), client_streams)
        details = error_details(error)
        assert (error.code(), details.reason) == (grpc.StatusCode.UNAVAILABLE, "PROVIDER_UNAVAILABLE"), details
        what = "sent a stream event" if streamed else "answered with a body"
        assert f"bad answer from the Gemini API: the server {what} that is not valid UTF-8" in details.message
    assert len(gemini.calls("stream" if streamed else "generate")) == 2
    no_plugin_failure_logged(daemon)


@pytest.mark.parametrize("bad", BAD_BYTES, ids=lambda b: b.hex())
def test_openai_stream_event_that_is_not_utf8_says_so_without_quoting_it(daemon, fakes, bad: bytes) -> None:
    """The message was 'gpt-4o failed while answering: {"id": "chatcmpl-fake", ...}', the event itself."""
    openai = fakes[0]
    openai.reply_chunks = [f"before{MARK}after", " end"]
    openai.event_bytes = {MARK: bad}
    for client_streams in (False, True):
        error = failed(daemon, text_request("hi"), client_streams)
        details = error_details(error)
        assert (error.code(), details.reason) == (grpc.StatusCode.UNAVAILABLE, "PROVIDER_UNAVAILABLE"), details
        assert details.message == "openai: gpt-4o failed while answering: the server sent a stream event that is not valid UTF-8"
        assert "chatcmpl-fake" not in details.message and "before" not in details.message
    no_plugin_failure_logged(daemon)


def test_openai_stream_event_that_is_not_json_says_so_without_quoting_it(daemon, fakes) -> None:
    openai = fakes[0]
    openai.reply_chunks = [f"before{MARK}after", " end"]
    openai.event_bytes = {MARK: b'"}, "x'}  # the event's JSON broken
    details = error_details(failed(daemon, text_request("hi"), False))
    assert details.reason == "PROVIDER_UNAVAILABLE"
    assert details.message == "openai: gpt-4o failed while answering: the server sent a stream event that is not JSON"
    assert "chatcmpl-fake" not in details.message


@pytest.mark.parametrize(("requested", "sent"), [
    ("nb", "no"), ("nb-NO", "no"), ("iw", "he"), ("in", "id"), ("ji", "yi"), ("fil", "tl"), ("mo", "ro"),
    ("no", "no"), ("zh-Hant-TW", "zh"),
])
def test_whisper_gets_its_own_code_for_the_requested_language(daemon, fakes, requested: str, sent: str) -> None:
    """Whisper's languages table names Norwegian ``no`` and Hebrew ``he``: ``nb`` and ``iw`` were sent as given."""
    request = text_request("", media=[pb.Media(modality=pb.MODALITY_AUDIO, mime_type="audio/wav", data=wav_bytes(),
                                               filename="talk.wav")],
                           options=pb.Options(task=pb.TASK_TRANSCRIBE, language=requested))
    answer = daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=30).answer
    assert answer.route.model == "whisper-1"
    [upload] = fakes[0].uploads()
    assert upload.field("language") == sent


BOM_TEXT = "\ufeff本文: the report.\n"


def bom_document() -> pb.Media:
    """A UTF-8 text document that starts with a byte order mark (as Notepad writes it)."""
    return pb.Media(modality=pb.MODALITY_DOCUMENT, mime_type="text/plain", data=BOM_TEXT.encode(),
                    filename="bom.txt")


def test_a_text_document_reaches_gemini_without_its_byte_order_mark(daemon, fakes) -> None:
    gemini = fakes[2]
    gemini.reply_chunks = ["ok"]
    daemon.stub.Generate(pb.GenerateRequest(request=text_request(
        "Summarise", media=[bom_document()], hints=pb.RoutingHints(tags=["gemini"]))), timeout=30)
    [call] = gemini.calls("stream")
    inline = call.json()["contents"][0]["parts"][0]["inlineData"]
    assert base64.urlsafe_b64decode(inline["data"]) == "本文: the report.\n".encode()


def test_a_text_document_reaches_claude_without_its_byte_order_mark(daemon, fakes) -> None:
    anthropic = fakes[1]
    daemon.stub.Generate(pb.GenerateRequest(request=text_request(
        "Summarise", media=[bom_document()], hints=pb.RoutingHints(tags=["claude"]))), timeout=30)
    [call] = [r for r in anthropic.requests if r.path == "/v1/messages"]
    [document] = [b for b in call.json()["messages"][0]["content"] if b["type"] == "document"]
    assert document["source"] == {"type": "text", "media_type": "text/plain", "data": "本文: the report.\n"}
