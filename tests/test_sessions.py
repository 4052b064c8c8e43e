"""Conversations: history kept by session id, media by reference, survives restarts, reset, trimming."""

from __future__ import annotations

import asyncio
import hashlib
import time

import grpc
import pytest
from conftest import launch_daemon, make_dist_info
from grpc_helpers import error_details, text_request, wait_for
from media_factory import mp4, pdf, png, wav
from mmrouter.v1 import router_pb2 as pb

from router.outcome import Answer, RouteInfo, Step
from router.redact import session_tag
from router.routing import TOKENS_PER_AUDIO_SECOND, TOKENS_PER_IMAGE, TOKENS_PER_PDF_PAGE, estimate_tokens
from router.sessions import STATS_BATCH_ROWS, SessionStore, trim_history
from router.types import Media, Message, Modality, Part, Role, Usage

CONFIG = """
providers:
  fake: {api_key: k}
routes:
  - name: short-memory
    match: {tags: [small]}
    use: fake/small
  - name: everything
    use: fake/omni
"""


@pytest.fixture(scope="module")
def daemon(plugin_sites, tmp_path_factory):
    """One daemon of CONFIG for the module's tests that only call it on sessions of their own (no session id
    used by another test): starting one per test took a good part of the module's time. Tests sharing it must
    not read its statistics, log or health, touch its data directory, nor send media another test sends."""
    daemon = launch_daemon(CONFIG, tmp=tmp_path_factory.mktemp("sessions"), env=None,
                           sites=[plugin_sites["testkit"]])
    yield daemon
    daemon.stop()


def ask(daemon, text: str, session: str = "s1", **fields) -> pb.Answer:
    request = text_request(text, session_id=session, **fields)
    return daemon.stub.Generate(pb.GenerateRequest(request=request)).answer


def test_history_and_media_survive_a_restart_and_reset_clears_them(start_daemon, tmp_path) -> None:
    image = pb.Media(modality=pb.MODALITY_IMAGE, mime_type="image/png", data=png("hi"))
    daemon = start_daemon(CONFIG, data_dir=tmp_path / "data")
    first = ask(daemon, "first question", media=[image])
    assert "[history=0 image=1" in first.text
    second = ask(daemon, "second question")
    assert "[history=1 image=1" in second.text, "the image of turn 1 was not carried by reference"
    assert "first question" in second.text and "fake/omni says: first question" in second.text
    stored = [p for p in (tmp_path / "data" / "media").rglob("*") if p.is_file() and p.suffix != ".json"
              and p.parent.name != "tmp"]
    assert len(stored) == 1, "inline media of a session must be stored once, by content"
    assert daemon.stop() == 0

    restarted = start_daemon(CONFIG, data_dir=tmp_path / "data")
    third = ask(restarted, "third question")
    assert "[history=2 image=1" in third.text
    assert "second question" in third.text
    assert ask(restarted, "other session", session="s2").text.count("[history=0") == 1

    removed = restarted.stub.ResetSession(pb.ResetSessionRequest(session_id="s1")).turns_removed
    assert removed == 6  # three questions and three answers
    assert "[history=0 image=0" in ask(restarted, "after reset").text


def test_a_call_of_system_prompts_only_is_refused_and_adds_no_turn(daemon) -> None:
    """System messages alone ask nothing: GPT-4o answered such a call and Claude refused it, so the same
    request failed or not by the fallback taken. On a session whose history ends with an answered question
    too: OpenAI answered that question anew, Claude continued its answer (a prefill), billed and not kept."""
    request = pb.MultimodalRequest(messages=[pb.Message(role=pb.ROLE_SYSTEM, parts=[pb.Part(text="be brief")])],
                                   session_id="system-only")
    for session in ("system-only", ""):
        request.session_id = session
        with pytest.raises(grpc.RpcError) as caught:
            daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=30)
        got = error_details(caught.value)
        assert (got.code, got.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
        assert got.violations[0][0] == "request.messages" and "no user message" in got.violations[0][1]
    ask(daemon, "q0", session="asked")
    request.session_id = "asked"  # its history holds a question, answered: asked again, it meant one thing by provider
    for call in (daemon.stub.Generate, daemon.stub.ExplainRoute):
        with pytest.raises(grpc.RpcError) as caught:
            call(pb.GenerateRequest(request=request) if call is daemon.stub.Generate
                 else pb.ExplainRouteRequest(request=request), timeout=30)
        got = error_details(caught.value)
        assert (got.code, got.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
        assert "a session's history does not count" in got.violations[0][1]
    assert "<<q0" in ask(daemon, "q1", session="asked").text  # the session goes on with a user message
    # a transcription of the history's recording asks for that recording: not refused for want of a question
    ask(daemon, "what is said?", session="heard",
        media=[pb.Media(modality=pb.MODALITY_AUDIO, mime_type="audio/wav", data=wav(1.0))])
    transcribe = pb.MultimodalRequest(messages=[pb.Message(role=pb.ROLE_SYSTEM, parts=[pb.Part(text="verbatim")])],
                                      session_id="heard", options=pb.Options(task=pb.TASK_TRANSCRIBE))
    with pytest.raises(grpc.RpcError) as caught:  # routed (no rule here transcribes), not refused as asking nothing
        daemon.stub.ExplainRoute(pb.ExplainRouteRequest(request=transcribe), timeout=30)
    got = error_details(caught.value)
    assert got.reason == "NO_ROUTE" and "task transcribe): " in got.message, got.message
    with pytest.raises(grpc.RpcError) as caught:  # nothing was stored: an assistant turn alone is no conversation
        daemon.stub.ResetSession(pb.ResetSessionRequest(session_id="system-only"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_history_longer_than_the_context_is_trimmed_oldest_first(daemon) -> None:
    for i in range(4):
        ask(daemon, f"turn {i} " + "words " * 20, session="long chat")
    answer = ask(daemon, "last", session="long chat", hints=pb.RoutingHints(tags=["small"]))
    assert answer.route.model == "small"
    [note] = [note for note in answer.route.notes if note.startswith("history trimmed")]
    assert "oldest message(s) of session 'long chat' to fit fake/small's context" in note  # quoted, as other notes'
    assert "turn 0" not in answer.text and "last" in answer.text


def test_a_fallback_with_a_smaller_context_gets_the_history_trimmed_to_it(start_daemon) -> None:
    """The big-context model fails; its fallback (60 tokens) must not get the whole history."""
    daemon = start_daemon(CONFIG.replace("""  - name: everything
    use: fake/omni""", """  - name: big-then-small
    match: {tags: [fallback]}
    use: fake/omni
    fallback: [fake/small]
  - name: everything
    use: fake/omni"""))
    for i in range(4):
        ask(daemon, f"turn {i} " + "words " * 20, session="long")
    answer = ask(daemon, "FAIL:503@omni", session="long", hints=pb.RoutingHints(tags=["fallback"]))
    assert [(a.model, a.ok) for a in answer.route.attempts] == [("omni", False), ("small", True)]
    assert "turn 0" not in answer.text and "FAIL:503@omni" in answer.text
    assert any("history trimmed" in n and "fake/small" in n for n in answer.route.notes), answer.route.notes


def test_trimming_leaves_room_in_the_context_for_the_answer(daemon) -> None:
    """The history is trimmed to the model's context less the answer's tokens (the request's
    max_output_tokens, else the model's default): a provider refuses input + max_tokens over its context."""
    conversation = [pb.Message(role=pb.ROLE_USER if i % 2 == 0 else pb.ROLE_ASSISTANT, parts=[pb.Part(text=f"m{i}")])
                    for i in range(12)]
    conversation.append(pb.Message(role=pb.ROLE_USER, parts=[pb.Part(text="seed")]))
    kept = []
    for session, answer_tokens in (("roomy", 1), ("tight", 40)):
        seed = pb.MultimodalRequest(session_id=session, messages=conversation)
        daemon.stub.Generate(pb.GenerateRequest(request=seed), timeout=30)
        answer = ask(daemon, "last", session=session, hints=pb.RoutingHints(tags=["small"]),
                     options=pb.Options(max_output_tokens=answer_tokens))
        kept.append(int(answer.text.split("[history=")[1].split()[0]))
    assert kept[0] > 0 and kept[1] == 0, kept  # a 60-token context, 1 or 40 of them for the answer
    assert any("with room for its answer" in note for note in answer.route.notes), answer.route.notes


def test_a_small_context_keeps_room_for_history_when_the_answer_length_is_not_said() -> None:
    """A model whose default answer length (4,096 tokens) fills its context (a local 4k model, as the
    README's vLLM example declares) had every session turn sent without history: all of it trimmed for
    an answer length nobody asked for. At most a quarter of the context is kept for such an answer."""
    from router import Modality, ModelInfo
    from router.core import input_budget

    local = ModelInfo("llama", frozenset({Modality.TEXT}), context_tokens=4096)
    assert local.default_max_output_tokens == 4096
    assert input_budget(local, 0) == int(4096 * 0.95) - 1024
    assert input_budget(local, 200) == int(4096 * 0.95) - 200  # an answer length the request says is kept whole
    big = ModelInfo("gpt", frozenset({Modality.TEXT}), context_tokens=128_000, default_max_output_tokens=16_384)
    assert input_budget(big, 0) == int(128_000 * 0.95) - 16_384  # a default within a quarter: as before
    capped = ModelInfo("c", frozenset({Modality.TEXT}), context_tokens=4096, max_output_tokens=500)
    assert input_budget(capped, 3000) == int(4096 * 0.95) - 500


def test_a_session_with_turns_takes_only_the_new_turn(daemon) -> None:
    """A client resending the whole conversation with a session id would have it stored twice: refused
    once the session holds turns. A new session may start from a conversation given whole."""
    seeded = pb.MultimodalRequest(session_id="seeded", messages=[
        pb.Message(role=pb.ROLE_USER, parts=[pb.Part(text="q0")]),
        pb.Message(role=pb.ROLE_ASSISTANT, parts=[pb.Part(text="a0")]),
        pb.Message(role=pb.ROLE_USER, parts=[pb.Part(text="q1")]),
    ])
    assert "[history=1" in daemon.stub.Generate(pb.GenerateRequest(request=seeded), timeout=30).answer.text
    with pytest.raises(grpc.RpcError) as caught:
        daemon.stub.Generate(pb.GenerateRequest(request=seeded), timeout=30)
    got = error_details(caught.value)
    assert (got.code, got.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
    assert got.violations == [("request.messages[1].role", "the session already holds 4 message(s): send only "
                               "the new turn (user and system messages); the router adds the earlier ones")]
    after = ask(daemon, "q2", session="seeded")
    assert "[history=2" in after.text and "q0 | a0 | q1" in after.text


def test_session_turns_are_not_stored_when_the_call_fails(daemon) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        ask(daemon, "FAIL:500", session="broken")
    assert error_details(caught.value).code == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(grpc.RpcError) as caught:
        daemon.stub.ResetSession(pb.ResetSessionRequest(session_id="broken"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


URL_ECHO = '''
"""Answers with every media it was given, as modality:mime:url-or-id, so a test sees the history."""
import router


class UrlEcho(router.Provider):
    name = "urlecho"
    models = [router.ModelInfo("seer", inputs=frozenset(router.Modality))]

    async def generate(self, request, model, ctx):
        seen = [f"{m.modality.value}:{m.mime_type}:{m.url or m.media_id}" for m in request.media()]
        yield router.TextDelta("seen " + " ".join(seen))


@router.hookimpl
def register_providers(register, settings):
    register(UrlEcho())
'''


def test_a_session_turn_with_a_url_is_kept_by_url(start_daemon, tmp_path) -> None:
    site = tmp_path / "urlecho-site"
    site.mkdir()
    (site / "mmrouter_urlecho.py").write_text(URL_ECHO)
    make_dist_info(site, "mmrouter-urlecho", "urlecho", "mmrouter_urlecho")
    daemon = start_daemon("""
        server: {allow_urls: true}
        routes:
          - name: all
            use: urlecho/seer
        """, plugins=(), extra_sites=(site,))
    url = "https://example.com/cat.png"
    image = pb.Media(modality=pb.MODALITY_IMAGE, mime_type="image/png", url=url)
    first = ask(daemon, "what is this?", session="urls", media=[image])
    assert first.text == f"seen image:image/png:{url}"
    second = ask(daemon, "and its colour?", session="urls")
    assert second.text == f"seen image:image/png:{url}", "the URL of turn 1 is not in the history"
    assert ask(daemon, "again?", session="urls").text == f"seen image:image/png:{url}"

    assert daemon.stop() == 0  # the operator turns URLs off: the stored turns must not send them
    without_urls = start_daemon("""
        routes:
          - name: all
            use: urlecho/seer
        """, plugins=(), extra_sites=(site,), data_dir=daemon.data_dir)
    assert ask(without_urls, "and now?", session="urls").text == "seen "


def test_a_turn_that_cannot_be_saved_still_answers_and_counts(start_daemon, tmp_path) -> None:
    """The answer is computed before the turn is saved: a failing media store costs the turn, not the call."""
    image = png("blocked")
    media_id = hashlib.sha256(image).hexdigest()
    data_dir = tmp_path / "data"
    (data_dir / "media").mkdir(parents=True)
    (data_dir / "media" / media_id[:2]).write_text("a file where the media store needs a directory")
    daemon = start_daemon(CONFIG, data_dir=data_dir)
    media = pb.Media(modality=pb.MODALITY_IMAGE, mime_type="image/png", data=image)
    answer = ask(daemon, "look", session="unsaved", media=[media])
    assert "[history=0 image=1" in answer.text
    [note] = answer.route.notes
    assert note.startswith("this turn was not kept in session 'unsaved': cannot store "), note
    assert "cannot be written: File exists (a file where the store needs a folder)" in note, note
    assert "Traceback" not in daemon.logs()
    assert wait_for(lambda: f"saving this turn of session {session_tag('unsaved')} failed" in daemon.logs())
    assert not list((data_dir / "media" / "tmp").iterdir()), "the failed store left a temp file"

    def calls() -> int:
        store = SessionStore(data_dir / "sessions.sqlite")
        try:
            return sum(row["calls"] for row in store.stats())
        finally:
            store.close()

    assert wait_for(lambda: calls() == 1), "the answered call was not recorded"
    assert "[history=0 image=0" in ask(daemon, "next", session="unsaved").text


# -- call statistics (SessionStore in-process) ---------------------------------------------------


def _answer(rule: str, cost: float) -> Answer:
    route = RouteInfo(rule, "fake", "omni", steps=[Step("answer", "fake", "omni", 12.0, Usage(3, 4, 0.0, cost))])
    return Answer("hi", None, Usage(3, 4, 0.0, cost), route)


def _calls_seen_by_another_reader(path) -> int:
    reader = SessionStore(path)  # what `mmrouter stats` does: its own connection to the file
    try:
        return sum(row["calls"] for row in reader.stats())
    finally:
        reader.close()


async def test_statistics_rows_are_batched_yet_written_promptly_and_on_close(tmp_path) -> None:
    path = tmp_path / "sessions.sqlite"
    store = SessionStore(path)
    for i in range(5):
        store.record(_answer("chat", 0.25 * i))
    assert store.stats()[0]["calls"] == 5  # its own reads see what waits
    for _ in range(3):
        store.record(_answer("chat", 1.0))
    deadline = asyncio.get_running_loop().time() + 5
    while _calls_seen_by_another_reader(path) < 8:  # written by the loop's timer, no read needed
        assert asyncio.get_running_loop().time() < deadline, "statistics rows never reached the file"
        await asyncio.sleep(0.01)

    for _ in range(STATS_BATCH_ROWS + 7):  # a full batch goes to the store's thread at once, no timer
        store.record(_answer("burst", 0.0))
    assert store._flush_timer is not None and len(store._pending_calls) == 7
    deadline = asyncio.get_running_loop().time() + 5
    while _calls_seen_by_another_reader(path) < 8 + STATS_BATCH_ROWS:  # the loop is never blocked writing it
        assert asyncio.get_running_loop().time() < deadline, "the full batch never reached the file"
        await asyncio.sleep(0.01)
    store.close()  # the 7 left are written on close, not lost
    rows = {r["rule"]: r for r in SessionStore(path).stats()}
    assert rows["burst"]["calls"] == STATS_BATCH_ROWS + 7
    assert rows["chat"]["calls"] == 8 and rows["chat"]["cost_usd"] == pytest.approx(0.25 * 10 + 3.0)


def test_each_write_is_one_transaction(tmp_path) -> None:
    """A turn (question and answer) and a batch of statistics rows are each written in one transaction:
    another reader never sees half of them (in autocommit mode every inserted row was its own commit)."""
    store = SessionStore(tmp_path / "s.sqlite")
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    store.append("s1", [Message(Role.USER, [Part(text="q")]), Message(Role.ASSISTANT, [Part(text="a")])],
                 lambda media: "")
    for _ in range(3):
        store._pending_calls.append((0.0, "r", "p", "m", "answer", 1.0, 0.0, 1, 1, 0.0, ()))
    store.flush()
    writes = [s.split()[0] for s in statements if s.split()[0] in ("BEGIN", "INSERT", "COMMIT")]
    # a turn's INSERT is traced twice: once more as it runs the trigger of the index of media (turn_media)
    assert writes == ["BEGIN", *["INSERT"] * 4, "COMMIT", "BEGIN", "INSERT", "INSERT", "INSERT", "COMMIT"]
    store.close()


def test_statistics_are_written_at_once_without_an_event_loop(tmp_path) -> None:
    store = SessionStore(tmp_path / "s.sqlite")
    store.record(_answer("script", 0.5))
    assert _calls_seen_by_another_reader(tmp_path / "s.sqlite") == 1
    store.close()


# -- trimming a long history ---------------------------------------------------------------------


def test_trimming_estimates_each_message_once_and_keeps_the_newest_that_fit() -> None:
    history = [Message(Role.USER if i % 2 == 0 else Role.ASSISTANT, [Part(text=f"m{i:04d} " + "x" * 395)])
               for i in range(3000)]  # 100 tokens each
    current = [Message(Role.USER, [Part(text="q" * 400)])]
    calls = []

    def counting(messages: list[Message]) -> int:
        calls.append(len(messages))
        return estimate_tokens(messages)

    kept, dropped = trim_history(history, current, 1000, counting)
    # nine fit, and the oldest of them, an answer whose question was dropped, goes too
    assert (len(kept), dropped) == (8, 2992) and kept == history[-8:] and kept[0].role is Role.USER
    assert estimate_tokens(history[-9:] + current) <= 1000 < estimate_tokens(history[-10:] + current)
    assert len(calls) == len(history) + 1, "a long history must cost one estimate per message, not per drop"
    assert trim_history(history[:5], current, 10_000, counting) == (history[:5], 0)


def test_token_estimates_add_text_and_media_rates() -> None:
    image = Media(Modality.IMAGE, "image/png", data=b"x")
    audio = Media(Modality.AUDIO, "audio/wav", data=b"x", duration_seconds=10.0)
    unknown = Media(Modality.VIDEO, "video/mp4", data=b"x")  # duration not measured
    pdf = Media(Modality.DOCUMENT, "application/pdf", data=b"x", pages=2)
    message = Message(Role.USER, [Part(text="a" * 40), *(Part(media=m) for m in (image, audio, unknown, pdf))])
    assert estimate_tokens([message]) == 10 + TOKENS_PER_IMAGE + 10 * TOKENS_PER_AUDIO_SECOND + 2 * TOKENS_PER_PDF_PAGE
    # a media a bridge will convert counts as its text's tokens
    assert estimate_tokens([message], bridged={id(audio): 7, id(pdf): 0}) == 10 + TOKENS_PER_IMAGE + 7


def test_a_database_from_before_turn_times_gets_them(tmp_path) -> None:
    """Turns written before turns had a time count as written when the daemon first opens the file."""
    import sqlite3
    import time

    path = tmp_path / "sessions.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE turns (session_id TEXT NOT NULL, position INTEGER NOT NULL, role TEXT NOT NULL,"
               " parts TEXT NOT NULL, PRIMARY KEY (session_id, position))")
    db.execute("""INSERT INTO turns VALUES ('old', 0, 'user', '[{"text": "hi"}]')""")
    db.commit()
    db.close()
    store = SessionStore(path)
    try:
        assert [m.text for m in store.history("old", lambda media_id: None)] == ["hi"]
        assert store.prune(time.time() - 60) == (0, 0, set())  # not idle: its time is now
        assert store.prune(time.time() + 60, dry_run=True)[0] == 1
    finally:
        store.close()


MEASURED = """
providers:
  fake: {api_key: k}
routes:
  - name: long-pdfs
    match: {pdf_pages: {min: 2}}
    use: fake/docs
  - name: everything
    use: fake/omni
"""


def test_later_turns_route_on_the_measured_media_of_earlier_turns(start_daemon) -> None:
    daemon = start_daemon(MEASURED)
    two_pages = pb.Media(modality=pb.MODALITY_DOCUMENT, mime_type="application/pdf", data=pdf(["one", "two"]))
    assert ask(daemon, "summarise", session="doc", media=[two_pages]).route.rule == "long-pdfs"
    follow_up = text_request("and page two?", session_id="doc")
    explained = daemon.stub.ExplainRoute(pb.ExplainRouteRequest(request=follow_up)).route
    assert explained.rule == "long-pdfs", [t.reason for t in explained.trace]
    assert ask(daemon, "and page two?", session="doc").route.rule == "long-pdfs"


def test_history_media_keep_the_modality_their_turn_gave_them(daemon) -> None:
    """The same bytes stored first as audio, then sent inline as video in a session turn."""
    clip = mp4()
    upload = iter([pb.UploadMediaRequest(metadata=pb.UploadMetadata(
        modality=pb.MODALITY_AUDIO, mime_type="audio/mp4", size_bytes=len(clip))), pb.UploadMediaRequest(chunk=clip)])
    assert daemon.stub.UploadMedia(upload).modality == pb.MODALITY_AUDIO
    video = pb.Media(modality=pb.MODALITY_VIDEO, mime_type="video/mp4", data=clip)
    assert "audio=0 video=1" in ask(daemon, "what is shown?", session="vid", media=[video]).text
    assert "[history=1 image=0 audio=0 video=1" in ask(daemon, "and then?", session="vid").text


def test_a_history_media_no_longer_stored_is_named_with_what_to_do(start_daemon) -> None:
    """A session whose earlier turn's media file was deleted (a hand clean-up, a damaged disk) failed every
    later turn with "no media with id ...: upload it with UploadMedia first" and no field: the client had
    not sent that id in this request. Re-uploading the same bytes repairs the session."""
    from pathlib import Path

    daemon = start_daemon(CONFIG)
    clip = mp4()
    upload = iter([pb.UploadMediaRequest(metadata=pb.UploadMetadata(
        modality=pb.MODALITY_VIDEO, mime_type="video/mp4", size_bytes=len(clip))), pb.UploadMediaRequest(chunk=clip)])
    media_id = daemon.stub.UploadMedia(upload).media_id
    stored = pb.Media(modality=pb.MODALITY_VIDEO, mime_type="video/mp4", media_id=media_id)
    ask(daemon, "what is shown?", session="gone", media=[stored])
    [file] = [f for f in Path(daemon.data_dir, "media").rglob(media_id)]
    file.unlink()
    with pytest.raises(grpc.RpcError) as caught:
        ask(daemon, "and then?", session="gone")
    got = error_details(caught.value)
    assert (got.code, got.reason) == (grpc.StatusCode.NOT_FOUND, "MEDIA_NOT_FOUND")
    assert got.metadata == {"media_id": media_id, "in": "session_history"}
    assert f"an earlier turn of this session refers to media {media_id}" in got.message
    assert "upload the same file again with UploadMedia" in got.message and "ResetSession" in got.message
    [(field, problem)] = got.violations
    assert field == "request.session_id" and media_id in problem and "upload the same file again" in problem
    again = iter([pb.UploadMediaRequest(metadata=pb.UploadMetadata(
        modality=pb.MODALITY_VIDEO, mime_type="video/mp4", size_bytes=len(clip))), pb.UploadMediaRequest(chunk=clip)])
    assert daemon.stub.UploadMedia(again).media_id == media_id
    assert "[history=1 image=0 audio=0 video=1" in ask(daemon, "and then?", session="gone").text


def test_bridged_texts_are_kept_until_unused_for_the_prune_period(tmp_path) -> None:
    import time

    from router.types import Transcript, Utterance, Word

    heard = Transcript("Speaker A: hi", [Utterance("hi", 0.5, 1.0, "A", 0.9)], [Word("hi", 0.5, 1.0, "A")], "en", 2.0)
    store = SessionStore(tmp_path / "sessions.sqlite")
    try:
        assert store.recall("clip|audio|fake/ears") is None
        store.remember("clip|audio|fake/ears", "Speaker A: hi", heard)
        store.remember("doc|document|local/extract", "page one", None)
        assert store.recall("clip|audio|fake/ears") == ("Speaker A: hi", heard)
        store.prune(time.time() - 60)
        assert store.recall("doc|document|local/extract") == ("page one", None)  # recent: kept
        time.sleep(0.05)
        cut = time.time()
        assert store.recall("clip|audio|fake/ears") is not None  # used after the cut: kept
        store.prune(cut)
        assert store.recall("doc|document|local/extract") is None
        assert store.recall("clip|audio|fake/ears") == ("Speaker A: hi", heard)
    finally:
        store.close()


def test_a_locked_database_only_costs_the_kept_text(tmp_path, caplog) -> None:
    """Another process (a `mmrouter prune`) holding the write lock: the answer goes on without the memo."""
    import sqlite3

    store = SessionStore(tmp_path / "sessions.sqlite", busy_timeout=0.05)
    store.remember("kept", "text", None)
    other = sqlite3.connect(tmp_path / "sessions.sqlite", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        store.remember("new", "text", None)
        assert store.recall("kept") == ("text", None)  # still read, though its use cannot be written
        assert store.recall("new") is None
        assert "could not keep a bridged text" in caplog.text and "could not mark" in caplog.text
    finally:
        other.execute("ROLLBACK")
        other.close()
        store.close()


def test_kept_transcripts_survive_odd_values_and_older_databases(tmp_path) -> None:
    import dataclasses
    import sqlite3
    from decimal import Decimal

    from router.types import Transcript, Utterance

    path = tmp_path / "sessions.sqlite"
    db = sqlite3.connect(path)  # as the first version of the table was
    db.execute("CREATE TABLE bridged (key TEXT PRIMARY KEY, text TEXT NOT NULL, at REAL NOT NULL)")
    db.execute("INSERT INTO bridged VALUES ('old', 'kept before', 0)")
    db.commit()
    db.close()

    @dataclasses.dataclass
    class ChannelUtterance(Utterance):  # a plugin's own subclass, with a field of its own
        channel: int = 0

    store = SessionStore(path)
    try:
        assert store.recall("old") == ("kept before", None)
        odd = Transcript("hi", [ChannelUtterance("hi", Decimal("0.5"), Decimal("1.0"), "A", channel=2)])  # not JSON
        store.remember("odd", "hi", odd)
        assert store.recall("odd") == ("hi", Transcript("hi", [Utterance("hi", 0.5, 1.0, "A")]))
    finally:
        store.close()


def test_prune_runs_while_another_connection_keeps_writing(tmp_path) -> None:
    """As `mmrouter prune` beside a serving daemon: its deletes used to fail at once with "database is
    locked" when the daemon committed between prune's read and its first write."""
    import threading
    import time

    path = tmp_path / "sessions.sqlite"
    daemon_side = SessionStore(path)
    say = [Message(Role.USER, [Part(text="hi")]), Message(Role.ASSISTANT, [Part(text="hello")])]
    for i in range(2000):
        daemon_side.append(f"old-{i}", say, lambda media: "")
    daemon_side._db.execute("UPDATE turns SET at = 0")
    stop = threading.Event()

    def serve() -> None:
        n = 0
        while not stop.is_set():
            daemon_side.append(f"live-{n % 7}", say, lambda media: "")
            n += 1

    writer = threading.Thread(target=serve)
    writer.start()
    pruner = SessionStore(path)
    try:
        time.sleep(0.05)
        assert pruner.prune(time.time() - 3600)[0] == 2000
    finally:
        stop.set()
        writer.join()
        pruner.close()
    assert {row[0] for row in daemon_side._db.execute("SELECT DISTINCT session_id FROM turns")} == {
        f"live-{i}" for i in range(7)}
    daemon_side.close()


def test_a_reset_during_a_call_keeps_that_calls_turn_out(daemon) -> None:
    """The call was built on the history the reset forgot: its turn must not bring the session back."""
    import threading

    ask(daemon, "remember: blue", session="r")
    answered = []
    slow = threading.Thread(target=lambda: answered.append(ask(daemon, "SLOW:1", session="r")))
    slow.start()
    time.sleep(0.3)
    assert daemon.stub.ResetSession(pb.ResetSessionRequest(session_id="r")).turns_removed == 2
    slow.join(30)
    assert answered and "history=1" in answered[0].text  # it was answered, on the old history
    assert ("this turn was not kept in session 'r': the session was reset (ResetSession) while the call was "
            "under way") in answered[0].route.notes  # its client learns the model will not remember it
    with pytest.raises(grpc.RpcError) as caught:  # ... and left nothing behind
        daemon.stub.ResetSession(pb.ResetSessionRequest(session_id="r"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "[history=0" in ask(daemon, "fresh start", session="r").text


def test_a_reset_drops_the_turn_of_a_call_still_waiting_for_the_one_before_it(daemon) -> None:
    """A call sent before the reset and waiting behind another call on the session was kept: a question of
    the conversation the reset forgot became the first turn of the fresh one."""
    import threading

    ask(daemon, "first", session="r2")
    answered: dict[str, object] = {}
    running = threading.Thread(target=lambda: answered.setdefault("running", ask(daemon, "SLOW:1", session="r2")))
    running.start()
    time.sleep(0.3)
    waiting = threading.Thread(target=lambda: answered.setdefault("waiting", ask(daemon, "queued before", session="r2")))
    waiting.start()
    time.sleep(0.3)
    assert daemon.stub.ResetSession(pb.ResetSessionRequest(session_id="r2")).turns_removed == 2
    running.join(30)
    waiting.join(30)
    assert "history=0" in answered["waiting"].text  # read after the reset
    assert any("the session was reset" in note for note in answered["waiting"].route.notes)
    later = ask(daemon, "after", session="r2").text
    assert "[history=0" in later and "queued before" not in later


def test_a_reset_during_a_new_sessions_first_turn_drops_that_turn(daemon) -> None:
    """A session whose first turn is under way exists for ResetSession: it removes 0 turns (not
    NOT_FOUND) and the turn is not kept; a session with nothing stored or under way is NOT_FOUND."""
    import threading

    answered = []
    slow = threading.Thread(target=lambda: answered.append(ask(daemon, "SLOW:1", session="first")))
    slow.start()
    time.sleep(0.3)
    assert daemon.stub.ResetSession(pb.ResetSessionRequest(session_id="first")).turns_removed == 0
    slow.join(30)
    assert answered and "history=0" in answered[0].text
    assert "[history=0" in ask(daemon, "after the reset", session="first").text
    with pytest.raises(grpc.RpcError) as caught:
        daemon.stub.ResetSession(pb.ResetSessionRequest(session_id="never-used"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_reset_reads_only_its_own_session_and_keeps_texts_other_sessions_use(tmp_path) -> None:
    """ResetSession runs on the event loop: it must not read every turn of every session (it did, for
    each reset, even of a session with no media). A kept text goes only with the last session using
    its media."""
    store = SessionStore(tmp_path / "sessions.sqlite")
    shared, own = "a" * 64, "b" * 64

    def turn(*media_ids: str) -> list[Message]:
        parts = [Part(media=Media(Modality.AUDIO, "audio/wav", data=b"x", media_id=m)) for m in media_ids]
        return [Message(Role.USER, [*parts, Part(text="q")]), Message(Role.ASSISTANT, [Part(text="a")])]

    for i in range(50):
        store.append(f"other-{i}", turn(shared), lambda media: media.media_id)
    store.append("mine", turn(shared, own), lambda media: media.media_id)
    store.append("text-only", turn(), lambda media: media.media_id)
    for media_id in (shared, own):
        store.remember(f"{media_id}|bridge", "heard", None)
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    assert store.reset("text-only").turns == 2 and store.reset("mine").turns == 2
    assert not [s for s in statements if "SELECT parts FROM turns WHERE parts LIKE" in s]
    assert store.recall(f"{shared}|bridge") is not None and store.recall(f"{own}|bridge") is None
    store.close()


def test_two_calls_starting_one_session_from_a_conversation_store_it_once(daemon) -> None:
    """Both send the conversation whole, as a new session may: the second waits for the first (a session's
    calls run one at a time), finds the session started, and is refused as any whole conversation sent to
    a session with turns is, rather than storing the conversation twice."""
    from concurrent.futures import ThreadPoolExecutor

    conversation = pb.MultimodalRequest(session_id="dup", messages=[
        pb.Message(role=pb.ROLE_USER, parts=[pb.Part(text="hi")]),
        pb.Message(role=pb.ROLE_ASSISTANT, parts=[pb.Part(text="hello!")]),
        pb.Message(role=pb.ROLE_USER, parts=[pb.Part(text="SLOW:0.5")]),
    ])

    def call() -> str:
        try:
            daemon.stub.Generate(pb.GenerateRequest(request=conversation), timeout=30)
            return "answered"
        except grpc.RpcError as exc:
            return error_details(exc).reason

    with ThreadPoolExecutor(2) as pool:
        outcomes = sorted(pool.map(lambda _: call(), range(2)))
    assert outcomes == ["INVALID_REQUEST", "answered"]
    assert daemon.stub.ResetSession(pb.ResetSessionRequest(session_id="dup")).turns_removed == 4


def test_calls_on_one_session_run_one_at_a_time_each_on_the_turns_before_it(daemon) -> None:
    """A second call sent while the first is answered waits for it, then answers on a history holding the
    first turn, and says it waited; both answered on the same history before, the second's turn stored after
    a first turn it never saw. Calls on other sessions do not wait."""
    import threading

    ask(daemon, "remember: blue", session="busy")
    first: list[pb.Answer] = []
    slow = threading.Thread(target=lambda: first.append(ask(daemon, "SLOW:1", session="busy")))
    slow.start()
    time.sleep(0.3)
    other = ask(daemon, "elsewhere", session="quiet")  # another session: no wait
    second = ask(daemon, "and now?", session="busy")
    slow.join(30)
    assert first and "[history=1" in first[0].text
    assert "[history=2" in second.text, second.text  # it saw the slow call's turn
    assert any("waited" in note and "'busy'" in note for note in second.route.notes), second.route.notes
    assert not any("waited" in note for note in [*other.route.notes, *first[0].route.notes])
    third = ask(daemon, "last", session="busy")
    assert "[history=3" in third.text
    assert daemon.stub.ResetSession(pb.ResetSessionRequest(session_id="busy")).turns_removed == 8


def test_a_locked_session_database_holds_up_only_the_turn_that_waits_for_it(start_daemon, tmp_path) -> None:
    """Another process holding the write lock on sessions.sqlite (a `mmrouter prune`, a backup tool): the
    turn being saved waits for it, but on the store's thread, not the event loop; health checks and calls
    with no session are answered meanwhile. Once the lock is released the turn is saved and answered."""
    import sqlite3
    import threading

    from grpc_health.v1 import health_pb2, health_pb2_grpc

    daemon = start_daemon(CONFIG, data_dir=tmp_path / "data")
    locker = sqlite3.connect(tmp_path / "data" / "sessions.sqlite", isolation_level=None, check_same_thread=False)
    locker.execute("BEGIN IMMEDIATE")
    released = threading.Event()

    def release() -> None:
        released.set()  # first: what ends after this was not answered under the lock
        locker.execute("ROLLBACK")

    answered, events = threading.Event(), []

    def session_call() -> None:
        request = pb.StreamGenerateRequest(request=text_request("while locked", session_id="locked"))
        for event in daemon.stub.StreamGenerate(request, timeout=30):
            if event.HasField("text_delta"):
                answered.set()  # the provider answered: the turn is about to be saved, and waits for the lock
            events.append((event, released.is_set()))

    caller = threading.Thread(target=session_call)
    caller.start()
    timer = threading.Timer(3.0, release)  # well within the daemon's 5 s busy timeout
    try:
        assert answered.wait(20), "the call on the session was not answered by its provider"
        timer.start()
        time.sleep(0.2)  # the turn's saving is waiting for the lock now
        other = daemon.stub.Generate(pb.GenerateRequest(request=text_request("no session")), timeout=30)
        assert "no session" in other.answer.text and not released.is_set(), "a call with no session waited for the lock"
        health = health_pb2_grpc.HealthStub(daemon.channel).Check(health_pb2.HealthCheckRequest(), timeout=30)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        assert not released.is_set(), "the health check waited for the lock"
        assert caller.is_alive(), "the call on the session did not wait for its turn to be saved"
    finally:
        timer.join(10)
        if not released.is_set():  # the test failed before the timer started
            release()
        caller.join(30)
        locker.close()
    done = [(event, after) for event, after in events if event.HasField("done")]
    assert done and done[0][1], "the call on the session ended before its turn could be saved"
    assert done[0][0].done.answer.text
    assert "[history=1" in ask(daemon, "and now", session="locked").text, "the turn saved after the lock was lost"


def test_the_wal_shrinks_back_after_a_large_turn(tmp_path) -> None:
    """sqlite keeps the WAL at its largest size: one long turn would hold that much disk while the daemon
    runs. journal_size_limit cuts it back once the turn is checkpointed."""
    from router.sessions import JOURNAL_SIZE_LIMIT

    store = SessionStore(tmp_path / "sessions.sqlite")
    wal = tmp_path / "sessions.sqlite-wal"
    try:
        long_turn = [Message(Role.USER, [Part(text="x" * (24 << 20))])]
        store.append("long", long_turn, lambda media: "")
        assert wal.stat().st_size > 24 << 20
        for i in range(3):  # checkpointed, then the next write starts the WAL over and cuts it
            store.append("short", [Message(Role.USER, [Part(text=f"turn {i}")])], lambda media: "")
        assert wal.stat().st_size <= JOURNAL_SIZE_LIMIT
    finally:
        store.close()


def test_a_turn_that_cannot_be_kept_says_so_in_its_route(start_daemon, tmp_path) -> None:
    """A full disk (here a file size limit on the running daemon, which sqlite meets in its WAL) costs the
    session its turn, not the answer: the answer's route notes say so, and the next turn is kept."""
    import resource

    daemon = start_daemon(CONFIG, data_dir=tmp_path / "data")
    assert not ask(daemon, "kept", session="full").route.notes
    wal = tmp_path / "data" / "sessions.sqlite-wal"
    hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
    resource.prlimit(daemon.proc.pid, resource.RLIMIT_FSIZE, (wal.stat().st_size + 100_000, hard))
    try:
        answer = ask(daemon, "y" * 300_000, session="full")
    finally:
        resource.prlimit(daemon.proc.pid, resource.RLIMIT_FSIZE, (hard, hard))
    assert "[history=1" in answer.text, "the question was not answered"
    assert answer.route.notes == ["this turn was not kept in session 'full': the sessions database could not "
                                  "be written (disk I/O error; is the disk full?)"]
    after = ask(daemon, "room again", session="full")
    assert "[history=1" in after.text and "yyy" not in after.text, "the unkept turn is in the history"
    assert not after.route.notes
    assert "[history=2" in ask(daemon, "and again", session="full").text, "the turn after was not kept"
    # one line for the lost turn, no traceback: a full disk must not be filled further by the log
    [line] = [line for line in daemon.logs().splitlines() if "saving this turn of session" in line]
    assert line.endswith("the turn is not kept: the sessions database could not be written (disk I/O error; "
                         "is the disk full?)"), line
    assert "Traceback" not in daemon.logs()


def test_a_transcription_in_a_session_needs_a_recording_in_the_request_or_its_history(start_daemon) -> None:
    """A session's request without media may transcribe the recording of an earlier turn; with none in the
    history either, it is refused before routing (as without a session), not sent to a provider that
    refused it as PROVIDER_BAD_REQUEST, counted against its health."""
    from media_factory import wav

    daemon = start_daemon("""
providers: {fake: {api_key: k}}
routes:
  - {name: speech, match: {task: [transcribe]}, use: fake/ears}
  - {name: everything, use: fake/omni}
""")
    transcribe = pb.Options(task=pb.TASK_TRANSCRIBE)
    ask(daemon, "hello", session="text-only")
    request = text_request("transcribe it", session_id="text-only", options=transcribe)
    for call in (lambda: daemon.stub.Generate(pb.GenerateRequest(request=request)),
                 lambda: daemon.stub.ExplainRoute(pb.ExplainRouteRequest(request=request))):
        with pytest.raises(grpc.RpcError) as caught:
            call()
        details = error_details(caught.value)
        assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
        assert details.violations[0][0] == "request.options.task" and "session's history" in details.violations[0][1]
    audio = pb.Media(modality=pb.MODALITY_AUDIO, mime_type="audio/wav", data=wav(1.0))
    ask(daemon, "what is said?", session="recorded", media=[audio])
    answer = ask(daemon, "transcribe it", session="recorded", options=transcribe)
    assert answer.route.model == "ears" and "bytes heard" in answer.text


def test_a_turn_saved_while_prune_deletes_its_session_starts_the_session_again(tmp_path) -> None:
    """The new turns were numbered before the write lock was taken: when a prune deleted the session
    meanwhile, they landed after a gap (positions 2 and 3 of a session that no longer had 0 and 1), and
    every later turn went to the model without that history."""
    import sqlite3
    import threading

    path = tmp_path / "s.sqlite"
    store = SessionStore(path)
    try:
        store.append("conv", [Message(Role.USER, [Part(text="q1")]), Message(Role.ASSISTANT, [Part(text="a1")])],
                     lambda part: "")
        pruner = sqlite3.connect(path, isolation_level=None, timeout=5)
        pruner.execute("BEGIN IMMEDIATE")  # prune's write lock, taken before the turn is saved
        pruner.execute("DELETE FROM turns WHERE session_id = 'conv'")
        saving = threading.Thread(target=store.append, args=(
            "conv", [Message(Role.USER, [Part(text="q2")]), Message(Role.ASSISTANT, [Part(text="a2")])],
            lambda part: ""))
        saving.start()
        time.sleep(0.3)  # the append waits for the lock (a passing fix numbers the turns after it anyway)
        pruner.execute("COMMIT")
        pruner.close()
        saving.join(timeout=10)
        assert not saving.is_alive()
        positions = [row[0] for row in store._db.execute(
            "SELECT position FROM turns WHERE session_id = 'conv' ORDER BY position")]
        assert positions == [0, 1]
        store._forget_history("conv")
        assert [m.text for m in store.history("conv", lambda media: media)] == ["q2", "a2"]
    finally:
        store.close()


OFFLINE_FIRST = """
providers:
  fake: {api_key: k}
  local: {}
routes:
  - name: offline
    match: {tags: [offline]}
    use: local/extract
  - name: everything
    use: fake/omni
"""


def test_a_question_local_answered_with_extracted_text_is_kept_as_still_to_be_answered(start_daemon) -> None:
    """A session turn that fell back to local/extract kept the extraction as the model's reply: the next
    turn's model read, as its own words, "the question was not answered ... no language model configured",
    took the question as settled, and got each document twice (the file and its text) from then on."""
    daemon = start_daemon(OFFLINE_FIRST)
    lease = pb.Media(modality=pb.MODALITY_DOCUMENT, mime_type="text/plain", data=b"The rent is 900 EUR a month.")
    first = ask(daemon, "What is the rent?", session="lease", media=[lease],
                hints=pb.RoutingHints(tags=["offline"]))
    assert first.route.provider == "local" and "The rent is 900 EUR" in first.text  # its client got the text
    later = ask(daemon, "And the deposit?", session="lease").text
    assert "It is still to be answered" in later and "What is the rent?" in later
    assert "Extracted by local provider" not in later and "no language model configured" not in later
    # a transcription local made is a real reply: kept as it is
    heard = pb.Media(modality=pb.MODALITY_AUDIO, mime_type="audio/wav", data=wav(0.5))
    transcribed = ask(daemon, "", session="memo", media=[heard], hints=pb.RoutingHints(tags=["offline"]),
                      options=pb.Options(task=pb.TASK_TRANSCRIBE))
    assert "still to be answered" not in ask(daemon, "thanks", session="memo").text
    assert transcribed.route.provider == "local"
