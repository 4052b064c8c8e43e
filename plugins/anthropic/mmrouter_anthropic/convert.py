"""Turning an mmrouter :class:`router.Request` into Messages API parameters.

The Messages API wants the system prompt apart (``system``), a conversation
that starts with a ``user`` turn and alternates ``user``/``assistant``, and
content as typed blocks: ``text``, ``image`` (base64 with its media type, or a
URL) and ``document`` (a base64 PDF, plain text, or a URL).
An image over the API's limits on an image (5 MB of base64, 8000 px a side, 2000 px in a request of more
than 20 images) is scaled down to the 1568 px Claude would see of it (:func:`router.convert.fit_image`), with a note
for the answer's route (:attr:`Prepared.notes`), and so is each image larger than Claude uses (over 1568 px, or
over 1 MB) of a request over Claude's 32 MB with its images as given;
other content over the API's documented size limits (:mod:`.limits`), and an image that cannot be scaled
down, is refused before any call, as is media in a format Claude does not take
(:class:`ProviderUnsupportedInput`: routing normally sends it elsewhere). An image whose header gives no size
(:func:`limits.image_size`: garbage after a PNG signature) is over no limit on its sides: within 5 MB it is
sent as given, and Claude's refusal of an image it cannot read is the error.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from dataclasses import dataclass, field
from typing import Any

from router import (
    MAX_ROUTE_NOTE_CHARS,
    Media,
    Message,
    Modality,
    ModelInfo,
    ProviderUnsupportedInput,
    Request,
    Role,
)
from router.convert import fit_image, fit_problem
from router.mime import normalise_mime
from router.textdoc import document_text

from . import limits
from .errors import bad_request
from .models import IMAGE_TYPES

PDF = "application/pdf"
PLAIN_TEXT = "text/plain"

#: The user turn put in front of a conversation that starts with the assistant.
LEADING_USER_TURN = "(The conversation so far follows.)"
#: How a final assistant turn (a prefill) reaches a model that refuses prefill: as user text after
#: the last question, so the model still continues that answer instead of starting another.
PREFILL_AS_USER_TEXT = ("(Your answer so far follows. Continue it from exactly where it stops, "
                        "without repeating it.)\n\n{text}")
#: The catalogue's models that still take a final assistant turn (prefill), and their dated
#: snapshots (``claude-haiku-4-5-20251001``). Claude 4.6 and later answer it with 400 "This model
#: does not support assistant message prefill" (platform.claude.com migration guide, "Prefilling
#: assistant messages returns a 400 error on Claude 4.6 models", read 2026-11), and so, to be safe,
#: may any model added by configuration.
PREFILL_MODELS = frozenset({"claude-sonnet-4-5", "claude-opus-4-5", "claude-haiku-4-5"})

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """The ``system`` and ``messages`` parameters of one Messages API call, and the route notes of what
    was changed on the way (each image scaled down), which ``generate`` yields as :class:`router.RouteNote`."""

    system: str = ""
    messages: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _base64_of(media: Media) -> str:
    """The media's bytes as base64 text (reads the stored file for uploaded media)."""
    return base64.b64encode(media.read_bytes()).decode("ascii")


def _base64_source(mime: str, data: bytes) -> dict[str, Any]:
    """The base64 source of an image of type ``mime``."""
    return {"type": "base64", "media_type": mime, "data": base64.b64encode(data).decode("ascii")}


@dataclass
class AsGiven:
    """An image sent as given (within Claude's limits on an image): scaled down after all, in place (its
    ``source``), when its request is over Claude's 32 MB (:func:`_within_request`)."""

    media: Media
    where: str
    source: dict[str, Any]
    stored: int
    size: tuple[int, int] | None


def _within_limits(media: Media, mime: str, images: int) -> tuple[dict[str, Any] | None, int, tuple[int, int] | None, str]:
    """Read the image: its source as given if it is within Claude's limits in a request of ``images`` images,
    else None, its bytes, its size and why it is not within them (see :func:`limits.over_limits`)."""
    raw = media.read_bytes()
    size = limits.image_size(raw)
    why = limits.over_limits(len(raw), size, images)
    return (None if why else _base64_source(mime, raw)), len(raw), size, why


#: An image scaled down: its base64 source, its size (None: unknown) and the note for the answer's route.
Scaled = tuple[dict[str, Any], tuple[int, int] | None, str]


async def _scaled(media: Media, where: str, provider: str, reason: str, smaller_than: int | None = None) -> Scaled | None:
    """``media`` scaled down (:data:`limits.FIT_SIDE`, by :func:`router.convert.fit_image`), with its note
    (``messages[0].parts[1] (IMG_0001.jpg) was scaled down to ... before sending: <reason>``), which is logged
    at INFO the first time and at DEBUG when the scaled copy is reused (each turn of a session sends it
    again); None when it cannot be scaled, or (``smaller_than``) when scaled it is not fewer bytes than that."""
    fitted, before = await fit_image(media, limits.FIT_SIDE, limits.MAX_IMAGE_BYTES)
    if fitted is None or fitted.data is None:
        return None
    if smaller_than is not None and fitted.size >= smaller_than:
        return None
    fitted_size = limits.image_size(fitted.data)
    note = (f"{where}{f' ({media.filename})' if media.filename else ''} was scaled down to "
            f"{'x'.join(map(str, fitted_size or ()))} px ({fitted.mime_type}, {fitted.size:,} bytes) before sending: "
            f"{reason}")[:MAX_ROUTE_NOTE_CHARS]
    log.log(logging.DEBUG if before else logging.INFO, "%s: %s", provider, note)
    return await asyncio.to_thread(_base64_source, fitted.mime_type, fitted.data), fitted_size, note


async def _image_source(media: Media, mime: str, where: str, provider: str, images: int,
                        notes: list[str] | None = None,
                        given: list[AsGiven] | None = None) -> tuple[dict[str, Any], tuple[int, int] | None]:
    """The base64 source of an image within Claude's limits in a request of ``images`` images, and its size:
    the image as given (added to ``given``), or scaled down when it is over them (:func:`_scaled`, with a note
    in ``notes``). Reads it (and scales it) in a worker thread; raises
    :class:`router.errors.ProviderInputTooLarge` for an image over the limits that cannot be scaled down
    (one Pillow cannot read, or too large to decode), saying why (:func:`router.convert.fit_problem`)."""
    source, stored, size, why = await asyncio.to_thread(_within_limits, media, mime, images)
    if source is not None:
        if given is not None:
            given.append(AsGiven(media, where, source, stored, size))
        return source, size
    scaled = await _scaled(media, where, provider, f"it was {why}")
    if scaled is None:
        reason = await asyncio.to_thread(fit_problem, media, limits.FIT_SIDE)
        raise limits.image_too_large(where, f"{why}, and it could not be scaled down: {reason}", provider)
    fitted, fitted_size, note = scaled
    if notes is not None:
        notes.append(note)
    return fitted, fitted_size


async def _within_request(system: str, turns: list[dict[str, Any]], given: list[AsGiven], provider: str,
                          notes: list[str]) -> None:
    """Scale down, when the request is over Claude's 32 MB with its images as given, all those images larger
    than Claude uses (:func:`limits.larger_than_used`: Claude sees none over 1568 px), in place, each with a
    note in ``notes``, in order (one that cannot be scaled, or is not fewer bytes scaled, stays as given);
    then refuse a request still over 32 MB (:class:`router.errors.ProviderInputTooLarge`). A request within
    32 MB is left as it is."""
    if why := limits.request_over(limits.body_bytes(system, turns)):
        large = [image for image in given if limits.larger_than_used(image.stored, image.size)]
        scaled = await asyncio.gather(*(
            _scaled(image.media, image.where, provider, f"the request was {why}", image.stored) for image in large))
        for image, done in zip(large, scaled, strict=True):
            if done is not None:
                image.source.update(done[0])
                notes.append(done[2])
    limits.check_body(limits.body_bytes(system, turns), provider)


async def media_block(media: Media, where: str, provider: str, images: limits.ImageSizes | None = None,
                      count: int = 1, notes: list[str] | None = None,
                      given: list[AsGiven] | None = None) -> dict[str, Any]:
    """The content block for one image or document; ``where`` names it in error messages, which
    name ``provider`` (the provider sending it). Each image is added to ``images``, with its size as sent.
    An image over Claude's limits in a request of ``count`` images is scaled down (:func:`_image_source`),
    with a note in ``notes``; one sent as given is added to ``given``.

    Raises :class:`router.errors.ProviderInputTooLarge` for an image over Claude's limits that cannot be
    scaled down.
    """
    mime = normalise_mime(media.mime_type)
    if media.modality is Modality.IMAGE:
        if mime not in IMAGE_TYPES:
            raise ProviderUnsupportedInput(provider,
                                    f"{where}: Claude takes png, jpeg, gif or webp images, not {media.mime_type!r}")
        if media.url:
            source, size = {"type": "url", "url": media.url}, None
        else:
            source, size = await _image_source(media, mime, where, provider, count, notes, given)
        if images is not None:
            images.append((where, size))
        return {"type": "image", "source": source}
    if media.modality is Modality.DOCUMENT:
        block: dict[str, Any]
        if mime == PDF:
            if media.url:
                block = {"type": "document", "source": {"type": "url", "url": media.url}}
            else:
                data = await asyncio.to_thread(_base64_of, media)
                block = {"type": "document", "source": {"type": "base64", "media_type": PDF, "data": data}}
        elif mime.startswith("text/"):  # markdown, CSV...: their text, as plain text
            if media.url:  # a form it does not take (retryable): a fallback that fetches it may answer
                raise ProviderUnsupportedInput(provider, f"{where}: Claude takes text documents as bytes, not by URL")
            raw = await asyncio.to_thread(media.read_bytes)
            text = document_text(raw)  # without a byte order mark
            block = {"type": "document", "source": {"type": "text", "media_type": PLAIN_TEXT, "data": text}}
        else:
            raise ProviderUnsupportedInput(provider, f"{where}: Claude takes PDF or text documents, not {media.mime_type!r}")
        if media.filename:
            block["title"] = media.filename
        return block
    raise bad_request(
        provider,
        f"{where}: Claude models take text, images and documents, not {media.modality.value}; "
        "route this request to a model that takes it"
    )


async def message_blocks(message: Message, index: int, provider: str, images: limits.ImageSizes | None = None,
                         count: int = 1, notes: list[str] | None = None,
                         given: list[AsGiven] | None = None) -> list[dict[str, Any]]:
    """The content blocks of one message, of a request of ``count`` images, in order; blank text parts are
    left out (the API rejects empty text blocks). Its images are added to ``images``, a note for each one
    scaled down to ``notes``, those sent as given to ``given``."""
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(message.parts):
        where = f"messages[{index}].parts[{j}]"
        if part.media is not None:
            if message.role is Role.ASSISTANT:
                raise bad_request(provider,
                                  f"{where}: Claude takes media only in user turns, not assistant turns")
            blocks.append(await media_block(part.media, where, provider, images, count, notes, given))
        elif part.text and part.text.strip():
            blocks.append({"type": "text", "text": part.text})
    return blocks


def _system_prompt(request: Request, provider: str) -> str:
    """The system messages' text, joined by blank lines; media there is refused."""
    texts: list[str] = []
    for i, message in enumerate(request.messages):
        if message.role is not Role.SYSTEM:
            continue
        if any(p.media is not None for p in message.parts):
            raise bad_request(provider, f"messages[{i}]: a system message can hold only text for Claude")
        if message.text.strip():
            texts.append(message.text)
    return "\n\n".join(texts)


def _strip_final_assistant(turns: list[dict[str, Any]]) -> None:
    """The API refuses a final assistant turn ending in whitespace: trim it (or drop it if blank)."""
    if not turns or turns[-1]["role"] != "assistant":
        return
    content = turns[-1]["content"]
    last = content[-1]
    last["text"] = last["text"].rstrip()
    if not last["text"]:
        content.pop()
    if not content:
        turns.pop()


def takes_prefill(model: ModelInfo | None) -> bool:
    """Whether ``model`` takes a conversation ending with an assistant turn (see :data:`PREFILL_MODELS`)."""
    if model is None:
        return False
    return any(model.name == name or model.name.startswith(f"{name}-2") for name in PREFILL_MODELS)


def _prefill_as_user_text(turns: list[dict[str, Any]]) -> None:
    """Move a final assistant turn into the user turn before it (made if there is none), as
    :data:`PREFILL_AS_USER_TEXT`, for a model that refuses prefill."""
    if not turns or turns[-1]["role"] != "assistant":
        return
    prefill = "\n\n".join(block["text"] for block in turns.pop()["content"])
    block = {"type": "text", "text": PREFILL_AS_USER_TEXT.format(text=prefill)}
    if turns:
        turns[-1]["content"].append(block)  # the turn before an assistant turn is a user turn
    else:
        turns.append({"role": "user", "content": [block]})


async def prepare(request: Request, provider: str, model: ModelInfo | None = None) -> Prepared:
    """The ``system`` and ``messages`` for ``request``, sent by the provider called ``provider`` to
    ``model`` (whose context window sets the page and image counts allowed; None: 200k tokens').

    System messages become ``system``; consecutive turns of one role are merged
    into one turn; a conversation that would start with the assistant gets a
    short user turn in front. A final assistant turn (prefill) is sent as is to a model that takes it
    (:func:`takes_prefill`), else as user text asking to continue it. Raises :class:`router.ProviderBadRequest` for
    content Claude cannot take, and :class:`router.errors.ProviderInputTooLarge`
    for content over the API's documented limits (:mod:`.limits`), before any call; an image over
    the limits on an image is scaled down instead, when it can be, with a note for the answer's route
    (:attr:`Prepared.notes`), and so are the images larger than Claude uses of a request over 32 MB with
    them as given (:func:`_within_request`).
    """
    limits.check_media(request.media(), model, provider)
    count = sum(m.modality is Modality.IMAGE for m in request.media())
    turns: list[dict[str, Any]] = []
    images: limits.ImageSizes = []
    notes: list[str] = []
    given: list[AsGiven] = []
    for i, message in enumerate(request.messages):
        if message.role is Role.SYSTEM:
            continue
        blocks = await message_blocks(message, i, provider, images, count, notes, given)
        if not blocks:
            continue
        role = "assistant" if message.role is Role.ASSISTANT else "user"
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    _strip_final_assistant(turns)
    if not takes_prefill(model):
        _prefill_as_user_text(turns)
    if not turns:
        raise bad_request(provider, "the request has no user content to answer")
    if turns[0]["role"] == "assistant":
        turns.insert(0, {"role": "user", "content": [{"type": "text", "text": LEADING_USER_TURN}]})
    system = _system_prompt(request, provider)
    limits.check_images(images, model, provider)
    await _within_request(system, turns, given, provider, notes)
    return Prepared(system=system, messages=turns, notes=notes)
