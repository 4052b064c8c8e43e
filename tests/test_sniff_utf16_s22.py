"""UTF-16 text declared as a non-text type is named as UTF-16 text (round 22: QA batchjob §2).

A Windows "Unicode Text" export saved as ``.pdf`` (or ``.png``) was refused as "the content looks like
audio/mpeg" (UTF-16LE: its byte order mark FF FE passed for an MPEG frame header) or "unrecognised bytes"
(UTF-16BE), and declared ``audio/mpeg`` it passed. It is refused as MIME_MISMATCH naming UTF-16 text, as
it is under a text type; MPEG audio without an ID3 tag is still known by its first frame's header. The
daemon runs for real (tests/conftest.py) with the embedded rules; the cloud plugins call the fakes of
tests/fakes through their official SDKs (``test_hybrid.cloud_fakes``).
"""

from __future__ import annotations

import random

import grpc
import pytest
from grpc_helpers import error_details, text_request
from media_factory import mp3_tone
from mmrouter.v1 import router_pb2 as pb
from test_hybrid import ALL_KEYS, config_for
from test_media_types_s20 import generate, upload

from router.sniff import magic_family, mime_problem
from router.types import Modality

INVOICE = "Invoice 1042\r\nTotal due: 12.50 EUR\r\n"
UTF16 = {"utf-16-le": INVOICE.encode("utf-16"),  # Python writes the machine's order (little-endian) and its mark
         "utf-16-be": b"\xfe\xff" + INVOICE.encode("utf-16-be")}
SAYS = "the content is UTF-16 text (it starts with a UTF-16 byte order mark): convert it to UTF-8"


def without_id3(mp3: bytes) -> bytes:
    """``mp3`` without its ID3v2 tag (its size is a syncsafe integer): it starts with its first frame."""
    assert mp3[:3] == b"ID3"
    size = sum((byte & 0x7F) << (7 * (3 - i)) for i, byte in enumerate(mp3[6:10]))
    return mp3[10 + size:]


#: MP3s without an ID3 tag, by their first frame's header: MPEG-1 (FF FB), MPEG-2 (FF F3), MPEG-2.5 (FF E3),
#: all Layer III without a CRC.
MP3S = {rate: without_id3(mp3_tone(rate, 0.3)) for rate in (44100, 16000, 8000)}
#: An MPEG-1 Layer I frame with a CRC: its header starts FF FE, as UTF-16LE's byte order mark does.
LAYER_1 = b"\xff\xfe\x90\x00" + random.Random(7).randbytes(4092)


@pytest.mark.parametrize(("rate", "sync"), [(44100, b"\xff\xfb"), (16000, b"\xff\xf3"), (8000, b"\xff\xe3")])
def test_mpeg_audio_without_an_id3_tag_is_known_by_its_frame_header(rate: int, sync: bytes) -> None:
    head = MP3S[rate][:4096]
    assert head[:2] == sync
    assert magic_family(head) == "mpeg-frame"
    assert mime_problem("audio/mpeg", Modality.AUDIO, head) is None
    assert mime_problem("application/pdf", Modality.DOCUMENT, head) == (
        "declared 'application/pdf' but the content looks like audio/mpeg")


def test_ff_fe_is_text_only_when_what_follows_reads_as_text() -> None:
    """FF FE is also a valid MPEG frame header (MPEG-1 Layer I, with a CRC): audio data after it keeps it
    MPEG audio; text after it makes it UTF-16LE text. ADTS (FF F1) is unchanged."""
    assert magic_family(LAYER_1) == "mpeg-frame"
    assert mime_problem("audio/mpeg", Modality.AUDIO, LAYER_1) is None
    assert magic_family(b"\xff\xfe\x90\x00" + bytes(12)) == "mpeg-frame"  # silence: NULs are no text
    assert magic_family(b"\xff\xfe") == "mpeg-frame"  # a mark with no text after it
    assert magic_family(b"\xff\xf1\x50\x80\x02\x1f\xfc" + bytes(9)) == "adts"
    assert magic_family(UTF16["utf-16-le"]) == magic_family(UTF16["utf-16-be"]) == "utf-16"
    assert magic_family(INVOICE.encode("utf-32")) == "utf-32"


@pytest.mark.parametrize("mime", ["audio/mpeg", "image/x-canon-cr3", "application/json"])
def test_utf16_text_is_refused_under_any_non_text_type(mime: str) -> None:
    """Under a type whose content the router checks by magic and under one it takes loosely alike."""
    modality = {"audio": Modality.AUDIO, "image": Modality.IMAGE}.get(mime.split("/")[0], Modality.DOCUMENT)
    for data in UTF16.values():
        assert mime_problem(mime, modality, data) == f"declared {mime!r} but {SAYS} and declare text/plain, text/csv..."


def test_utf16_without_a_byte_order_mark_is_told_as_the_text_path_tells_it() -> None:
    """The text path does not tell BOM-less UTF-16 from other binary content, so neither is it named here."""
    data = INVOICE.encode("utf-16-le")
    assert "UTF-16" not in mime_problem("text/plain", Modality.DOCUMENT, data)
    assert mime_problem("application/pdf", Modality.DOCUMENT, data) == (
        "declared 'application/pdf' but the content looks like unrecognised bytes")


@pytest.fixture
def daemon(start_daemon, fakes):
    """The daemon with the embedded rules and every cloud provider pointed at its fake."""
    return start_daemon(config_for(fakes), env=ALL_KEYS, plugins=())


def test_utf16_text_declared_as_a_pdf_an_image_or_mp3_is_refused_naming_utf16(daemon) -> None:
    """Inline (Generate) and uploaded alike: MIME_MISMATCH on the part's mime_type, naming UTF-16 text."""
    for (mime, modality) in [("application/pdf", pb.MODALITY_DOCUMENT), ("image/png", pb.MODALITY_IMAGE),
                             ("audio/mpeg", pb.MODALITY_AUDIO)]:
        for order, data in UTF16.items():
            media = pb.Media(modality=modality, mime_type=mime, data=data, filename="invoice-utf16.pdf")
            with pytest.raises(grpc.RpcError) as caught:
                generate(daemon, text_request("Total?", media=[media]))
            details = error_details(caught.value)
            assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "MIME_MISMATCH"), order
            assert details.violations[0][0] == "request.messages[0].parts[0].media.mime_type"
            assert details.violations[0][1].startswith(f"declared {mime!r} but {SAYS}"), (order, details.violations)
            with pytest.raises(grpc.RpcError) as caught:
                upload(daemon, data, mime, modality)
            details = error_details(caught.value)
            assert (details.reason, SAYS in caught.value.details()) == ("MIME_MISMATCH", True), (order, mime)


def test_mp3_without_an_id3_tag_is_still_taken(daemon) -> None:
    """Uploaded as audio/mpeg, or as application/octet-stream (kept as audio/mpeg by its frame header), and
    transcribed inline."""
    for mp3 in MP3S.values():
        assert upload(daemon, mp3, "audio/mpeg", pb.MODALITY_AUDIO).mime_type == "audio/mpeg"
        assert upload(daemon, mp3, "application/octet-stream", pb.MODALITY_AUDIO).mime_type == "audio/mpeg"
    memo = pb.Media(modality=pb.MODALITY_AUDIO, mime_type="audio/mpeg", data=MP3S[16000], filename="memo.mp3")
    assert generate(daemon, text_request("", media=[memo])).text
