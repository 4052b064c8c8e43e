"""Bridges with the cloud fakes and `local`: how a chain of bridges fails (the error names each failure and
keeps one that may pass), which part a bridge's error and text name, what a chat model used as a bridge is
asked, what an empty or speech-only bridged text says, and a media a bridge refuses for good that a later
target reads itself."""

from __future__ import annotations

import io

import grpc
import pytest
from grpc_helpers import error_details, text_request
from media_factory import mp4, pdf, png, wav, wav_of
from mmrouter.v1 import router_pb2 as pb
from test_hybrid import ALL_KEYS

from router.bridging import BRIDGE_INSTRUCTION, NO_SPEECH, SPEECH_ONLY
from tests.fakes.openai import FakeOpenAI
from tests.fakes.openai import error_body as openai_error

TRANSCRIPTIONS = "/v1/audio/transcriptions"
WHISPER_DOWN = openai_error("overloaded", "server_error")
WHISPER_TOO_LARGE = openai_error("Maximum content size limit (26214400) exceeded (31457280 bytes read)",
                                 "server_error")
#: local's refusal, when its call runs, of CALL's 1 s clip under SHORT_LOCAL (routing does not know its cap).
TOO_LONG_FOR_LOCAL = "cannot transcribe anruf.wav: the audio is 1 seconds (0:00:01) long, over the 0.5 seconds"
NOT_ANSWERED = "The question was not answered"  # what local/extract writes when it is asked a question

PROVIDERS = """
providers:
  openai: {{api_key: "${{OPENAI_API_KEY}}", base_url: "{openai}", timeout: 20}}
  anthropic: {{api_key: "${{ANTHROPIC_API_KEY}}", base_url: "{anthropic}", timeout: 20}}
  assemblyai: {{api_key: "${{ASSEMBLYAI_API_KEY}}", base_url: "{assemblyai}", timeout: 20, poll_interval: 0.02}}
  local: {{}}
"""

GPT4O = """
routes:
  - name: text-only
    use: openai/gpt-4o
    fallback: [{fallback}]
bridges:
  audio: [openai/whisper-1, local/extract]
  document: [local/extract]
  image: [local/extract]
  video: [assemblyai/best]
"""


def start(start_daemon, fakes, routes: str = GPT4O, fallback: str = "", providers: str = PROVIDERS):
    """A daemon whose ``providers`` are the fakes, with ``routes`` (``fallback``: the rule's fallbacks)."""
    config = providers.format(openai=fakes["openai"].base_url, anthropic=fakes["anthropic"].url,
                              assemblyai=fakes["assemblyai"].url) + routes.format(fallback=fallback) + "default: local/extract\n"
    return start_daemon(config, env=ALL_KEYS, plugins=())


def generate(daemon, request: pb.MultimodalRequest) -> pb.Answer:
    return daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=60).answer


def failure(daemon, request: pb.MultimodalRequest):
    with pytest.raises(grpc.RpcError) as caught:
        generate(daemon, request)
    return error_details(caught.value)


def sent_texts(fakes) -> list[str]:
    """The text parts of the last message gpt-4o got."""
    sent = fakes["openai"].chat_requests()[-1]["messages"][-1]
    return [p.text for p in FakeOpenAI.parts(sent) if p.kind == "text"]


def document(data: bytes, name: str = "") -> pb.Media:
    return pb.Media(modality=pb.MODALITY_DOCUMENT, mime_type="application/pdf", data=data, filename=name)


CALL = text_request("What was said?", media=[
    pb.Media(modality=pb.MODALITY_AUDIO, mime_type="audio/wav", data=wav(1.0), filename="anruf.wav")])
#: The providers, local transcribing half a second at most: it refuses CALL's clip when its call runs.
SHORT_LOCAL = PROVIDERS.replace("local: {{}}", "local: {{max_audio_seconds: 0.5}}")
BROKEN_PDF = pdf(["hello"])[:200]


# -- a chain of bridges that fails --------------------------------------------------------------------------


def test_a_bridge_down_then_a_refusal_ends_with_the_outage_and_its_retry_delay(start_daemon, fakes) -> None:
    """Whisper answers 503 (Retry-After 7), then local refuses the clip's length: the client gets Whisper's
    UNAVAILABLE, with its delay, naming local's refusal after it, not a refusal it would not retry."""
    daemon = start(start_daemon, fakes, providers=SHORT_LOCAL)
    fakes["openai"].fail_next(503, WHISPER_DOWN, {"retry-after": "7"}, path=TRANSCRIPTIONS)
    details = failure(daemon, CALL)
    assert (details.code, details.reason) == (grpc.StatusCode.UNAVAILABLE, "PROVIDER_UNAVAILABLE")
    assert details.retry_delay == 7
    assert details.message.startswith("openai: bridging anruf.wav: ") and "overloaded" in details.message
    assert f"(then local: {TOO_LONG_FOR_LOCAL}" in details.message, details.message
    assert fakes["openai"].chat_requests() == []


def test_when_every_bridge_refuses_the_message_names_each_refusal(start_daemon, fakes) -> None:
    """Whisper refuses the file's size, then local its length: the last refusal's code, both named."""
    daemon = start(start_daemon, fakes, providers=SHORT_LOCAL)
    fakes["openai"].fail_next(413, WHISPER_TOO_LARGE, path=TRANSCRIPTIONS)
    details = failure(daemon, CALL)
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INPUT_TOO_LARGE")
    assert details.message.startswith("openai: bridging anruf.wav: ") and "Maximum content size" in details.message
    assert f"; then local: {TOO_LONG_FOR_LOCAL}" in details.message, details.message


# -- which part -----------------------------------------------------------------------------------------------


def test_a_bridge_error_names_the_part_it_failed_on(start_daemon, fakes) -> None:
    """The second of two PDFs is broken: the error names it by its file name, else by its place in the
    request, not by the bridge's own "#1" (it got that PDF alone); an upload by its file name, not its id."""
    daemon = start(start_daemon, fakes)
    named = failure(daemon, text_request("Compare", media=[document(pdf(["good"]), "good.pdf"),
                                                           document(BROKEN_PDF, "broken.pdf")]))
    assert (named.code, named.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "PROVIDER_BAD_REQUEST")
    assert named.message.startswith("local: cannot read broken.pdf: not a readable PDF"), named.message
    unnamed = failure(daemon, text_request("Compare", media=[document(pdf(["good"])), document(BROKEN_PDF)]))
    assert unnamed.message.startswith("local: cannot read part 2 of message 1: not a readable PDF"), unnamed.message

    metadata = pb.UploadMetadata(modality=pb.MODALITY_DOCUMENT, mime_type="application/pdf", filename="scan.pdf",
                                 size_bytes=len(BROKEN_PDF))
    media_id = daemon.stub.UploadMedia(iter([pb.UploadMediaRequest(metadata=metadata),
                                             pb.UploadMediaRequest(chunk=BROKEN_PDF)]), timeout=60).media_id
    uploaded = failure(daemon, text_request("Read", media=[pb.Media(
        modality=pb.MODALITY_DOCUMENT, mime_type="application/pdf", media_id=media_id, filename="scan.pdf")]))
    assert uploaded.message.startswith("local: cannot read scan.pdf: "), uploaded.message
    assert media_id[:12] not in uploaded.message


def test_the_texts_of_several_documents_each_name_their_own(start_daemon, fakes) -> None:
    """Each PDF's text names it (its file name, else its place in its message), not "PDF #1" for all of them; the
    same on the session's next turn, whose history is sent with the same text (a prompt cache's prefix)."""
    daemon = start(start_daemon, fakes)
    alpha, beta = pdf(["alpha"]), pdf(["beta"])
    request = text_request("Compare", media=[document(alpha), document(beta), document(pdf(["gamma"]), "third.pdf")])
    request.session_id = "named-texts"
    generate(daemon, request)
    sent = "\n".join(sent_texts(fakes))
    first = "[PDF 1 of this message, page 1]\nalpha"
    assert first in sent
    assert "[PDF 2 of this message, page 1]\nbeta" in sent
    assert "[PDF third.pdf, page 1]\ngamma" in sent
    assert "#1" not in sent
    generate(daemon, text_request("And the second?", session_id="named-texts"))
    history = fakes["openai"].chat_requests()[-1]["messages"]  # the next turn: its history sent with it
    assert first in "\n".join(p.text for m in history for p in FakeOpenAI.parts(m) if p.kind == "text")


# -- what a chat model bridging an image or a document is asked ----------------------------------------------

CHAT_BRIDGES = """
  vllm: {{plugin: openai, api_key: vk, base_url: "{vllm}", builtin_models: false,
         models: [{{name: textonly, price: {{input_per_mtok: 1, output_per_mtok: 2}}}}]}}
routes:
  - name: text-only
    use: vllm/textonly
bridges:
  document: [anthropic/claude-sonnet-4-6]
  image: [openai/gpt-4o]
"""


def test_a_chat_model_bridging_an_image_or_a_document_is_asked_for_its_text(start_daemon, fakes) -> None:
    """Claude (documents) and GPT-4o (images) get the media with the instruction, not the media alone."""
    vllm = FakeOpenAI()
    vllm.chat_models = {*vllm.chat_models, "textonly"}
    vllm.api_key = "vk"
    vllm.start()
    try:
        daemon = start(start_daemon, fakes, CHAT_BRIDGES.replace("{vllm}", vllm.base_url))
        answer = generate(daemon, text_request("Summarise", media=[
            document(pdf(["Quarterly revenue rose"]), "q.pdf"),
            pb.Media(modality=pb.MODALITY_IMAGE, mime_type="image/png", data=png("chart"), filename="c.png")]))
        assert (answer.route.provider, answer.route.model) == ("vllm", "textonly")
        claude = fakes["anthropic"].last_body()["messages"]
        assert [[(c["type"], c.get("text")) for c in m["content"]] for m in claude] == [
            [("document", None), ("text", BRIDGE_INSTRUCTION.format(what="document"))]]
        gpt = fakes["openai"].chat_requests()[-1]["messages"]
        assert [[(p.kind, p.text) for p in FakeOpenAI.parts(m)] for m in gpt] == [
            [("image", ""), ("text", BRIDGE_INSTRUCTION.format(what="image"))]]
    finally:
        vllm.stop()


def test_an_extraction_model_bridging_a_document_gets_it_alone(start_daemon, fakes) -> None:
    """local/extract is asked nothing: its text has no "question not answered" paragraph."""
    daemon = start(start_daemon, fakes)
    generate(daemon, text_request("Summarise", media=[document(pdf(["Quarterly revenue rose"]), "q.pdf")]))
    sent = "\n".join(sent_texts(fakes))
    assert "[Document text] q.pdf" in sent and "Quarterly revenue rose" in sent and NOT_ANSWERED not in sent


# -- empty and speech-only texts ---------------------------------------------------------------------------------


def test_an_empty_transcript_says_no_speech_was_found(start_daemon, fakes) -> None:
    """AssemblyAI hears nothing: the model gets "(no speech found)", not an empty section, and a note."""
    daemon = start(start_daemon, fakes, GPT4O.replace("[openai/whisper-1, local/extract]", "[assemblyai/best]"))
    fakes["assemblyai"].turns = []
    answer = generate(daemon, text_request("What did the caller ask for?", media=[
        pb.Media(modality=pb.MODALITY_AUDIO, mime_type="audio/wav", data=wav(1.0), filename="silence.wav")]))
    assert f"[Audio transcript] silence.wav\n{NO_SPEECH}" in sent_texts(fakes)[-1]
    assert "bridging: assemblyai/best found no speech in silence.wav" in answer.route.notes


def test_silence_local_bridges_says_no_speech_and_has_its_note(start_daemon, fakes) -> None:
    """local/extract writes its own "(no speech found)" under its heading: the note came only for an empty text."""
    daemon = start(start_daemon, fakes, GPT4O.replace("[openai/whisper-1, local/extract]", "[local/extract]"))
    silence = wav_of(b"\0\0" * 16000, 16000)  # a second of silence
    answer = generate(daemon, text_request("What did the caller ask for?", media=[
        pb.Media(modality=pb.MODALITY_AUDIO, mime_type="audio/wav", data=silence, filename="silence.wav")]))
    assert NO_SPEECH in "\n".join(sent_texts(fakes))
    assert "bridging: local/extract found no speech in silence.wav" in answer.route.notes, answer.route.notes


def test_a_video_bridged_by_a_transcriber_says_only_its_speech_was_given(start_daemon, fakes) -> None:
    """AssemblyAI transcribes a video's speech: the part and a note say its pictures were not read, and
    route.bridges says what was done."""
    daemon = start(start_daemon, fakes)
    video = pb.Media(modality=pb.MODALITY_VIDEO, mime_type="video/mp4", data=mp4(), filename="review.mp4")
    answer = generate(daemon, text_request("What numbers are on the slides?", media=[video]))
    assert list(answer.route.bridges) == ["video->speech only via assemblyai/best"]
    text = next(t for t in sent_texts(fakes) if t.startswith("[Video transcript] review.mp4"))
    assert text.startswith(f"[Video transcript] review.mp4\n{SPEECH_ONLY}\nSpeaker A:"), text
    assert any(n.startswith("bridging: video->speech only via assemblyai/best for review.mp4") and
               "pictures were not read" in n for n in answer.route.notes), answer.route.notes


# -- a converted image in the route --------------------------------------------------------------------------


def test_an_image_converted_to_png_is_in_the_answers_bridges_as_explain_says(start_daemon, fakes) -> None:
    from PIL import Image

    daemon = start(start_daemon, fakes)
    out = io.BytesIO()
    Image.open(io.BytesIO(png("scan"))).save(out, "BMP")
    request = text_request("What does it say?", media=[
        pb.Media(modality=pb.MODALITY_IMAGE, mime_type="image/bmp", data=out.getvalue(), filename="x.bmp")])
    planned = daemon.stub.ExplainRoute(pb.ExplainRouteRequest(request=request), timeout=30).route
    answer = generate(daemon, request)
    assert list(answer.route.bridges) == list(planned.bridges) == [
        "image (image/bmp)->image/png or image/jpeg, else text via local/extract"]


# -- a media a bridge refuses, read by a later target ------------------------------------------------------------


def test_a_pdf_the_bridge_cannot_read_goes_to_a_later_target_that_reads_pdfs(start_daemon, fakes) -> None:
    """local cannot read the PDF for gpt-4o; the rule's fallback Claude takes PDFs itself: it answers."""
    daemon = start(start_daemon, fakes, fallback="anthropic/claude-sonnet-4-6")
    answer = generate(daemon, text_request("Summarise", media=[document(BROKEN_PDF, "bad.pdf")]))
    assert (answer.route.provider, answer.route.model) == ("anthropic", "claude-sonnet-4-6")
    assert [(a.provider, a.ok) for a in answer.route.attempts] == [("local", False), ("anthropic", True)]
    sent = fakes["anthropic"].last_body()["messages"][-1]["content"]
    assert [c["type"] for c in sent] == ["document", "text"]
    assert any("its bridge refused a document" in n and "cannot read bad.pdf" in n for n in answer.route.notes)
    assert fakes["openai"].chat_requests() == []
