"""Modality bridging: convert inputs the chosen model cannot take through another model.

Audio becomes an ``[Audio transcript]`` text part (speaker turns kept when
diarized), a PDF its text, a video its transcript and frame text, an image
its text. Each bridge is a step of its own in the route, with its latency
and cost; transcripts are also passed on to the client.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .invoke import call_model
from .outcome import RouteInfo
from .plugins import Registry
from .routing import Bridge
from .types import (
    FEATURE_EXTRACTION_ONLY,
    CallContext,
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


async def apply_bridges(bridges: list[Bridge], request: Request, registry: Registry, ctx: CallContext,
                        route: RouteInfo) -> Bridged:
    """Run every bridge over the media it converts; raise ProviderError if one fails."""
    result = Bridged(request)
    converted: dict[int, str] = {}
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
            name = f" {media.filename}" if media.filename else ""
            converted[id(media)] = f"{_LABELS[bridge.modality]}{name}\n{''.join(texts).strip()}"
    messages = [
        dataclasses.replace(message, parts=[
            Part(text=converted[id(p.media)]) if p.media is not None and id(p.media) in converted else p
            for p in message.parts
        ])
        for message in request.messages
    ]
    result.request = dataclasses.replace(request, messages=messages)
    return result
