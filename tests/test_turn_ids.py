"""A session turn named by its client (``turn_id``) asked again gets its kept answer, not a second call.

A mobile client whose connection dropped after the daemon answered cannot tell whether its turn was kept:
asked again without a turn id, the turn was added twice and the provider paid twice.
"""

from __future__ import annotations

import sqlite3
import threading

import grpc
import pytest
from grpc_helpers import error_details, text_request
from media_factory import png
from mmrouter.v1 import router_pb2 as pb

from tests.fakes.openai import API_KEY, FakeOpenAI

CONFIG = """
providers:
  openai: {{api_key: "{key}", base_url: "{url}"}}
default: openai/gpt-4o
"""


def turn(text: str, session: str, turn_id: str = "", media: list[pb.Media] | None = None) -> pb.MultimodalRequest:
    request = text_request(text, media=media)
    request.session_id, request.turn_id = session, turn_id
    return request


def kept_turns(daemon, session: str) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    with sqlite3.connect(daemon.data_dir / "sessions.sqlite") as db:
        return db.execute("SELECT role, parts FROM turns WHERE session_id = ? ORDER BY position",
                          (session,)).fetchall()


@pytest.fixture
def fake():  # type: ignore[no-untyped-def]
    with FakeOpenAI() as server:
        yield server


def test_a_turn_asked_again_with_its_turn_id_gets_the_kept_answer_without_a_call(start_daemon, fake) -> None:
    daemon = start_daemon(CONFIG.format(key=API_KEY, url=fake.base_url), plugins=())
    first = daemon.stub.Generate(pb.GenerateRequest(request=turn("What is 2+2?", "s1", "t-1"))).answer
    assert first.text == "Hello from the fake GPT." and first.usage.cost_usd > 0
    fake.reply_chunks = ["Another", " answer."]

    again = daemon.stub.Generate(pb.GenerateRequest(request=turn("What is 2+2?", "s1", "t-1"))).answer
    assert again.text == first.text
    assert (again.route.rule, again.route.provider, again.route.model) == (
        first.route.rule, first.route.provider, first.route.model)
    assert any("turn 't-1' of session 's1' was answered at" in note and "no provider was called" in note
               for note in again.route.notes), again.route.notes
    assert again.usage.cost_usd == 0 and not again.route.attempts
    assert len(fake.chat_requests()) == 1
    access = [line for line in daemon.logs().splitlines() if "Generate OK" in line]
    assert len(access) == 2 and "kept_turn" not in access[0], access  # the operator tells the replay apart
    assert "kept_turn=t-1" in access[1] and "attempts=" not in access[1] and "cost_usd" not in access[1], access
    assert [role for role, _ in kept_turns(daemon, "s1")] == ["user", "assistant"]

    streamed = list(daemon.stub.StreamGenerate(pb.StreamGenerateRequest(request=turn("What is 2+2?", "s1", "t-1"))))
    assert [e.WhichOneof("event") for e in streamed] == ["route_chosen", "text_delta", "done"]
    assert streamed[1].text_delta.text == first.text and streamed[-1].done.answer.text == first.text

    # a new turn id is a new turn: answered, and kept after the first
    second = daemon.stub.Generate(pb.GenerateRequest(request=turn("And 3+3?", "s1", "t-2"))).answer
    assert second.text == "Another answer." and len(fake.chat_requests()) == 2
    assert [role for role, _ in kept_turns(daemon, "s1")] == ["user", "assistant"] * 2
    # the older turn's id still names its own answer; the same id on another session names nothing there
    assert daemon.stub.Generate(pb.GenerateRequest(request=turn("What is 2+2?", "s1", "t-1"))).answer.text == first.text
    other = daemon.stub.Generate(pb.GenerateRequest(request=turn("What is 2+2?", "s2", "t-1"))).answer
    assert other.text == "Another answer." and len(fake.chat_requests()) == 3


def test_a_turn_asked_again_while_it_is_answered_waits_and_gets_that_answer(start_daemon, fake) -> None:
    """The retry of a client whose connection dropped may come while the first call still runs."""
    fake.chunk_delay = 0.3
    daemon = start_daemon(CONFIG.format(key=API_KEY, url=fake.base_url), plugins=())
    answers: list[pb.Answer] = []

    def ask() -> None:
        answers.append(daemon.stub.Generate(pb.GenerateRequest(request=turn("Hi", "s3", "t-9")), timeout=60).answer)

    threads = [threading.Thread(target=ask) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert [a.text for a in answers] == ["Hello from the fake GPT."] * 2
    assert len(fake.chat_requests()) == 1
    assert [role for role, _ in kept_turns(daemon, "s3")] == ["user", "assistant"]


def test_a_turn_id_with_another_question_is_refused_and_explain_says_what_generate_does(start_daemon, fake) -> None:
    """A client reusing ids (a counter reset by a restart) got an old answer to a new question, at status OK."""
    daemon = start_daemon(CONFIG.format(key=API_KEY, url=fake.base_url), plugins=())
    image = pb.Media(modality=pb.MODALITY_IMAGE, mime_type="image/png", data=png("receipt 42"), filename="r.png")
    first = daemon.stub.Generate(pb.GenerateRequest(request=turn("What is this?", "s9", "t-1", [image]))).answer
    # the same turn, its image inline again: the kept answer
    again = daemon.stub.Generate(pb.GenerateRequest(request=turn("What is this?", "s9", "t-1", [image]))).answer
    assert again.text == first.text and len(fake.chat_requests()) == 1
    explained = daemon.stub.ExplainRoute(pb.ExplainRouteRequest(request=turn("What is this?", "s9", "t-1", [image])))
    assert any("turn 't-1' of session 's9' was answered at" in note and "Generate would send its kept answer again"
               in note for note in explained.route.notes), explained.route.notes
    other_image = pb.Media(modality=pb.MODALITY_IMAGE, mime_type="image/png", data=png("receipt 43"))
    for other in (turn("And this?", "s9", "t-1", [image]), turn("What is this?", "s9", "t-1", [other_image])):
        with pytest.raises(grpc.RpcError) as caught:
            daemon.stub.Generate(pb.GenerateRequest(request=other))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        [(field, description)] = error_details(caught.value).violations
        assert field == "request.turn_id" and description.startswith(
            "names a turn of this session that asked something else (turn 't-1' of session 's9' was answered at")
    # a language on a turn with nothing to transcribe asks nothing else (another transcription language on a
    # recording does: test_turn_replay_s22.py): the kept answer
    french = turn("What is this?", "s9", "t-1", [image])
    french.options.language = "fr"
    assert daemon.stub.Generate(pb.GenerateRequest(request=french)).answer.text == first.text
    # how it is answered is no other question: a retry with another temperature gets the kept answer
    warmer = turn("What is this?", "s9", "t-1", [image])
    warmer.options.temperature = 0.9
    assert daemon.stub.Generate(pb.GenerateRequest(request=warmer)).answer.text == first.text
    assert len(fake.chat_requests()) == 1
    assert [role for role, _ in kept_turns(daemon, "s9")] == ["user", "assistant"]


def test_a_reset_session_forgets_its_turn_ids(start_daemon, fake) -> None:
    daemon = start_daemon(CONFIG.format(key=API_KEY, url=fake.base_url), plugins=())
    daemon.stub.Generate(pb.GenerateRequest(request=turn("Hi", "s4", "t-1")))
    daemon.stub.ResetSession(pb.ResetSessionRequest(session_id="s4"))
    daemon.stub.Generate(pb.GenerateRequest(request=turn("Hi", "s4", "t-1")))
    assert len(fake.chat_requests()) == 2


@pytest.mark.parametrize(("session", "turn_id", "problem"), [
    ("", "t-1", "names a turn of a session, and the request has no session_id"),
    ("s5", "t" * 129, "129 characters; at most 128"),
    ("s5", "t-\n1", "send the id without it"),
])
def test_a_bad_turn_id_is_refused_naming_it(start_daemon, fake, session, turn_id, problem) -> None:
    daemon = start_daemon(CONFIG.format(key=API_KEY, url=fake.base_url), plugins=())
    with pytest.raises(grpc.RpcError) as caught:
        daemon.stub.Generate(pb.GenerateRequest(request=turn("Hi", session, turn_id)))
    details = error_details(caught.value)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    [(field, description)] = details.violations
    assert field == "request.turn_id" and problem in description
    assert fake.chat_requests() == []


#: The turns table as versions before turn ids made it.
OLD_TURNS = """
CREATE TABLE turns (
    session_id TEXT NOT NULL, position INTEGER NOT NULL, role TEXT NOT NULL, parts TEXT NOT NULL, at REAL,
    PRIMARY KEY (session_id, position)
);
"""


def test_a_database_of_an_older_version_gets_turn_ids_and_keeps_its_turns(start_daemon, fake, tmp_path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with sqlite3.connect(data_dir / "sessions.sqlite") as db:
        db.executescript(OLD_TURNS)
        db.execute("""INSERT INTO turns VALUES ('s6', 0, 'user', '[{"text": "Earlier"}]', 1.0)""")
        db.execute("""INSERT INTO turns VALUES ('s6', 1, 'assistant', '[{"text": "Old reply"}]', 1.0)""")
    daemon = start_daemon(CONFIG.format(key=API_KEY, url=fake.base_url), plugins=(), data_dir=data_dir)
    for _ in range(2):
        daemon.stub.Generate(pb.GenerateRequest(request=turn("Hi", "s6", "t-1")))
    assert len(fake.chat_requests()) == 1
    assert [m["content"] for m in fake.chat_requests()[0]["messages"]][:2] == ["Earlier", "Old reply"]
    assert [role for role, _ in kept_turns(daemon, "s6")] == ["user", "assistant"] * 2


def test_columns_that_cannot_be_added_at_start_leave_turns_answered_again(tmp_path, caplog) -> None:
    """Another process holding the database's write lock as the daemon starts (a backup, a sqlite3 shell) must
    not stop it: the turn ids wait for a later start."""
    from router import sessions
    from router.sessions import KeptAnswer, SessionStore
    from router.types import Message, Part, Role

    path = tmp_path / "sessions.sqlite"
    with sqlite3.connect(path) as db:  # every table of today but the turns' new columns, as the daemon made it
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(sessions._SCHEMA.replace("    turn_id TEXT, answer TEXT,\n", ""))
        db.execute("CREATE INDEX calls_at ON calls (at)")
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        store = SessionStore(path, busy_timeout=0.2)
    finally:
        holder.rollback()
        holder.close()
    assert "could not be given its turn id columns" in caplog.text
    reply = KeptAnswer("t-1", "Hello", "general", "openai", "gpt-4o", "stop")
    messages = [Message(Role.USER, [Part(text="Hi")]), Message(Role.ASSISTANT, [Part(text="Hello")])]
    assert store.append("s7", messages, lambda media: "", reply=reply)
    assert store.answered("s7", "t-1") is None and store.turn_count("s7") == 2
    store.close()
    store = SessionStore(path)  # a later start adds them
    assert store.append("s8", messages, lambda media: "", reply=reply)
    assert store.answered("s8", "t-1")[0] == reply
    store.close()
