"""Between mmrouter and AssemblyAI's transcript API: the request config and the result mapping."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from router import Media, Options, ProviderBadRequest, Transcript, Utterance, Word
from router.errors import ProviderInputTooLarge

if TYPE_CHECKING:
    import assemblyai
    import httpx

#: BCP-47 English regions AssemblyAI has its own codes for; other regions use the bare language.
_ENGLISH_REGIONS = {"us": "en_us", "gb": "en_uk", "uk": "en_uk", "au": "en_au"}


def language_code(language: str) -> str:
    """AssemblyAI's ``language_code`` for a BCP-47 tag: ``en-GB`` -> ``en_uk``, ``fr-FR`` -> ``fr``."""
    tag = language.strip().lower().replace("_", "-")
    if not tag:
        return ""
    base, _, region = tag.partition("-")
    if base == "en" and region:
        return _ENGLISH_REGIONS.get(region.split("-")[0], "en")
    return base


def transcription_config(
    options: Options, speech_models: list[str], *, always_diarize: bool
) -> assemblyai.TranscriptionConfig:
    """The SDK config for a call: the speech models in priority order (``speech_models``: AssemblyAI
    refuses the singular ``speech_model``), speaker labels, speakers expected and the language (or detection)."""
    import assemblyai as aai

    diarize = always_diarize or options.diarization or options.speakers_expected > 0
    code = language_code(options.language)
    return aai.TranscriptionConfig(
        speech_models=list(speech_models),
        speaker_labels=diarize or None,
        speakers_expected=options.speakers_expected if diarize and options.speakers_expected > 0 else None,
        language_code=code or None,
        language_detection=None if code else True,
    )


#: The only URL schemes handed to the SDK: AssemblyAI fetches these itself.
URL_SCHEMES = frozenset({"http", "https"})


def audio_source(media: Media, provider: str = "assemblyai") -> str | bytes:
    """What to hand the SDK: an http(s) URL as is, a stored file's path (streamed from disk), or inline bytes.

    Any other URL (``file://``, a bare path...) is refused with :class:`ProviderBadRequest` of the
    provider called ``provider``: the SDK's ``submit`` takes every string that is not an http(s) URL
    for a local file path and would upload that file from the daemon's host.
    """
    if media.url:
        # The same test as the SDK's is_url (urlparse's scheme), so what passes is never taken for a path.
        scheme = urlsplit(media.url).scheme
        if scheme not in URL_SCHEMES:
            raise ProviderBadRequest(provider, "media given by URL must use http:// or https://, "
                                               f"not {(scheme + '://') if scheme else 'a bare path'}")
        return media.url
    if media.path is not None:
        return str(media.path)
    return media.read_bytes()


#: The largest local file ``/v2/upload`` takes: "The maximum file size for a local file uploaded to the API
#: via the /v2/upload endpoint is 2.2GB" (assemblyai.com/docs/concepts/faq; the FAQ "Are there any limits
#: on file size or file duration for files submitted to the API?"), read as decimal gigabytes. Media given
#: by URL go to ``/v2/transcript`` (5 GB there), but their size is unknown here.
MAX_UPLOAD_BYTES = 2_200_000_000


def check_upload_size(media: Media, provider: str = "assemblyai") -> None:
    """Refuse, before anything is uploaded, media over AssemblyAI's upload limit with
    :class:`ProviderInputTooLarge` (the router then tries the next target)."""
    if media.url:
        return
    size = len(media.data) if media.data is not None else media.path.stat().st_size if media.path else 0
    if size > MAX_UPLOAD_BYTES:
        name = f" {media.filename!r}" if media.filename else ""
        raise ProviderInputTooLarge(provider, f"the file{name} is {size:,} bytes, over AssemblyAI's upload limit "
                                              f"of 2.2 GB ({MAX_UPLOAD_BYTES:,} bytes) (refused before uploading)")


def parse_response(answer: httpx.Response) -> assemblyai.types.TranscriptResponse:
    """A transcript status answer (``GET /v2/transcript/<id>``, status 200) as the SDK's
    ``TranscriptResponse``, parsed as the SDK's ``async_api.get_transcript`` does.

    Blocking: pydantic validates every word, in ``words`` and again in each utterance's (about 0.2 ms a word:
    1.5-2 s for an hour of conversation), so the provider parses a long answer in a worker thread
    (``AssemblyAIProvider._parse``). Malformed JSON raises ``ValueError``, a wrong shape
    ``pydantic.ValidationError``."""
    import assemblyai as aai

    return aai.types.TranscriptResponse.parse_obj(answer.json())


def _seconds(ms: int | float | None) -> float:
    """Milliseconds as seconds; a time before the clip's start (a proxy's -20) as 0, which the router's
    contract takes (it refuses negative times as the plugin's fault)."""
    return max(ms or 0, 0) / 1000.0


def _speaker(label: str | None) -> str:
    return label or ""


def to_transcript(response: assemblyai.types.TranscriptResponse, media: Media) -> Transcript:
    """A completed AssemblyAI transcript as a :class:`router.Transcript`.

    Utterance and word times go from milliseconds to seconds. With speaker
    labels, the text is one ``Speaker A: ...`` line per turn; without, it is
    AssemblyAI's plain text. Blocking for a long transcript (a few µs a word):
    the provider calls it in a worker thread.
    """
    utterances = [
        Utterance(
            text=u.text,
            start=_seconds(u.start),
            end=_seconds(u.end),
            speaker=_speaker(u.speaker),
            confidence=float(u.confidence or 0.0),
        )
        for u in response.utterances or []
    ]
    words = [
        Word(
            text=w.text,
            start=_seconds(w.start),
            end=_seconds(w.end),
            speaker=_speaker(w.speaker),
            confidence=float(w.confidence or 0.0),
        )
        for w in response.words or []
    ]
    if utterances and any(u.speaker for u in utterances):
        text = Transcript.speaker_text(utterances)
    else:
        text = (response.text or "").strip()
    language = response.language_code
    language = str(getattr(language, "value", language) or "")
    return Transcript(
        text=text,
        utterances=utterances,
        words=words,
        language=_bcp47(language),
        # where the next clip starts when several are merged: the measured length first, as
        # AssemblyAI's audio_duration is whole seconds (kept for billing, see audio_seconds)
        duration_seconds=float(media.duration_seconds or 0.0) or audio_seconds(response, media, words),
    )


#: AssemblyAI's English codes as BCP-47 tags: :data:`_ENGLISH_REGIONS` reversed, ``en_uk`` as ``en-GB``
#: (``UK`` is no ISO 3166 region: the United Kingdom is ``GB``).
_ENGLISH_TAGS = {"en_us": "en-US", "en_uk": "en-GB", "en_au": "en-AU"}


def _bcp47(code: str) -> str:
    """AssemblyAI's language code as the BCP-47 tag the request's language option uses: ``en_uk`` ->
    ``en-GB`` (:data:`_ENGLISH_TAGS`), another ``xx_yy`` -> ``xx-YY``, a bare ``fr`` as is."""
    code = code.strip().lower()
    if code in _ENGLISH_TAGS:
        return _ENGLISH_TAGS[code]
    language, _, region = code.partition("_")
    return f"{language}-{region.upper()}" if region else language


def audio_seconds(
    response: assemblyai.types.TranscriptResponse, media: Media, words: list[Word] | None = None
) -> float:
    """The length AssemblyAI bills: its ``audio_duration``, else what the router measured, else the last word's end."""
    if response.audio_duration:
        return float(response.audio_duration)
    if media.duration_seconds:
        return float(media.duration_seconds)
    if words:
        return max(w.end for w in words)
    return 0.0
