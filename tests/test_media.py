"""UploadMedia: chunked, content-addressed on disk, referenced by id, checked, bounded in memory."""

from __future__ import annotations

import hashlib
import os
import threading

import grpc
import pytest
from grpc_helpers import error_details, text_request, wait_for
from mmrouter.v1 import router_pb2 as pb

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


@pytest.fixture
def daemon(start_daemon):
    return start_daemon(CONFIG)


def test_upload_is_content_addressed_and_usable_by_id(daemon) -> None:
    body = PDF + os.urandom(3 * 1024 * 1024)
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


def test_upload_checks_the_mime_type_against_the_bytes(daemon) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        upload(daemon.stub, [b"\x89PNG\r\n\x1a\n" + b"\0" * 100], mime="application/pdf")
    details = error_details(caught.value)
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "MIME_MISMATCH")
    assert not list((daemon.data_dir / "media" / "tmp").iterdir()), "a rejected upload left a temp file"


def test_upload_needs_metadata_first(daemon) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        daemon.stub.UploadMedia(iter([pb.UploadMediaRequest(chunk=PDF)]))
    details = error_details(caught.value)
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
    assert details.violations[0][0] == "metadata"


def test_upload_size_must_match_the_metadata(daemon) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        upload(daemon.stub, [PDF], size=len(PDF) + 1)
    assert error_details(caught.value).violations[0][0] == "metadata.size_bytes"


def test_upload_over_the_limit_is_refused(start_daemon) -> None:
    daemon = start_daemon(CONFIG + "server:\n  max_upload_bytes: 1000\n")
    with pytest.raises(grpc.RpcError) as caught:
        upload(daemon.stub, [PDF + b"\0" * 2000])
    details = error_details(caught.value)
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "PAYLOAD_TOO_LARGE")


def _peak_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))


@pytest.mark.slow
def test_a_one_gib_upload_keeps_the_daemon_memory_bounded(daemon) -> None:
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
    assert error_details(caught.value).reason == "PAYLOAD_TOO_LARGE"
    assert not _temp_files(daemon), "a refused upload left a temp file"
    ok = upload(daemon.stub, [PDF, os.urandom(1000)])  # the store still works
    assert ok.size_bytes == len(PDF) + 1000


def test_an_upload_abandoned_by_its_client_leaves_no_temp_file(daemon) -> None:
    sent = threading.Event()
    release = threading.Event()

    def messages():
        yield pb.UploadMediaRequest(metadata=pb.UploadMetadata(modality=pb.MODALITY_DOCUMENT,
                                                               mime_type="application/pdf"))
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
