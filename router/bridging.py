"""Modality bridging: convert inputs the chosen model cannot take through another model.

Audio becomes an ``[Audio transcript]`` text part (speaker turns kept when
diarized), a PDF its text, a video its transcript and frame text, an image
its text. Each bridge is a step of its own in the route, with its latency
and cost; transcripts are also passed on to the client.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Protocol

from .invoke import call_model
from .outcome import RouteInfo
from .plugins import Registry
from .routing import Bridge
from .types import (
    FEATURE_EXTRACTION_ONLY,
    CallContext,
    Media,
    Message,
    Modality,
    Options,
    Part,
    Request,
    Role,
    Task,
    TextDelta,
    Transcript,
    TranscriptReady,
    UsageReport,
)

_LABELS = {
    Modality.AUDIO: "[Audio transcript]",
    Modality.VIDEO: "[Video transcript]",
    Modality.DOCUMENT: "[Document text]",
    Modality.IMAGE: "[Image text]",
}


@dataclass
class Bridged:
    """The request with bridged parts replaced, and what the bridges produced."""

    request: Request
    transcripts: list[Transcript] = field(default_factory=list)
    usages: list[UsageReport] = field(default_factory=list)


def _transcript_text(transcript: Transcript) -> str:
    if transcript.utterances and any(u.speaker for u in transcript.utterances):
        return Transcript.speaker_text(transcript.utterances)
    return transcript.text


class BridgeMemo(Protocol):
    """Where bridged texts are kept, so that a session's later turns reuse them instead of paying for
    the same transcription again (the history's media come back on every turn)."""

    def recall(self, key: str) -> tuple[str, Transcript | None] | None:
        """The text and transcript kept under ``key``, if any."""

    def remember(self, key: str, text: str, transcript: Transcript | None) -> None:
        """Keep ``text`` (and the ``transcript`` it came from) under ``key``."""


def memo_key(media: Media, request: Request, bridge: Bridge) -> str | None:
    """The key of ``media``'s bridged text: its content, the bridge's target and the options that
    change the text. None for media not kept by the router (URLs, inline media outside a session)."""
    if media.media_id:
        content = media.media_id
    elif media.data is not None and request.session_id:  # stored under this id when the turn is saved
        content = hashlib.sha256(media.data).hexdigest()
    else:
        return None
    options = request.options
    return (f"{content}|{media.modality.value}|{bridge.via}|diarization={options.diarization}"
            f"|speakers={options.speakers_expected}|language={options.language}")


async def apply_bridges(bridges: list[Bridge], request: Request, registry: Registry, ctx: CallContext,
                        route: RouteInfo, memo: BridgeMemo | None = None) -> Bridged:
    """Run every bridge over the media it converts; raise ProviderError if one fails.

    The transcripts passed on are those of this turn's media (:meth:`Request.turn_media`): the
    history's were sent with their own turns. With a ``memo``, a media bridged before gets its kept
    text and transcript and no call, and what is bridged now is kept.
    """
    result = Bridged(request)
    converted: dict[int, tuple[str, bool]] = {}  # id(media) -> (text part, keep the media beside it)
    this_turn = {id(m) for m in request.turn_media()}
    reused = 0
    for bridge in bridges:
        provider = registry.ready(bridge.via.provider)
        model = provider.model(bridge.via.model) if provider is not None else None
        if provider is None or model is None:
            continue  # routing only plans ready bridges; the registry cannot change mid-request
        for media in request.media():
            if media.modality is not bridge.modality or id(media) in converted:
                continue
            key = memo_key(media, request, bridge) if memo is not None else None
            kept = memo.recall(key) if memo is not None and key is not None else None
            if kept is not None:
                reused += 1
                text, transcript = kept
            else:
                text, transcript = await _bridge_one(media, bridge, provider, model, request, ctx, route, result)
                if memo is not None and key is not None:
                    memo.remember(key, text, transcript)
            if transcript is not None and id(media) in this_turn:
                result.transcripts.append(transcript)
            name = f" {media.filename}" if media.filename else ""
            converted[id(media)] = (f"{_LABELS[bridge.modality]}{name}\n{text}", bridge.keep_media)
    if reused:
        route.notes.append(f"bridging: reused the kept text of {reused} media converted before")
    messages = [dataclasses.replace(message, parts=[new for p in message.parts for new in _converted(p, converted)])
                for message in request.messages]
    result.request = dataclasses.replace(request, messages=messages)
    return result


def _converted(part: Part, converted: dict[int, tuple[str, bool]]) -> list[Part]:
    """What ``part`` becomes: its bridged text, after the media itself for a bridge that keeps it."""
    if part.media is None or id(part.media) not in converted:
        return [part]
    text, keep_media = converted[id(part.media)]
    return [part, Part(text=text)] if keep_media else [Part(text=text)]


async def _bridge_one(media: Media, bridge: Bridge, provider, model, request: Request, ctx: CallContext,
                      route: RouteInfo, result: Bridged) -> tuple[str, Transcript | None]:
    """Call the bridge's model on one media: its text, and its transcript (several merged) if any.
    Usage goes into ``result``."""
    extraction = FEATURE_EXTRACTION_ONLY in model.features
    task = Task.CHAT if extraction or bridge.modality in (Modality.DOCUMENT, Modality.IMAGE) else Task.TRANSCRIBE
    sub = Request(
        messages=[Message(Role.USER, [Part(media=media)])],
        options=Options(task=task, diarization=request.options.diarization,
                        speakers_expected=request.options.speakers_expected, language=request.options.language),
    )
    texts: list[str] = []
    transcripts: list[Transcript] = []
    async for event in call_model(provider, model, sub, ctx, route, f"bridge:{bridge}"):
        if isinstance(event, TranscriptReady):
            transcripts.append(event.transcript)
            if task is Task.TRANSCRIBE:
                texts = [_transcript_text(event.transcript)]
        elif isinstance(event, TextDelta) and (task is Task.CHAT or not texts):
            texts.append(event.text)
        elif isinstance(event, UsageReport):
            result.usages.append(event)
    return "".join(texts).strip(), Transcript.merged(transcripts) if transcripts else None
