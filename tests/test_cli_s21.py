"""The CLI and upload types, from the long-context and voice QA reports:

- a question over the daemon's ``server.max_message_bytes`` (gRPC's own RESOURCE_EXHAUSTED, which no
  handler of the daemon sees) is sent again as an uploaded ``text/plain`` document, and says so;
- ``mmrouter stats`` counts a bridge chosen for some formats (``bridge:audio (audio/webm)->...``) as one
  step, whatever the format;
- an upload's MIME type is recorded and answered without its parameters (``audio/webm;codecs=opus``);
- ``ask --audio`` knows the extensions of phones' and recorders' formats (``.caf``, ``.amr``, ``.3gp``,
  ``.aiff``...) that the daemon takes.

The real CLI (tests/test_cli.py's ``mmrouter``) against the real daemon (tests/conftest.py) serving the
testkit's scripted ``fake`` provider.
"""

from __future__ import annotations

import hashlib
import io
import json
from fractions import Fraction
from pathlib import Path

import av
import grpc
import numpy as np
import pytest
from mmrouter.v1 import router_pb2 as pb
from test_cli import CONFIG, Cli, ok
from test_cli_stdin import mmrouter, text

from router.cli_calls import MIME_BY_EXTENSION, QUESTION_NAME, fail, refused_hint
from router.outcome import Answer, RouteInfo, Step
from router.sessions import SessionStore
from router.types import Usage

#: A daemon whose messages are at most 2 MiB (the smallest server.max_message_bytes).
SMALL_MESSAGES = CONFIG + "server:\n  max_message_bytes: 2097152\n  inline_limit_bytes: 1048576\n"


def stored_record(data_dir: Path, data: bytes) -> dict:
    """The media store's record of ``data`` (its MIME type, modality and size)."""
    media_id = hashlib.sha256(data).hexdigest()
    return json.loads((data_dir / "media" / media_id[:2] / f"{media_id}.json").read_text())


# -- a question over the daemon's message limit ----------------------------------------------------------


def test_a_question_over_the_daemons_message_limit_is_sent_as_an_uploaded_text_document(start_daemon) -> None:
    """`ask -` with a 3 MB question and a daemon taking 2 MiB messages exited 1 with gRPC's bare "Received
    message larger than max": it is now sent again as an uploaded text/plain document, saying so."""
    daemon = start_daemon(SMALL_MESSAGES)
    question = "Please read: " + "word " * 600_000  # 3 MB
    code, out, err = text(mmrouter("ask", "-", "--address", daemon.address, stdin=question.encode()))
    assert code == 0, err
    assert "larger than a gRPC message may be (SERVER: Received message larger than max (" in err
    assert "vs. 2097152)): sending the question as an uploaded text document" in err
    # a document, counted as the prompt text it is (too long for fake/docs' context): the whole question
    assert "request has [document]" in err and "input of ~750003 tokens exceeds its context" in err, err
    assert "route: rule media -> fake/omni" in err and "document=1" in out
    assert stored_record(daemon.data_dir, question.encode())["mime_type"] == "text/plain"

    # explain too; with a file, the file is uploaded as well
    note = Path(daemon.data_dir.parent / "note.txt")
    note.write_text("a short note")
    code, out, err = text(mmrouter("explain", "-", "--pdf", note, "--address", daemon.address,
                                   stdin=question.encode()))
    assert code == 0, err
    assert "sending the question as an uploaded text document and uploading the files" in err
    assert "route: rule media -> fake/omni" in out and "input of ~750006 tokens" in out, out


def test_a_short_question_stays_text_when_only_the_files_were_too_large(start_daemon, tmp_path) -> None:
    """When uploading the files makes the request fit, the question stays the request's text."""
    daemon = start_daemon(SMALL_MESSAGES)
    notes = [tmp_path / f"n{i}.txt" for i in range(3)]
    for i, note in enumerate(notes):
        note.write_text(f"{i} " * 400_000)  # 800 KB each: inline (under 1 MiB), 2.4 MB together
    args = [arg for note in notes for arg in ("--pdf", note)]
    code, out, err = text(mmrouter("ask", "sum up", *args, "--address", daemon.address, "--inline-limit", "900000"))
    assert code == 0, err
    assert "uploading the files" in err and "sending the question" not in err
    assert "says: sum up" in out and "document=3" in out


def test_a_request_still_over_the_limit_says_what_to_do(start_daemon, capsys) -> None:
    """When the request is refused even so (its --system that long, which a command line cannot quite carry),
    the error says to send long text as a file with --pdf, or to raise server.max_message_bytes. The refusal
    is gRPC's own: got from a real daemon, by a request of text too long for it."""
    daemon = start_daemon(SMALL_MESSAGES)
    request = pb.MultimodalRequest(messages=[pb.Message(role=pb.ROLE_SYSTEM, parts=[pb.Part(text="x" * 3_000_000)]),
                                             pb.Message(role=pb.ROLE_USER, parts=[pb.Part(text="hi")])])
    with pytest.raises(grpc.RpcError) as refused:
        daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=30)
    assert "SERVER: Received message larger than max" in refused.value.details()
    with pytest.raises(Exception) as exited:
        fail(refused.value, daemon.address)
    assert exited.value.exit_code == 1
    hint = capsys.readouterr().err.splitlines()[1]
    assert hint == ("the request is over the daemon's message limit (2097152 bytes), its server.max_message_bytes: "
                    "send long text as a file with --pdf (a text document is uploaded, and counted as prompt text), "
                    "or raise server.max_message_bytes in the daemon's configuration")
    # this side's own send limit (64 MiB for the CLI; 1000 bytes here)
    with (grpc.insecure_channel(daemon.address, options=[("grpc.max_send_message_length", 1000)]) as channel,
          pytest.raises(grpc.RpcError) as refused):
        channel.unary_unary("/mmrouter.v1.RouterService/Generate")(b"x" * 2000, timeout=30)
    assert refused_hint(refused.value) == (
        "the request is over the CLI's message limit (1000 bytes): send long text as a file with --pdf (a "
        "text document is uploaded, and counted as prompt text)")
    assert QUESTION_NAME.endswith(".txt")


# -- stats: one bridge, one row ----------------------------------------------------------------------------


def test_stats_counts_a_bridge_chosen_for_formats_as_one_step(tmp_path) -> None:
    """A bridge chosen for a format names it in its step (``bridge:audio (audio/webm)->...``): the route says
    so, but `mmrouter stats` counted a row per format. Recorded as the daemon records an answer."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    store = SessionStore(data_dir / "sessions.sqlite")
    whisper = "->transcript via openai/whisper-1"
    for formats, latency, cost in (("audio/webm", 100.0, 0.01), ("audio/ogg, audio/webm", 300.0, 0.02),
                                   ("audio/webm", 200.0, 0.03)):
        route = RouteInfo("voice", "openai", "gpt-4o", steps=[
            Step(f"bridge:audio ({formats}){whisper}", "openai", "whisper-1", latency, Usage(audio_seconds=2.0,
                                                                                          cost_usd=cost)),
            Step("answer", "openai", "gpt-4o", 50.0, Usage(input_tokens=10, cost_usd=0.001))])
        store.record(Answer("ok", None, Usage(), route))
    failed = RouteInfo("voice", "openai", "gpt-4o", steps=[
        Step(f"bridge:audio (audio/x-caf){whisper} (failed)", "openai", "whisper-1", 5.0)])
    store.record(Answer("", None, Usage(), failed))
    store.close()

    rows = json.loads(ok(Cli("stats", "--data-dir", data_dir, "--json").result()).stdout)
    by_step = {r["purpose"]: r for r in rows}
    assert set(by_step) == {f"bridge:audio{whisper}", f"bridge:audio{whisper} (failed)", "answer"}
    bridge = by_step[f"bridge:audio{whisper}"]
    assert bridge["calls"] == 3 and bridge["max_latency_ms"] == 300.0
    assert bridge["mean_latency_ms"] == pytest.approx(200.0) and bridge["cost_usd"] == pytest.approx(0.06)
    assert bridge["audio_seconds"] == pytest.approx(6.0)
    table = ok(Cli("stats", "--data-dir", data_dir).result()).stdout
    assert sum("bridge:audio" in line for line in table.splitlines()) == 2  # the bridge and its failed call


# -- an upload's type without parameters ---------------------------------------------------------------


def recording(container: str, codec: str, rate: int, sample_format: str = "s16") -> bytes:
    """Half a second of a tone, encoded with ``codec`` in ``container`` by PyAV (ffmpeg)."""
    out_buffer = io.BytesIO()
    with av.open(out_buffer, "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")
        samples = (np.sin(np.arange(rate // 2) * 2 * np.pi * 440 / rate) * 8000).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = rate, 0, Fraction(1, rate)
        resampler = av.AudioResampler(format=sample_format, layout="mono", rate=rate,
                                      frame_size=stream.codec_context.frame_size or None)
        for resampled in [*resampler.resample(frame), *resampler.resample(None)]:
            out.mux(stream.encode(resampled))
        out.mux(stream.encode(None))
    return out_buffer.getvalue()


def upload(daemon, data: bytes, mime: str, modality: int) -> pb.UploadMediaResponse:
    metadata = pb.UploadMetadata(modality=modality, mime_type=mime, filename="f", size_bytes=len(data))
    return daemon.stub.UploadMedia(iter([pb.UploadMediaRequest(metadata=metadata), pb.UploadMediaRequest(chunk=data)]),
                                   timeout=30)


def test_an_uploads_type_is_recorded_and_answered_without_its_parameters(start_daemon) -> None:
    """``audio/webm;codecs=opus`` (a browser's MediaRecorder) was recorded and answered so, while an alias is
    recorded as its registered name: both are now the type as routing and the plugins read it."""
    daemon = start_daemon(CONFIG)
    webm = recording("webm", "libopus", 48000, "s16")
    reply = upload(daemon, webm, "audio/webm;codecs=opus", pb.MODALITY_AUDIO)
    assert reply.mime_type == "audio/webm"
    assert stored_record(daemon.data_dir, webm)["mime_type"] == "audio/webm"
    notes = "Café notes\n".encode()
    reply = upload(daemon, notes, "Text/Plain; charset=UTF-8", pb.MODALITY_DOCUMENT)
    assert reply.mime_type == "text/plain" and stored_record(daemon.data_dir, notes)["mime_type"] == "text/plain"
    # the stored media are used as they were declared
    media = pb.Media(modality=pb.MODALITY_AUDIO, mime_type="audio/webm; codecs=opus",
                     media_id=hashlib.sha256(webm).hexdigest())
    request = pb.MultimodalRequest(messages=[pb.Message(role=pb.ROLE_USER, parts=[pb.Part(text="hi"),
                                                                                   pb.Part(media=media)])])
    answer = daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=30).answer
    assert "audio=1" in answer.text


# -- phones' and recorders' extensions -----------------------------------------------------------------


#: Recordings of the formats phones and recorders make: extension -> (container, codec, rate, sample format).
RECORDINGS = {".caf": ("caf", "pcm_s16le", 16000, "s16"), ".aiff": ("aiff", "pcm_s16be", 16000, "s16"),
              ".amr": ("amr", "libopencore_amrnb", 8000, "s16"), ".3gp": ("3gp", "aac", 16000, "fltp")}


@pytest.mark.parametrize("extension", sorted(RECORDINGS))
def test_ask_sends_phone_and_recorder_formats_with_their_type(start_daemon, tmp_path, extension) -> None:
    """`ask --audio memo.caf` (iOS's recorder) was refused by the CLI ("its extension .caf names no known
    type"), though the daemon takes audio/x-caf; AMR and 3GP (Android), AIFF (macOS) likewise by
    system. Each is sent, and stored, as its type."""
    daemon = start_daemon(CONFIG)
    data = recording(*RECORDINGS[extension])
    memo = tmp_path / f"memo{extension}"
    memo.write_bytes(data)
    code, out, err = text(mmrouter("ask", "what is said?", "--audio", memo, "--inline-limit", "0",
                                   "--address", daemon.address))
    assert code == 0, err
    assert "audio=1" in out
    assert stored_record(daemon.data_dir, data)["mime_type"] == MIME_BY_EXTENSION[extension]


def test_a_3gp_video_is_sent_as_video(start_daemon, tmp_path) -> None:
    """A .3gp given with --video goes as video/3gpp (its extension names audio/3gpp for --audio)."""
    daemon = start_daemon(CONFIG)
    clip = tmp_path / "clip.3gp"
    clip.write_bytes(recording("3gp", "aac", 16000, "fltp"))
    code, _, err = text(mmrouter("explain", "what is it?", "--video", clip, "--inline-limit", "0",
                                   "--address", daemon.address))
    assert code == 0, err
    assert stored_record(daemon.data_dir, clip.read_bytes())["mime_type"] == "video/3gpp"
