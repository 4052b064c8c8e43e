"""One client's file name never reaches another client that sends the same bytes.

The media store keeps one record per content, and bridges keep their texts by content: both serve every
client that sends the same bytes. Through the running daemon, against the fake OpenAI and Anthropic servers
(their real SDKs), client A sends a file under a private name and client B the same bytes under its own
name or none: B's answers, the request bodies B's providers get and the texts kept for reuse never hold
A's name, and B's own name is used where B gives one.
"""

from __future__ import annotations

import hashlib
import sqlite3

import media_factory
from grpc_helpers import text_request
from mmrouter.v1 import router_pb2 as pb

from tests.fakes.anthropic import API_KEY as ANTHROPIC_KEY
from tests.fakes.anthropic import FakeAnthropic, media_blocks
from tests.fakes.openai import API_KEY as OPENAI_KEY
from tests.fakes.openai import FakeOpenAI

CONFIG = """
providers:
  openai: {{api_key: "{openai_key}", base_url: "{openai_url}"}}
  anthropic: {{api_key: "{anthropic_key}", base_url: "{anthropic_url}"}}
  local: {{}}
routes:
  - name: general
    use: openai/gpt-4o
    bridging: true
bridges:
  document: [local/extract]
  audio: [openai/whisper-1]
"""

#: Client A's private names, which client B must never see nor have sent for it.
SECRET_PDF = "ACME-acquires-Globex-draft-NDA.pdf"
SECRET_WAV = "Layoffs-call-CONFIDENTIAL.wav"


def start(start_daemon, openai: FakeOpenAI, anthropic: FakeAnthropic):  # type: ignore[no-untyped-def]
    return start_daemon(CONFIG.format(openai_key=OPENAI_KEY, openai_url=openai.base_url,
                                      anthropic_key=ANTHROPIC_KEY, anthropic_url=anthropic.url), plugins=())


def upload(daemon, data: bytes, mime: str, modality: int, filename: str) -> str:  # type: ignore[no-untyped-def]
    """Upload ``data`` under ``filename``; its media id."""
    chunks = [pb.UploadMediaRequest(metadata=pb.UploadMetadata(modality=modality, mime_type=mime,
                                                               filename=filename, size_bytes=len(data))),
              pb.UploadMediaRequest(chunk=data)]
    return daemon.stub.UploadMedia(iter(chunks), timeout=30).media_id


def generate(daemon, prompt: str, media: pb.Media, provider: str = "", model: str = "",  # type: ignore[no-untyped-def]
             session: str = "", task: int = pb.TASK_UNSPECIFIED) -> pb.MultimodalAnswer:
    request = text_request(prompt, media=[media], session_id=session, options=pb.Options(task=task),
                           hints=pb.RoutingHints(provider=provider, model=model))
    return daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=60).answer


def sent_upstream(*fakes: FakeOpenAI | FakeAnthropic) -> bytes:
    """Every request body the fakes received, with its headers, as bytes."""
    return b"\n".join(repr(r.headers).encode() + r.body for fake in fakes for r in fake.requests)


def kept_texts(daemon) -> list[str]:  # type: ignore[no-untyped-def]
    """The bridged texts the daemon keeps for reuse (the sessions database's ``bridged`` table)."""
    with sqlite3.connect(daemon.data_dir / "sessions.sqlite") as db:
        return [text for (text,) in db.execute("SELECT text FROM bridged")]


def test_an_upload_named_by_id_carries_only_the_name_its_part_gives(start_daemon) -> None:
    """A uploads a PDF under a private name, B the same bytes under its own: B's part naming the media
    by id without a name gets no name (local/extract's answer, Claude's document), one with a name gets
    that one; Whisper, given B's audio by id without a name, gets a neutral file name."""
    document = media_factory.pdf(["Standard NDA template page one"])
    audio = media_factory.wav(1.0)
    with FakeOpenAI() as openai, FakeAnthropic() as anthropic:
        daemon = start(start_daemon, openai, anthropic)
        a = upload(daemon, document, "application/pdf", pb.MODALITY_DOCUMENT, SECRET_PDF)
        b = upload(daemon, document, "application/pdf", pb.MODALITY_DOCUMENT, "my-nda.pdf")
        assert a == b  # one record for both
        upload(daemon, audio, "audio/wav", pb.MODALITY_AUDIO, SECRET_WAV)
        unnamed = pb.Media(modality=pb.MODALITY_DOCUMENT, media_id=b)

        extracted = generate(daemon, "what does this say?", unnamed, "local", "extract")
        assert "Standard NDA template page one" in extracted.text
        assert SECRET_PDF not in extracted.text, extracted.text

        generate(daemon, "summarise", unnamed, "anthropic")
        (block,) = media_blocks(anthropic.last_body())
        assert block.title is None, block.title
        generate(daemon, "summarise", pb.Media(modality=pb.MODALITY_DOCUMENT, media_id=b, filename="my-nda.pdf"),
                 "anthropic")
        (block,) = media_blocks(anthropic.last_body())
        assert block.title == "my-nda.pdf"

        by_id = pb.Media(modality=pb.MODALITY_AUDIO, media_id=hashlib.sha256(audio).hexdigest())
        transcribed = generate(daemon, "", by_id, "openai", "whisper-1", task=pb.TASK_TRANSCRIBE)
        assert transcribed.route.model == "whisper-1"
        (sent,) = openai.uploads()
        assert sent.files["file"][0] == "audio.wav"

        for text in (extracted.text, *extracted.route.notes, *transcribed.route.notes):
            assert SECRET_PDF not in text and SECRET_WAV not in text
        upstream = sent_upstream(openai, anthropic)
        assert SECRET_PDF.encode() not in upstream and SECRET_WAV.encode() not in upstream
    records = b"".join(p.read_bytes() for p in (daemon.data_dir / "media").glob("*/*.json"))
    assert SECRET_PDF.encode() not in records and SECRET_WAV.encode() not in records  # no name is kept


def test_a_kept_bridged_text_names_no_file(start_daemon) -> None:
    """A sends a PDF inline under a private name in its session, to GPT-4o through the local/extract
    bridge; B sends the same bytes as numbers.pdf in its own. B's call reuses the kept text, which names
    no file: GPT-4o gets B's name (in the part the router wraps it in) and never A's."""
    document = media_factory.pdf(["Quarterly numbers: revenue 42"])
    with FakeOpenAI() as openai, FakeAnthropic() as anthropic:
        daemon = start(start_daemon, openai, anthropic)
        part = pb.Media(modality=pb.MODALITY_DOCUMENT, mime_type="application/pdf", data=document,
                        filename=SECRET_PDF)
        generate(daemon, "summarise", part, session="sess-A")
        (for_a,) = openai.chat_requests()
        assert SECRET_PDF in str(for_a)  # A's own name goes to A's model

        part.filename = "numbers.pdf"
        answer = generate(daemon, "summarise", part, session="sess-B")
        assert "bridging: reused the kept text of 1 media converted before" in answer.route.notes
        for_b = openai.chat_requests()[1]
        text = "\n".join(p.text for m in for_b["messages"] for p in openai.parts(m) if p.kind == "text")
        assert "[Document text] numbers.pdf\n" in text and "Quarterly numbers: revenue 42" in text, text
        assert SECRET_PDF not in str(for_b), text
        assert SECRET_PDF not in answer.text and not any(SECRET_PDF in n for n in answer.route.notes)
        kept = kept_texts(daemon)
        assert kept and not any(SECRET_PDF in t for t in kept), kept


def test_texts_kept_by_older_versions_are_not_reused(start_daemon) -> None:
    """A text an older version kept (its key without ``KEPT_FORMAT``) may name another client's file: it is
    never given again; the media is bridged anew, and its new text names no file."""
    document = media_factory.pdf(["Quarterly numbers: revenue 42"])
    old_key = f"{hashlib.sha256(document).hexdigest()}|document|local/extract|diarization=False|speakers=0|language="
    with FakeOpenAI() as openai, FakeAnthropic() as anthropic:
        daemon = start(start_daemon, openai, anthropic)
        generate(daemon, "hello", pb.Media(modality=pb.MODALITY_DOCUMENT, mime_type="text/plain", data=b"hi"),
                 session="sess-0")  # the sessions database is made
        with sqlite3.connect(daemon.data_dir / "sessions.sqlite") as db:
            db.execute("INSERT INTO bridged (key, text, transcript, at) VALUES (?, ?, NULL, strftime('%s'))",
                       (old_key, f"[PDF {SECRET_PDF}, page 1]\nQuarterly numbers: revenue 42"))
        part = pb.Media(modality=pb.MODALITY_DOCUMENT, mime_type="application/pdf", data=document,
                        filename="numbers.pdf")
        answer = generate(daemon, "summarise", part, session="sess-B")
        assert answer.route.steps[0].purpose.startswith("bridge:"), answer.route.steps
        assert SECRET_PDF not in str(openai.chat_requests()[-1])
