"""Modality bridging: convert inputs the chosen model cannot take through another model.

Audio becomes an ``[Audio transcript]`` text part (speaker turns kept when
diarized), a PDF its text, a video its transcript and frame text, an image
its text; an image in a format the model does not take but Pillow reads (BMP,
TIFF) is first converted to PNG (or JPEG), staying an image, one per page of a multi-page TIFF
(:mod:`router.convert`). Each bridge is a step of its own in the route, with its latency
and cost; transcripts are also passed on to the client.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import itertools
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from .convert import MAX_PAGES, MAX_PAGES_BYTES, Pages, convert, convertible
from .errors import ProviderError, ProviderRateLimited, ProviderTimeout, ProviderUnavailable
from .invoke import FailedAttempt, call_model, deadline_passed
from .mime import normalise_mime
from .outcome import Attempt, RouteInfo
from .plugins import Registry
from .routing import (
    Bridge,
    Target,
    bridge_problem,
    bridged_tokens_guess,
    byte_size,
    estimate_tokens,
    is_url_only,
    media_tokens,
    sent_bytes,
    takes_language,
    text_tokens,
)
from .types import (
    FEATURE_DIARIZATION,
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
)

_LABELS = {
    Modality.AUDIO: "[Audio transcript]",
    Modality.VIDEO: "[Video transcript]",
    Modality.DOCUMENT: "[Document text]",
    Modality.IMAGE: "[Image text]",
}
#: The line after a bridged text: what follows it (the client's question) is not the media's.
_END_LABELS = {modality: f"[End of {label[1:].lower()}" for modality, label in _LABELS.items()}

#: The modalities that carry speech, which only a diarizing bridge labels by speaker.
_SPEECH = frozenset({Modality.AUDIO, Modality.VIDEO})

#: What a chat model bridging an image or a document (one that is not extraction-only, such as GPT-4o or
#: Claude listed in ``bridges.image`` or ``bridges.document``) is asked, in a user text after the media
#: (``{what}``: "image" or "document"): a model shown a bare attachment tends to ask what to do with it,
#: and that reply would stand in for the media. An extraction-only model (``local/extract``) gets the
#: media alone, as it makes the same text whatever is asked.
BRIDGE_INSTRUCTION = ("Transcribe all the text of this {what} verbatim, in reading order, then briefly describe "
                      "any content that is not text (pictures, charts, diagrams). Reply with that only: nothing "
                      "else, no introduction, no comment, no question.")

#: The bridged text of speech (audio, video) in which the bridge found none, and of an image or a document
#: in which it found no text (as ``local/extract`` words it): an empty section would leave the model unable
#: to tell nothing said from a text lost, and some models fill it in.
NO_SPEECH = "(no speech found)"
NO_TEXT = "(no text found)"

#: The line a video's bridged text starts with when its bridge only transcribes (AssemblyAI, Whisper):
#: the model must not take the transcript for all the video shows.
SPEECH_ONLY = "(only the speech of this video: its pictures were not read)"


@dataclass
class Bridged:
    """The request with bridged parts replaced, the bridges that did it and the transcripts they made."""

    request: Request
    transcripts: list[Transcript] = field(default_factory=list)
    #: What the bridges did, as the route's ``bridges`` says it (``str`` of each :class:`Bridge`, but
    #: ``video->speech only via …`` for a video of which only the speech was given: see :data:`SPEECH_ONLY`).
    bridges: list[str] = field(default_factory=list)
    #: History messages dropped before bridging (see ``trim`` of :func:`apply_bridges`).
    dropped: int = 0


@dataclass
class BridgedInRequest:
    """What bridges did earlier in this request, by (id of the media, bridge target): a fallback plan
    that bridges the same media again reuses the texts instead of paying twice, and does not call a
    bridge that failed on it again."""

    texts: dict[tuple[int, str], tuple[str, Transcript | None]] = field(default_factory=dict)
    failed: dict[tuple[int, str], ProviderError] = field(default_factory=dict)
    #: Images converted (None: those that could not be), by id and the formats of ``Bridge.convert_to``.
    images: dict[tuple[int, tuple[str, ...]], Pages | None] = field(default_factory=dict)
    #: The errors :func:`apply_bridges` raised, each with the media its bridges failed on.
    refused: list[tuple[ProviderError, Media]] = field(default_factory=list)

    def media_refused(self, error: ProviderError) -> Media | None:
        """The media whose bridges failed with ``error`` (one :func:`apply_bridges` raised), or None."""
        return next((media for raised, media in self.refused if raised is error), None)


#: A bridged text and the transcript it came from.
Kept = tuple[str, Transcript | None]

#: A kept text found by :meth:`BridgeMemo.recall_any`: the key it is kept under, the text and its transcript.
Found = tuple[str, str, Transcript | None]

#: ``request`` without its oldest history, to fit the answering model, and how many messages were dropped;
#: a media in the mapping (by ``id``) counts as the tokens given there, those of its bridged text.
Trim = Callable[[Request, Mapping[int, int]], tuple[Request, int]]


def _transcript_text(transcript: Transcript) -> str:
    if transcript.utterances and any(u.speaker for u in transcript.utterances):
        return Transcript.speaker_text(transcript.utterances)
    return transcript.text


class BridgeMemo(Protocol):
    """Where bridged texts are kept, so that a session's later turns reuse them instead of paying for
    the same transcription again (the history's media come back on every turn)."""

    async def recall(self, key: str) -> tuple[str, Transcript | None] | None:
        """The text and transcript kept under ``key``, if any."""

    async def recall_any(self, prefix: str, diarized: bool,
                         accept: Callable[[str], bool] | None = None) -> Found | None:
        """A text and transcript kept under a key starting with ``prefix`` (:func:`media_prefix`),
        whatever bridge and options made it, with that key (which names the bridge that made it, see
        :func:`made_by`); only a diarized one when ``diarized``, and only under a key that ``accept``
        takes, when given."""

    def remember(self, key: str, text: str, transcript: Transcript | None, session_id: str = "") -> None:
        """Keep ``text`` (and the ``transcript`` it came from) under ``key``, made by a call on ``session_id``
        (if any: its ResetSession forgets it); without waiting for it, but a :meth:`recall` asked afterwards
        finds it."""


#: The form of the kept texts read: part of every memo key (:func:`media_prefix`). Texts kept before it
#: (keys without it) were made by bridges given the media's file name, which ``local/extract`` wrote into
#: its headings: another client's name, for a client sending the same bytes. They are never read again,
#: and go with ``prune`` or with a ``ResetSession`` of a session that sent their media.
KEPT_FORMAT = "k2"


def media_prefix(media: Media, request: Request) -> str | None:
    """What every memo key of ``media`` starts with: its content, its modality and :data:`KEPT_FORMAT`.
    None for media not kept by the router (URLs, inline media outside a session)."""
    if media.media_id:
        content = media.media_id
    elif media.data is not None and request.session_id:  # stored under this id when the turn is saved
        content = hashlib.sha256(media.data).hexdigest()
    else:
        return None
    return f"{content}|{media.modality.value}|{KEPT_FORMAT}|"


def memo_key(media: Media, request: Request, bridge: Bridge, options: Options | None = None) -> str | None:
    """The key of ``media``'s bridged text: its content, the bridge's target and the options that
    change the text (``options``, else the request's). None for media not kept by the router."""
    prefix = media_prefix(media, request)
    if prefix is None:
        return None
    options = request.options if options is None else options
    return (f"{prefix}{bridge.via}|diarization={options.diarization}"
            f"|speakers={options.speakers_expected}|language={options.language}")


def made_by(key: str, prefix: str) -> Target:
    """The bridge target that made the text kept under ``key`` (a :func:`memo_key` starting with ``prefix``)."""
    return Target.parse(key[len(prefix):].split("|", 1)[0])


def _made_with(options: Options) -> Callable[[str], bool] | None:
    """Whether a text kept under a key (:func:`memo_key`) was made with the language and the speaker count
    that ``options`` name (each as asked, when it names one); None when it names neither: any will do."""
    if not options.language and not options.speakers_expected:
        return None
    language, speakers = options.language.lower(), str(options.speakers_expected)

    def accept(key: str) -> bool:
        rest, _, kept_language = key.rpartition("|language=")
        kept_speakers = rest.rpartition("|speakers=")[2]
        return ((not options.language or kept_language.lower() == language)
                and (not options.speakers_expected or kept_speakers == speakers))
    return accept


def history_options(options: Options) -> Options:
    """The options to bridge a history media with (one an earlier turn sent) when nothing of it is kept:
    this turn's language and speaker count describe this turn's media, not that one."""
    return Options(diarization=options.diarization)


def later_bridges(bridge: Bridge, preferences: Mapping[Modality, Sequence[str]], registry: Registry,
                  diarization: bool) -> list[Bridge]:
    """The usable bridges listed after ``bridge`` in ``preferences`` (``bridges.<modality>`` of the
    configuration), to try when it fails: ready, taking the modality, diarizing when asked to."""
    listed = [Target.parse(text) for text in preferences.get(bridge.modality, ())]
    later = listed[listed.index(bridge.via) + 1:] if bridge.via in listed else []
    usable = []
    for target in later:
        provider = registry.ready(target.provider)
        model = provider.model(target.model) if provider is not None else None
        if model is None or bridge_problem(bridge.modality, model):
            continue
        if diarization and bridge.modality in _SPEECH and FEATURE_DIARIZATION not in model.features:
            continue
        usable.append(dataclasses.replace(bridge, via=target))
    return usable


async def apply_bridges(bridges: list[Bridge], request: Request, registry: Registry, ctx: CallContext,
                        route: RouteInfo, memo: BridgeMemo | None = None,
                        preferences: Mapping[Modality, Sequence[str]] | None = None,
                        done: BridgedInRequest | None = None, trim: Trim | None = None) -> Bridged:
    """Run every bridge over the media it converts; raise ProviderError if one fails. Images a bridge
    converts to another format first (``Bridge.convert_to``) are converted, and no model is called for them.

    A bridge failing with a retryable error (down, rate-limited, the media too large for it) gives
    way to the next usable one of ``preferences`` for that media. A bridge whose text goes beside the
    media (``Bridge.keep_media``) fails no call: when all of them fail, the media goes alone, with a
    note saying why. The transcripts passed on are those
    of this turn's media (:meth:`Request.turn_media`): the history's were sent with their own turns.
    With a ``memo``, a media bridged before gets its kept text and transcript and no call, and what
    is bridged now is kept; ``done`` does the same within the request (for a fallback plan). A text
    kept by another bridge than the first choice is reused too, before any bridge is called (see
    :func:`_bridge_media`; not one an extraction-only model made as a stand-in, see :func:`_kept_before`),
    and the route names the bridge that made it, in its bridges and its notes. A history media takes any text
    kept of it, whatever options made it (those of the turn that sent it), and one whose kept text is
    the very reply that follows it (a transcription turn) is not given twice, nor bridged again (whichever
    transcriber made that reply: see :func:`_kept_before`).

    With ``trim``, the history the answering model will not get is dropped before its media are
    bridged, so that they are not paid for (:meth:`_Bridging.bridge_history`).
    """
    done = BridgedInRequest() if done is None else done
    names, labels, given = part_names(request), text_labels(request), request.media()
    request, dropped, images = await _convert_images(bridges, request, route, done, trim)
    run = _Bridging(request, registry, ctx, route, memo, done, Bridged(request, dropped=dropped),
                    {id(m) for m in request.turn_media()}, _replies(request), names, labels)
    todo = _to_bridge(bridges, request, registry, preferences or {})
    history = [(media, choices) for media, choices in todo if id(media) not in run.this_turn]
    for media, choices in todo:
        if id(media) in run.this_turn:
            await run.convert(media, choices)
    if trim is None:
        for media, choices in history:
            await run.convert(media, choices)
    else:
        await run.bridge_history(todo, history, trim)
    if run.reused:
        route.notes.append(f"bridging: reused the kept text of {run.reused} media converted before")
    result = run.result
    result.bridges = _done_labels({**run.done_to, **images}, given)
    result.request = dataclasses.replace(run.request, messages=[
        dataclasses.replace(message, parts=[new for p in message.parts for new in _converted(p, run.converted)])
        for message in run.request.messages])
    return result


async def _convert_images(bridges: list[Bridge], request: Request, route: RouteInfo, done: BridgedInRequest,
                          trim: Trim | None) -> tuple[Request, int, dict[int, Bridge]]:
    """``request`` with the images that ``bridges`` convert to another format (``Bridge.convert_to``)
    converted, in worker threads (those that cannot be are left to the bridges' models), how many of
    its history messages were dropped, and the bridge of each image converted (by its id). An image of several pages (a multi-page TIFF) becomes the parts of
    :func:`_page_parts`: each page an image, after a text part naming it.

    With ``trim``, the history that cannot fit is dropped first, each image counted as the image it
    becomes (the images and labels of its pages, once converted) and every other media a bridge converts
    as nothing (the history bridged later can only be shorter), so the images of the history the model
    will not get are not decoded; an image that cannot be converted counts as nothing too, and may let an
    older one in. A conversion made before, in this request (``done``) or lately
    (:func:`router.convert.convert`), is reused.
    """
    if not any(b.convert_to for b in bridges):
        return request, 0, {}
    wanted: dict[int, tuple[Media, tuple[str, ...]]] = {}  # id -> the image and the formats to convert it to
    converters: dict[int, Bridge] = {}  # id -> the bridge converting it
    counted: dict[int, int] = {}  # id -> the tokens of what it became: its pages, or nothing (bridged to text)
    for media in request.media():
        bridge = next((b for b in bridges if b.converts(media)), None)
        if bridge is not None and bridge.convert_to and convertible(media):
            wanted[id(media)] = (media, bridge.convert_to)
            converters[id(media)] = bridge
        elif bridge is not None:
            counted[id(media)] = 0
    converted: dict[int, list[Part]] = {}
    one_page: dict[tuple[str, str], list[Media]] = {}  # (from, to) -> the single-page images converted so
    reused = 0
    while True:
        kept, dropped = trim(request, counted) if trim is not None and request.history_length else (request, 0)
        todo = list({id(m): wanted[id(m)] for m in kept.media() if id(m) in wanted and id(m) not in counted}.values())
        if not todo:
            break
        made = await asyncio.gather(*(_convert_image(media, formats, done) for media, formats in todo))
        for (media, _), (pages, before) in zip(todo, made, strict=True):
            if pages is None:
                counted[id(media)] = 0
                route.notes.append(_unconverted_note(media, converters[id(media)]))
                continue
            converted[id(media)] = _page_parts(media, pages)
            counted[id(media)] = estimate_tokens([Message(Role.USER, converted[id(media)])])
            reused += before
            if not before and pages.total == 1:
                one_page.setdefault((normalise_mime(media.mime_type), _formats(pages)), []).append(media)
            elif not before:
                route.notes.append(_conversion_note(media, pages))
    route.notes.extend(_conversions_note(images, *formats) for formats, images in one_page.items())
    if reused:
        route.notes.append(f"reused {reused} image(s) converted to another format before")
    if not converted:
        return kept, dropped, {}
    return dataclasses.replace(kept, messages=[
        dataclasses.replace(message, parts=[new for p in message.parts
                                            for new in (converted.get(id(p.media), [p]) if p.media is not None else [p])])
        for message in kept.messages]), dropped, {key: converters[key] for key in converted}


def _handling(bridge: Bridge, formats: Iterable[str]) -> Bridge:
    """``bridge`` as it handled media of ``formats`` (normalised MIME types): naming those of the formats it
    was chosen for alone (a bridge chosen for BMP and ICO images for a model that takes neither names BMP
    alone where it read BMP images only); itself when it was chosen for every media of its modality."""
    return dataclasses.replace(bridge, mime_types=bridge.mime_types & frozenset(formats)) if bridge.mime_types else bridge


def _done_labels(done_to: Mapping[int, Bridge | str], media: Sequence[Media]) -> list[str]:
    """The route's ``bridges``: what was done to the ``media`` of the request (by id, in ``done_to``: the bridge
    that converted it to another format or read it, else the text saying so), once each and in the request's
    order, each naming the formats of the media it was done to (:func:`_handling`): an image converted to
    another format as ``explain`` says its bridge (``image (image/bmp)->image/png or image/jpeg, else text via
    local/extract``), one a bridge read (never converted to another format) as that reading (``image
    (image/svg+xml)->text via local/extract``)."""
    formats: dict[Bridge | str, set[str]] = {}
    for one in media:
        if id(one) in done_to:
            formats.setdefault(done_to[id(one)], set()).add(normalise_mime(one.mime_type))
    return list(dict.fromkeys(done if isinstance(done, str) else str(_handling(done, found))
                              for done, found in formats.items()))


def _page_parts(media: Media, pages: Pages) -> list[Part]:
    """The parts an image converted to ``pages`` becomes: its image, when it has one page; else each page's
    image after a text part naming it (``[fax.tif, page 2 of 3]``), and a text part saying which pages
    were left out, if any, so that the model does not take the first pages for the whole file."""
    if pages.total == 1:
        return [Part(media=pages.images[0])]
    name = media.filename or "image"
    parts: list[Part] = []
    for number, image in enumerate(pages.images, start=1):
        parts += [Part(text=f"[{name}, page {number} of {pages.total}]"), Part(media=image)]
    if pages.left_out:
        parts.append(Part(text=f"[{name}: pages {len(pages.images) + 1} to {pages.total} of {pages.total} "
                               "were left out: the router sends the first pages only]"))
    return parts


#: How many file names a note on several images converted alike names (the rest are counted).
NAMED_CONVERSIONS = 3


def _formats(pages: Pages) -> str:
    """The formats ``pages`` are in: ``image/png``, ``image/jpeg and image/png``."""
    return " and ".join(sorted({image.mime_type for image in pages.images}))


def _conversions_note(images: list[Media], source: str, formats: str) -> str:
    """The route's note on single-page ``images`` all converted from ``source`` to ``formats``: one note
    for a batch (20 BMPs made 20 notes), naming the first :data:`NAMED_CONVERSIONS` named ones."""
    if len(images) == 1:
        return f"converted {images[0].filename or 'an image'} from {source} to {formats} for the model"
    names = [image.filename for image in images if image.filename]
    shown = ", ".join(names[:NAMED_CONVERSIONS]) + (f" and {len(names) - NAMED_CONVERSIONS} more"
                                                    if len(names) > NAMED_CONVERSIONS else "")
    return f"converted {len(images)} images from {source} to {formats} for the model{f' ({shown})' if shown else ''}"


def _conversion_note(media: Media, pages: Pages) -> str:
    """The route's note on the conversion of ``media`` to ``pages`` of several pages: their formats, and how
    many pages were converted and left out."""
    note = f"converted {media.filename or 'an image'} from {normalise_mime(media.mime_type)} to {_formats(pages)} for the model"
    if not pages.left_out:
        return f"{note}: its {pages.total} pages, an image each"
    return (f"{note}: the first {len(pages.images)} of its {pages.total} pages, an image each; pages "
            f"{len(pages.images) + 1} to {pages.total} were left out (at most {MAX_PAGES} pages and "
            f"{MAX_PAGES_BYTES // (1024 * 1024)} MB of images are sent)")


def _unconverted_note(media: Media, bridge: Bridge) -> str:
    """The route's note on ``media``, an image that could not be converted for the model (Pillow cannot read
    it, or it is too large even scaled down): the model is given the text ``bridge`` reads from it instead."""
    return (f"could not convert {media.filename or 'an image'} from {normalise_mime(media.mime_type)} to "
            f"{' or '.join(bridge.convert_to)} for the model (not a readable image of its type, or too large): "
            f"the model gets the text {bridge.via} reads from it, not the picture")


async def _convert_image(media: Media, formats: tuple[str, ...], done: BridgedInRequest) -> tuple[Pages | None, bool]:
    """``media`` converted to one of ``formats`` (or None) and whether it was converted before: lately
    (:func:`router.convert.convert`), or earlier in this request by a plan tried before (``done``)."""
    if (id(media), formats) in done.images:
        return done.images[(id(media), formats)], True
    pages, before = await convert(media, formats)
    done.images[(id(media), formats)] = pages
    return pages, before


@dataclass
class _Bridging:
    """One :func:`apply_bridges`: the request (its history trimmed so far) and the media converted."""

    request: Request
    registry: Registry
    ctx: CallContext
    route: RouteInfo
    memo: BridgeMemo | None
    done: BridgedInRequest
    result: Bridged
    this_turn: set[int]
    replies: dict[int, str]
    names: dict[int, str]  # id(media) -> how errors and notes name it (:func:`part_names`)
    labels: dict[int, str]  # id(media) -> how its bridged text names it (:func:`text_labels`)
    converted: dict[int, tuple[str, bool]] = field(default_factory=dict)  # id -> (text part, keep the media)
    #: id(media) -> what was done to it: the bridge that read it, or the text saying so (see :func:`_done_labels`)
    done_to: dict[int, Bridge | str] = field(default_factory=dict)
    #: id(history media) -> what the memo keeps of it and the bridge that made it (see :func:`_kept_before`)
    recalled: dict[int, tuple[Bridge, Kept] | None] = field(default_factory=dict)
    reused: int = 0

    async def convert(self, media: Media, choices: list[Bridge]) -> None:
        """Bridge ``media`` through the first of ``choices`` that can; a bridge that leaves the media beside
        its text and fails on it leaves the media alone (see :func:`_bridge_media`)."""
        history = id(media) not in self.this_turn
        name = self.name(media)
        bridged = await _bridge_media(media, choices, self.request, self.registry, self.ctx, self.route,
                                      self.memo, self.done, history, self.recalled, name,
                                      self.replies.get(id(media), ""))
        if bridged is None:
            return
        text, transcript, bridge, kept = bridged
        self.reused += kept
        if kept and bridge.via != choices[0].via:
            self.route.notes.append(f"bridging: the text of {name} was made before by {bridge.via}, "
                                    f"not by {choices[0].via}")
        speech_only = (media.modality is Modality.VIDEO and not bridge.keep_media
                       and not _extraction_only(bridge.via, self.registry))
        plain = dataclasses.replace(bridge, convert_to=())  # a media a bridge converts was not converted to another format
        self.done_to[id(media)] = f"video->speech only via {bridge.via}" if speech_only else plain
        if speech_only:
            self.route.notes.append(f"bridging: video->speech only via {bridge.via} for {name}: the model gets "
                                    "its speech, its pictures were not read")
        if _found_nothing(text):
            self.route.notes.append(f"bridging: {bridge.via} found no "
                                    f"{'speech' if media.modality in _SPEECH else 'text'} in {name}")
        if transcript is not None and not history:
            self.result.transcripts.append(transcript)
        self.converted[id(media)] = (_part_text(media, text, self.replies, self.label(media), speech_only),
                                     bridge.keep_media)

    def label(self, media: Media) -> str:
        """How the bridged text of ``media`` names it (see :func:`text_labels`)."""
        return self.labels.get(id(media)) or self.name(media)

    def name(self, media: Media) -> str:
        """How errors and notes name ``media`` (see :func:`part_names`)."""
        return self.names.get(id(media)) or media.filename or media.modality.value

    async def bridge_history(self, todo: list[tuple[Media, list[Bridge]]],
                             history: list[tuple[Media, list[Bridge]]], trim: Trim) -> None:
        """Bridge the ``history`` media the answering model will get, newest first.

        The history that cannot fit even once bridged is dropped first, each media counted by
        :meth:`sizes`; a media whose text turns out longer than it was counted for has the history
        trimmed again before an older one is bridged: a guess too short costs the media of one message at
        most, bridged and then dropped.
        """
        sizes = await self.sizes(todo)
        self.trim(trim, sizes)
        position = {id(m): i for i, m in enumerate(self.request.media())}
        for media, choices in sorted(history, key=lambda item: position.get(id(item[0]), -1), reverse=True):
            if id(media) not in position:
                break  # dropped with every older message
            await self.convert(media, choices)
            if id(media) not in self.converted:
                continue  # left alone by a bridge that failed: no longer than it was counted
            tokens = self.tokens(media)
            if tokens > sizes[id(media)]:
                sizes[id(media)] = tokens
                self.trim(trim, sizes)
                position = {id(m): i for i, m in enumerate(self.request.media())}

    def trim(self, trim: Trim, sizes: Mapping[int, int]) -> None:
        self.request, dropped = trim(self.request, sizes)
        self.result.dropped += dropped

    def tokens(self, media: Media) -> int:
        """The tokens of what a converted ``media`` became, as the exact trim counts them."""
        text, keep_media = self.converted[id(media)]
        return text_tokens(text) + (media_tokens(media) if keep_media else 0)

    async def sizes(self, todo: list[tuple[Media, list[Bridge]]]) -> dict[int, int]:
        """By id of each media in ``todo``: the tokens it will count once bridged. A media bridged already
        or with a text kept (from an earlier turn, or a plan tried before in this request) counts that text
        exactly; one nothing is known of yet counts :func:`bridged_tokens_guess`, a modest over-estimate.
        """
        sizes: dict[int, int] = {}
        for media, choices in todo:
            if id(media) in self.converted:
                sizes[id(media)] = self.tokens(media)
                continue
            text = await self.known_text(media, choices)
            guess = bridged_tokens_guess(media) if text is None else 0
            raw = media_tokens(media) if choices[0].keep_media else 0
            part = _part_text(media, text or "", self.replies, self.label(media), media.modality is Modality.VIDEO)
            sizes[id(media)] = text_tokens(part) + guess + raw
        return sizes

    async def known_text(self, media: Media, choices: list[Bridge]) -> str | None:
        """The text of a history ``media`` made earlier in this request or kept from an earlier turn, if
        any; what the memo keeps is left in ``recalled`` for :func:`_bridge_media`."""
        for bridge in choices:
            if (id(media), str(bridge.via)) in self.done.texts:
                return self.done.texts[(id(media), str(bridge.via))][0]
        if self.memo is None:
            return None
        history = id(media) not in self.this_turn
        self.recalled[id(media)] = found = await _kept_before(media, choices, self.request, self.registry,
                                                              self.memo, history, self.replies.get(id(media), ""))
        return found[1][0] if found is not None else None


def _to_bridge(bridges: list[Bridge], request: Request, registry: Registry,
               preferences: Mapping[Modality, Sequence[str]]) -> list[tuple[Media, list[Bridge]]]:
    """Each media of ``request`` that ``bridges`` convert (the first ready one of its modality), with the
    bridges to try on it in turn: the later ones that take it, in this turn's language for this turn's media
    (the history's are bridged without it: :func:`history_options`)."""
    todo: list[tuple[Media, list[Bridge]]] = []
    seen: set[int] = set()
    this_turn = {id(media) for media in request.turn_media()}
    for bridge in bridges:
        if registry.ready(bridge.via.provider) is None:
            continue  # routing only plans ready bridges; the registry cannot change mid-request
        later = later_bridges(bridge, preferences, registry, request.options.diarization)
        for media in request.media():
            if bridge.converts(media) and id(media) not in seen:
                seen.add(id(media))
                language = request.options.language if id(media) in this_turn else ""
                todo.append((media, [bridge, *(b for b in later if _takes(b, media, registry, language))]))
    return todo


def _takes(bridge: Bridge, media: Media, registry: Registry, language: str = "") -> bool:
    """Whether ``bridge``'s model takes ``media``: its format, by URL if it is given so (routing checked
    the first bridge alone), its length and size if the model has caps (Whisper's 25 MB per file; Claude's
    32 MB per request, which the media alone, as sent, must not surely exceed: :func:`sent_bytes`), and the
    ``language`` of its speech ("" for any) if the model declares the languages it transcribes (``local``
    English only: :func:`router.routing.takes_language`)."""
    provider = registry.ready(bridge.via.provider)
    model = provider.model(bridge.via.model) if provider is not None else None
    if model is None or not model.takes_mime(media.mime_type, media.modality):
        return False
    if is_url_only(media) and not model.takes_url(media.modality):
        return False
    if model.max_media_bytes and byte_size(media) > model.max_media_bytes:
        return False
    if model.max_request_bytes and sent_bytes(media) > model.max_request_bytes:
        return False
    if model.max_document_pages and (media.pages or 0) > model.max_document_pages:
        return False
    if media.modality in _SPEECH and not takes_language(model, language):
        return False
    return not (model.max_audio_seconds and (media.duration_seconds or 0.0) > model.max_audio_seconds)


def _part_text(media: Media, text: str, replies: Mapping[int, str], name: str, speech_only: bool = False) -> str:
    """The text part a bridged ``media`` becomes: a heading naming it (its file name, else its place in its
    message: ``[Image text] image 3 of this message``), then ``text``, in which what the bridge called the
    media (given alone, without its file name: see :func:`_anonymous`) is ``name`` (:func:`text_labels`);
    :data:`NO_SPEECH` or :data:`NO_TEXT` when it is empty, and after the :data:`SPEECH_ONLY` line for a video
    of which only the speech was transcribed (``speech_only``)."""
    heading = f"{_LABELS[media.modality]} {media.filename or f'{media.modality.value} {name}'}"
    if text.strip() and replies.get(id(media)) == text.strip():
        text = "(given in full by the reply that follows)"
    elif not text.strip():
        text = NO_SPEECH if media.modality in _SPEECH else NO_TEXT
    else:
        text = _anonymous(media, r"^\[(?:PDF|Document|Image|Audio|Video) ", r"(?=[,:\] ])").sub(
            lambda found: found[0][:found.start("label") - found.start()] + name, text)
    lines = [heading, SPEECH_ONLY, text] if speech_only else [heading, text]
    return "\n".join([*lines, _END_LABELS[media.modality]])


def _anonymous(media: Media, before: str = r"(?<![\w#])", after: str = r"(?![\w])") -> re.Pattern[str]:
    """A pattern of what a bridge calls ``media`` given alone and without its file name (as ``local/extract``
    does in its headings and errors): the first 12 characters of its id, else its place in that one-media
    request (``#1``); as group ``label``, between ``before`` and ``after``."""
    labels = [re.escape(media.media_id[:12])] if media.media_id else []
    return re.compile(f"{before}(?P<label>{'|'.join([*labels, '#1'])}){after}", re.MULTILINE)


def _found_nothing(text: str) -> bool:
    """Whether a bridge's ``text`` holds nothing: empty, or only headings (``[Audio #1: transcript, 2.0s]``)
    and the markers of nothing found (:data:`NO_SPEECH`, :data:`NO_TEXT`, as ``local/extract`` writes them)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return all((line.startswith("[") and line.endswith("]")) or line in (NO_SPEECH, NO_TEXT) for line in lines)


def text_labels(request: Request) -> dict[int, str]:
    """By id of each media of ``request``: how its bridged text names it where its bridge named it (``[PDF
    <label>, page 1]``) and in its heading: its file name, else its place among the media of its modality in
    its message (``3 of this message``: ``[Image 3 of this message: PNG 640x240]``, headed ``[Image text]
    image 3 of this message``), which lets the model tell which photo "the third photo" is. A message's
    media keep their places on every turn, so a session's history is sent with the same text each time, as a
    provider's prompt cache needs ("part 1 of message 1", :func:`part_names`, would become "... of an earlier
    turn" on the next turn)."""
    labels: dict[int, str] = {}
    for message in request.messages:
        counts: dict[Modality, int] = {}
        for part in message.parts:
            if part.media is not None:
                counts[part.media.modality] = counts.get(part.media.modality, 0) + 1
                labels[id(part.media)] = part.media.filename or f"{counts[part.media.modality]} of this message"
    return labels


def part_names(request: Request) -> dict[int, str]:
    """By id of each media of ``request``: how the router names it in a bridge's errors and in the route's
    notes (its bridged text names it as :func:`text_labels` says): its file name, else its place in the
    request ("part 2 of message 1", counting the messages the client sent; "part 1 of a message of an
    earlier turn" for a session's history)."""
    names: dict[int, str] = {}
    for media, turn, number in request.media_places():
        where = f"message {turn + 1}" if turn >= 0 else "a message of an earlier turn"
        names[id(media)] = media.filename or f"part {number + 1} of {where}"
    return names


def _replies(request: Request) -> dict[int, str]:
    """By id of a history media: the text of the assistant reply right after its message."""
    history = request.messages[:request.history_length]
    return {id(part.media): reply.text.strip()
            for message, reply in itertools.pairwise(history)
            if message.role is Role.USER and reply.role is Role.ASSISTANT
            for part in message.parts if part.media is not None}


def _converted(part: Part, converted: dict[int, tuple[str, bool]]) -> list[Part]:
    """What ``part`` becomes: its bridged text, after the media itself for a bridge that keeps it."""
    if part.media is None or id(part.media) not in converted:
        return [part]
    text, keep_media = converted[id(part.media)]
    return [part, Part(text=text)] if keep_media else [Part(text=text)]


async def _bridge_media(media: Media, choices: list[Bridge], request: Request, registry: Registry,
                        ctx: CallContext, route: RouteInfo, memo: BridgeMemo | None,
                        done: BridgedInRequest, history: bool,
                        recalled: Mapping[int, tuple[Bridge, Kept] | None], name: str, reply: str = "",
                        ) -> tuple[str, Transcript | None, Bridge, bool] | None:
    """Bridge one media through the first of ``choices`` that succeeds: its text, its transcript, the
    bridge used and whether the text was kept from an earlier turn or request (a memo hit).

    Before any bridge is called, a text already made is taken: one made earlier in this request
    (``done``), then one kept in ``memo`` (:func:`_kept_before`, or what ``recalled`` already holds of
    a history media, ``reply`` being the assistant reply that follows its message), whichever bridge made
    it (the bridge returned is the one that made it, for the route). Only then are ``choices`` called in
    turn, each taking first what the memo keeps under its own key. A ``history`` media (sent by an earlier turn) is bridged with :func:`history_options`:
    this turn's language is not that turn's.

    A bridge failing with a retryable error gives way to the next choice; one failing otherwise fails the
    call. The error raised is that of the chain (:func:`chain_error`): an earlier bridge's failure that may
    pass (down, rate-limited) after which a later one refused the media, else each refusal; each bridge's
    error names the media ``name`` (:func:`_naming`), and is in ``done.refused`` with ``media``. But the
    text of a bridge that leaves the media beside it (``Bridge.keep_media``) is extra: when each of its
    choices fails, whatever the error, the route notes why and None is returned (the model gets the media
    without it).
    """
    options = history_options(request.options) if history else request.options
    for bridge in choices:
        if (id(media), str(bridge.via)) in done.texts:
            return *done.texts[(id(media), str(bridge.via))], bridge, False
    if memo is not None:
        found = (recalled[id(media)] if history and id(media) in recalled
                 else await _kept_before(media, choices, request, registry, memo, history, reply))
        if found is not None:
            bridge, kept = found
            done.texts[(id(media), str(bridge.via))] = kept
            return *kept, bridge, True
    errors: list[ProviderError] = []
    for bridge in choices:
        this = (id(media), str(bridge.via))
        if this in done.failed:
            errors.append(done.failed[this])
            if not errors[-1].retryable and not bridge.keep_media:
                break
            continue
        key = memo_key(media, request, bridge, options) if memo is not None else None
        kept = await _kept(key, memo) if memo is not None and key is not None else None
        if kept is not None:  # made meanwhile by another call
            done.texts[this] = kept
            return *kept, bridge, True
        provider = registry.ready(bridge.via.provider)
        model = provider.model(bridge.via.model) if provider is not None else None
        if provider is None or model is None:
            continue
        leader = _lead(key)
        result = None
        try:
            text, transcript = await _bridge_one(media, bridge, provider, model, options, ctx, route)
            result = (text, transcript)
        except ProviderError as exc:
            error = done.failed[this] = _naming(exc, media, name)
            errors.append(error)
            if not exc.retryable and not bridge.keep_media:
                break
            route.notes.append(f"bridging: {bridge.via} failed on {name} ({exc.reason})")
            if deadline_passed(ctx):  # as for a fallback target: the next bridge would be cut at once, its
                break  # provider blamed, and the media sent to it (an upload) for a call already given up
            continue
        finally:
            _settle(key, leader, result)  # those waiting get the text, or None (then bridge themselves)
        if memo is not None and key is not None:
            memo.remember(key, text, transcript, request.session_id)
        done.texts[this] = (text, transcript)
        return text, transcript, bridge, False
    if choices[0].keep_media:
        failed = ", ".join(str(b.via) for b in choices if (id(media), str(b.via)) in done.failed)
        why = f" ({errors[-1].reason}: {errors[-1].message})" if errors else ""
        note = (f"bridging: no {_LABELS[media.modality][1:-1].lower()} beside {name}: {failed} "
                f"failed{why}; the model gets the {media.modality.value} alone")
        if note not in route.notes:  # a fallback plan gives up on it again
            route.notes.append(note)
        return None
    assert errors  # the first choice is a ready bridge: it was called (now or before) and failed
    error = chain_error(errors)
    done.refused.append((error, media))
    raise error


async def _kept_before(media: Media, choices: list[Bridge], request: Request, registry: Registry,
                       memo: BridgeMemo, history: bool, reply: str = "") -> tuple[Bridge, Kept] | None:
    """A text kept of ``media`` by an earlier turn or request, and the bridge that made it (one of
    ``choices`` with its ``via`` if it is one, else the first with the ``via`` read from the memo key); None
    when nothing usable is kept, and ``media`` must be bridged.

    A ``history`` media takes any text kept of it (:func:`_kept_any`): the options that made it are those
    of the turn that sent it. A media of this turn takes first the text kept under the exact key of one of
    ``choices`` (in their order), then any text kept of it, made by whichever bridge and with whichever
    options, so that, say, a diarized transcript AssemblyAI made serves a question to a model that cannot
    hear instead of a second transcription by Whisper (the first bridge). Options that change the text
    still rule a kept text out: when this turn asks for speakers only a diarized one will do, and when it
    names a ``language`` or ``speakers_expected``, only one made with that same language or count (an
    auto-detected language or a guessed count is not taken for one asked for); a text made with a language
    or count when this turn names none is taken. A video of this turn takes only the text of its exact keys:
    one kept by a bridge that left the video beside it holds its speech and no frame text (a video of the
    history takes it all the same).

    A text made by an extraction-only model (``local/extract``, which makes it offline, without a language
    model) is not taken here unless the first choice is one too: it stood in for the bridges before it
    while they failed, and must not stand in for them once they may work again. It is still taken at its
    own turn (:func:`_bridge_media`), when the bridges before it fail again. But a history media whose kept
    text is the ``reply`` that follows its message (a transcription turn's transcript, which the session keeps
    as its reply) takes that text first, whichever bridge or transcriber made it, offline too: the model gets
    the transcript once, as that reply (:func:`_part_text`), and the recording is not transcribed again.
    """
    prefix = media_prefix(media, request)
    if prefix is None:
        return None
    offline = _extraction_only(choices[0].via, registry)

    def preferred(key: str) -> bool:
        """Whether the text kept under ``key`` may be taken ahead of the bridges: see above."""
        return offline or not _extraction_only(made_by(key, prefix), registry)

    if not history:
        for bridge in choices:
            key = memo_key(media, request, bridge)
            kept = await _kept(key, memo) if key is not None and preferred(key) else None
            if kept is not None:
                return bridge, kept
        if media.modality is not Modality.AUDIO:
            return None
    made_with = None if history else _made_with(request.options)
    found = await _kept_as_reply(media, request, memo, reply) if history else None
    found = found or await _kept_any(media, request, memo, preferred if made_with is None
                                     else lambda key: preferred(key) and made_with(key))
    if found is None:
        return None
    key, text, transcript = found
    via = made_by(key, prefix)
    bridge = next((b for b in choices if str(b.via) == str(via)), None)
    return (bridge or dataclasses.replace(choices[0], via=via)), (text, transcript)


def _extraction_only(target: Target, registry: Registry) -> bool:
    """Whether ``target`` is an extraction-only model (``local/extract``) of a ready provider."""
    provider = registry.ready(target.provider)
    model = provider.model(target.model) if provider is not None else None
    return model is not None and FEATURE_EXTRACTION_ONLY in model.features


#: Failures that may pass: the same request may be answered by that target (or bridge) later. A spent quota
#: (:class:`router.errors.ProviderQuotaExhausted`) is none: it lasts until someone adds credit.
PASSING = (ProviderUnavailable, ProviderRateLimited, ProviderTimeout)


def final_error(errors: Sequence[ProviderError]) -> ProviderError:
    """The error a call ends with when no target answered, each having failed with ``errors`` in turn: the
    last target's, unless it is a refusal (a bad input, a format or size a fallback could not take, a spent
    quota) after an earlier target failed in a way that may pass (down, rate-limited, timed out). Then it is
    the first such failure, its message naming the last refusal: the client should retry, as that target
    may answer the same request later (a PDF local could not read, after Claude answered 529, was
    INVALID_ARGUMENT "not a readable PDF", so clients did not retry a request Claude answers).

    The retry delay is the soonest any failure that may pass gave (the last one's too), whichever error is
    given: the earliest moment some target of the route may answer (a rate limit's Retry-After of 2 s, then
    a fallback's of 60 s: 2 s; a rate limit's, then a fallback's 503 without one: the rate limit's). A
    refusal alone, or after refusals only, keeps its own (none). The bridges tried in turn on one media end
    alike (:func:`chain_error`); :func:`targets_failed` says which targets failed."""
    last = errors[-1]
    passing = [e for e in errors if isinstance(e, PASSING)]
    if not passing:
        return last
    soonest = min((e.retry_after for e in passing if e.retry_after is not None), default=None)
    if isinstance(last, PASSING):
        if last.retry_after == soonest:
            return last
        error = _with_message(last, last.message)
        error.retry_after = soonest
        return error
    first = passing[0]
    kind = next(kind for kind in PASSING if isinstance(first, kind))  # a plugin's subclass may take other arguments
    detail = first.message.removeprefix(f"{first.provider}: ")
    error = kind(first.provider, f"{detail} (then {last.message})", retry_after=soonest)
    error.metadata = {**first.metadata, **error.metadata}
    return error


def chain_error(errors: Sequence[ProviderError]) -> ProviderError:
    """The error of the bridges of one media that each failed, with ``errors`` in turn, as
    :func:`final_error` ends a call whose targets each failed: the first failure that may pass (down,
    rate-limited, timed out), with its code and the soonest retry delay, its message naming the refusals after it
    ("… (then local: cannot transcribe call.wav: …)"); else the last refusal's code, its message naming
    each refusal in turn ("openai: …; then local: …")."""
    passing = [e for e in errors if isinstance(e, PASSING)]
    refusals = [e for e in errors if not isinstance(e, PASSING)]
    if not refusals:
        return final_error(errors)
    refused = refusals[-1] if len(refusals) == 1 else _with_message(
        refusals[-1], "; then ".join(e.message for e in refusals))
    return final_error([*passing, refused])


def targets_failed(failed: Sequence[tuple[str, ProviderError]], attempts: Sequence[Attempt],
                   every: bool) -> ProviderError:
    """The error a call ends with when its targets failed, each (``"openai/gpt-4o"``) with its error in turn
    (``failed``), :func:`final_error`'s. When more than one failed, its message starts by saying so ("every
    target failed (3 tried): …", or with ``every`` false, when a refusal ended the call before its last
    target, "2 targets failed: …"), and its ErrorInfo metadata ``attempts`` names each provider call that
    failed, of the route's ``attempts``, and its reason ("openai/gpt-4o PROVIDER_RATE_LIMITED;
    anthropic/claude-sonnet-4-6 PROVIDER_UNAVAILABLE"), as the daemon's log does: a bridge's call under the
    bridge's target ("openai/whisper-1"), never under the targets it bridged for, which were not called. Short,
    and free of the providers' texts, which the message and the daemon's log hold. A target no failed call names
    was not called (its bridge failed): the message says how many were, and which bridges failed for which
    targets ("every target failed (2 planned, none called: the bridge openai/whisper-1 failed for
    anthropic/claude-sonnet-4-6, openai/gpt-4o): …")."""
    error = final_error([e for _, e in failed])
    if len(failed) < 2:
        return error
    calls = [a for a in attempts if isinstance(a, FailedAttempt)]
    called = [f"{a.provider}/{a.model}" for a in calls]
    targets = [target for target, _ in failed]
    said = "every target failed" if every else f"{len(failed)} targets failed"
    if uncalled := [target for target in targets if target not in called]:
        count = len(failed) - len(uncalled) or "none"
        tried = f"{len(failed)} planned, {count} called" if every else f"{count} called"
        bridges = list(dict.fromkeys(name for name in called if name not in targets))
        why = (f"the bridge{'s' if len(bridges) > 1 else ''} {', '.join(bridges)} failed for {', '.join(uncalled)}"
               if bridges else f"not called: {', '.join(uncalled)}")
        said = f"{said} ({tried}: {why})"
    elif every:
        said = f"{said} ({len(failed)} tried)"
    error = _with_message(error, f"{said}: {error.message}")
    if calls:
        error.metadata["attempts"] = "; ".join(f"{name} {a.reason}" for name, a in zip(called, calls, strict=True))
    return error


def _with_message(error: ProviderError, message: str) -> ProviderError:
    """A copy of ``error`` (its class, a plugin's subclass too, and its fields) with ``message``."""
    copy = type(error).__new__(type(error))
    copy.__dict__.update(error.__dict__)
    copy.metadata = dict(error.metadata)
    copy.message = message
    copy.args = (message,)
    return copy


def _naming(error: ProviderError, media: Media, name: str) -> ProviderError:
    """``error`` of a bridge given ``media`` alone and without its file name, naming the part ``name``
    (:func:`part_names`) in place of what the bridge called it (``#1``, its id's first characters: see
    :func:`_anonymous`), else after the provider's name ("openai: bridging call.wav: HTTP 503 …")."""
    detail = error.message.removeprefix(f"{error.provider}: ")
    named, found = _anonymous(media).subn(lambda _: name, detail, count=1)
    if not found:
        named = f"bridging {name}: {detail}"
    return _with_message(error, f"{error.provider}: {named}")


async def _kept_any(media: Media, request: Request, memo: BridgeMemo,
                    accept: Callable[[str], bool] | None = None) -> Found | None:
    """Any text kept of ``media`` (that ``accept`` takes, by its key), whatever bridge and options made it,
    with its key, or None. When this turn asks for speakers, only a diarized text of speech will do: the
    turn or request that made it may not have asked."""
    prefix = media_prefix(media, request)
    diarized = request.options.diarization and media.modality in _SPEECH
    found = await memo.recall_any(prefix, diarized, accept) if prefix is not None else None
    return None if found is None else (found[0], *_without_old_banner(found[1:]))


async def _kept_as_reply(media: Media, request: Request, memo: BridgeMemo, reply: str) -> Found | None:
    """The text kept of a history ``media`` that is the very ``reply`` that follows its message (stripped), with
    its key: the transcript of a transcription turn (kept by :func:`remember_transcripts`), by whichever
    transcriber made it; None when no kept text (of those :func:`_kept_any` may take) is that reply."""
    tried: set[str] = set()
    while reply and (found := await _kept_any(media, request, memo, lambda key: key not in tried)) is not None:
        if found[1].strip() == reply:
            return found
        tried.add(found[0])
    return None


async def _kept(key: str, memo: BridgeMemo) -> tuple[str, Transcript | None] | None:
    """The text of ``key`` kept from an earlier turn, or made now by another call (its text, not a
    second paid call); None when this call must bridge it, with no other call bridging it now.

    A call whose bridging failed or was cancelled wakes its waiters with None: then one of them leads
    and the others wait again, rather than each paying for the same media at once.
    """
    while True:
        if key in _UNDER_WAY:
            kept = await asyncio.shield(_UNDER_WAY[key])
        else:
            kept = await memo.recall(key)
            if kept is None and key not in _UNDER_WAY:  # nobody began bridging it while the memo was read
                return None
        if kept is not None:
            return _without_old_banner(kept)


#: The line that began every text of ``local/extract``'s, its bridged ones too, before this version (this
#: line, a blank line, then its sections): meant for the person reading a direct answer, it told the model
#: given a bridged text that no language model was used. For the texts kept before this version only: no
#: other bridge writes it, local no longer does in a bridged text, and :data:`KEPT_FORMAT` was left as it was
#: (a new one would drop every kept text, the paid cloud transcripts too).
_OLD_LOCAL_BANNER = "[Extracted by local provider — no language model was used]\n"


def _without_old_banner(kept: Kept) -> Kept:
    """``kept`` (a text kept in the memo and its transcript) without :data:`_OLD_LOCAL_BANNER` and the blank
    lines after it, if it starts with it."""
    text, transcript = kept
    if not text.startswith(_OLD_LOCAL_BANNER):
        return kept
    return text.removeprefix(_OLD_LOCAL_BANNER).lstrip("\n"), transcript


#: Bridged texts being made now, by memo key: a concurrent request naming the same media (same
#: bridge and options) waits for that text instead of paying for the same transcription again.
_UNDER_WAY: dict[str, asyncio.Future[tuple[str, Transcript | None] | None]] = {}


def _lead(key: str | None) -> asyncio.Future | None:
    """Register this call as the one bridging ``key`` (None without a key, or when one already is)."""
    if key is None or key in _UNDER_WAY:
        return None
    future: asyncio.Future = asyncio.get_running_loop().create_future()
    _UNDER_WAY[key] = future
    return future


def _settle(key: str | None, leader: asyncio.Future | None, result: tuple[str, Transcript | None] | None) -> None:
    """End this call's lead on ``key``: waiters get ``result`` (None when it failed or was cancelled)."""
    if leader is None:
        return
    if _UNDER_WAY.get(key) is leader:  # type: ignore[arg-type]
        del _UNDER_WAY[key]  # type: ignore[arg-type]
    if not leader.done():
        leader.set_result(result)


async def _bridge_one(media: Media, bridge: Bridge, provider, model, options: Options, ctx: CallContext,
                      route: RouteInfo) -> tuple[str, Transcript | None]:
    """Call the bridge's model on one media: its text, and its transcript (several merged) if any.
    Its usage is recorded in ``route``'s steps by :func:`call_model`.

    The model gets the media without its file name: the text is kept by content (:func:`memo_key`) and
    given to any client that sends the same bytes, so it must not name them as this client did (the text
    part it becomes names them as each request's part does, see :func:`_part_text`). A chat model reading
    an image or a document is asked for its text (:data:`BRIDGE_INSTRUCTION`); an extraction-only model
    gets the media alone."""
    extraction = FEATURE_EXTRACTION_ONLY in model.features
    task = Task.CHAT if extraction or bridge.modality in (Modality.DOCUMENT, Modality.IMAGE) else Task.TRANSCRIBE
    parts = [Part(media=dataclasses.replace(media, filename=""))]
    if task is Task.CHAT and not extraction:  # a chat model reading an image or a document: asked to
        parts.append(Part(text=BRIDGE_INSTRUCTION.format(what=bridge.modality.value)))
    sub = Request(
        messages=[Message(Role.USER, parts)],
        options=Options(task=task, diarization=options.diarization,
                        speakers_expected=options.speakers_expected, language=options.language),
        bridging=True,
    )
    texts: list[str] = []
    transcripts: list[Transcript] = []
    reading = _handling(dataclasses.replace(bridge, convert_to=()), [normalise_mime(media.mime_type)])
    async for event in call_model(provider, model, sub, ctx, route, f"bridge:{reading}"):
        if isinstance(event, TranscriptReady):
            transcripts.append(event.transcript)
            if task is Task.TRANSCRIBE:
                texts = [_transcript_text(event.transcript)]
        elif isinstance(event, TextDelta) and (task is Task.CHAT or not texts):
            texts.append(event.text)
    return "".join(texts).strip(), Transcript.merged(transcripts) if transcripts else None


def remember_transcripts(request: Request, transcripts: list[Transcript], target: Target,
                         memo: BridgeMemo) -> None:
    """Keep a transcription's transcripts as the bridged texts of the audio it transcribed (this turn's),
    as if ``target`` had bridged them: a later turn to a model that cannot hear reuses them instead of
    paying for the same transcription again. Only audio: a video's bridged text holds more than its speech.
    """
    media = request.current_media()
    this_turn = {id(m) for m in request.turn_media()}
    if not transcripts or not media or any(m.modality is not Modality.AUDIO or id(m) not in this_turn
                                           for m in media):
        return
    if len(media) == 1:
        transcripts = [Transcript.merged(transcripts)]
    if len(transcripts) != len(media):  # not one per recording: which is whose is unknown
        return
    for one, transcript in zip(media, transcripts, strict=True):
        key = memo_key(one, request, Bridge(Modality.AUDIO, target))
        if key is not None:
            memo.remember(key, _transcript_text(transcript), transcript, request.session_id)
