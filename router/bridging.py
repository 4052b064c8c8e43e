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

    def recall(self, key: str) -> str | None:
        """The text kept under ``key``, if any."""

    def remember(self, key: str, text: str) -> None:
        """Keep ``text`` under ``key``."""


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

    With a ``memo``, a media bridged before (an earlier turn of the session) gets its kept text and
    no call, and what is bridged now is kept.
    """
    result = Bridged(request)
    converted: dict[int, str] = {}
    reused = 0
    for bridge in bridges:
        provider = registry.ready(bridge.via.provider)
        model = provider.model(bridge.via.model) if provider is not None else None
        if provider is None or model is None:
            continue  # routing only plans ready bridges; the registry cannot change mid-request
        extraction = FEATURE_EXTRACTION_ONLY in model.features
        task = Task.CHAT if extraction or bridge.modality in (Modality.DOCUMENT, Modality.IMAGE) else Task.TRANSCRIBE
        for media in request.media():
            if media.modality is not bridge.modality or id(media) in converted:
                continue
            name = f" {media.filename}" if media.filename else ""
            key = memo_key(media, request, bridge) if memo is not None else None
            kept = memo.recall(key) if memo is not None and key is not None else None
            if kept is not None:
                converted[id(media)] = f"{_LABELS[bridge.modality]}{name}\n{kept}"
                reused += 1
                continue
            sub = Request(
                messages=[Message(Role.USER, [Part(media=media)])],
                options=Options(task=task, diarization=request.options.diarization,
                                speakers_expected=request.options.speakers_expected,
                                language=request.options.language),
            )
            texts: list[str] = []
            async for event in call_model(provider, model, sub, ctx, route, f"bridge:{bridge}"):
                if isinstance(event, TranscriptReady):
                    result.transcripts.append(event.transcript)
                    if task is Task.TRANSCRIBE:
                        texts = [_transcript_text(event.transcript)]
                elif isinstance(event, TextDelta) and (task is Task.CHAT or not texts):
                    texts.append(event.text)
                elif isinstance(event, UsageReport):
                    result.usages.append(event)
            text = "".join(texts).strip()
            converted[id(media)] = f"{_LABELS[bridge.modality]}{name}\n{text}"
            if memo is not None and key is not None:
                memo.remember(key, text)
    if reused:
        route.notes.append(f"bridging: reused the text of {reused} media converted in an earlier turn")
    messages = [
        dataclasses.replace(message, parts=[
            Part(text=converted[id(p.media)]) if p.media is not None and id(p.media) in converted else p
            for p in message.parts
        ])
        for message in request.messages
    ]
    result.request = dataclasses.replace(request, messages=messages)
    return result
