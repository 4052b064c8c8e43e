"""UploadMedia: chunked, content-addressed on disk, referenced by id, checked, bounded in memory."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import pytest
from conftest import launch_daemon
from grpc_helpers import error_details, text_request, wait_for
from media_factory import png
from mmrouter.v1 import router_pb2 as pb

import router.media
from router.errors import StorageFailed
from router.media import MediaStore
from router.types import Modality

CONFIG = """
providers:
  fake: {api_key: test-key}
routes:
  - name: everything
    use: fake/omni
"""

PDF = b"%PDF-1.4\n1 0 obj << /Type /Page >> endobj\n2 0 obj << /Type /Page >> endobj\n%%EOF\n"


def upload(stub, data_chunks, modality=pb.MODALITY_DOCUMENT, mime="application/pdf", size=0, filename="f"):
    def messages():
        yield pb.UploadMediaRequest(metadata=pb.UploadMetadata(modality=modality, mime_type=mime,
                                                               filename=filename, size_bytes=size))
        for chunk in data_chunks:
            yield pb.UploadMediaRequest(chunk=chunk)

    return stub.UploadMedia(messages(), timeout=600)


@pytest.fixture(scope="module")
def daemon(plugin_sites, tmp_path_factory):
    """One daemon of CONFIG shared by the module's tests that upload, name and ask about media: starting one per
    case took minutes of the suite. Media are stored by their bytes and the first upload's record stands, so a
    test sharing it uploads only bytes no other test uploads (or PDF, always stored as the same document, or
    bytes refused before they are stored); it must not remove or list the store beyond its own media, measure
    the daemon's memory, read its log or stats, or leave an upload under way (a temp file). A test needing any
    of that starts its own daemon (``start_daemon(CONFIG)``)."""
    tmp = tmp_path_factory.mktemp("media")
    daemon = launch_daemon(CONFIG, tmp=tmp, env=None, sites=[plugin_sites["testkit"]])
    yield daemon
    daemon.stop()


def test_upload_is_content_addressed_and_usable_by_id(start_daemon) -> None:
    daemon = start_daemon(CONFIG)  # its own: it lists the store's folder of its media id
    body = PDF + os.urandom(5 * 1024 * 1024)  # past one writeback step (4 MiB)
    chunks = [body[i:i + 1024 * 1024] for i in range(0, len(body), 1024 * 1024)]
    reply = upload(daemon.stub, chunks, size=len(body), filename="report.pdf")
    digest = hashlib.sha256(body).hexdigest()
    assert (reply.media_id, reply.size_bytes, reply.mime_type) == (digest, len(body), "application/pdf")
    stored = daemon.data_dir / "media" / digest[:2] / digest
    assert stored.read_bytes() == body
    again = upload(daemon.stub, [body], size=len(body))
    assert again.media_id == digest
    assert [p.name for p in stored.parent.iterdir() if not p.name.endswith(".json")] == [digest]

    media = pb.Media(modality=pb.MODALITY_DOCUMENT, media_id=digest)
    answer = daemon.stub.Generate(pb.GenerateRequest(request=text_request("what is in it?", media=[media]))).answer
    assert "document=1" in answer.text


def test_uploads_go_on_after_the_media_folder_is_removed_under_the_daemon(start_daemon) -> None:
    """A cleaner of old files (or an operator) removed <data_dir>/media while the daemon ran: every upload
    then failed as INTERNAL (no media/tmp to write to) until a restart."""
    import shutil

    daemon = start_daemon(CONFIG)  # its own: it removes the whole store
    shutil.rmtree(daemon.data_dir / "media")
    reply = upload(daemon.stub, [PDF], size=len(PDF), filename="after.pdf")
    assert reply.media_id == hashlib.sha256(PDF).hexdigest()
    assert (daemon.data_dir / "media" / reply.media_id[:2] / reply.media_id).read_bytes() == PDF
    assert (daemon.data_dir / "media" / "tmp").stat().st_mode & 0o777 == 0o700


def _explain(daemon, media: pb.Media) -> pb.Route:
    request = text_request("what is it?", media=[media])
    return daemon.stub.ExplainRoute(pb.ExplainRouteRequest(request=request), timeout=30).route


M4A = b"\0\0\0\x20ftypM4A " + b"\0" * 100
PNG = png()


def test_a_media_id_reference_is_checked_against_the_uploaded_content(daemon) -> None:
    """A mime_type given with a media_id was not checked at all; inline, the same mismatch is MIME_MISMATCH.
    The upload's own type, an alias of it, a type the upload corrected (aac for an m4a), or one that cannot
    be checked (what the CLI sends for a file without an extension) still pass, as inline."""
    pdf_id = upload(daemon.stub, [PDF]).media_id
    png_id = upload(daemon.stub, [PNG], modality=pb.MODALITY_IMAGE, mime="image/png").media_id
    m4a_id = upload(daemon.stub, [M4A], modality=pb.MODALITY_AUDIO, mime="audio/aac").media_id
    for modality, media_id, mime in [
        (pb.MODALITY_DOCUMENT, pdf_id, ""), (pb.MODALITY_DOCUMENT, pdf_id, "Application/PDF"),
        (pb.MODALITY_DOCUMENT, pdf_id, "application/octet-stream"), (pb.MODALITY_IMAGE, png_id, "image/x-png"),
        (pb.MODALITY_AUDIO, m4a_id, "audio/mp4"), (pb.MODALITY_AUDIO, m4a_id, "audio/aac"),
    ]:
        assert _explain(daemon, pb.Media(modality=modality, media_id=media_id, mime_type=mime)).model == "omni"
    for modality, media_id, mime in [(pb.MODALITY_IMAGE, png_id, "image/jpeg"), (pb.MODALITY_AUDIO, m4a_id, "audio/wav")]:
        with pytest.raises(grpc.RpcError) as caught:
            _explain(daemon, pb.Media(modality=modality, media_id=media_id, mime_type=mime))
        details = error_details(caught.value)
        assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "MIME_MISMATCH")
        assert details.violations[0][0] == "request.messages[0].parts[0].media.mime_type"
        assert f"declared {mime!r} but the content looks like" in details.violations[0][1]
        assert f"media {media_id} was uploaded as" in details.violations[0][1]


def test_a_malformed_media_id_is_invalid_and_an_unknown_one_not_found_naming_the_field(daemon) -> None:
    real = upload(daemon.stub, [PDF]).media_id
    for media_id in (real.upper(), "../../etc/passwd", real + "\n"):
        with pytest.raises(grpc.RpcError) as caught:
            _explain(daemon, pb.Media(modality=pb.MODALITY_DOCUMENT, media_id=media_id))
        details = error_details(caught.value)
        assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST"), media_id
        assert details.violations[0][0] == "request.messages[0].parts[0].media.media_id"
        assert "UploadMedia returned" in details.violations[0][1]
    with pytest.raises(grpc.RpcError) as caught:
        _explain(daemon, pb.Media(modality=pb.MODALITY_DOCUMENT, media_id="0" * 64))
    details = error_details(caught.value)
    assert (details.code, details.reason) == (grpc.StatusCode.NOT_FOUND, "MEDIA_NOT_FOUND")
    assert [f for f, _ in details.violations] == ["request.messages[0].parts[0].media.media_id"]


def test_upload_checks_the_mime_type_against_the_bytes(daemon) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        upload(daemon.stub, [b"\x89PNG\r\n\x1a\n" + b"\0" * 100], mime="application/pdf")
    details = error_details(caught.value)
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "MIME_MISMATCH")
    assert not list((daemon.data_dir / "media" / "tmp").iterdir()), "a rejected upload left a temp file"


def test_an_uploaded_mime_type_is_recorded_in_lower_case_without_its_parameters(daemon) -> None:
    """`IMAGE/PNG` was recorded and answered as given: MIME types and subtypes are case-insensitive; a
    parameter (a text's charset: text documents are UTF-8) is not part of the type recorded."""
    pdf = PDF + b"%lower-case\n"  # its own bytes: the record is this upload's (the shared store)
    assert upload(daemon.stub, [pdf], mime="Application/PDF").mime_type == "application/pdf"
    text = upload(daemon.stub, [b"hello"], mime="Text/Plain; charset=UTF-8")
    assert text.mime_type == "text/plain"


def test_upload_needs_metadata_first(daemon) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        daemon.stub.UploadMedia(iter([pb.UploadMediaRequest(chunk=PDF)]))
    details = error_details(caught.value)
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
    assert details.violations[0][0] == "metadata"


@pytest.mark.parametrize("filename", ["f" * 256 + ".pdf", "report\n2026-11-26 12:00:00 INFO fake.pdf"],
                         ids=["too-long", "newline"])
def test_upload_checks_the_file_name(daemon, filename) -> None:
    """The name is stored with the upload, logged and sent to providers: bounded and printable."""
    meta = pb.UploadMetadata(modality=pb.MODALITY_DOCUMENT, mime_type="application/pdf", filename=filename)
    with pytest.raises(grpc.RpcError) as caught:
        daemon.stub.UploadMedia(iter([pb.UploadMediaRequest(metadata=meta), pb.UploadMediaRequest(chunk=PDF)]))
    details = error_details(caught.value)
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
    assert details.violations[0][0] == "metadata.filename"


@pytest.mark.parametrize(("after_metadata", "field"), [
    (pb.UploadMediaRequest(metadata=pb.UploadMetadata(modality=pb.MODALITY_DOCUMENT, mime_type="application/pdf")),
     "metadata"),
    (pb.UploadMediaRequest(), "chunk"),
], ids=["metadata-twice", "no-payload"])
def test_upload_messages_after_the_first_carry_chunks(daemon, after_metadata, field) -> None:
    first = pb.UploadMediaRequest(metadata=pb.UploadMetadata(modality=pb.MODALITY_DOCUMENT, mime_type="application/pdf"))
    with pytest.raises(grpc.RpcError) as caught:
        daemon.stub.UploadMedia(iter([first, pb.UploadMediaRequest(chunk=PDF), after_metadata]))
    assert error_details(caught.value).violations[0][0] == field


def test_metadata_sent_twice_before_any_chunk_is_named_as_it_happened(daemon) -> None:
    """The refusal said "sent again after chunks" of metadata sent twice before any chunk."""
    first = pb.UploadMediaRequest(metadata=pb.UploadMetadata(modality=pb.MODALITY_DOCUMENT, mime_type="application/pdf"))
    with pytest.raises(grpc.RpcError) as caught:
        daemon.stub.UploadMedia(iter([first, first, pb.UploadMediaRequest(chunk=PDF)]))
    [(field, description)] = error_details(caught.value).violations
    assert field == "metadata" and "after chunks" not in description and "only the first message" in description


def test_upload_size_must_match_the_metadata(daemon) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        upload(daemon.stub, [PDF], size=len(PDF) + 1)
    assert error_details(caught.value).violations[0][0] == "metadata.size_bytes"


def test_an_upload_longer_than_it_said_is_refused_at_once(daemon) -> None:
    """Bytes past metadata.size_bytes are not read to the end (up to the 64 GiB limit) before the
    refusal; a negative size is refused before any byte."""
    sent = []

    def chunks():  # endless: only a refusal as soon as the stated size is passed ends it
        yield pb.UploadMediaRequest(metadata=pb.UploadMetadata(modality=pb.MODALITY_DOCUMENT,
                                                               mime_type="application/pdf", size_bytes=len(PDF)))
        yield pb.UploadMediaRequest(chunk=PDF)
        while len(sent) < 10_000:  # 10 GB: the test would time out long before
            sent.append(1)
            yield pb.UploadMediaRequest(chunk=b"x" * (1 << 20))

    with pytest.raises(grpc.RpcError) as caught:
        daemon.stub.UploadMedia(chunks(), timeout=60)
    got = error_details(caught.value)
    assert (got.code, got.violations[0][0]) == (grpc.StatusCode.INVALID_ARGUMENT, "metadata.size_bytes")
    assert "received more than" in got.message and len(sent) < 100
    with pytest.raises(grpc.RpcError) as caught:
        upload(daemon.stub, [PDF], size=-1)
    assert "cannot be negative" in error_details(caught.value).violations[0][1]


@pytest.mark.parametrize(("declared", "size", "field"), [(True, 2000, "metadata.size_bytes"), (False, 1064, "chunk")],
                         ids=["size-said", "bytes-received"])
def test_upload_over_the_limit_is_refused(start_daemon, declared, size, field) -> None:
    """The refusal names the setting, its limit and the size, as inline media's does (the CLI reads "limit")."""
    daemon = start_daemon(CONFIG + "server:\n  max_upload_bytes: 1000\n")
    with pytest.raises(grpc.RpcError) as caught:
        upload(daemon.stub, [PDF + b"\0" * (1000 - len(PDF)), b"\0" * 64, b"\0" * 936], size=size if declared else 0)
    details = error_details(caught.value)
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "PAYLOAD_TOO_LARGE")
    assert details.metadata == {"limit": "max_upload_bytes", "limit_bytes": "1000", "size_bytes": str(size)}
    assert [f for f, _ in details.violations] == [field]
    assert "server.max_upload_bytes" in details.message


def _peak_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))


@pytest.mark.slow
def test_a_one_gib_upload_keeps_the_daemon_memory_bounded(start_daemon) -> None:
    daemon = start_daemon(CONFIG)  # its own: it measures the daemon's peak memory
    chunk = os.urandom(1024 * 1024)
    total = 1024 * len(chunk) + len(PDF)
    before = _peak_rss_kib(daemon.proc.pid)
    expected = hashlib.sha256(PDF)
    for _ in range(1024):
        expected.update(chunk)
    reply = upload(daemon.stub, [PDF, *([chunk] * 1024)], size=total)
    growth_mib = (_peak_rss_kib(daemon.proc.pid) - before) / 1024
    assert reply.size_bytes == total and reply.media_id == expected.hexdigest()
    assert growth_mib < 100, f"peak RSS grew by {growth_mib:.0f} MiB for a 1 GiB upload"
    (daemon.data_dir / "media" / reply.media_id[:2] / reply.media_id).unlink()


def test_rules_match_on_media_duration_and_pdf_pages(start_daemon) -> None:
    from media_factory import mp4, pdf, wav

    daemon = start_daemon("""
        providers:
          fake: {api_key: k}
        routes:
          - name: short-clips
            match: {inputs_any: [video], video_seconds: {max: 5}}
            use: fake/omni
          - name: long-audio
            match: {audio_seconds: {min: 2}}
            use: fake/omni
          - name: thin-pdfs
            match: {inputs_any: [document], pdf_pages: {max: 2}}
            use: fake/docs
          - name: rest
            use: fake/omni
        """)

    def rule_for(modality, mime, data):
        media = pb.Media(modality=modality, mime_type=mime, data=data)
        route = daemon.stub.ExplainRoute(pb.ExplainRouteRequest(request=text_request("?", media=[media]))).route
        return route.rule, {t.rule: t.reason for t in route.trace}

    assert rule_for(pb.MODALITY_VIDEO, "video/mp4", mp4())[0] == "short-clips"
    assert rule_for(pb.MODALITY_AUDIO, "audio/wav", wav(3.0))[0] == "long-audio"
    rule, reasons = rule_for(pb.MODALITY_AUDIO, "audio/wav", wav(1.0))
    assert rule == "rest" and "audio_seconds is 1, rule wants >= 2" in reasons["long-audio"]
    assert rule_for(pb.MODALITY_DOCUMENT, "application/pdf", pdf(["one", "two"]))[0] == "thin-pdfs"
    rule, reasons = rule_for(pb.MODALITY_DOCUMENT, "application/pdf", pdf(["a", "b", "c"]))
    assert rule == "rest" and "pdf_pages is 3" in reasons["thin-pdfs"]


def _temp_files(daemon) -> list:
    return list((daemon.data_dir / "media" / "tmp").iterdir())


def test_an_upload_over_the_limit_midway_stops_and_leaves_no_temp_file(start_daemon) -> None:
    daemon = start_daemon(CONFIG + "server:\n  max_upload_bytes: 300000\n")
    with pytest.raises(grpc.RpcError) as caught:  # no size declared: the limit is met on the 5th chunk
        upload(daemon.stub, [PDF + os.urandom(65536)] + [os.urandom(65536)] * 20)
    details = error_details(caught.value)
    assert details.reason == "PAYLOAD_TOO_LARGE"
    assert details.metadata == {"limit": "max_upload_bytes", "limit_bytes": "300000",
                                "size_bytes": str(len(PDF) + 5 * 65536)}
    assert not _temp_files(daemon), "a refused upload left a temp file"
    ok = upload(daemon.stub, [PDF, os.urandom(1000)])  # the store still works
    assert ok.size_bytes == len(PDF) + 1000


def test_an_upload_abandoned_by_its_client_leaves_no_temp_file(start_daemon) -> None:
    daemon = start_daemon(CONFIG)  # its own: it checks that nothing at all was stored
    sent = threading.Event()
    release = threading.Event()

    def messages():  # size_bytes as the CLI sends it: a stream cut short can then never be stored
        yield pb.UploadMediaRequest(metadata=pb.UploadMetadata(modality=pb.MODALITY_DOCUMENT,
                                                               mime_type="application/pdf",
                                                               size_bytes=len(PDF) + 8 * 1024 * 1024))
        yield pb.UploadMediaRequest(chunk=PDF + os.urandom(1024 * 1024))
        for _ in range(4):
            yield pb.UploadMediaRequest(chunk=os.urandom(1024 * 1024))
        sent.set()
        release.wait(30)  # hold the stream open until the client gives up

    call = daemon.stub.UploadMedia.future(messages(), timeout=60)
    assert sent.wait(30)
    assert wait_for(lambda: _temp_files(daemon)), "the upload never started writing"
    call.cancel()
    release.set()
    assert wait_for(lambda: not _temp_files(daemon)), "the abandoned upload's temp file stayed"
    assert not list((daemon.data_dir / "media").glob("*/*.json")), "an abandoned upload was stored"
    assert upload(daemon.stub, [PDF]).size_bytes == len(PDF)


class HeldUpload:
    """An upload whose client sends the metadata (after ``go`` is set) and a first chunk, then holds
    the stream open until ``finish`` is set: it then ends, and the upload succeeds (unless it said
    it would send ``more`` bytes)."""

    def __init__(self, stub, *, started: bool = True, more: int = 0) -> None:
        self.go, self.finish = threading.Event(), threading.Event()
        if started:
            self.go.set()
        self.body = PDF + os.urandom(1000)  # its own bytes: its own media id
        self.size = len(self.body) + more
        self.call = stub.UploadMedia.future(self._messages(), timeout=60)

    def _messages(self):
        if not self.go.wait(30):
            return
        yield pb.UploadMediaRequest(metadata=pb.UploadMetadata(modality=pb.MODALITY_DOCUMENT,
                                                               mime_type="application/pdf", size_bytes=self.size))
        yield pb.UploadMediaRequest(chunk=self.body)
        self.finish.wait(30)

    def result(self) -> pb.UploadMediaResponse:
        self.finish.set()
        return self.call.result(30)


def test_concurrent_uploads_are_capped_and_every_ending_frees_its_slot(start_daemon) -> None:
    """Each upload holds a file descriptor: thousands at once exhausted the daemon's. Over
    server.max_concurrent_uploads one is refused at once, and every way an upload ends frees its slot."""
    daemon = start_daemon(CONFIG + "server:\n  max_concurrent_uploads: 2\n")
    # the one to cancel says it has more to send, as the CLI does: cut short, it cannot be stored
    cancelled, finished = HeldUpload(daemon.stub, more=1000), HeldUpload(daemon.stub)
    assert wait_for(lambda: len(_temp_files(daemon)) == 2), "the two uploads never started writing"

    refused = HeldUpload(daemon.stub, started=False)  # it sends nothing: refused without its metadata
    details = error_details(refused.call.exception(30))
    refused.go.set()
    assert (details.code, details.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_UPLOADS")
    assert "2 uploads are under way" in details.message and "raise server.max_concurrent_uploads" in details.message
    assert details.metadata == {"limit": "max_concurrent_uploads", "limit_uploads": "2"}
    assert details.retry_delay == 1.0
    assert len(_temp_files(daemon)) == 2

    cancelled.call.cancel()
    cancelled.finish.set()
    assert wait_for(lambda: len(_temp_files(daemon)) == 1), "the cancelled upload's temp file stayed"
    cut = hashlib.sha256(cancelled.body).hexdigest()
    assert not (daemon.data_dir / "media" / cut[:2] / cut).exists(), "the cancelled upload was stored"
    with pytest.raises(grpc.RpcError) as caught:  # the cancelled one's slot is free: bad input is taken...
        upload(daemon.stub, [b"not a pdf at all"])
    assert error_details(caught.value).reason == "MIME_MISMATCH"
    assert upload(daemon.stub, [PDF]).size_bytes == len(PDF)  # ...and so is a good upload, after it
    assert finished.result().size_bytes == len(finished.body)

    # every ending (success, refusal, cancellation, bad input) gave its slot back: two at once again
    both = [HeldUpload(daemon.stub), HeldUpload(daemon.stub)]
    assert [u.result().size_bytes for u in both] == [len(u.body) for u in both]


WEBM = b"\x1a\x45\xdf\xa3" + b"\x01" * 200


def test_the_same_bytes_keep_their_first_record(daemon) -> None:
    """One id, one record: another MIME type or name keeps the first; so does an upload as audio of a
    stored video (a request may name it as audio: an app uploading a voice note as audio was refused
    because another client had uploaded the same bytes as video); audio uploaded again as video takes the video's
    record, which serves both (it was refused: a video once uploaded for its sound could never be asked about)."""
    video = upload(daemon.stub, [WEBM], modality=pb.MODALITY_VIDEO, mime="video/webm", filename="clip.webm")
    as_audio = upload(daemon.stub, [WEBM], modality=pb.MODALITY_AUDIO, mime="audio/webm", filename="voice.webm")
    assert (as_audio.media_id, as_audio.modality, as_audio.mime_type) == (video.media_id, pb.MODALITY_VIDEO,
                                                                           "video/webm")
    heard = pb.Media(modality=pb.MODALITY_AUDIO, media_id=as_audio.media_id)
    answer = daemon.stub.Generate(pb.GenerateRequest(request=text_request("hear", media=[heard]))).answer
    assert "audio=1" in answer.text

    sound = WEBM + b"\x02"  # other bytes, stored first as audio
    first = upload(daemon.stub, [sound], modality=pb.MODALITY_AUDIO, mime="audio/webm")
    as_video = pb.Media(modality=pb.MODALITY_VIDEO, media_id=first.media_id)
    with pytest.raises(grpc.RpcError) as caught:  # named as video while its record is audio's: how to fix it
        daemon.stub.Generate(pb.GenerateRequest(request=text_request("see", media=[as_video])))
    assert "upload it with UploadMedia as video" in error_details(caught.value).violations[0][1]
    upgraded = upload(daemon.stub, [sound], modality=pb.MODALITY_VIDEO, mime="video/webm")
    assert (upgraded.media_id, upgraded.modality, upgraded.mime_type) == (first.media_id, pb.MODALITY_VIDEO,
                                                                         "video/webm")
    seen = daemon.stub.Generate(pb.GenerateRequest(request=text_request("see", media=[as_video]))).answer
    assert "video=1" in seen.text
    still_heard = pb.Media(modality=pb.MODALITY_AUDIO, media_id=first.media_id, mime_type="audio/webm")
    assert "audio=1" in daemon.stub.Generate(pb.GenerateRequest(request=text_request("hear", media=[still_heard]))).answer.text

    again = upload(daemon.stub, [WEBM], modality=pb.MODALITY_VIDEO, mime="video/x-matroska", filename="other.mkv")
    assert (again.media_id, again.mime_type) == (video.media_id, "video/webm")
    media = pb.Media(modality=pb.MODALITY_VIDEO, media_id=video.media_id)
    answer = daemon.stub.Generate(pb.GenerateRequest(request=text_request("describe", media=[media]))).answer
    assert "video=1" in answer.text, "the first client's id no longer works as it was uploaded"
    assert not _temp_files(daemon)


def test_put_bytes_keeps_the_stored_record(tmp_path) -> None:
    store = MediaStore(tmp_path, 1 << 20)
    first = store.put_bytes(WEBM, "video/webm", Modality.VIDEO)
    second = store.put_bytes(WEBM, "audio/webm", Modality.AUDIO)
    assert (second.media_id, second.modality, second.mime_type) == (first.media_id, Modality.VIDEO, "video/webm")
    assert store.get(first.media_id).modality is Modality.VIDEO
    assert store.get(first.media_id).as_media().filename == ""  # no client's name for the bytes is kept


def test_put_bytes_that_fail_to_commit_leave_no_temp_file(tmp_path) -> None:
    store = MediaStore(tmp_path, 1 << 20)
    media_id = hashlib.sha256(PDF).hexdigest()
    (tmp_path / media_id[:2]).write_text("a file where the store needs a directory")
    with pytest.raises(StorageFailed, match="a file where the store needs a folder"):
        store.put_bytes(PDF, "application/pdf", Modality.DOCUMENT)
    assert not list((tmp_path / "tmp").iterdir()), "the failed put left its temp file"


def test_a_record_is_written_whole_or_not_at_all(tmp_path, monkeypatch) -> None:
    """A write of the metadata that fails midway (here: unencodable text, as a full disk would) leaves
    no half-written record and no temp file; the next store of the same bytes succeeds."""
    store = MediaStore(tmp_path, 1 << 20)
    media_id = hashlib.sha256(PDF).hexdigest()
    real_dumps = router.media.json.dumps
    monkeypatch.setattr(router.media.json, "dumps", lambda obj: '{"mime_type": "\udc80"}')
    with pytest.raises(UnicodeEncodeError):
        store.put_bytes(PDF, "application/pdf", Modality.DOCUMENT)
    record = tmp_path / media_id[:2] / f"{media_id}.json"
    assert not record.exists(), f"a half-written record was left: {record.read_bytes()!r}"
    assert not list((tmp_path / "tmp").iterdir())
    monkeypatch.setattr(router.media.json, "dumps", real_dumps)
    stored = store.put_bytes(PDF, "application/pdf", Modality.DOCUMENT)
    assert store.get(media_id).size == len(PDF) == stored.size


STORE_UNDER_A_FILE_SIZE_LIMIT = """
import asyncio, os, resource, sys
from pathlib import Path
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))  # no file may grow past 1 MiB
from router.errors import StorageFull
from router.media import MediaStore
from router.types import Modality

store = MediaStore(Path(sys.argv[1]), 1 << 30)

async def chunks():
    yield b"%PDF-1.4\\n" + b"x" * (1 << 20)
    yield b"y" * (1 << 20)

for name, call in (("upload", lambda: asyncio.run(store.upload("application/pdf", Modality.DOCUMENT,
                                                                 0, chunks()))),
                   ("put_bytes", lambda: store.put_bytes(b"%PDF-1.4" + b"z" * (2 << 20), "application/pdf",
                                                         Modality.DOCUMENT))):
    try:
        call()
        print(name, "STORED")
    except StorageFull as exc:
        print(name, exc.code.name, exc.reason, exc.message)
print("temp files", len(os.listdir(Path(sys.argv[1]) / "tmp")))
"""


def test_a_full_disk_is_resource_exhausted_and_leaves_nothing_behind(tmp_path) -> None:
    """Writes that hit the disk's limit (here a file size limit, EFBIG; ENOSPC and EDQUOT alike) are
    STORAGE_FULL, not INTERNAL, and leave no temp file."""
    result = subprocess.run([sys.executable, "-c", STORE_UNDER_A_FILE_SIZE_LIMIT, str(tmp_path / "media")],
                            capture_output=True, text=True, timeout=60, cwd=Path(__file__).parent.parent)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for line, name in zip(lines, ("upload", "put_bytes"), strict=False):
        assert line.startswith(f"{name} RESOURCE_EXHAUSTED STORAGE_FULL cannot store"), result.stdout
        assert "nothing was kept" in line
    assert lines[-1] == "temp files 0"
    assert not list((tmp_path / "media").glob("*/*.json"))


def test_every_temp_file_of_a_killed_daemon_is_removed_at_its_restart(start_daemon, tmp_path) -> None:
    """The daemon holds the data directory (daemon.lock): at its start no upload is under way, so even
    the temp file of an upload cut a second ago (kill -9, then a quick restart) is removed."""
    tmp = tmp_path / "data" / "media" / "tmp"
    tmp.mkdir(parents=True)
    (tmp / "tmpjustcut").write_bytes(b"half an upload, cut a second ago")
    daemon = start_daemon(CONFIG, data_dir=tmp_path / "data")
    assert not _temp_files(daemon)
    assert "removed 1 temp file(s) left by interrupted uploads" in daemon.logs()


# -- damaged media: found, and repaired by uploading it again ---------------------------------


def _ask_about(daemon, media_id: str) -> pb.Answer:
    media = pb.Media(modality=pb.MODALITY_DOCUMENT, media_id=media_id)
    return daemon.stub.Generate(pb.GenerateRequest(request=text_request("what is in it?", media=[media])),
                                timeout=30).answer


@pytest.mark.parametrize("kept", [0, 10])
def test_media_cut_short_is_not_found_and_uploading_it_again_repairs_it(daemon, kept) -> None:
    """Bytes cut short on disk (a power cut before they reached it, a hand edit) are never handed to a
    provider as complete: the id is MEDIA_NOT_FOUND saying so, and the same upload puts them back."""
    body = PDF + os.urandom(5000)
    media_id = upload(daemon.stub, [body], size=len(body)).media_id
    path = daemon.data_dir / "media" / media_id[:2] / media_id
    path.write_bytes(body[:kept])

    with pytest.raises(grpc.RpcError) as caught:
        _ask_about(daemon, media_id)
    details = error_details(caught.value)
    assert (details.code, details.reason) == (grpc.StatusCode.NOT_FOUND, "MEDIA_NOT_FOUND")
    assert f"media {media_id} is damaged: its file holds {kept} of its {len(body)} bytes" in details.message
    assert "upload the same file again" in details.message

    again = upload(daemon.stub, [body], size=len(body))
    assert (again.media_id, again.size_bytes) == (media_id, len(body))
    assert path.read_bytes() == body
    assert "document=1" in _ask_about(daemon, media_id).text
    assert not _temp_files(daemon)


def test_put_bytes_repairs_stored_bytes_cut_short(tmp_path) -> None:
    """Inline media a session keeps go through put_bytes: the same bytes again replace a damaged copy."""
    store = MediaStore(tmp_path, 1 << 20)
    stored = store.put_bytes(PDF, "application/pdf", Modality.DOCUMENT)
    stored.path.write_bytes(b"")
    again = store.put_bytes(PDF, "application/pdf", Modality.DOCUMENT)
    assert (again.size, stored.path.read_bytes()) == (len(PDF), PDF)
    assert store.get(stored.media_id).size == len(PDF)


def test_records_from_before_sizes_were_kept_still_work(tmp_path) -> None:
    store = MediaStore(tmp_path, 1 << 20)
    stored = store.put_bytes(PDF, "application/pdf", Modality.DOCUMENT)
    record = stored.path.with_suffix(".json")
    record.write_text('{"mime_type": "application/pdf", "modality": "document", "filename": ""}')
    assert store.get(stored.media_id).size == len(PDF)


def test_stored_bytes_reach_the_disk_before_they_are_named(tmp_path, monkeypatch) -> None:
    """A rename whose bytes were still in the page cache becomes an empty file after a power cut: the
    temp file is synced before it is renamed into place, and the directory after the renames."""
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst) -> None:
        events.append(("replace", str(src)))
        real_replace(src, dst)

    monkeypatch.setattr(router.media.os, "fsync", fsync)
    monkeypatch.setattr(router.media.os, "replace", replace)
    store = MediaStore(tmp_path, 1 << 20)

    async def chunks():
        yield PDF

    stored = asyncio.run(store.upload("application/pdf", Modality.DOCUMENT, 0, chunks()))
    data_tmp = next(path for kind, path in events if kind == "replace" and not path.endswith(".json"))
    assert events.index(("fsync", data_tmp)) < events.index(("replace", data_tmp))
    assert events[-1] == ("fsync", str(stored.path.parent)), events


def test_media_whose_use_cannot_be_recorded_is_still_served(tmp_path, monkeypatch, caplog) -> None:
    """Setting a record's time (prune's "last used") can fail (a read-only remount, files restored as
    another user): the media is readable, so it is served; the failure is logged once."""
    store = MediaStore(tmp_path, 1 << 20)
    stored = store.put_bytes(PDF, "application/pdf", Modality.DOCUMENT)

    def utime(path, *args, **kwargs) -> None:
        raise PermissionError(1, "Operation not permitted", str(path))

    monkeypatch.setattr(router.media.os, "utime", utime)
    for _ in range(3):
        assert store.get(stored.media_id).size == len(PDF)
    warnings = [r.getMessage() for r in caplog.records if "cannot mark media" in r.getMessage()]
    assert len(warnings) == 1 and "Operation not permitted" in warnings[0] and stored.media_id in warnings[0]


# -- text documents ----------------------------------------------------------------------------

NOTES = "# Notes\nCafé, naïve: ünïcödé text.\n".encode()


@pytest.mark.parametrize("mime", ["text/plain", "text/markdown", "text/csv; charset=utf-8"])
def test_utf8_text_documents_are_accepted_inline_and_uploaded(daemon, mime) -> None:
    inline = pb.Media(modality=pb.MODALITY_DOCUMENT, mime_type=mime, data=NOTES, filename="notes")
    answer = daemon.stub.Generate(pb.GenerateRequest(request=text_request("sum up", media=[inline]))).answer
    assert "document=1" in answer.text

    notes = NOTES + f"({mime})\n".encode()  # its own bytes: the record is this upload's (the shared store)
    reply = upload(daemon.stub, [notes[:5], notes[5:]], mime=mime, size=len(notes))  # a head split mid-character
    assert reply.media_id == hashlib.sha256(notes).hexdigest()
    stored = pb.Media(modality=pb.MODALITY_DOCUMENT, media_id=reply.media_id)
    answer = daemon.stub.Generate(pb.GenerateRequest(request=text_request("sum up", media=[stored]))).answer
    assert "document=1" in answer.text


@pytest.mark.parametrize(("content", "why"), [
    (PDF, None),  # ASCII enough to be text, so it passes: only NULs and bad UTF-8 are refused
    (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", "NUL bytes"),
    ("UTF-16 text".encode("utf-16"), "UTF-16 text"),
    ("latin-1: café".encode("latin-1"), "not UTF-8"),
    ("café in latin-1".encode("latin-1") * 1000, "not UTF-8"),
], ids=["ascii-pdf", "png", "utf-16", "latin-1-at-the-end", "latin-1-long"])
def test_binary_content_declared_as_text_is_refused_inline_and_uploaded(daemon, content, why) -> None:
    inline = pb.Media(modality=pb.MODALITY_DOCUMENT, mime_type="text/plain", data=content)
    request = text_request("read it", media=[inline])
    if why is None:
        assert "document=1" in daemon.stub.Generate(pb.GenerateRequest(request=request)).answer.text
        return
    with pytest.raises(grpc.RpcError) as caught:
        daemon.stub.Generate(pb.GenerateRequest(request=request))
    details = error_details(caught.value)
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "MIME_MISMATCH")
    assert why in details.message and details.violations[0][0].endswith(".mime_type")

    with pytest.raises(grpc.RpcError) as caught:
        upload(daemon.stub, [content], mime="text/plain")
    assert error_details(caught.value).reason == "MIME_MISMATCH" and why in caught.value.details()


def test_text_is_a_document_type_only(daemon) -> None:
    inline = pb.Media(modality=pb.MODALITY_IMAGE, mime_type="text/plain", data=NOTES)
    with pytest.raises(grpc.RpcError) as caught:
        daemon.stub.Generate(pb.GenerateRequest(request=text_request("hi", media=[inline])))
    assert "is not an image type" in caught.value.details()


# -- the media one request may refer to --------------------------------------------------------

def test_a_request_naming_uploads_over_the_media_limit_is_refused_before_reading_them(start_daemon) -> None:
    """The default limit (64 GiB, as much as one upload may hold) counts every reference: 16 MiB
    named 4097 times, in a request of 300 kB, is refused at once, naming the limit."""
    daemon = start_daemon(CONFIG)  # its own: it measures the daemon's peak memory
    body = PDF + os.urandom(16 * 1024 * 1024 - len(PDF))
    media_id = upload(daemon.stub, [body[i:i + (1 << 20)] for i in range(0, len(body), 1 << 20)]).media_id
    ref = pb.Media(modality=pb.MODALITY_DOCUMENT, media_id=media_id)
    request = text_request("compare them all", media=[ref] * 4097)
    assert request.ByteSize() < 400_000
    before = _peak_rss_kib(daemon.proc.pid)
    with pytest.raises(grpc.RpcError) as caught:
        daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=60)
    details = error_details(caught.value)
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "PAYLOAD_TOO_LARGE")
    assert details.metadata == {"limit": "max_request_media_bytes", "limit_bytes": str(64 * 1024**3),
                                "size_bytes": str(4097 * len(body))}
    assert details.violations[0][0] == "request.messages" and "4097 media parts" in details.message
    assert (_peak_rss_kib(daemon.proc.pid) - before) < 50 * 1024, "the daemon read the media it refused"

    request = text_request("compare", media=[ref] * 3)  # under the limit: answered
    assert "document=3" in daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=60).answer.text


def test_the_media_limit_per_request_is_a_server_setting(start_daemon) -> None:
    daemon = start_daemon(CONFIG + "server:\n  max_request_media_bytes: 1000000\n")
    body = PDF + b"x" * (400_000 - len(PDF))
    ref = pb.Media(modality=pb.MODALITY_DOCUMENT, media_id=upload(daemon.stub, [body]).media_id)
    assert "document=2" in daemon.stub.Generate(pb.GenerateRequest(request=text_request(
        "two", media=[ref] * 2)), timeout=60).answer.text
    with pytest.raises(grpc.RpcError) as caught:
        daemon.stub.Generate(pb.GenerateRequest(request=text_request("three", media=[ref] * 3)), timeout=60)
    details = error_details(caught.value)
    assert (details.reason, details.metadata["limit_bytes"]) == ("PAYLOAD_TOO_LARGE", "1000000")


def test_the_media_limit_counts_inline_and_stored_media_and_each_reference(tmp_path) -> None:
    from router import wire
    from router.errors import PayloadTooLarge

    store = MediaStore(tmp_path, 1 << 20)
    stored = store.put_bytes(PDF + b"x" * 400, "application/pdf", Modality.DOCUMENT)
    looked_up: list[str] = []

    def resolve(media_id: str):
        looked_up.append(media_id)
        return store.get(media_id).as_media()

    def request(*media: pb.Media) -> pb.MultimodalRequest:
        return text_request("hi", media=list(media))

    ref = pb.Media(modality=pb.MODALITY_DOCUMENT, media_id=stored.media_id, filename="first.pdf")
    ref2 = pb.Media(modality=pb.MODALITY_DOCUMENT, media_id=stored.media_id, filename="second.pdf")
    inline = pb.Media(modality=pb.MODALITY_DOCUMENT, mime_type="text/plain", data=b"z" * 100)
    limits = wire.Limits(1 << 20, False, media_bytes=2 * stored.size + 100)
    converted = wire.request_from_proto(request(ref, ref2, inline), limits, resolve)
    assert [m.filename for m in converted.media()] == ["first.pdf", "second.pdf", ""]  # each reference's own name
    assert looked_up == [stored.media_id]  # looked up once
    with pytest.raises(PayloadTooLarge) as caught:
        wire.request_from_proto(request(ref, ref2, inline, pb.Media(modality=pb.MODALITY_DOCUMENT, mime_type="text/plain",
                                                                    data=b"z")), limits, resolve)
    assert caught.value.metadata["size_bytes"] == str(2 * stored.size + 101)


def test_a_text_head_may_end_inside_a_character_but_whole_content_may_not() -> None:
    from router.sniff import HEAD_BYTES, mime_problem

    text = b"a" + ("é" * HEAD_BYTES).encode()  # two bytes each, after one: a cut at an even offset splits one
    assert mime_problem("text/plain", Modality.DOCUMENT, text[:HEAD_BYTES]) is None  # the head of longer content
    assert "not UTF-8" in mime_problem("text/plain", Modality.DOCUMENT, text[:HEAD_BYTES - 2])  # all of it


def test_the_same_bytes_uploaded_twice_at_once_as_two_modalities_get_one_record(tmp_path) -> None:
    """Two uploads of the same bytes that end together, one as audio and one as video: one is stored, the
    other answered as it is when they come one after the other (the video's record serves both). Before, both
    found nothing stored, both were told OK, and the last record written won: an audio record could stand for
    the video's upload, whose id then could not be named as video."""
    from media_factory import mp4

    store = MediaStore(tmp_path, 1 << 24)
    clip = mp4()

    async def upload_both(data: bytes) -> list:
        release = asyncio.Event()

        async def chunks():
            await release.wait()
            yield data

        uploads = [asyncio.ensure_future(store.upload(mime, modality, 0, chunks()))
                   for mime, modality in (("audio/mp4", Modality.AUDIO), ("video/mp4", Modality.VIDEO))]
        await asyncio.sleep(0.05)
        release.set()
        return await asyncio.gather(*uploads, return_exceptions=True)

    for round_ in range(5):  # each round other bytes (a tail the type check does not read)
        data = clip + round_.to_bytes(4, "big")
        results = asyncio.run(upload_both(data))
        stored = store.get(hashlib.sha256(data).hexdigest())
        answered = [r for r in results if not isinstance(r, BaseException)]
        refused = [r for r in results if isinstance(r, BaseException)]
        # whichever came first, both are answered and the record is the video's (which serves audio too)
        assert len(answered) == 2 and not refused, results
        assert stored.modality is Modality.VIDEO and answered[1].modality is Modality.VIDEO, results


def test_a_media_id_with_a_trailing_newline_is_no_id(tmp_path) -> None:
    """``$`` matched before a final newline: such an id passed the check and split the error and the log line."""
    from router.errors import UnknownMedia

    store = MediaStore(tmp_path, 1 << 20)
    stored = store.put_bytes(PDF, "application/pdf", Modality.DOCUMENT)
    with pytest.raises(UnknownMedia, match="is not a sha256 hex digest"):
        store.get(stored.media_id + "\n")
    assert store.get(stored.media_id).size == len(PDF)


def test_an_uploaded_video_may_be_sent_as_audio_for_its_sound(daemon) -> None:
    """The proto says the same stored bytes may be sent as video or as audio (inline bytes may), but a
    media_id uploaded as video and sent as audio was refused."""
    from media_factory import mp4

    data = mp4()
    video_id = upload(daemon.stub, [data], modality=pb.MODALITY_VIDEO, mime="video/mp4").media_id
    sound = pb.Media(modality=pb.MODALITY_AUDIO, media_id=video_id)
    answer = daemon.stub.Generate(pb.GenerateRequest(request=text_request("what is said?", media=[sound]))).answer
    assert "audio=1 video=0" in answer.text

    # other modalities stay refused, naming the one to send
    with pytest.raises(grpc.RpcError) as caught:
        _explain(daemon, pb.Media(modality=pb.MODALITY_IMAGE, media_id=video_id))
    details = error_details(caught.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.violations == [("request.messages[0].parts[0].media.modality",
                                   f"media {video_id} was uploaded as video: send its modality as MODALITY_VIDEO "
                                   "(or as MODALITY_AUDIO, for its sound)")]
    # uploading the bytes again as audio is answered with the video's id and record (see above)
    again = upload(daemon.stub, [data], modality=pb.MODALITY_AUDIO, mime="audio/mp4")
    assert (again.media_id, again.modality) == (video_id, pb.MODALITY_VIDEO)


# -- MIME_MISMATCH messages for common document mistakes -------------------------------------------


@pytest.mark.parametrize(("content", "mime", "says"), [
    (b"\r\n" + PDF, "application/pdf",
     "declared 'application/pdf' but its %PDF- header is at byte 2 (after 2 bytes of white space (line breaks "
     "or spaces)): it must come first; remove what is before it"),
    (b"\xef\xbb\xbf" + PDF, "application/pdf",
     "declared 'application/pdf' but its %PDF- header is at byte 3 (after a UTF-8 byte order mark): it must "
     "come first; remove what is before it"),
    (b"\n<!DOCTYPE html><html><body>Your session expired</body></html>", "application/pdf",
     "declared 'application/pdf' but the content looks like HTML (a web page, such as an error or login page "
     "saved under the file's name)"),
    ("Grüße\r\n".encode("utf-16"), "text/plain",
     "declared 'text/plain' but the content is UTF-16 text (it starts with a UTF-16 byte order mark), not "
     "UTF-8: convert it to UTF-8"),
    (b"\xfe\xff" + "Grüße\r\n".encode("utf-16-be"), "text/plain",
     "declared 'text/plain' but the content is UTF-16 text (it starts with a UTF-16 byte order mark), not "
     "UTF-8: convert it to UTF-8"),
], ids=["crlf-before-pdf", "bom-before-pdf", "html-as-pdf", "utf-16-le", "utf-16-be"])
def test_common_document_mistakes_are_named_in_the_mismatch(daemon, content, mime, says) -> None:
    """A PDF with a line break or a byte order mark before its header, a web page (an expired session's
    error page) saved as a PDF, and Notepad's "Unicode" (UTF-16) text were all refused as "unrecognised
    bytes" or "binary (it has NUL bytes)": the message says what the content is and what to do. What is
    refused does not change; inline and uploaded say the same."""
    inline = pb.Media(modality=pb.MODALITY_DOCUMENT, mime_type=mime, data=content, filename="f")
    with pytest.raises(grpc.RpcError) as caught:
        daemon.stub.Generate(pb.GenerateRequest(request=text_request("read it", media=[inline])))
    details = error_details(caught.value)
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "MIME_MISMATCH")
    assert details.violations[0][1] == says, details.violations
    with pytest.raises(grpc.RpcError) as caught:
        upload(daemon.stub, [content], mime=mime)
    assert error_details(caught.value).reason == "MIME_MISMATCH" and says in caught.value.details()


def test_a_pdf_header_further_in_and_other_bytes_keep_the_plain_message() -> None:
    """Only a header within the first 1024 bytes (where pypdf finds one) is pointed at; other bytes before
    it are counted, and content that is neither a PDF nor a web page still "looks like unrecognised bytes"."""
    from router.sniff import mime_problem

    assert mime_problem("application/pdf", Modality.DOCUMENT, b"junk" + PDF) == (
        "declared 'application/pdf' but its %PDF- header is at byte 4 (after 4 other bytes): it must come "
        "first; remove what is before it")
    for head in (b" " * 2000 + PDF, b"plain words, no header"):
        assert mime_problem("application/pdf", Modality.DOCUMENT, head) == (
            "declared 'application/pdf' but the content looks like unrecognised bytes")
    assert mime_problem("application/pdf", Modality.DOCUMENT, PDF) is None


@pytest.mark.parametrize(("declared", "modality", "head", "named"), [
    ("audio/mpeg", Modality.AUDIO, b"RIFF\x24\x00\x00\x00WAVEfmt ", "audio/wav"),
    ("audio/mp4", Modality.AUDIO, b"\xff\xf1\x50\x80\x02\x1f\xfc" + bytes(9), "audio/aac (ADTS)"),
    ("audio/wav", Modality.AUDIO, b"OggS" + bytes(12), "Ogg (audio/ogg or video/ogg)"),
    ("image/png", Modality.IMAGE, b"RIFF\x24\x00\x00\x00WEBPVP8 ", "image/webp"),
    ("video/mp4", Modality.VIDEO, b"\x1a\x45\xdf\xa3" + bytes(12),
     "WebM/Matroska (video/webm, audio/webm or video/x-matroska)"),
])
def test_a_mime_mismatch_names_what_the_content_is_by_its_mime_types(declared, modality, head, named) -> None:
    """The content was named by the sniffer's own family names ("looks like adts", "looks like wav")."""
    from router.sniff import mime_problem

    assert mime_problem(declared, modality, head) == f"declared {declared!r} but the content looks like {named}"


def test_a_record_an_older_version_wrote_forgets_its_file_name_when_read(tmp_path) -> None:
    """Records written before file names were dropped keep the first uploader's name on disk: the first read
    writes the record again without it (also from within a store of the same bytes)."""
    store = MediaStore(tmp_path, 1 << 20)
    stored = store.put_bytes(PDF, "application/pdf", Modality.DOCUMENT)
    record = stored.path.with_suffix(".json")
    record.write_text(json.dumps({"mime_type": "application/pdf", "modality": "document",
                                  "filename": "Layoffs-Plan-Q3.pdf", "size": len(PDF)}))
    async def chunks():
        yield PDF

    # an upload of the same bytes reads the record while it holds the commit lock
    again = asyncio.run(store.upload("application/pdf", Modality.DOCUMENT, 0, chunks()))
    assert again.media_id == stored.media_id
    assert "Layoffs" not in record.read_text() and store.get(stored.media_id).size == len(PDF)
