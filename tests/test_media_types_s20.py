"""Media types and what the router refuses before any provider call (round 20: QA pdfdocs §1, §2, §3, §5;
video §5).

The daemon runs for real (tests/conftest.py) with the embedded rules; the cloud plugins call the fakes of
tests/fakes through their official SDKs (``test_hybrid.cloud_fakes``), and ``local`` runs in the daemon.
"""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3

import grpc
import pytest
from grpc_helpers import error_details, text_request
from media_factory import mp4, pdf, png
from mmrouter.v1 import router_pb2 as pb
from test_hybrid import ALL_KEYS, config_for

from router.sniff import measure_media
from router.types import Modality

PDF = pdf(["Page one: the parties agree", "Page two: termination clause 30 days"])
STREAM_PATH = "/v1beta/models/gemini-2.5-pro:streamGenerateContent"


def generate(daemon, request: pb.MultimodalRequest) -> pb.Answer:
    """Generate's answer to ``request``."""
    return daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=60).answer


def refused(daemon, request: pb.MultimodalRequest):
    """The error details of Generate refusing ``request``."""
    with pytest.raises(grpc.RpcError) as caught:
        generate(daemon, request)
    return error_details(caught.value)


def document(data: bytes, mime: str, name: str = "contract.pdf") -> pb.Media:
    """An inline document part's media."""
    return pb.Media(modality=pb.MODALITY_DOCUMENT, mime_type=mime, data=data, filename=name)


def upload(daemon, data: bytes, mime: str, modality: int = pb.MODALITY_DOCUMENT) -> pb.UploadMediaResponse:
    """UploadMedia of ``data`` declared ``mime``, in one chunk."""
    def chunks():
        yield pb.UploadMediaRequest(metadata=pb.UploadMetadata(mime_type=mime, modality=modality,
                                                               size_bytes=len(data)))
        yield pb.UploadMediaRequest(chunk=data)
    return daemon.stub.UploadMedia(chunks(), timeout=30)


def named(media_id: str, mime: str = "") -> pb.Media:
    """A document part naming the upload ``media_id``."""
    return pb.Media(modality=pb.MODALITY_DOCUMENT, media_id=media_id, mime_type=mime, filename="contract.pdf")


def sent_documents(fakes) -> list[tuple[str, bytes]]:
    """(media type, bytes) of every document block the Anthropic fake received, in order."""
    from tests.fakes.anthropic import media_blocks

    return [(b.media_type, b.data) for r in fakes["anthropic"].requests if r.path.endswith("/messages")
            for b in media_blocks(json.loads(r.body)) if b.type == "document"]


# -- pdfdocs §1, §2: PDF aliases and application/octet-stream ----------------------------------------------


@pytest.mark.parametrize("mime", ["application/x-pdf", "application/acrobat", "text/pdf",
                                  "application/octet-stream", "Application/Octet-Stream; charset=binary"])
def test_a_pdf_declared_by_an_alias_or_as_octet_stream_is_read_as_a_pdf(shared, mime) -> None:
    """A PDF sent inline as application/x-pdf or application/octet-stream was refused with a 700-character
    NO_ROUTE (no model takes those types): it goes to Claude as application/pdf."""
    daemon, fakes = shared
    answer = generate(daemon, text_request("Summarise", media=[document(PDF, mime)]))
    assert (answer.route.rule, answer.route.provider) == ("documents", "anthropic")
    assert sent_documents(fakes) == [("application/pdf", PDF)]


def test_an_upload_declared_octet_stream_is_recorded_as_its_content_s_type(start_daemon, fakes) -> None:
    """UploadMedia recorded a PDF under application/octet-stream, and every later request naming it, or
    upload of it as application/pdf, kept that type: it is recorded as application/pdf, as the answer says."""
    daemon = start_daemon(config_for(fakes), env=ALL_KEYS, plugins=())
    first = upload(daemon, PDF, "application/octet-stream")
    assert first.mime_type == "application/pdf"
    again = upload(daemon, PDF, "application/pdf")
    assert (again.media_id, again.mime_type) == (first.media_id, "application/pdf")
    for mime in ("", "application/pdf", "application/octet-stream"):
        answer = generate(daemon, text_request("Summarise", media=[named(first.media_id, mime)]))
        assert answer.route.provider == "anthropic", mime
    assert sent_documents(fakes) == [("application/pdf", PDF)] * 3
    png_id = upload(daemon, png("hi"), "application/octet-stream", pb.MODALITY_IMAGE)
    assert png_id.mime_type == "image/png"


def test_an_alias_is_recorded_under_its_registered_name(start_daemon, fakes) -> None:
    """An upload and a session's turn recorded application/x-pdf as given: a daemon of an older version, after
    a rollback, does not know the alias (it sent such a PDF to Claude as plain text)."""
    daemon = start_daemon(config_for(fakes), env=ALL_KEYS, plugins=())
    assert upload(daemon, PDF[:-1] + b"\n", "application/x-pdf").mime_type == "application/pdf"
    request = text_request("Summarise", media=[document(PDF, "text/x-pdf")])
    request.session_id = "kept-as-pdf"
    generate(daemon, request)
    with sqlite3.connect(daemon.data_dir / "sessions.sqlite") as db:
        [(parts,)] = db.execute("SELECT parts FROM turns WHERE session_id = 'kept-as-pdf' AND role = 'user'")
    assert [part.get("mime_type") for part in json.loads(parts) if "media_id" in part] == ["application/pdf"]


@pytest.mark.parametrize(("data", "modality", "says"), [
    (b"\x00\x01\x02 some binary", pb.MODALITY_DOCUMENT, "the content is not a format the router recognises"),
    (b"plain notes\n", pb.MODALITY_DOCUMENT, "the content looks like UTF-8 text (declare text/plain"),
    (mp4(), pb.MODALITY_VIDEO, "the content looks like MP4 (video/mp4, audio/mp4 or video/quicktime)"),
    (png("hi"), pb.MODALITY_DOCUMENT, "the content is image/png, not a document: send it as image with "
                                      "mime_type 'image/png'"),
    # a Windows "Unicode Text" export: its byte order mark (FF FE) passed for an MPEG audio frame header
    *[("name,amount\nalice,1\n".encode(encoding), modality, f"the content is {name} text (it starts with a {name} "
       "byte order mark): convert it to UTF-8") for encoding, name in (("utf-16", "UTF-16"), ("utf-32", "UTF-32"))
      for modality in (pb.MODALITY_DOCUMENT, pb.MODALITY_AUDIO)],
])
def test_octet_stream_content_of_no_one_type_is_refused_naming_the_type_to_declare(shared, data,
                                                                                    modality, says) -> None:
    """application/octet-stream for content whose type the router cannot tell for sure (or of another
    modality than declared) is refused with MIME_MISMATCH and a field violation on the part's mime_type,
    inline and uploaded, instead of being stored under a type no model takes."""
    daemon, fakes = shared
    media = pb.Media(modality=modality, mime_type="application/octet-stream", data=data)
    details = refused(daemon, text_request("What is it?", media=[media]))
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "MIME_MISMATCH")
    assert details.violations[0][0] == "request.messages[0].parts[0].media.mime_type"
    assert says in details.violations[0][1], details.violations
    with pytest.raises(grpc.RpcError) as caught:
        upload(daemon, data, "application/octet-stream", modality)
    details = error_details(caught.value)
    assert (details.reason, details.violations[0][0]) == ("MIME_MISMATCH", "metadata.mime_type")
    assert says in details.violations[0][1]
    assert not fakes["anthropic"].requests and not fakes["gemini"].requests


def _legacy_record(data_dir, data: bytes, mime: str, modality: str = "document") -> str:
    """Store ``data`` in ``data_dir``'s media store as an older version did, under ``mime``; its id."""
    media_id = hashlib.sha256(data).hexdigest()
    folder = data_dir / "media" / media_id[:2]
    folder.mkdir(parents=True)
    (folder / media_id).write_bytes(data)
    (folder / f"{media_id}.json").write_text(json.dumps({"mime_type": mime, "modality": modality,
                                                         "size": len(data)}))
    return media_id


def test_media_an_older_version_stored_as_octet_stream_are_used_or_refused_clearly(start_daemon, fakes,
                                                                                   tmp_path) -> None:
    """A store an older version filled holds PDFs recorded as application/octet-stream: a request naming
    one got NO_ROUTE. A PDF is now read as application/pdf (its record corrected); bytes of no known format
    are refused with a violation on the part's media_id saying to upload them again with their type, and
    that upload replaces the record."""
    data_dir = tmp_path / "legacy"
    pdf_id = _legacy_record(data_dir, PDF, "application/octet-stream")
    notes = b"meeting notes: ship on Friday\n"
    notes_id = _legacy_record(data_dir, notes, "application/octet-stream")
    daemon = start_daemon(config_for(fakes), env=ALL_KEYS, plugins=(), data_dir=data_dir)

    answer = generate(daemon, text_request("Summarise", media=[named(pdf_id)]))
    assert answer.route.provider == "anthropic"
    assert sent_documents(fakes) == [("application/pdf", PDF)]
    record = data_dir / "media" / pdf_id[:2] / f"{pdf_id}.json"
    assert json.loads(record.read_text())["mime_type"] == "application/pdf"

    details = refused(daemon, text_request("Summarise", media=[named(notes_id)]))
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
    assert details.violations[0][0] == "request.messages[0].parts[0].media.media_id"
    assert "stored as 'application/octet-stream'" in details.violations[0][1]
    assert "upload the file again declaring its MIME type" in details.violations[0][1]
    again = upload(daemon, notes, "text/plain")
    assert (again.media_id, again.mime_type) == (notes_id, "text/plain")
    answer = generate(daemon, text_request("Summarise", media=[named(notes_id)]))
    assert answer.route.provider == "anthropic"


# -- pdfdocs §5: a password-protected PDF ---------------------------------------------------------------------


def _encrypted(user_password: str, algorithm: str = "RC4-128") -> bytes:
    """:data:`PDF` encrypted with ``user_password`` (empty: only an owner password, it opens without one), with
    ``algorithm`` (AES needs the cryptography package: pypdf[crypto], a dependency)."""
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter()
    for page in PdfReader(io.BytesIO(PDF)).pages:
        writer.add_page(page)
    writer.encrypt(user_password=user_password, owner_password="owner-secret", algorithm=algorithm)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


@pytest.mark.parametrize("algorithm", ["RC4-128", "AES-256"])  # AES: today's tools' default
def test_a_password_protected_pdf_is_refused_before_any_call(shared, algorithm) -> None:
    """An encrypted PDF went to Claude, whose 400 ("The PDF specified was not valid") ended the call naming
    no part. It is refused up front, naming the part; one with only an owner password is still read."""
    locked, owner_only = _encrypted("user-pw", algorithm), _encrypted("", algorithm)
    assert (measure_media(locked, Modality.DOCUMENT).locked, measure_media(owner_only, Modality.DOCUMENT).locked) \
        == (True, False)
    daemon, fakes = shared
    request = text_request("Compare", media=[document(PDF, "application/pdf", "a.pdf"),
                                             document(locked, "application/pdf", "b.pdf")])
    details = refused(daemon, request)
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
    assert details.violations == [("request.messages[0].parts[1].media",
                                   "password-protected PDF: remove the password (it opens only with its "
                                   "password, which no provider is given)")]
    stored = upload(daemon, locked, "application/pdf")
    assert refused(daemon, text_request("Summarise", media=[named(stored.media_id)])).violations[0][0] == \
        "request.messages[0].parts[0].media"
    assert not fakes["anthropic"].requests
    answer = generate(daemon, text_request("Summarise", media=[document(owner_only, "application/pdf")]))
    assert answer.route.provider == "anthropic"


# -- pdfdocs §3 (router/errors.py): Gemini's refusal of a file too large is INPUT_TOO_LARGE ------------------


GEMINI_THEN_LOCAL = """
providers:
  gemini: {{api_key: "${{GEMINI_API_KEY}}", base_url: "{gemini}", timeout: 20, poll_interval: 0.02}}
  local: {{}}
routes:
  - name: documents
    match: {{inputs_any: [document]}}
    use: gemini/gemini-2.5-pro
    fallback: [local/extract]
default: gemini/gemini-2.5-pro
"""


def test_gemini_refusing_a_pdf_as_too_large_to_read_falls_back(start_daemon, fakes) -> None:
    """Gemini's 400 "The request's total referenced files bytes are too large to be read" (a PDF over about
    50 MB) was PROVIDER_BAD_REQUEST, which ended the call: it is INPUT_TOO_LARGE, so local/extract answers."""
    daemon = start_daemon(GEMINI_THEN_LOCAL.format(gemini=fakes["gemini"].url), env=ALL_KEYS, plugins=())
    fakes["gemini"].fail_next(400, {"error": {"code": 400, "status": "INVALID_ARGUMENT", "message":
                                              "The request's total referenced files bytes are too large to be read"}},
                              path=STREAM_PATH)
    answer = generate(daemon, text_request("Summarise", media=[document(PDF, "application/pdf")]))
    assert (answer.route.provider, answer.route.model) == ("local", "extract")
    assert "termination clause 30 days" in answer.text
    assert [(a.provider, a.ok) for a in answer.route.attempts] == [("gemini", False), ("local", True)]
    assert any("gemini/gemini-2.5-pro failed" in n and "INPUT_TOO_LARGE" in n for n in answer.route.notes), \
        answer.route.notes
    assert len(fakes["gemini"].calls("stream")) == 1


# -- video §5: transcribing a recording with no audio track ---------------------------------------------------


@pytest.mark.parametrize("modality", [pb.MODALITY_VIDEO, pb.MODALITY_AUDIO])
def test_transcribing_a_recording_without_an_audio_track_is_refused_naming_the_part(shared, modality) -> None:
    """A silent screen recording to transcribe went to AssemblyAI, whose "File does not appear to contain
    audio" ended the call: it is refused before any call, naming the part. Asked about (TASK_CHAT), it still
    goes to a model; a recording with sound is transcribed."""
    silent, sound = mp4(), mp4(tone=True)
    assert (measure_media(silent, Modality.VIDEO).no_audio, measure_media(sound, Modality.VIDEO).no_audio) == \
        (True, False)
    daemon, fakes = shared
    kind = "video" if modality == pb.MODALITY_VIDEO else "recording"  # not "the audio has no audio track"
    media = pb.Media(modality=modality, mime_type="video/mp4", data=silent, filename="screen.mp4")
    transcribe = pb.Options(task=pb.TASK_TRANSCRIBE)
    details = refused(daemon, text_request("", media=[media], options=transcribe))
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
    assert details.violations == [("request.messages[0].parts[0].media",
                                   f"the {kind} has no audio track, so there is nothing to transcribe (to ask "
                                   "about its pictures, send the video with TASK_CHAT)")]
    assert not fakes["assemblyai"].requests and not fakes["openai"].requests
    if modality == pb.MODALITY_VIDEO:
        answer = generate(daemon, text_request("What is shown?", media=[media]))
        assert answer.route.provider == "gemini"
    media.data = sound
    answer = generate(daemon, text_request("", media=[media], options=transcribe))
    assert answer.text and answer.route.provider in ("assemblyai", "openai")
