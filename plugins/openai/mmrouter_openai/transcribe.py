"""Speech to text through ``/audio/transcriptions`` (multipart upload).

whisper-1 is asked for ``verbose_json`` with word and segment timestamps, the
diarizing model for ``diarized_json`` (speaker-labelled segments), the other
GPT-4o transcription models for ``json`` (the only format they give).
Uploaded media are streamed from their file in the media store. A clip over
OpenAI's upload limit, over the model's length cap or in a format it does not
take is refused before anything is uploaded. The language
reported is a BCP-47 tag (whisper names it: ``"english"`` becomes ``"en"``).

The SDK builds its result without validation, returns a body that is not JSON as a str, and lets
``json.JSONDecodeError`` out for an ``application/json`` body that does not parse: an answer that is no
transcript (a proxy's login page, a JSON body cut short, a 200 carrying an ``error``, a segment without
text or times) is a bad answer, ``ProviderUnavailable``, so the router tries the fallbacks. Counts and lengths
that are no numbers count as absent, as the Anthropic plugin reads them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from router import (
    Media,
    Modality,
    Price,
    ProviderBadRequest,
    ProviderUnavailable,
    Request,
    RouteNote,
    Transcript,
    TranscriptReady,
    Usage,
    UsageReport,
    Utterance,
    Word,
)
from router.contract import usage_count
from router.errors import ProviderInputTooLarge, ProviderUnsupportedInput
from router.language import language_tag
from router.mime import normalise_mime
from router.sdk_http import retries_within
from router.types import mime_suffix

from .errors import NOT_JSON, BadAnswer, page_not_answer, scrub, shown_url, whole_request_timeout
from .models import BUILTIN, MAX_FILE_BYTES, MAX_UPLOAD_BYTES, TRANSCRIBE_SUFFIXES, Entry

if TYPE_CHECKING:
    from openai import AsyncOpenAI

log = logging.getLogger(__name__)

#: The file extensions ``/audio/transcriptions`` recognises (it finds the audio format by the extension).
AUDIO_EXTENSIONS = (".flac", ".mp3", ".mp4", ".mpeg", ".mpga", ".m4a", ".ogg", ".wav", ".webm")



def clip_size(media: Media) -> int:
    """The clip's size in bytes, without reading it."""
    if media.data is not None:
        return len(media.data)
    return media.path.stat().st_size if media.path is not None else 0


def check_sizes(provider: str, entry: Entry, clips: list[Media]) -> None:
    """Refuse, before any upload, a clip that would make the request over OpenAI's 25 MB limit (built-in
    models only): over :data:`MAX_FILE_BYTES`, the limit less room for the multipart envelope, with
    :class:`ProviderInputTooLarge`, so the router tries the next target."""
    if entry not in BUILTIN:
        return
    for n, media in enumerate(clips):
        size = clip_size(media)
        if size > MAX_FILE_BYTES:
            name = f" {media.filename!r}" if media.filename else ""
            raise ProviderInputTooLarge(
                provider, f"audio clip {n + 1}{name} is {size:,} bytes, over {entry.info.name}'s limit of "
                          f"{MAX_FILE_BYTES:,} bytes per file (its 25 MB request limit, {MAX_UPLOAD_BYTES:,} "
                          "bytes, less room for the multipart envelope; refused before uploading)")



def check_formats(provider: str, entry: Entry, clips: list[Media]) -> None:
    """Refuse, before any upload, a clip whose format the model does not take (:class:`ProviderUnsupportedInput`)
    or longer than its cap (``max_audio_seconds``: :class:`ProviderInputTooLarge`)."""
    info = entry.info
    for n, media in enumerate(clips):
        name = f" {media.filename!r}" if media.filename else ""
        if not info.takes_mime(media.mime_type, media.modality):
            raise ProviderUnsupportedInput(
                provider, f"audio clip {n + 1}{name} is {normalise_mime(media.mime_type)}, which {info.name} does "
                          "not take (it takes flac, mp3, mp4, m4a, mpga, ogg, wav or webm; refused before uploading)")
        seconds = media.duration_seconds or 0.0
        if info.max_audio_seconds and seconds > info.max_audio_seconds:
            raise ProviderInputTooLarge(
                provider, f"audio clip {n + 1}{name} is {seconds:g} s long, over {info.name}'s limit of "
                          f"{info.max_audio_seconds:g} s (refused before uploading)")


def pick_audio(provider: str, entry: Entry, request: Request) -> list[Media]:
    """The audio clips to transcribe, in order: those of the newest user message with media
    (``request.current_media()``; earlier turns were transcribed when sent), or a clear error.

    A clip given by URL is a format the API does not take (it is sent the bytes): it is refused with
    :class:`ProviderUnsupportedInput`, so the router tries the next target or bridge (AssemblyAI fetches URLs)."""
    clips = [m for m in request.current_media() if m.modality is Modality.AUDIO]
    if not clips:
        raise ProviderBadRequest(provider, f"{entry.info.name} transcribes audio, and the request has none")
    if any(m.data is None and m.path is None for m in clips):  # retryable: a provider that fetches URLs may take it
        raise ProviderUnsupportedInput(provider, f"{entry.info.name} cannot fetch audio by URL "
                                                 "(upload it with UploadMedia; refused before sending)")
    return clips


def upload_name(media: Media) -> str:
    """A file name with an audio extension: the API finds the audio format by it.

    The MIME type's suffix is added to a name that does not already end with an extension the API
    knows (``standup.2024-05-01`` -> ``standup.2024-05-01.wav``, ``rec.opus`` -> ``rec.opus.ogg``).
    """
    name = media.filename.rsplit("/", 1)[-1] if media.filename else ""
    mime = normalise_mime(media.mime_type)
    suffix = TRANSCRIBE_SUFFIXES.get(mime) or mime_suffix(mime)
    if not name:
        return f"audio{suffix}"
    if not name.lower().endswith(AUDIO_EXTENSIONS):
        return name + suffix
    return name


#: ISO 639 codes of a language Whisper knows by another code (its ``LANGUAGES`` table, github.com/openai/whisper,
#: whisper/tokenizer.py), which the API asks for: Norwegian Bokmål ``nb`` is Whisper's ``no`` (Nynorsk ``nn``
#: is its own), Filipino ``fil`` its Tagalog ``tl``, Moldavian ``mo`` its Romanian ``ro``, and the codes ISO 639
#: withdrew for Hebrew (``iw``), Indonesian (``in``) and Yiddish (``ji``), which Java and Android still give.
#: Javanese is left as given: Whisper's code is ``jw``, ISO's ``jv``, and which one the API takes is not known.
WHISPER_CODES = {"nb": "no", "fil": "tl", "mo": "ro", "iw": "he", "in": "id", "ji": "yi"}


def whisper_language(tag: str) -> str:
    """The ``language`` to send for the requested BCP-47 ``tag``: its primary subtag, lower-cased
    (``zh-Hant-TW`` -> ``zh``), as Whisper codes it (:data:`WHISPER_CODES`: ``nb`` -> ``no``); "" for none."""
    primary = tag.split("-")[0].strip().lower()
    return WHISPER_CODES.get(primary, primary)


def build_params(entry: Entry, request: Request) -> dict[str, Any]:
    """Keyword arguments for ``audio.transcriptions.create`` (without the file)."""
    fmt = entry.transcription_format or "json"
    params: dict[str, Any] = {"model": entry.info.name, "response_format": fmt}
    if fmt == "verbose_json":
        params["timestamp_granularities"] = ["word", "segment"]
    if fmt == "diarized_json":
        params["chunking_strategy"] = "auto"  # required by the API for audio over 30 s
    language = whisper_language(request.options.language)
    if language:
        params["language"] = language
    if request.options.temperature is not None:
        params["temperature"] = max(0.0, min(1.0, request.options.temperature))
    return params


class ErrorAnswer(BadAnswer):
    """An answer (HTTP 200) that carries an error (``{"error": {"message": ...}}``); the message is its text."""


def _field(item: Any, name: str) -> Any:
    """The field ``name`` of an SDK object (or of a JSON object the SDK left as a dict), else None."""
    return item.get(name) if isinstance(item, dict) else getattr(item, name, None)


def _number(value: Any) -> float | None:
    """``value`` as a finite float, or None when it is no number (a str, a bool, NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    with contextlib.suppress(OverflowError):
        number = float(value)
        return number if math.isfinite(number) else None
    return None


def _seconds(value: Any) -> float:
    """A length in seconds: ``value`` when it is a number over 0, else 0."""
    number = _number(value)
    return number if number is not None and number > 0 else 0.0


def _has_token_prices(price: Price) -> bool:
    """True when ``price`` charges for tokens (else the model is priced per audio hour only)."""
    return bool(price.input_per_mtok or price.output_per_mtok or price.audio_input_per_mtok)


def _usage(result: Any, media: Media, price: Price) -> Usage:
    """What transcribing ``media`` consumed, priced by tokens or by audio seconds (never both).

    Token counts in the answer are always kept. A model with token prices is charged by them; one priced
    only per audio hour (``gpt-transcribe``) by the audio length: the answer's ``duration`` usage or field,
    else the length the router measured (its tokens then cost nothing). When that length is unknown (an
    mp3 the router could not measure, say), no rate from tokens to seconds is documented: the clip is
    counted at no cost and a warning says the reported cost is a lower bound.
    """
    reported = _field(result, "usage")
    kind = _field(reported, "type") if reported is not None else ""
    if kind == "duration":
        seconds = _number(_field(reported, "seconds"))
        if seconds is not None and seconds >= 0:
            return Usage(audio_seconds=seconds)
    usage = _token_usage(reported) if kind == "tokens" else Usage()
    if kind == "tokens" and _has_token_prices(price):
        return usage
    usage.audio_seconds = _seconds(_field(result, "duration")) or media.duration_seconds or 0.0
    if not usage.audio_seconds and price.per_audio_hour:
        name = f" {media.filename!r}" if media.filename else ""
        log.warning("the length of audio clip%s is unknown (the router could not measure it and the answer "
                    "does not say): its transcription, priced per audio hour, is counted at $0, so the "
                    "reported cost is a lower bound", name)
    return usage


def _token_usage(reported: Any) -> Usage:
    """The token counts of a ``tokens`` usage: input (its audio part apart) and output."""
    details = _field(reported, "input_token_details")
    return Usage(input_tokens=usage_count(_field(reported, "input_tokens")),
                 output_tokens=usage_count(_field(reported, "output_tokens")),
                 audio_input_tokens=usage_count(_field(details, "audio_tokens")) if details is not None else 0)


def _detected_language(result: Any, fallback: str) -> str:
    """The language the API detected as a BCP-47 tag: ``language`` (whisper names it: ``"english"``),
    else the first of ``languages`` (``gpt-transcribe``), else ``fallback`` (the requested language)."""
    language = _field(result, "language")
    if isinstance(language, str) and language.strip():
        return language_tag(language)
    languages = _field(result, "languages")
    for entry in languages if isinstance(languages, list) else []:
        code = _field(entry, "code")
        if isinstance(code, str) and code.strip():
            return language_tag(code)
    return fallback


def _items(result: Any, name: str) -> list[Any]:
    """The list ``name`` of the answer (``segments``, ``words``): empty when absent."""
    items = _field(result, name)
    if items is None:
        return []
    if not isinstance(items, list):
        raise BadAnswer(f"{name} is not a list")
    return items


def _timed(item: Any, what: str, text_field: str = "text") -> tuple[str, float, float]:
    """The text, start and end of a segment or word (``what``, as "segment 2"), or :class:`BadAnswer`.
    A time before the clip's start (a compatible server's -0.02) is taken as its start: the router
    refuses negative times as a plugin's fault."""
    text = _field(item, text_field)
    if not isinstance(text, str):
        raise BadAnswer(f"{what} has no text")
    start, end = _number(_field(item, "start")), _number(_field(item, "end"))
    if start is None:
        raise BadAnswer(f"{what} has no start time (a number)")
    if end is None:
        raise BadAnswer(f"{what} has no end time (a number)")
    return text.strip(), max(start, 0.0), max(end, 0.0)


def _check_answer(result: Any) -> str:
    """The text of an answer that is a transcript, else :class:`BadAnswer` (:class:`ErrorAnswer` for an error)."""
    if isinstance(result, str):  # the SDK's answer for a body that is not JSON: no format we ask for
        raise BadAnswer(page_not_answer("a JSON object"))
    error = _field(result, "error")
    if error:
        message = _field(error, "message") if not isinstance(error, str) else error
        raise ErrorAnswer(message if isinstance(message, str) and message.strip() else "an error, with no message")
    text = _field(result, "text")
    if not isinstance(text, str):
        raise BadAnswer("the answer has no text")
    return text


def to_transcript(result: Any, fmt: str, language: str) -> Transcript:
    """Our :class:`Transcript` from the SDK's Transcription, TranscriptionVerbose or TranscriptionDiarized;
    ``language`` (the requested one, a BCP-47 tag) stands where the answer names none.

    Raises :class:`BadAnswer` for an answer that is no transcript (the SDK does not validate it).
    """
    text = _check_answer(result).strip()
    language = _detected_language(result, language)
    duration = _seconds(_field(result, "duration"))
    segments = _items(result, "segments")
    if fmt == "diarized_json":
        utterances = []
        for n, segment in enumerate(segments):
            said, start, end = _timed(segment, f"segment {n + 1}")
            speaker = _field(segment, "speaker")
            utterances.append(Utterance(text=said, start=start, end=end,
                                        speaker=speaker if isinstance(speaker, str) else ""))
        if utterances:
            text = Transcript.speaker_text(utterances)
        return Transcript(text=text, utterances=utterances, language=language, duration_seconds=duration)
    utterances = [Utterance(*_timed(s, f"segment {n + 1}")) for n, s in enumerate(segments)]
    words = [Word(*_timed(w, f"word {n + 1}", "word")) for n, w in enumerate(_items(result, "words"))]
    return Transcript(text=text, utterances=utterances, words=words, language=language,
                      duration_seconds=duration or (utterances[-1].end if utterances else 0.0))


async def transcribe_clip(client: AsyncOpenAI, media: Media, params: dict[str, Any], price: Price,
                          timeout: float, language: str = "", deadline: float | None = None) -> tuple[Transcript, Usage]:
    """Transcribe one clip: its transcript (with its duration, so clips can be merged) and usage.

    ``language`` is the requested language as the client gave it, reported when the answer names none.
    The SDK's retries (``max_retries``) stay within ``deadline``, the call's
    (:func:`router.sdk_http.retries_within`).
    """
    with contextlib.ExitStack() as stack:
        if media.data is None and media.path is not None:
            # Streamed by the HTTP client from the media store, not read into memory.
            content: Any = stack.enter_context(open(media.path, "rb"))
        else:
            content = media.read_bytes()
        async with whole_request_timeout(timeout, client, "audio/transcriptions"):
            try:
                with retries_within(deadline, client.max_retries):
                    result = await client.audio.transcriptions.create(
                        file=(upload_name(media), content, normalise_mime(media.mime_type)), timeout=timeout, **params
                    )
            except (json.JSONDecodeError, UnicodeDecodeError):  # a JSON body cut short, empty or not UTF-8
                raise BadAnswer(NOT_JSON) from None
    transcript = to_transcript(result, params["response_format"], language)
    usage = _usage(result, media, price)
    if not transcript.duration_seconds:
        transcript.duration_seconds = usage.audio_seconds or media.duration_seconds or 0.0
    return transcript, usage


async def transcribe(client: AsyncOpenAI, provider: str, entry: Entry, request: Request,
                     timeout: float, price: Price | None = None, deadline: float | None = None) -> AsyncIterator[Any]:
    """Transcribe every audio clip of the newest user message, in order, and yield for each clip, as soon
    as it is transcribed (before the next is sent), its :class:`TranscriptReady` (its own times: the router
    merges them into the answer's, :meth:`router.Transcript.merged`) and its :class:`UsageReport`.

    ``price`` is the model's effective price (default: the catalogue's); it decides how usage is counted.
    ``deadline`` is the call's (``CallContext.deadline``), which the SDK's retries stay within.
    Each clip is billed by OpenAI once transcribed: its report, yielded then, is kept by the router when a
    later clip fails, or the call is cancelled (by its client, or at its deadline) while a later clip is
    transcribed. The reports are parts, which the router adds up: a whole call's total is their sum.
    """
    clips = pick_audio(provider, entry, request)
    check_sizes(provider, entry, clips)
    check_formats(provider, entry, clips)
    params = build_params(entry, request)
    if request.options.speakers_expected > 0:  # the API takes known speakers' names and samples, no count
        yield RouteNote(f"speakers_expected not sent: {entry.info.name} takes no speaker count "
                        f"(it labels the speakers it tells apart)")
    language = request.options.language.strip()
    for media in clips:
        try:
            transcript, clip_usage = await transcribe_clip(client, media, params, price or entry.info.price,
                                                           timeout, language, deadline)
        except ErrorAnswer as exc:
            raise ProviderUnavailable(provider, f"{entry.info.name} failed while answering: "
                                                f"{scrub(str(exc), client.api_key)}") from None
        except BadAnswer as exc:
            raise ProviderUnavailable(provider, f"bad answer from {entry.info.name} "
                                                f"({shown_url(str(client.base_url))}): {exc}") from None
        yield TranscriptReady(transcript)
        yield UsageReport(clip_usage)
