"""Translation between mmrouter requests and the Gemini REST API's JSON, and of google-genai's typed answers."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from router import (
    FinishReason,
    Media,
    Modality,
    ProviderBadRequest,
    ProviderInputTooLarge,
    ProviderUnsupportedInput,
    Request,
    Role,
    Usage,
)
from router.errors import ProviderAuthError, ProviderError
from router.mime import normalise_mime
from router.textdoc import without_bom

from .models import TYPICAL

#: Turns a media that is too large to send inline into a (file URI, MIME type) reference.
Uploader = Callable[[Media], Awaitable[tuple[str, str]]]

#: The text types Gemini reads as they are; other ``text/*`` documents are sent as ``text/plain``.
TEXT_TYPES = frozenset({"text/plain", "text/html", "text/css", "text/javascript", "text/csv", "text/markdown",
                        "text/xml", "text/rtf"})

#: The audio type a video container named as audio ("for its sound") is sent to Gemini as, so that Gemini
#: reads its sound only, as routing counted it (32 tokens a second; sent as ``video/*``, Gemini reads the
#: frames too, about 300 a second). MP4 and QuickTime are one family of containers (ISO base media; Gemini
#: lists ``audio/mp4``, the m4a type), WebM is read as ``audio/webm``. The other video containers Gemini takes
#: (MPEG, AVI, FLV, WMV, 3GPP) have no audio type it lists: such a media is refused (see :func:`check_format`).
AUDIO_OF_VIDEO = {"video/mp4": "audio/mp4", "video/quicktime": "audio/mp4", "video/mov": "audio/mp4",
                  "video/webm": "audio/webm"}

#: The user turn put in front of a conversation that starts with the model (Gemini wants a user turn first).
LEADING_USER_TURN = "(The conversation so far follows.)"

#: How many media of one call are uploaded to the Files API at once (80 photos one after another took minutes:
#: each upload's round trips and its PROCESSING polls waited for the one before).
UPLOADS_AT_ONCE = 4

#: Finish reasons meaning Gemini's filters stopped or withheld the answer (google-genai 3.6.1 ``FinishReason``),
#: reported as ``CONTENT_FILTER`` with the text produced so far, maybe none, as OpenAI's ``content_filter``:
#: its safety filters (SAFETY, IMAGE_SAFETY), prohibited content (PROHIBITED_CONTENT, IMAGE_PROHIBITED_CONTENT),
#: a recitation of a source (RECITATION, IMAGE_RECITATION), a blocklist term (BLOCKLIST), personal data (SPII),
#: an unsupported language (LANGUAGE), an escalation rule (ESCALATION), Model Armor (MODEL_ARMOR), and an account
#: limited for policy violations (PUP_LIMITED_DISABLED) once some text came (without text: see :func:`blocked`).
FILTERED_FINISH = {"SAFETY", "IMAGE_SAFETY", "PROHIBITED_CONTENT", "IMAGE_PROHIBITED_CONTENT", "RECITATION",
                   "IMAGE_RECITATION", "BLOCKLIST", "SPII", "LANGUAGE", "ESCALATION", "MODEL_ARMOR",
                   "PUP_LIMITED_DISABLED"}
#: The finish reason of a key whose account is "limited or disabled due to Prohibited Use Policy (PUP)
#: violations": a refusal of the account, not a verdict on this answer.
ACCOUNT_LIMITED_FINISH = "PUP_LIMITED_DISABLED"
#: Safety rating probabilities that name a category in a blocked prompt's error.
FLAGGED_PROBABILITIES = {"MEDIUM", "HIGH"}
#: Finish reasons meaning the answer was cut: CONTINUATION is "reached the per-request token limit, but
#: generation is not yet complete" (the SDK's FinishReason): the plugin does not ask for the rest (no automatic
#: continuation: see rest.py), so the answer is cut.
CUT_FINISH = {"MAX_TOKENS", "CONTINUATION"}


@dataclass
class Prepared:
    """A generateContent request body, in the REST API's JSON, plus the Files API URIs it references."""

    body: dict[str, Any]
    file_uris: set[str] = field(default_factory=set)


def media_size(media: Media) -> int:
    """The bytes of ``media``'s content (0 for a URL), without reading it."""
    if media.data is not None:
        return len(media.data)
    if media.size:
        return media.size
    if media.path is not None:
        return media.path.stat().st_size
    return 0


def gemini_mime(mime_type: str) -> str:
    """The MIME type to send Gemini for ``mime_type``: normalised (the API refuses aliases such as
    ``image/jpg``), and a text type it does not list as ``text/plain``."""
    mime = normalise_mime(mime_type)
    if mime.startswith("text/") and mime not in TEXT_TYPES:
        return "text/plain"
    return mime


def media_mime(media: Media) -> str:
    """The MIME type ``media`` is sent (and uploaded) to Gemini as: :func:`gemini_mime` of its own, but a video
    named as audio is sent as its container's audio type (:data:`AUDIO_OF_VIDEO`), for Gemini to read its
    sound only (one without such a type is refused by :func:`check_format`)."""
    mime = gemini_mime(media.mime_type)
    if media.modality is Modality.AUDIO and mime.startswith("video/"):
        return AUDIO_OF_VIDEO.get(mime, mime)
    return mime


def check_format(media: Media, provider: str) -> None:
    """Refuse ``media`` in a format Gemini does not take with :class:`ProviderUnsupportedInput`: also a video
    named as audio whose container has no audio type Gemini takes (sent as video, Gemini would read its
    frames too, at about 9 times the tokens routing counted for its sound)."""
    mime = normalise_mime(media.mime_type)
    if not TYPICAL.takes_mime(media.mime_type, media.modality):
        raise ProviderUnsupportedInput(provider, f"Gemini does not take {media.modality.value} in "
                                                 f"{mime} (refused before sending)")
    if media.modality is Modality.AUDIO and media_mime(media).startswith("video/"):
        raise ProviderUnsupportedInput(provider, f"Gemini takes no audio type for the {mime} container: sent as "
                                                 "video it would read the frames too, not only the sound "
                                                 "(refused before sending)")


def check_media(request: Request, provider: str) -> None:
    """Refuse the request if one of its media is in a format Gemini does not take (:func:`check_format`),
    before any media is uploaded."""
    for message in request.messages:
        for part in message.parts:
            if part.media is not None:
                check_format(part.media, provider)


def check_document(media: Media, max_pages: int, max_bytes: int, provider: str) -> None:
    """Refuse a PDF over Gemini's limits per document with :class:`ProviderInputTooLarge`: more than
    ``max_pages`` pages (as the router counted them, ``Media.pages``; an unknown count passes) or more than
    ``max_bytes`` bytes (a PDF given by URL of unknown size passes). Retryable: the rule's next target takes it.
    Other media pass."""
    if media.modality is not Modality.DOCUMENT or normalise_mime(media.mime_type) != "application/pdf":
        return
    name = f" {media.filename!r}" if media.filename else ""
    setting = f"providers.{provider}"
    if media.pages is not None and media.pages > max_pages:
        raise ProviderInputTooLarge(provider, f"the PDF{name} has {media.pages} pages, over Gemini's limit of "
                                              f"{max_pages} pages per document ({setting}.max_document_pages); "
                                              "refused before sending")
    size = media_size(media)
    if size > max_bytes:
        raise ProviderInputTooLarge(provider, f"the PDF{name} is {size:,} bytes, over Gemini's limit of "
                                              f"{max_bytes:,} bytes per PDF ({setting}.max_document_bytes); "
                                              "refused before sending")


def check_documents(request: Request, max_pages: int, max_bytes: int, provider: str) -> None:
    """Refuse the request if one of its PDFs is over Gemini's limits per document (:func:`check_document`),
    before any media is uploaded or the request sent."""
    for media in request.media():
        check_document(media, max_pages, max_bytes, provider)


def text_part(text: str) -> dict[str, Any]:
    """A text part, as the REST API's JSON."""
    return {"text": text}


def inline_part(data: bytes, mime_type: str) -> dict[str, Any]:
    """A media sent inline (``inlineData``), as google-genai sends ``Part.from_bytes``: its bytes in URL-safe
    base64, its fields by their snake_case names (the API reads both spellings)."""
    return {"inlineData": {"data": base64.urlsafe_b64encode(data).decode("ascii"), "mime_type": mime_type}}


def file_part(uri: str, mime_type: str) -> dict[str, Any]:
    """A media referenced by URI (``fileData``: a Files API copy or a URL), as google-genai sends
    ``Part.from_uri``."""
    return {"fileData": {"file_uri": uri, "mime_type": mime_type}}


async def _media_part(media: Media, inline_left: int) -> tuple[dict[str, Any] | None, int]:
    """One media as a part: inline while the budget lasts (a text document without a leading UTF-8 byte
    order mark, :func:`router.textdoc.without_bom`), a URL as a reference; None for one to upload (see
    :func:`_upload_all`). The media is sent as :func:`media_mime` says."""
    mime = media_mime(media)
    if media.url is not None:
        return file_part(media.url, mime), inline_left
    size = media_size(media)
    if size > inline_left:
        return None, inline_left
    data = media.data if media.data is not None else await asyncio.to_thread(media.read_bytes)
    if mime.startswith("text/"):
        data = without_bom(data)
    return inline_part(data, mime), inline_left - size


async def _upload_all(pending: list[tuple[dict[str, Any], Media]], upload: Uploader, file_uris: set[str]) -> None:
    """Upload the media of ``pending`` (:data:`UPLOADS_AT_ONCE` at a time), filling each one's part with its
    Files API reference. The first failure ends the call: the uploads still under way are cancelled."""
    slots = asyncio.Semaphore(UPLOADS_AT_ONCE)

    async def one(part: dict[str, Any], media: Media) -> None:
        async with slots:
            uri, mime_type = await upload(media)
        file_uris.add(uri)
        part.update(file_part(uri, mime_type))

    tasks = [asyncio.ensure_future(one(part, media)) for part, media in pending]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def prepare(request: Request, inline_limit: int, upload: Uploader, provider: str,
                  output_limit: int = 0) -> Prepared:
    """Build the body of a generateContent call for ``request``, by the provider called ``provider``
    (named in errors). The request's ``max_output_tokens`` is capped at ``output_limit`` (the model's
    output limit; 0: not known).

    The body is the REST API's JSON, built here rather than by google-genai's pydantic types, whose
    validation and conversion cost about 1 ms per turn on the event loop (see :mod:`.rest`). It is what the
    SDK would send for the same contents and config (``tests/test_gemini_body.py`` compares them):
    ``contents``, ``systemInstruction`` (a ``user`` content, as the SDK makes of a string) and
    ``generationConfig`` (always there, maybe empty).

    System messages become the system instruction (text only: media there is refused with
    :class:`ProviderBadRequest` before anything is uploaded or sent, as is a media in a format Gemini does
    not take, with :class:`ProviderUnsupportedInput`); the assistant is the ``model``
    role. Gemini wants turns that alternate between ``user`` and ``model``, so consecutive
    turns of one role are merged into one, and a conversation that would start with the model
    (a trimmed session history) gets a short user turn in front. Media go inline until their
    total passes ``inline_limit`` bytes, the rest through ``upload``, several at once (:data:`UPLOADS_AT_ONCE`).
    """
    check_system_messages(request, provider)
    check_media(request, provider)
    contents: list[dict[str, Any]] = []
    file_uris: set[str] = set()
    inline_left = inline_limit
    to_upload: list[tuple[dict[str, Any], Media]] = []
    for message in request.messages:
        if message.role is Role.SYSTEM:
            continue
        parts: list[dict[str, Any]] = []
        for part in message.parts:
            if part.media is not None:
                media_part, inline_left = await _media_part(part.media, inline_left)
                if media_part is None:  # filled in once uploaded
                    to_upload.append((media_part := {}, part.media))
                parts.append(media_part)
            elif part.text:
                parts.append(text_part(part.text))
        if parts:
            role = "model" if message.role is Role.ASSISTANT else "user"
            if contents and contents[-1]["role"] == role:
                contents[-1]["parts"].extend(parts)
            else:
                contents.append({"role": role, "parts": parts})
    if not contents:
        raise ProviderBadRequest(provider, "the request has no user or assistant content to send")
    await _upload_all(to_upload, upload, file_uris)
    if contents[0]["role"] == "model":
        contents.insert(0, {"role": "user", "parts": [text_part(LEADING_USER_TURN)]})

    options = request.options
    generation: dict[str, Any] = {}
    if options.temperature is not None:
        generation["temperature"] = options.temperature
    max_tokens = min(options.max_output_tokens, output_limit or options.max_output_tokens)
    if max_tokens:
        generation["maxOutputTokens"] = max_tokens
    body: dict[str, Any] = {"contents": contents, "generationConfig": generation}
    if request.system_prompt:
        body["systemInstruction"] = {"role": "user", "parts": [text_part(request.system_prompt)]}
    return Prepared(body=body, file_uris=file_uris)


def check_system_messages(request: Request, provider: str) -> None:
    """Refuse media in a system message (the system instruction takes their text only; the media would be
    dropped silently) with :class:`ProviderBadRequest`, as the Anthropic plugin does."""
    for i, message in enumerate(request.messages):
        if message.role is Role.SYSTEM and any(p.media is not None for p in message.parts):
            raise ProviderBadRequest(provider, f"messages[{i}]: a system message can hold only text for Gemini")


def response_text(response: Any) -> str:
    """The answer text of one (chunk of a) response, leaving out thoughts."""
    candidates = getattr(response, "candidates", None) or []
    if not candidates:
        return ""
    content = getattr(candidates[0], "content", None)
    parts = getattr(content, "parts", None) or []
    return "".join(p.text for p in parts if getattr(p, "text", None) and not getattr(p, "thought", False))


def blocked(response: Any, produced_text: bool, provider: str) -> ProviderError | None:
    """The error (of the provider called ``provider``) when Gemini blocked the prompt
    (``promptFeedback.blockReason``): :class:`ProviderBadRequest` naming the reason, as OpenAI's 400 for a
    flagged prompt; or when it stopped an answer without text because the key's account is limited
    (``PUP_LIMITED_DISABLED``): :class:`ProviderAuthError`, retryable, as another provider may answer. Else
    None: an answer withheld by a filter is an answer (``CONTENT_FILTER``, see :func:`finish_of`). The
    prompt's tokens are billed all the same: report ``usage_metadata`` first."""
    feedback = getattr(response, "prompt_feedback", None)
    if getattr(feedback, "block_reason", None):
        return ProviderBadRequest(provider, prompt_blocked_message(feedback)).with_provider_error_ids(
            code=getattr(feedback.block_reason, "value", feedback.block_reason))
    if produced_text:
        return None
    for candidate in getattr(response, "candidates", None) or []:
        finish = getattr(candidate, "finish_reason", None)
        if str(getattr(finish, "value", finish) or "") == ACCOUNT_LIMITED_FINISH:
            return ProviderAuthError(provider, "Gemini stopped the answer: the key's account is limited or "
                                               "disabled for Prohibited Use Policy violations (finish reason "
                                               f"{ACCOUNT_LIMITED_FINISH})")
    return None


def prompt_blocked_message(feedback: Any) -> str:
    """Why Gemini blocked the prompt, from its ``promptFeedback``: ``the prompt was blocked (SAFETY)``, then
    the reason's explanation when given (``blockReasonMessage``, Vertex AI only) and the safety categories
    rated a MEDIUM or HIGH probability of harm, or rated blocked."""
    reason = feedback.block_reason
    message = f"the prompt was blocked ({getattr(reason, 'value', reason)})"
    explanation = getattr(feedback, "block_reason_message", None)
    if explanation:
        message += f": {explanation}"
    flagged = []
    for rating in getattr(feedback, "safety_ratings", None) or []:
        probability = str(getattr(rating.probability, "value", rating.probability) or "")
        if rating.blocked or probability in FLAGGED_PROBABILITIES:
            category = getattr(rating.category, "value", rating.category)
            marks = ", ".join(m for m in (probability, "blocked" if rating.blocked else "") if m)
            flagged.append(f"{category} ({marks})")
    if flagged:
        message += f"; flagged: {', '.join(flagged)}"
    return message


def finish_of(response: Any) -> FinishReason | None:
    """Why the (last chunk of the) answer ended, from its first candidate's ``finish_reason``; None
    when it does not say (a chunk before the last)."""
    candidates = getattr(response, "candidates", None) or []
    finish = getattr(candidates[0], "finish_reason", None) if candidates else None
    name = str(getattr(finish, "value", finish) or "")
    if not name or name == "FINISH_REASON_UNSPECIFIED":
        return None
    if name in FILTERED_FINISH:
        return FinishReason.CONTENT_FILTER
    if name in CUT_FINISH:
        return FinishReason.LENGTH
    return FinishReason.STOP if name == "STOP" else FinishReason.OTHER


def usage_of(metadata: Any) -> Usage:
    """Usage from ``usage_metadata``: thinking tokens count as output, as they are billed.

    ``prompt_token_count`` includes the tokens read from a cache (``cached_content_token_count``: implicit
    caching is on by default for Gemini 2.5), reported apart as they cost less. The prompt's AUDIO tokens
    (``prompt_tokens_details``) are reported apart too, as they cost more; the cached ones among them
    (``cache_tokens_details``) are left out of those, priced as cached.
    """
    if metadata is None:
        return Usage()
    audio = _audio_tokens(getattr(metadata, "prompt_tokens_details", None))
    cached_audio = _audio_tokens(getattr(metadata, "cache_tokens_details", None))
    return Usage(
        input_tokens=int(getattr(metadata, "prompt_token_count", 0) or 0),
        output_tokens=int(getattr(metadata, "candidates_token_count", 0) or 0)
        + int(getattr(metadata, "thoughts_token_count", 0) or 0),
        audio_input_tokens=max(0, audio - cached_audio),
        cached_input_tokens=int(getattr(metadata, "cached_content_token_count", 0) or 0),
    )


def _audio_tokens(details: Any) -> int:
    """The AUDIO entries' token counts of a ``prompt_tokens_details`` list."""
    total = 0
    for entry in details or ():
        modality = getattr(entry, "modality", None)
        if getattr(modality, "value", modality) == "AUDIO":
            total += int(getattr(entry, "token_count", 0) or 0)
    return total
