"""The transcripts made during a call, so that the same call does not decode the same audio twice."""

from __future__ import annotations

import hashlib
import weakref

from router import CallContext, Media, Transcript


def content_key(media: Media) -> str:
    """What tells ``media``'s content apart: its id (the sha256 of a stored media), else the sha256 of its
    inline bytes, else its stored file's path."""
    if media.media_id:
        return media.media_id
    if media.data is not None:
        return hashlib.sha256(media.data).hexdigest()
    return f"path:{media.path}"


class HeardInCall:
    """The transcripts the provider made in each call still under way, by the call's context and the
    media's content (:func:`content_key`).

    A route may give the same clip to ``local`` twice in one call: as the bridge of a model that cannot
    hear (its transcript for GPT-4o), then, that model having failed (a cloud outage), as the fallback
    that answers with the clip's extraction. The second takes the transcript the first made instead of
    decoding it again. A call's transcripts are kept as long as its context lives (the router drops it
    when the call ends): never for another call, even one sending the same bytes.
    """

    def __init__(self) -> None:
        self._calls: dict[int, tuple[weakref.ref[CallContext], dict[str, Transcript]]] = {}

    def get(self, ctx: CallContext, media: Media) -> Transcript | None:
        """The transcript of ``media`` made earlier in the call of ``ctx``, if any."""
        entry = self._calls.get(id(ctx))
        if entry is None or entry[0]() is not ctx:
            return None
        return entry[1].get(content_key(media))

    def put(self, ctx: CallContext, media: Media, transcript: Transcript) -> None:
        """Keep ``transcript``, made of ``media`` in the call of ``ctx``, until that call's context goes."""
        key = id(ctx)
        entry = self._calls.get(key)
        if entry is None or entry[0]() is not ctx:
            ref = weakref.ref(ctx, lambda gone: self._forget(key, gone))
            entry = self._calls[key] = (ref, {})
        entry[1][content_key(media)] = transcript

    def _forget(self, key: int, gone: weakref.ref[CallContext]) -> None:
        """Drop the transcripts of a call whose context ``gone`` was collected."""
        entry = self._calls.get(key)
        if entry is not None and entry[0] is gone:
            del self._calls[key]

    def __len__(self) -> int:
        """How many calls have transcripts kept."""
        return len(self._calls)
