"""Erasing one customer's data (GDPR Art. 17): ``ResetSession`` with ``erase_media`` (``mmrouter reset
--erase-media``) deletes the media the session sent and the texts bridges kept of them, at once, keeping
those another session refers to; ``mmrouter prune --tag`` deletes one tag's statistics rows; prune empties
the journal on a database of any format, and says when a reader keeps it from doing so.

Through the running daemon, with the fake OpenAI server behind the real SDK and ``local/extract`` bridging
the PDFs; the CLI as a subprocess. What is erased is checked in the data directory's files themselves.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import media_factory
from grpc_helpers import text_request, wait_for
from mmrouter.v1 import router_pb2 as pb
from test_local_e2e import GPT_WITH_DOCUMENT_BRIDGE

from tests.fakes.openai import API_KEY as OPENAI_KEY
from tests.fakes.openai import FakeOpenAI

MMROUTER = Path(sys.executable).parent / "mmrouter"
#: GPT-4o (the fake OpenAI) answers; a PDF is bridged to it through local.
CONFIG = GPT_WITH_DOCUMENT_BRIDGE
DATABASE = ("sessions.sqlite", "sessions.sqlite-wal", "sessions.sqlite-shm")


def start(start_daemon, openai: FakeOpenAI, data_dir: Path | None = None):  # type: ignore[no-untyped-def]
    return start_daemon(CONFIG.format(key=OPENAI_KEY, url=openai.base_url), plugins=(), data_dir=data_dir)


def upload(daemon, data: bytes, mime: str, modality: int) -> str:  # type: ignore[no-untyped-def]
    """Upload ``data``; its media id."""
    chunks = [pb.UploadMediaRequest(metadata=pb.UploadMetadata(modality=modality, mime_type=mime, size_bytes=len(data))),
              pb.UploadMediaRequest(chunk=data)]
    return daemon.stub.UploadMedia(iter(chunks), timeout=30).media_id


def ask(daemon, text: str, media: list[pb.Media], session: str = "",  # type: ignore[no-untyped-def]
        tags: tuple[str, ...] = ()) -> pb.MultimodalAnswer:
    request = text_request(text, media=media, session_id=session, hints=pb.RoutingHints(tags=list(tags)))
    return daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=60).answer


def cli(*args: str | Path) -> subprocess.CompletedProcess:
    """``mmrouter *args``, its output one line."""
    result = subprocess.run([str(MMROUTER), *map(str, args)], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "COLUMNS": "250"})
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def holding(data_dir: Path, marker: str) -> list[str]:
    """The sessions database's files (with its journal) that hold ``marker``."""
    return [name for name in DATABASE if (data_dir / name).exists() and marker.encode() in (data_dir / name).read_bytes()]


def stored(daemon, media_id: str) -> list[str]:  # type: ignore[no-untyped-def]
    """The media store's files of ``media_id`` that are there: its bytes and its record."""
    path = daemon.data_dir / "media" / media_id[:2] / media_id
    return [p.name for p in (path, path.with_suffix(".json")) if p.exists()]


def rows(daemon, query: str, *args: object) -> list[tuple]:  # type: ignore[no-untyped-def]
    with sqlite3.connect(daemon.data_dir / "sessions.sqlite") as db:
        return db.execute(query, args).fetchall()


def document(media_id: str) -> pb.Media:
    return pb.Media(modality=pb.MODALITY_DOCUMENT, media_id=media_id)


def test_reset_with_erase_media_deletes_the_sessions_media_and_their_texts_and_keeps_shared_ones(start_daemon):
    """Alice's session sends a PDF inline and, by id, an uploaded PDF (asked about once without a session
    before: its text was kept with no link to any session) and an uploaded image that Bob's session
    sends too. ``mmrouter reset --erase-media`` removes both PDFs (bytes, records, extracted texts, in the
    database files too) and keeps the shared image, which Bob's session still reads; one INFO line names
    the session by its tag only. A reset without it keeps the media, as before."""
    inline_pdf = media_factory.pdf(["INLINEMARK passport of Alice Liddell"])
    uploaded_pdf = media_factory.pdf(["UPLOADMARK lab results of Alice Liddell"])
    with FakeOpenAI() as openai:
        daemon = start(start_daemon, openai)
        pdf_id = upload(daemon, uploaded_pdf, "application/pdf", pb.MODALITY_DOCUMENT)
        image_id = upload(daemon, media_factory.png("shared"), "image/png", pb.MODALITY_IMAGE)
        image = pb.Media(modality=pb.MODALITY_IMAGE, media_id=image_id)
        ask(daemon, "what are these results?", [document(pdf_id)])  # no session: its text is kept unlinked
        ask(daemon, "read my passport", [pb.Media(modality=pb.MODALITY_DOCUMENT, mime_type="application/pdf",
                                                  data=inline_pdf, filename="alice_passport.pdf")], "alice-0001")
        ask(daemon, "and my results?", [document(pdf_id)], "alice-0001")
        ask(daemon, "this photo?", [image], "alice-0001")
        ask(daemon, "the same photo", [image], "bob-0002")
        inline_id = hashlib.sha256(inline_pdf).hexdigest()
        assert stored(daemon, inline_id) and stored(daemon, pdf_id)
        assert holding(daemon.data_dir, "INLINEMARK") and holding(daemon.data_dir, "UPLOADMARK")

        result = cli("reset", "--erase-media", "--address", daemon.address, "alice-0001")
        assert result.stdout.strip() == "session reset: 6 stored message(s) removed, 2 media removed", result.stdout

        assert stored(daemon, inline_id) == [] and stored(daemon, pdf_id) == []
        assert stored(daemon, image_id) == [image_id, f"{image_id}.json"]  # Bob's session refers to it
        assert holding(daemon.data_dir, "INLINEMARK") == [] and holding(daemon.data_dir, "UPLOADMARK") == []
        assert rows(daemon, "SELECT key FROM bridged") == []
        assert rows(daemon, "SELECT DISTINCT session_id FROM turns") == [("bob-0002",)]
        logs = daemon.logs()
        line = next(line for line in logs.splitlines() if "reset with its media erased" in line)
        assert "6 stored message(s)" in line and "2 media deleted, 1 kept" in line, line
        assert "alice-0001" not in logs
        assert ask(daemon, "again", [], "bob-0002").text  # its history still has its image

        reply = daemon.stub.ResetSession(pb.ResetSessionRequest(session_id="bob-0002"), timeout=30)
        assert (reply.turns_removed, reply.media_removed) == (4, 0)
        assert stored(daemon, image_id) == [image_id, f"{image_id}.json"]  # without erase_media: kept


def test_prune_tag_removes_only_that_tags_statistics_rows(start_daemon):
    """``prune --tag`` removes the statistics rows of one customer's tag, whatever their age, and nothing
    else: not the other tag's rows, not the sessions, not the media; its dry run only counts them. The
    tag is then in none of the database's files."""
    with FakeOpenAI() as openai:
        daemon = start(start_daemon, openai)
        ask(daemon, "hello", [], "alice-0001", tags=("TAGMARK-alice",))
        ask(daemon, "hello again", [], "alice-0001", tags=("TAGMARK-alice", "eu"))
        ask(daemon, "hi", [], "bob-0002", tags=("cust-bob", "eu"))
        tagged = "SELECT tag, COUNT(*) FROM call_tags GROUP BY tag ORDER BY tag"
        assert wait_for(lambda: rows(daemon, tagged) == [("TAGMARK-alice", 2), ("cust-bob", 1), ("eu", 2)])
        before = rows(daemon, "SELECT COUNT(*) FROM turns")

        dry = cli("prune", "--tag", "TAGMARK-alice", "--dry-run", "--data-dir", daemon.data_dir)
        assert dry.stdout.strip() == "would remove 2 statistics row(s) tagged TAGMARK-alice; nothing else"
        assert rows(daemon, tagged)[0] == ("TAGMARK-alice", 2)

        done = cli("prune", "--tag", "TAGMARK-alice", "--data-dir", daemon.data_dir)
        assert done.stdout.strip() == "removed 2 statistics row(s) tagged TAGMARK-alice; nothing else", done.stdout
        assert rows(daemon, tagged) == [("cust-bob", 1), ("eu", 1)]
        assert rows(daemon, "SELECT COUNT(*) FROM calls") == [(1,)]
        assert rows(daemon, "SELECT COUNT(*) FROM turns") == before  # the sessions stay
        assert holding(daemon.data_dir, "TAGMARK") == []


def test_prune_empties_the_journal_of_an_older_format_database(start_daemon, tmp_path):
    """A database an older version made (no ``auto_vacuum``) holding a session in its file: after ``prune``
    removed that session, its text is in neither the file nor the journal."""
    data = tmp_path / "data"
    data.mkdir()
    with sqlite3.connect(data / "sessions.sqlite") as db:  # made before the store set auto_vacuum
        db.execute("CREATE TABLE turns (session_id TEXT NOT NULL, position INTEGER NOT NULL, role TEXT NOT NULL,"
                   " parts TEXT NOT NULL, PRIMARY KEY (session_id, position))")
    with FakeOpenAI() as openai:
        daemon = start(start_daemon, openai, data)
        ask(daemon, "OLDCUSTOMERMARK my address is 1 Main St", [], "old-customer")
        daemon.stop()  # its last connection writes the journal into the file
        assert holding(data, "OLDCUSTOMERMARK") == ["sessions.sqlite"]
        daemon = start(start_daemon, openai, data)
        result = cli("prune", "--older-than", "0", "--data-dir", data)
        assert "removed 1 session(s)" in " ".join(result.stdout.split())
        assert holding(data, "OLDCUSTOMERMARK") == [], "the pruned turn is still in the database's files"


def test_prune_warns_when_a_reader_keeps_it_from_emptying_the_journal(start_daemon):
    """Another process reading the database (a backup) while ``prune`` runs: prune warns that what it
    deleted may stay readable until the next checkpoint, as ResetSession does, instead of exiting silently."""
    with FakeOpenAI() as openai:
        daemon = start(start_daemon, openai)
        ask(daemon, "READERMARK hello", [], "reader-customer")
        reader = sqlite3.connect(daemon.data_dir / "sessions.sqlite", isolation_level=None)
        try:
            reader.execute("BEGIN")
            assert reader.execute("SELECT COUNT(*) FROM turns").fetchone() == (2,)  # a read transaction, held
            result = cli("prune", "--older-than", "0", "--data-dir", daemon.data_dir)
        finally:
            reader.close()
        assert "removed 1 session(s)" in " ".join(result.stdout.split())
        assert "journal could not be emptied after a prune" in result.stderr, result.stderr
