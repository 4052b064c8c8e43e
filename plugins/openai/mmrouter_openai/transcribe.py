"""Speech to text through ``/audio/transcriptions`` (multipart upload).

whisper-1 is asked for ``verbose_json`` with segment timestamps, the
diarizing model for ``diarized_json`` (speaker-labelled segments), the other
GPT-4o transcription models for ``json`` (the only format they give).
Uploaded media are streamed from their file in the media store.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from router import (
    Media,
    Modality,
    ProviderBadRequest,
    Request,
    Transcript,
    TranscriptReady,
    Usage,
    UsageReport,
    Utterance,
    Word,
)
from router.types import mime_suffix

from .models import Entry

if TYPE_CHECKING:
    from openai import AsyncOpenAI


def pick_audio(provider: str, entry: Entry, request: Request) -> Media:
    """The one audio clip to transcribe (the last one given), or a clear error."""
    clips = [m for m in request.media() if m.modality is Modality.AUDIO]
    if not clips:
        raise ProviderBadRequest(provider, f"{entry.info.name} transcribes audio, and the request has none")
    media = clips[-1]
    if media.data is None and media.path is None:
        raise ProviderBadRequest(provider, f"{entry.info.name} cannot fetch audio by URL")
    return media


def upload_name(media: Media) -> str:
    """A file name with the right extension: the API finds the audio format by it."""
    name = media.filename.rsplit("/", 1)[-1] if media.filename else ""
    suffix = mime_suffix(media.mime_type)
    if not name:
        return f"audio{suffix}"
    if "." not in name and suffix != ".bin":
        return name + suffix
    return name


def build_params(entry: Entry, request: Request) -> dict[str, Any]:
    """Keyword arguments for ``audio.transcriptions.create`` (without the file)."""
    fmt = entry.transcription_format or "json"
    params: dict[str, Any] = {"model": entry.info.name, "response_format": fmt}
    if fmt == "verbose_json":
        params["timestamp_granularities"] = ["segment"]
    if fmt == "diarized_json":
        params["chunking_strategy"] = "auto"  # required by the API for audio over 30 s
    language = request.options.language.split("-")[0].strip().lower()
    if language:
        params["language"] = language
    if request.options.temperature is not None:
        params["temperature"] = max(0.0, min(1.0, request.options.temperature))
    return params


def _usage(result: Any, media: Media) -> Usage:
    """Tokens if the API billed tokens, else the audio seconds it billed (never both).

    Without usage in the answer (OpenAI-compatible servers), the audio length is reported.
    """
    usage = getattr(result, "usage", None)
    if usage is not None and getattr(usage, "type", "") == "tokens":
        details = getattr(usage, "input_token_details", None)
        return Usage(input_tokens=usage.input_tokens or 0, output_tokens=usage.output_tokens or 0,
                     audio_input_tokens=getattr(details, "audio_tokens", None) or 0)
    if usage is not None and getattr(usage, "type", "") == "duration":
        return Usage(audio_seconds=float(usage.seconds or 0))
    seconds = getattr(result, "duration", None) or media.duration_seconds or 0.0
    return Usage(audio_seconds=float(seconds))


def to_transcript(result: Any, fmt: str, language: str) -> Transcript:
    """Our :class:`Transcript` from the SDK's Transcription, TranscriptionVerbose or TranscriptionDiarized."""
    if isinstance(result, str):
        return Transcript(text=result.strip(), language=language)
    text = (getattr(result, "text", "") or "").strip()
    duration = float(getattr(result, "duration", 0) or 0)
    segments = getattr(result, "segments", None) or []
    if fmt == "diarized_json":
        utterances = [Utterance(text=s.text.strip(), start=s.start, end=s.end, speaker=s.speaker)
                      for s in segments]
        if utterances:
            text = Transcript.speaker_text(utterances)
        return Transcript(text=text, utterances=utterances, language=language, duration_seconds=duration)
    utterances = [Utterance(text=s.text.strip(), start=s.start, end=s.end) for s in segments]
    words = [Word(text=w.word, start=w.start, end=w.end) for w in (getattr(result, "words", None) or [])]
    detected = getattr(result, "language", None) or language
    return Transcript(text=text, utterances=utterances, words=words, language=detected,
                      duration_seconds=duration or (utterances[-1].end if utterances else 0.0))


async def transcribe(client: AsyncOpenAI, provider: str, entry: Entry, request: Request,
                     timeout: float) -> AsyncIterator[Any]:
    """Yield one :class:`TranscriptReady` and one :class:`UsageReport` for the request's audio."""
    media = pick_audio(provider, entry, request)
    params = build_params(entry, request)
    with contextlib.ExitStack() as stack:
        if media.data is None and media.path is not None:
            # Streamed by the HTTP client from the media store, not read into memory.
            content: Any = stack.enter_context(open(media.path, "rb"))
        else:
            content = media.read_bytes()
        result = await client.audio.transcriptions.create(
            file=(upload_name(media), content, media.mime_type), timeout=timeout, **params
        )
    transcript = to_transcript(result, params["response_format"], params.get("language", ""))
    usage = _usage(result, media)
    if not transcript.duration_seconds and usage.audio_seconds:
        transcript.duration_seconds = usage.audio_seconds
    yield TranscriptReady(transcript)
    yield UsageReport(usage)
