"""A turn asked again under its turn id, spelled differently but asking the same (QA batchjob §1), gets its kept
answer: ``auto`` (or unspecified) and the task it resolves to are the same task, and a language, diarization or
speaker count on a turn with nothing to transcribe changes nothing. Another task, or another language for a
recording, is still another question; and a turn kept by an earlier version (its question's digest made the old
way) is still replayed when asked again as it was.

The daemon runs for real (tests/conftest.py); the OpenAI plugin calls the fake of tests/fakes through its SDK.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3

import grpc
import pytest
from grpc_helpers import error_details
from media_factory import wav
from mmrouter.v1 import router_pb2 as pb
from test_turn_ids import kept_turns, turn

from tests.fakes.openai import API_KEY, FakeOpenAI

CONFIG = """
providers:
  openai: {{api_key: "{key}", base_url: "{url}"}}
routes:
  - name: transcription
    match: {{task: [transcribe]}}
    use: openai/whisper-1
default: openai/gpt-4o
"""
QUESTION = "What is 6*7?"
MEMO = wav(0.5)
AUDIO, TEXT = "audio", "text"
A, U, C, T = pb.TASK_AUTO, pb.TASK_UNSPECIFIED, pb.TASK_CHAT, pb.TASK_TRANSCRIBE


def asked(session: str, what: str, options: pb.Options) -> pb.MultimodalRequest:
    """Turn ``t1`` of ``session``: a voice memo alone (``AUDIO``) or a question (``TEXT``), with ``options``."""
    media = [pb.Media(modality=pb.MODALITY_AUDIO, mime_type="audio/wav", data=MEMO)] if what == AUDIO else None
    request = turn("" if what == AUDIO else QUESTION, session, "t1", media)
    request.options.CopyFrom(options)
    return request


def generate(daemon, request: pb.MultimodalRequest) -> pb.Answer:  # type: ignore[no-untyped-def]
    return daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=60).answer


def replayed(answer: pb.Answer) -> bool:
    return any("was answered at" in note and "no provider was called" in note for note in answer.route.notes)


def assert_replayed(daemon, fake, session: str, request: pb.MultimodalRequest, first: pb.Answer) -> None:  # type: ignore[no-untyped-def]
    """``request`` gets ``first``, the kept answer, without a provider call or a new turn."""
    calls = len(fake.requests)
    again = generate(daemon, request)
    assert replayed(again) and again.text == first.text and again.usage.cost_usd == 0, (session, again)
    assert len(fake.requests) == calls, session
    assert [role for role, _ in kept_turns(daemon, session)] == ["user", "assistant"], session


def assert_refused(daemon, request: pb.MultimodalRequest) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as caught:
        generate(daemon, request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, request.session_id
    assert [field for field, _ in error_details(caught.value).violations] == ["request.turn_id"], request.session_id


@pytest.fixture
def fake():  # type: ignore[no-untyped-def]
    with FakeOpenAI() as server:
        yield server


@pytest.fixture
def daemon(start_daemon, fake):  # type: ignore[no-untyped-def]
    return start_daemon(CONFIG.format(key=API_KEY, url=fake.base_url), plugins=())


# (what the turn sends, the first call's options, the retry's options): the same question each time
SAME = [
    (AUDIO, pb.Options(task=U), pb.Options(task=A)),
    (AUDIO, pb.Options(task=A), pb.Options(task=T)),  # auto resolves to transcribe for audio alone
    (AUDIO, pb.Options(task=T), pb.Options(task=U)),
    (TEXT, pb.Options(task=A), pb.Options(task=C)),
    (TEXT, pb.Options(task=U), pb.Options(task=C)),
    (TEXT, pb.Options(task=C), pb.Options(task=A)),
    # nothing to transcribe: the transcription options ask nothing of a chat model
    (TEXT, pb.Options(task=A), pb.Options(task=A, language="en")),
    (TEXT, pb.Options(task=C, language="fr", diarization=True), pb.Options(task=A, speakers_expected=2)),
]


def test_a_retry_spelled_differently_but_asking_the_same_gets_the_kept_answer(daemon, fake) -> None:
    for i, (what, first_options, retry_options) in enumerate(SAME):
        session = f"same-{i}"
        first = generate(daemon, asked(session, what, first_options))
        assert first.text and not replayed(first), session
        assert_replayed(daemon, fake, session, asked(session, what, retry_options), first)
        assert_replayed(daemon, fake, session, asked(session, what, first_options), first)  # as it was, too


def test_another_task_or_another_transcription_language_is_still_another_question(daemon, fake) -> None:
    first = generate(daemon, asked("memo", AUDIO, pb.Options(language="en")))
    assert first.route.model == "whisper-1"
    for other in (pb.Options(task=C, language="en"), pb.Options(language="fr"), pb.Options(),
                  pb.Options(language="en", diarization=True)):
        assert_refused(daemon, asked("memo", AUDIO, other))
    assert_replayed(daemon, fake, "memo", asked("memo", AUDIO, pb.Options(task=T, language="en")), first)

    generate(daemon, asked("question", TEXT, pb.Options()))
    assert_refused(daemon, asked("question", TEXT, pb.Options(task=T)))


def older_digest(options: dict[str, object], parts: list[str]) -> str:
    """The question digest of a one-message user turn as versions before this fix made it: the options as sent
    but for an ``auto`` task and empty values (none at all: no options entry), then each part."""
    digest = hashlib.sha256()
    if options:
        digest.update(json.dumps(["options", options], sort_keys=True).encode())
    for part in parts:
        digest.update(json.dumps(["user", part]).encode())
    return digest.hexdigest()


def test_a_turn_kept_by_an_earlier_version_is_replayed_when_asked_again_as_it_was(
        start_daemon, fake, tmp_path) -> None:
    """Turns kept before the fix carry the old digest of their question: asked again as they were, they are
    still the same question (a job resumed across the upgrade is not refused nor charged again)."""
    config = CONFIG.format(key=API_KEY, url=fake.base_url)
    old = {  # session: (the turn, the digest an earlier version kept for it)
        "old-chat": (asked("old-chat", TEXT, pb.Options(task=C, language="en")),
                     older_digest({"task": "chat", "language": "en"}, [f"text:{QUESTION}"])),
        "old-memo": (asked("old-memo", AUDIO, pb.Options()),
                     older_digest({}, [f"media:{hashlib.sha256(MEMO).hexdigest()}"])),
    }
    daemon = start_daemon(config, plugins=(), data_dir=tmp_path / "data")
    first = {session: generate(daemon, request) for session, (request, _) in old.items()}
    daemon.stop()
    with sqlite3.connect(tmp_path / "data" / "sessions.sqlite") as db:  # as the earlier version kept them
        for session, (_, digest) in old.items():
            (answer,) = db.execute("SELECT answer FROM turns WHERE session_id = ? AND turn_id = 't1'",
                                   (session,)).fetchone()
            db.execute("UPDATE turns SET answer = ? WHERE session_id = ? AND turn_id = 't1'",
                       (json.dumps({**json.loads(answer), "asked": digest}), session))
    daemon = start_daemon(config, plugins=(), data_dir=tmp_path / "data")
    for session, (request, _) in old.items():
        assert_replayed(daemon, fake, session, request, first[session])
    assert_refused(daemon, asked("old-memo", AUDIO, pb.Options(language="fr")))
