"""Input the daemon must survive: media it cannot measure, secrets with surrounding whitespace."""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Iterator

import grpc
import pytest
from grpc_helpers import error_details, everything_said, text_request
from media_factory import wav
from mmrouter.v1 import router_pb2 as pb

from router.config import parse_config
from router.core import App, secrets_of
from router.redact import longest_first, mask
from router.sniff import measure
from router.types import Media, Message, Modality, Part, Request, Role

CONFIG = """
providers:
  fake: {api_key: k}
routes:
  - name: long-audio
    match: {audio_seconds: {min: 2}}
    use: fake/ears
  - name: everything
    use: fake/omni
"""


def wav_with_list_chunk_past_riff_size() -> bytes:
    """A WAV with a LIST chunk before ``fmt `` whose length runs past the RIFF size (a badly finalised
    file); Python's wave module raises a bare RuntimeError on it."""
    good = wav(0.1)
    info = b"INFOISFT\x0e\0\0\0Lavf58.76.100\0"
    chunk = b"LIST" + struct.pack("<L", 26) + info
    return b"RIFF" + struct.pack("<L", 4 + 8 + 10) + b"WAVE" + chunk + good[12:]


def test_a_wav_the_wave_module_cannot_read_is_measured_by_its_container_or_left_unknown() -> None:
    try:
        import av  # noqa: F401
    except ImportError:
        assert measure(wav_with_list_chunk_past_riff_size(), Modality.AUDIO) == (None, None)
    else:
        assert measure(wav_with_list_chunk_past_riff_size(), Modality.AUDIO) == (0.1, None)


@pytest.mark.parametrize("placeholder", [0x7FFFFFFF, 0xFFFFFFFF - 36])
def test_a_streamed_wav_whose_header_holds_a_placeholder_size_is_measured_by_its_samples(tmp_path,
                                                                                         placeholder) -> None:
    """espeak-ng and recorders writing to a pipe leave a placeholder data size in the header: the 2 s of
    speech measured 48,695 s, and routing refused every model with max_audio_seconds for it."""
    good = wav(2.0)  # 16-bit mono at 16 kHz
    streamed = good[:4] + struct.pack("<L", placeholder + 36) + good[8:40] + struct.pack("<L", placeholder) + good[44:]
    assert measure(streamed, Modality.AUDIO)[0] == pytest.approx(2.0)
    stored = tmp_path / "streamed.wav"
    stored.write_bytes(streamed)
    assert measure(str(stored), Modality.AUDIO)[0] == pytest.approx(2.0)
    assert measure(good, Modality.AUDIO)[0] == pytest.approx(2.0)  # a finished header is read as before


def test_a_malformed_wav_is_answered_with_its_duration_unknown(start_daemon) -> None:
    daemon = start_daemon(CONFIG)
    media = pb.Media(modality=pb.MODALITY_AUDIO, mime_type="audio/wav", data=wav_with_list_chunk_past_riff_size())
    request = text_request("what is said?", media=[media])
    route = daemon.stub.ExplainRoute(pb.ExplainRouteRequest(request=request)).route
    assert route.rule == "everything"
    assert any(t.rule == "long-audio" and "audio_seconds" in t.reason for t in route.trace)
    answer = daemon.stub.Generate(pb.GenerateRequest(request=request)).answer
    assert "audio=1" in answer.text and answer.route.rule == "everything"


async def test_media_that_cannot_be_read_for_measuring_leaves_the_request_routable(tmp_path, caplog) -> None:
    """A stored file gone between lookup and measuring: routing goes on with the duration unknown."""
    import mmrouter_testkit

    config = parse_config(CONFIG + f"server: {{data_dir: '{tmp_path}'}}\n", "test.yaml")
    app = App(config, extra_plugins={"fake": mmrouter_testkit})
    try:
        gone = Media(Modality.AUDIO, "audio/wav", path=tmp_path / "gone.wav", media_id="ab" * 32)
        request = Request(messages=[Message(Role.USER, [Part(media=gone), Part(text="?")])])
        route = await app.explain(request)
    finally:
        await app.aclose()
    assert route.rule == "everything" and gone.duration_seconds is None
    assert "could not measure audio media" in caplog.text


def test_secrets_are_masked_with_and_without_surrounding_whitespace(monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-live-abc123def456\n")
    secrets = longest_first(secrets_of({"acme": {"api_key": "  acme-key-789  ", "base_url": "https://x"}}, "tok-0001\n"))
    for sent in ("sk-live-abc123def456", "acme-key-789", "tok-0001"):
        assert mask(f"upstream refused {sent}!", secrets) == "upstream refused ***!"
    assert mask("sk-live-abc123def456\n", secrets) == "***"
    monkeypatch.setenv("SHORT_TOKEN", " ab\n")
    assert "ab" not in secrets_of({}), "values shorter than 4 characters once stripped are not secrets"


SMALL_MESSAGES = """
providers:
  fake: {api_key: k}
server: {max_message_bytes: 2097152, inline_limit_bytes: 1048576}
routes:
  - name: everything
    use: fake/omni
"""


def test_an_answer_over_the_message_limit_is_refused_with_details_and_kept(start_daemon) -> None:
    """The fake answer repeats the question twice: 1.1 MB of question make a 2.2 MB answer (the limit's floor is 2 MiB)."""
    daemon = start_daemon(SMALL_MESSAGES)
    request = text_request("x" * 1_100_000, session_id="big")
    with pytest.raises(grpc.RpcError) as unary:
        daemon.stub.Generate(pb.GenerateRequest(request=request))
    error = error_details(unary.value)
    assert (error.code, error.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "ANSWER_TOO_LARGE")
    assert int(error.metadata["size_bytes"]) > 2_097_152 and error.metadata["limit_bytes"] == "2097152"
    assert "max_message_bytes" in error.message

    # Streamed, the text arrives in deltas, and Done (which would repeat it: over the limit) leaves it out
    events = list(daemon.stub.StreamGenerate(pb.StreamGenerateRequest(request=request)))
    text = "".join(event.text_delta.text for event in events)
    assert text.startswith("fake/omni says: " + "x" * 1_100_000 + " [")
    done = events[-1].done
    assert events[-1].WhichOneof("event") == "done" and done.answer.text == ""
    assert done.answer.route.provider == "fake" and done.answer.finish_reason == pb.FINISH_REASON_STOP
    assert any(f"answer's text ({len(text)} characters) is left out of Done" in n for n in done.answer.route.notes)

    # Both answers were produced, so both turns were kept.
    removed = daemon.stub.ResetSession(pb.ResetSessionRequest(session_id="big")).turns_removed
    assert removed == 4  # two questions and two answers


def test_a_long_text_delta_is_streamed_in_pieces_under_the_message_limit(start_daemon) -> None:
    daemon = start_daemon(SMALL_MESSAGES)
    request = text_request("ONE-DELTA " + "é" * 300_000)  # 2 bytes each in UTF-8: a 1.2 MB answer, in one delta
    events = list(daemon.stub.StreamGenerate(pb.StreamGenerateRequest(request=request)))
    deltas = [e.text_delta.text for e in events if e.WhichOneof("event") == "text_delta"]
    assert len(deltas) > 1 and all(len(d.encode()) < 2_097_152 for d in deltas)
    assert "".join(deltas) == events[-1].done.answer.text
    assert events[-1].done.answer.text.count("é" * 300_000) == 2


def test_a_password_in_a_provider_url_is_masked_in_errors_and_logs(start_daemon) -> None:
    daemon = start_daemon("""
providers:
  vllm:
    plugin: openai
    base_url: "http://svc:Pa55w0rd%2Finternal@127.0.0.1:9/v1"
    api_key: sk-vllm-key-123456
    builtin_models: false
    models: [{name: llama}]
default: vllm/llama
""")
    with pytest.raises(grpc.RpcError) as failed:
        daemon.stub.Generate(pb.GenerateRequest(request=text_request("hi")), timeout=30)
    assert error_details(failed.value).reason == "PROVIDER_UNAVAILABLE"
    said = everything_said(failed.value, daemon)
    assert "127.0.0.1:9" in said  # the URL is still named, for the operator
    assert "Pa55w0rd" not in said and "svc:" not in said


def test_url_credentials_are_secrets() -> None:
    secrets = secrets_of({"x": {"base_url": "https://user:p%40ss-word@h/v1", "proxy": "http://h:1", "n": 3}})
    assert {"user:p%40ss-word", "p%40ss-word", "p@ss-word"} <= secrets
    assert not secrets_of({"x": {"base_url": "https://user@h/v1", "other": "mail@example.com"}})
    for url in ("https://sk-live-abcdef123456@gw/v1", "https://sk-live-abcdef123456:@gw/v1",
                "https://sk-live-abcdef123456:x-oauth-basic@gw/v1"):
        assert "sk-live-abcdef123456" in secrets_of({"x": {"base_url": url}}), url


def test_pdf_pages_are_read_from_the_page_tree(tmp_path) -> None:
    """An incremental update (an annotation added) writes a page object again: counting page
    objects in the bytes said 4 for these 3 pages. A stored file is measured by path."""
    import io

    import pypdf
    from media_factory import pdf
    from pypdf.annotations import FreeText

    writer = pypdf.PdfWriter(io.BytesIO(pdf(["one", "two", "three"])), incremental=True)
    writer.add_annotation(page_number=0, annotation=FreeText(text="note", rect=(50, 50, 200, 100)))
    updated = io.BytesIO()
    writer.write(updated)
    assert measure(updated.getvalue(), Modality.DOCUMENT) == (None, 3)
    stored = tmp_path / "stored"
    stored.write_bytes(updated.getvalue())
    assert measure(str(stored), Modality.DOCUMENT) == (None, 3)
    assert measure(b"%PDF-1.4\nnot really a pdf", Modality.DOCUMENT) == (None, None)


def rf64(seconds: int, rate: int = 16000) -> bytes:
    """What ffmpeg writes for WAVs over 4 GiB: RF64 with a ds64 chunk holding the real sizes."""
    pcm = b"\0\0" * rate * seconds
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    ds64 = struct.pack("<QQQI", 4 + 36 + 24 + 8 + len(pcm), len(pcm), rate * seconds, 0)
    return (b"RF64" + struct.pack("<I", 0xFFFFFFFF) + b"WAVE" + b"ds64" + struct.pack("<I", 28) + ds64
            + b"fmt " + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", 0xFFFFFFFF) + pcm)


def test_large_wavs_and_matroska_audio_are_recognised() -> None:
    from router.sniff import mime_problem

    assert mime_problem("audio/wav", Modality.AUDIO, rf64(seconds=3)) is None
    pytest.importorskip("av")  # the wave module cannot read RF64: its duration comes from PyAV
    assert measure(rf64(seconds=3), Modality.AUDIO) == (3.0, None)
    assert mime_problem("audio/x-matroska", Modality.AUDIO, b"\x1a\x45\xdf\xa3" + b"\0" * 60) is None
    assert "looks like" in mime_problem("audio/x-matroska", Modality.AUDIO, wav(0.1)[:64])


def test_a_request_of_too_many_parts_is_refused_before_it_is_converted(start_daemon) -> None:
    """Each part becomes an object and each bad one a listed problem: 4 million empty parts (8 MB) held the
    event loop for 12 s and took 1.8 GB. Over MAX_PARTS the request is refused at once, with its count."""
    from router.wire import MAX_PARTS

    daemon = start_daemon(CONFIG)
    request = pb.MultimodalRequest(messages=[pb.Message(parts=[pb.Part()] * (MAX_PARTS // 2)),
                                             pb.Message(parts=[pb.Part()] * (MAX_PARTS // 2 + 1))])
    with pytest.raises(grpc.RpcError) as caught:
        daemon.stub.Generate(pb.GenerateRequest(request=request))
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert error_details(caught.value).violations == [("request.messages",
                                                       f"{MAX_PARTS + 1} parts in all; at most {MAX_PARTS}")]
    assert daemon.stub.Generate(pb.GenerateRequest(request=text_request("still there?"))).answer.text


def test_too_many_messages_or_metadata_entries_are_refused_before_they_are_converted(start_daemon) -> None:
    """Messages without parts went around the parts count: a million of them (2 MB) held the event loop for
    10-20 s and took 570 MB, a problem listed for each and all joined in one 70 MB message; a million
    metadata entries were copied to a dict before their count was checked. Both are refused at once now,
    with their count, and an ordinary bad request's message joins only its first problems."""
    from router.errors import InvalidRequest
    from router.wire import MAX_JOINED_PROBLEMS, MAX_METADATA_ENTRIES, MAX_PARTS, Limits, request_from_proto

    daemon = start_daemon(CONFIG)

    def refused(request: pb.MultimodalRequest) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as caught:
            daemon.stub.ExplainRoute(pb.ExplainRouteRequest(request=request))
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        return caught.value

    empty = refused(pb.MultimodalRequest(messages=[pb.Message()] * (MAX_PARTS + 1)))
    assert error_details(empty).violations == [("request.messages", f"{MAX_PARTS + 1} messages; at most {MAX_PARTS}")]
    crowded = text_request("hello")
    for i in range(MAX_METADATA_ENTRIES * 1000):
        crowded.metadata[f"k{i}"] = "v"
    assert error_details(refused(crowded)).violations == [
        ("request.metadata", f"{MAX_METADATA_ENTRIES * 1000} entries; at most {MAX_METADATA_ENTRIES}")]
    many = refused(pb.MultimodalRequest(messages=[pb.Message()] * (MAX_JOINED_PROBLEMS + 10)))
    assert many.details().startswith(f"{MAX_JOINED_PROBLEMS + 10} problems, the first")
    with pytest.raises(InvalidRequest) as caught:
        request_from_proto(pb.MultimodalRequest(messages=[pb.Message()] * (MAX_JOINED_PROBLEMS + 10)),
                           Limits(1024, False), lambda media_id: None)
    assert len(caught.value.violations) == MAX_JOINED_PROBLEMS + 10
    assert f"messages[{MAX_JOINED_PROBLEMS - 1}]" in caught.value.message
    assert f"messages[{MAX_JOINED_PROBLEMS}]" not in caught.value.message
    assert daemon.stub.Generate(pb.GenerateRequest(request=text_request("still there?"))).answer.text


def test_text_with_a_lone_surrogate_is_answered_with_the_character_replaced(start_daemon) -> None:
    """A plugin's text may hold a lone surrogate (pypdf reads one from a PDF's odd text map; a JSON
    "\\ud83d" escape decodes to one). Protobuf cannot send it: the answer failed as INTERNAL after it was
    produced, and its session kept the turn. It is now U+FFFD everywhere: answer, stream and session."""
    daemon = start_daemon(CONFIG)
    answer = daemon.stub.Generate(pb.GenerateRequest(request=text_request("SURROGATE", session_id="s"))).answer
    assert answer.text == "bad \ufffd text"
    events = list(daemon.stub.StreamGenerate(pb.StreamGenerateRequest(request=text_request("SURROGATE"))))
    assert "".join(e.text_delta.text for e in events if e.HasField("text_delta")) == "bad \ufffd text"
    assert events[-1].done.answer.text == "bad \ufffd text"
    later = daemon.stub.Generate(pb.GenerateRequest(request=text_request("and now?", session_id="s"))).answer
    assert "bad \ufffd text" in later.text  # the kept turn, as the fake echoes the history


def test_transcript_texts_are_made_valid_and_valid_events_are_left_as_they_are() -> None:
    from router.contract import with_valid_text
    from router.types import TextDelta, Transcript, TranscriptReady, Utterance, Word

    event = TranscriptReady(Transcript("a \ud83d", [Utterance("b \udc00", speaker="\ud83d")], [Word("\ud83d\ude00")]))
    transcript = with_valid_text(event).transcript
    assert (transcript.text, transcript.utterances[0].text, transcript.utterances[0].speaker, transcript.words[0].text) \
        == ("a \ufffd", "b \ufffd", "\ufffd", "\U0001f600")
    fine = TextDelta("héllo")
    assert with_valid_text(fine) is fine


#: A session description (SDP) naming an RTP stream on a UDP port: 300 bytes a client may send as audio.
SDP_PORT = 47123
SDP = (f"v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=x\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
       f"m=audio {SDP_PORT} RTP/AVP 0\r\n").encode()


def udp_port_bound(port: int) -> bool:
    """Whether some process of this network namespace has a UDP socket bound to ``port``."""
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with contextlib.suppress(OSError), open(table) as f:
            if any(line.split()[1].rsplit(":", 1)[1] == f"{port:04X}" for line in list(f)[1:]):
                return True
    return False


@contextlib.contextmanager
def watching_udp_port(port: int) -> Iterator[list[bool]]:
    """While the block runs, whether ``port`` is bound, looked at every 20 ms (and at least once)."""
    import threading

    done = threading.Event()
    bound: list[bool] = []

    def watch() -> None:
        while not done.is_set():
            bound.append(udp_port_bound(port))
            done.wait(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        yield bound
    finally:
        done.set()
        watcher.join()


def test_media_that_names_other_inputs_opens_nothing_while_it_is_measured(start_daemon) -> None:
    """A type the router cannot check by its bytes (audio/x-sdp) is taken as sent, and ffmpeg, measuring its
    length, opened what an SDP names: the daemon bound UDP ports and held a worker thread 10 s per part (six
    requests of three parts stalled every other client's media 29 s). ffmpeg may open nothing but the media."""
    daemon = start_daemon(CONFIG)
    part = pb.Media(modality=pb.MODALITY_AUDIO, mime_type="audio/x-sdp", data=SDP)
    with watching_udp_port(SDP_PORT) as bound:
        daemon.stub.ExplainRoute(pb.ExplainRouteRequest(request=text_request("listen", media=[part])), timeout=60)
    assert bound and not any(bound), "ffmpeg opened the UDP port the SDP names"


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
def test_an_answer_that_never_ends_is_cut_off(start_daemon, stream) -> None:
    """A broken or hostile upstream's endless stream was kept whole until the call's deadline (an hour by
    default): the daemon grew 80 MB a second. Past twice server.max_message_bytes (it could never be sent
    whole) the answer is cut off, the provider's stream closed, and the daemon serves on."""
    daemon = start_daemon(SMALL_MESSAGES)
    request = text_request("ENDLESS")
    with pytest.raises(grpc.RpcError) as caught:
        if stream:
            for _ in daemon.stub.StreamGenerate(pb.StreamGenerateRequest(request=request), timeout=120):
                pass
        else:
            daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=120)
    error = error_details(caught.value)
    assert (error.code, error.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "ANSWER_TOO_LARGE")
    assert "was cut off" in error.message and error.metadata["limit_chars"] == str(2 * 2_097_152)
    assert daemon.stub.Generate(pb.GenerateRequest(request=text_request("still there?"))).answer.text
