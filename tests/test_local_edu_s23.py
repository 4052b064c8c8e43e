"""The local provider for a school's homework-help app (QA edu), through the daemon:

- a scanned PDF page fed sideways or upside down (the scan stored as scanned, the page's ``/Rotate`` or the
  image's placement turning it upright in viewers) is OCRed as shown: its lines in reading order (they came
  as one merged line, or bottom-up);
- a page read from its text layer says how many of its large pictures were not read (a typed instruction
  over a pasted picture of the problems looked like a complete extraction);
- a text-only follow-up answered by local in a session whose earlier turns a language model answered
  does not say those turns' media "were extracted in their answers";
- the refusal of non-English speech does not advise leaving ``options.language`` empty (which turned
  Spanish into English nonsense);
- no offline answer advises setting a cloud key (wrong under a policy disabling cloud plugins, and in an
  outage with the keys set).
"""

from __future__ import annotations

import io

import grpc
import pytest
from grpc_helpers import error_details, text_request
from media_factory import wav
from mmrouter.v1 import router_pb2 as pb

from tests.fakes import local as media
from tests.fakes.openai import API_KEY, FakeOpenAI
from tests.fakes.openai import error_body as openai_error

HEADER = "[Extracted by local provider — no language model was used]"
#: What local's answers advised before, whatever the situation.
KEY_ADVICE = "api_key"
WORKSHEET = ["Math Worksheet 7B", "1. Solve for x: 3x + 5 = 20", "2. What is 12 times 8?"]


@pytest.fixture
def offline(start_daemon):
    """A fresh install: the embedded default, no keys, no test plugins."""
    return start_daemon(None, plugins=())


def extract(daemon, data: bytes, filename: str, question: str = "") -> pb.Answer:
    document = pb.Media(modality=pb.MODALITY_DOCUMENT, mime_type="application/pdf", data=data, filename=filename)
    return daemon.stub.Generate(pb.GenerateRequest(request=text_request(question, media=[document])),
                                timeout=120).answer


def page_text(answer: pb.Answer, heading: str) -> list[str]:
    """The lines of the section headed ``[heading]`` of ``answer``."""
    assert f"[{heading}]\n" in answer.text, answer.text
    return answer.text.split(f"[{heading}]\n", 1)[1].split("\n\n[", 1)[0].splitlines()


def worksheet_png(turned: int = 0) -> bytes:
    """Three worksheet lines, turned ``turned`` degrees counter-clockwise (as a scanner fed it stores it)."""
    image = media.text_image([((20, 20 + 60 * i), line) for i, line in enumerate(WORKSHEET)], size=(620, 200),
                             font_size=30)
    return media.encode_image(image.rotate(turned, expand=True) if turned else image)


def turned_scan_pdf() -> bytes:
    """Page 1: a scan fed sideways (stored turned a quarter counter-clockwise, ``/Rotate 90``); page 2: one fed
    upside down (``/Rotate 180``); page 3: a scan stored sideways and placed turned back on an upright page
    (the image's matrix turns it, no ``/Rotate``)."""
    from pypdf import PdfReader, PdfWriter
    from reportlab.lib.utils import ImageReader
    from reportlab.pdfgen import canvas

    out = io.BytesIO()
    doc = canvas.Canvas(out)
    for turned in (90, 180):
        width, height = (200, 620) if turned == 90 else (620, 200)
        doc.setPageSize((width * 0.75, height * 0.75))
        doc.drawImage(ImageReader(io.BytesIO(worksheet_png(turned))), 0, 0, width=width * 0.75, height=height * 0.75)
        doc.showPage()
    doc.setPageSize((620 * 0.75, 200 * 0.75))
    doc.translate(0, 200 * 0.75)
    doc.rotate(-90)  # a quarter clockwise: the image's right drawn downward, its top rightward
    doc.drawImage(ImageReader(io.BytesIO(worksheet_png(90))), 0, 0, width=200 * 0.75, height=620 * 0.75)
    doc.showPage()
    doc.save()
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(out.getvalue())))
    writer.pages[0].rotate(90)
    writer.pages[1].rotate(180)
    result = io.BytesIO()
    writer.write(result)
    return result.getvalue()


def test_a_scan_fed_sideways_or_upside_down_is_read_as_shown(offline) -> None:
    """Local OCRed the image as stored: a page with /Rotate 90 came as one merged line, one with /Rotate 180
    bottom-up, as did a scan placed turned by its matrix. Each is now turned as the page shows it."""
    answer = extract(offline, turned_scan_pdf(), "scan.pdf")
    for number in (1, 2, 3):
        lines = page_text(answer, f"PDF scan.pdf, page {number}, OCR of a page without a text layer")
        assert len(lines) == 3, (number, lines)
        assert lines[0].replace(" ", "").startswith("MathWorksheet"), (number, lines)
        assert lines[1].replace(" ", "").startswith("1.Solve"), (number, lines)
        assert lines[2].replace(" ", "").startswith("2.What"), (number, lines)


def worksheet_pdf() -> bytes:
    """Page 1: a typed instruction and a pasted picture of the problems (a quarter of the page) and a small
    logo; page 2: a typed paragraph and two pictures; page 3: typed text only."""
    from reportlab.lib.utils import ImageReader
    from reportlab.pdfgen import canvas

    picture = ImageReader(io.BytesIO(media.encode_image(media.text_image([((20, 20), "Problem A: 7 x 6 = ?")]))))
    logo = ImageReader(io.BytesIO(media.encode_image(media.text_image([((5, 5), "SCHOOL")], size=(120, 40)))))
    out = io.BytesIO()
    doc = canvas.Canvas(out)  # A4: 595 x 842 points
    doc.drawString(72, 790, "Homework for Tuesday. Solve the problems in the picture below and show your work.")
    doc.drawImage(picture, 72, 380, width=450, height=270)
    doc.drawImage(logo, 500, 800, width=60, height=20)
    doc.showPage()
    doc.drawString(72, 790, "Compare the two graphs below and describe how they differ from each other.")
    doc.drawImage(picture, 72, 450, width=300, height=200)
    doc.drawImage(logo, 72, 150, width=300, height=100)
    doc.showPage()
    doc.drawString(72, 790, "Read chapter four of the textbook and answer the questions at its end.")
    doc.showPage()
    doc.save()
    return out.getvalue()


def test_a_page_read_from_its_text_layer_says_its_pictures_were_not_read(offline) -> None:
    """A typed instruction over a pasted picture of the problems gave the instruction alone, as if complete.
    The page now says its large pictures were not read (a small logo is not counted)."""
    answer = extract(offline, worksheet_pdf(), "worksheet.pdf")
    assert page_text(answer, "PDF worksheet.pdf, page 1") == [
        "Homework for Tuesday. Solve the problems in the picture below and show your work.",
        "[1 image on this page was not read]"]
    assert page_text(answer, "PDF worksheet.pdf, page 2")[1:] == ["[2 images on this page were not read]"]
    assert page_text(answer, "PDF worksheet.pdf, page 3") == [
        "Read chapter four of the textbook and answer the questions at its end."]


def test_non_english_speech_is_refused_without_advising_an_empty_language(offline) -> None:
    """The refusal advised "leave options.language empty", which made Spanish speech confident English
    nonsense: routing now passes local over for the language (its ``ModelInfo.languages``), and says why.
    (local's own refusal, for a call routed to it anyway, is checked in test_local_audio_path.py.)"""
    audio = pb.Media(modality=pb.MODALITY_AUDIO, mime_type="audio/wav", data=wav(0.5), filename="q_es.wav")
    request = text_request("", media=[audio], options=pb.Options(task=pb.TASK_TRANSCRIBE, language="es"))
    with pytest.raises(grpc.RpcError) as caught:
        offline.stub.Generate(pb.GenerateRequest(request=request), timeout=60)
    message = caught.value.details()
    assert "local/extract: does not transcribe language 'es' (takes en, eng)" in message, message
    assert "leave options.language empty" not in message, message
    assert error_details(caught.value).reason == "NO_ROUTE", message


#: GPT-4o (the fake) answers by the rule; local/extract is its fallback.
GPT_THEN_LOCAL = """
providers:
  openai: {{api_key: "{key}", base_url: "{url}"}}
  local: {{}}
routes:
  - name: homework
    use: openai/gpt-4o
    fallback: [local/extract]
"""
#: A strict offline school: every cloud plugin disabled by policy.
STRICT_OFFLINE = """
providers:
  local: {}
plugins: {disabled: [openai, anthropic, gemini, assemblyai]}
default: local/extract
overrides: {allow: false}
"""


def test_an_outage_follow_up_in_a_model_answered_session_says_what_is_true(start_daemon) -> None:
    """Turn 1 (a worksheet photo) was answered by GPT-4o; during an outage the text-only follow-up fell back to
    local, which said the earlier media "were extracted in their answers" (a language model answered them), and
    advised setting providers.openai.api_key (which was set). Both are now true whatever answered."""
    with FakeOpenAI() as fake:
        daemon = start_daemon(GPT_THEN_LOCAL.format(key=API_KEY, url=fake.base_url), plugins=())
        photo = pb.Media(modality=pb.MODALITY_IMAGE, mime_type="image/png", data=worksheet_png(), filename="ws.png")
        first = daemon.stub.Generate(pb.GenerateRequest(request=text_request(
            "Help with this worksheet", media=[photo], session_id="class-7b")), timeout=60).answer
        assert (first.route.provider, first.text) == ("openai", "Hello from the fake GPT.")
        fake.fail_next(503, openai_error("The server is overloaded", "server_error"), path="/v1/chat/completions")
        follow_up = daemon.stub.Generate(pb.GenerateRequest(request=text_request(
            "Explain question 2 please", session_id="class-7b")), timeout=60).answer
    assert follow_up.route.provider == "local", follow_up.route
    assert any("openai/gpt-4o failed" in note for note in follow_up.route.notes), follow_up.route.notes
    text = follow_up.text
    assert text.startswith(HEADER) and "[No new media to extract]" in text, text
    assert "were extracted in their answers" not in text, text
    assert "does not extract the media of the session's earlier turns again" in text, text
    assert KEY_ADVICE not in text and "the route says why the local provider was used" in text, text


def test_a_strict_offline_policy_is_not_told_to_set_a_cloud_key(start_daemon) -> None:
    """Cloud plugins disabled by policy: every answer still told the reader to set providers.openai.api_key."""
    daemon = start_daemon(STRICT_OFFLINE, plugins=())
    answer = extract(daemon, media.pdf([["Homework for Tuesday"]]), "homework.pdf", question="Help me")
    assert answer.route.provider == "local" and answer.text.startswith(HEADER), answer
    assert "The question was not answered" in answer.text and KEY_ADVICE not in answer.text, answer.text
    assert "[PDF homework.pdf, page 1]\nHomework for Tuesday" in answer.text, answer.text
