"""SessionStore.history keeps each session's parsed history and reads only the turns added since:
the same messages as a fresh read, whoever changed the session meanwhile."""

from __future__ import annotations

import os
import time

import pytest
from media_factory import png

import router.sessions as sessions
from router.errors import UnknownMedia
from router.media import MediaStore
from router.sessions import SessionStore
from router.types import Media, Message, Modality, Part, Role


def turn(n: int, image: bytes | None = None) -> list[Message]:
    parts = [Part(text=f"question {n}")]
    if image is not None:
        parts.append(Part(media=Media(Modality.IMAGE, "image/png", data=image, filename=f"p{n}.png")))
    return [Message(Role.USER, parts), Message(Role.ASSISTANT, [Part(text=f"answer {n}")])]


class Loads:
    """The store's media loader, counting what it loads."""

    def __init__(self, media: MediaStore) -> None:
        self.media = media
        self.ids: list[str] = []

    def __call__(self, media_id: str) -> Media:
        self.ids.append(media_id)
        return self.media.get(media_id).as_media()


def shape(messages: list[Message]) -> list[tuple]:
    """What a provider would get of ``messages``: roles, texts, media ids, types and names."""
    return [(m.role, [(p.text, p.media and (p.media.media_id, p.media.modality, p.media.mime_type, p.media.filename))
                      for p in m.parts]) for m in messages]


@pytest.fixture
def stores(tmp_path):  # type: ignore[no-untyped-def]
    media = MediaStore(tmp_path / "media", 10 << 20)
    store = SessionStore(tmp_path / "sessions.sqlite")
    yield store, media, tmp_path / "sessions.sqlite"
    store.close()


def store_media(media: MediaStore):  # type: ignore[no-untyped-def]
    def put(m: Media) -> str:
        return media.put_bytes(m.data, m.mime_type, m.modality).media_id
    return put


def fresh_read(path, media: MediaStore, session: str) -> list[Message]:  # type: ignore[no-untyped-def]
    other = SessionStore(path)
    try:
        return other.history(session, Loads(media))
    finally:
        other.close()


def test_a_later_turn_parses_only_the_new_turns_and_loads_every_media_again(stores) -> None:  # type: ignore[no-untyped-def]
    """Turns read before are kept parsed; their stored media are loaded again on each read, as the media
    store checks them (a deleted or damaged file) and marks them used there (its prune's grace)."""
    store, media, path = stores
    for n in range(6):
        store.append("s", turn(n, png(f"image {n}") if n % 2 == 0 else None), store_media(media))
    loads = Loads(media)
    first = store.history("s", loads)
    assert len(loads.ids) == 3 and len(first) == 12
    store.append("s", turn(6, png("image 6")), store_media(media))
    store.append("s", turn(7), store_media(media))
    second = store.history("s", loads)
    assert len(loads.ids) == 3 + 4
    assert shape(second) == shape(fresh_read(path, media, "s"))
    assert len(second) == 16
    assert second[2] is first[2] and second[0] is not first[0]  # text only: kept; with media: made again
    second.append(Message(Role.USER, [Part(text="the caller's own list")]))
    assert len(store.history("s", loads)) == 16


def test_a_media_deleted_after_its_turn_was_kept_is_still_refused_and_reads_mark_media_used(stores) -> None:  # type: ignore[no-untyped-def]
    store, media, _path = stores
    store.append("s", turn(1, png("kept")), store_media(media))
    [media_id] = {p.media.media_id for m in store.history("s", Loads(media)) for p in m.parts if p.media}
    record = media.get(media_id).path.with_suffix(".json")
    os.utime(record, (time.time() - 7200, time.time() - 7200))
    store.history("s", Loads(media))
    assert time.time() - record.stat().st_mtime < 600  # used now: the media store's prune keeps it an hour
    media.get(media_id).path.unlink()
    with pytest.raises(UnknownMedia):
        store.history("s", Loads(media))


def test_a_session_reset_and_started_again_is_read_anew(stores) -> None:  # type: ignore[no-untyped-def]
    """Also when another process (``mmrouter``'s own commands, a second store) resets it."""
    store, media, path = stores
    for n in range(3):
        store.append("s", turn(n), store_media(media))
    assert len(store.history("s", Loads(media))) == 6
    other = SessionStore(path)
    try:
        assert other.reset("s").turns == 6
        assert store.history("s", Loads(media)) == []
        other.append("s", turn(10), store_media(media))
        other.append("s", turn(11), store_media(media))
        other.append("s", turn(12), store_media(media))
        other.append("s", turn(13), store_media(media))
    finally:
        other.close()
    history = store.history("s", Loads(media))
    assert [p.text for m in history for p in m.parts] == [
        f"{kind} {n}" for n in range(10, 14) for kind in ("question", "answer")]


def test_a_reset_between_two_reads_is_not_taken_for_the_same_session(stores) -> None:  # type: ignore[no-untyped-def]
    """The new first row may get the same rowid again: a reset forgets the kept history."""
    store, media, _path = stores
    store.append("s", turn(1), store_media(media))
    assert len(store.history("s", Loads(media))) == 2
    store.reset("s")
    store.append("s", turn(2), store_media(media))  # the same count, maybe the same rowid again
    store.append("s", turn(3), store_media(media))
    assert [m.parts[0].text for m in store.history("s", Loads(media))] == ["question 2", "answer 2",
                                                                             "question 3", "answer 3"]


def test_the_kept_histories_are_bounded_and_reads_stay_right(stores, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    store, media, path = stores
    monkeypatch.setattr(sessions, "HISTORY_CACHE_BYTES", 5000)  # 4 short messages: about 2,200 bytes
    for s in range(5):
        for n in range(2):
            store.append(f"s{s}", turn(s * 10 + n), store_media(media))
        store.history(f"s{s}", Loads(media))  # 4 messages each: at most 2 sessions kept
    assert 0 < store._cached_bytes <= 5000 and len(store._histories) == 2
    for s in range(5):
        assert shape(store.history(f"s{s}", Loads(media))) == shape(fresh_read(path, media, f"s{s}"))
    for n in range(2, 5):  # a session longer than the bound is read whole each time, and right
        store.append("s0", turn(n), store_media(media))
    loads = Loads(media)
    assert len(store.history("s0", loads)) == 10
    store.append("s0", turn(9), store_media(media))
    assert len(store.history("s0", loads)) == 12
    assert store._cached_bytes <= 5000 and "s0" not in store._histories
