"""Routing: rules + what the providers offer -> a Decision. Pure: no clock, and no I/O but the size and
(once per stored file) the head of a text document, to estimate its tokens.

:func:`decide` tries the rules top-down. The first rule whose conditions hold
and which has a usable target wins; its other usable targets become the
fallbacks. In a session, the winning rule's first target whose model holds the
whole conversation (history and this turn) answers, the others following in
their order; when none holds it, the first, whose history is then trimmed. A target is usable when its provider is ready, the model exists,
it produces what the task needs, and it takes every input of the request
(in its format, and by URL for media given so: ``ModelInfo.url_inputs``),
either directly or through a bridge (another model that turns, say, audio
into a transcript first). Every rule's outcome and the reason for it is
kept in the decision's trace, which ``explain`` shows.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from .config import Match, Rule, did_you_mean
from .convert import target_formats
from .errors import (
    DiarizationUnavailable,
    FieldViolation,
    InputTooLarge,
    NoRoute,
    OverrideNotAllowed,
    ProviderNotConfigured,
    UnknownTarget,
)
from .mime import normalise_mime
from .text import composed
from .types import (
    FEATURE_DIARIZATION,
    FEATURE_EXTRACTION_ONLY,
    Media,
    Message,
    Modality,
    ModelInfo,
    Part,
    Request,
    Task,
)

#: Rough tokens per unit, for estimating a request's input size. An image of unknown pixel size (given by URL,
#: or that Pillow does not read) counts this, OpenAI's count of a 1024 x 1024 image; one of known size counts
#: as :func:`image_tokens` says.
TOKENS_PER_IMAGE = 765
#: Of a model that declares no rate of its own (``ModelInfo.pdf_page_tokens``: see :func:`pdf_page_tokens`).
TOKENS_PER_PDF_PAGE = 1500
#: The fewest tokens a provider counts per PDF page (Gemini: 258): what surely will not fit a context.
TOKENS_PER_PDF_PAGE_FLOOR = 258
TOKENS_PER_AUDIO_SECOND = 32
TOKENS_PER_VIDEO_SECOND = 300

#: The MIME type of the documents whose pages the router counts (``Media.pages``).
PDF = "application/pdf"

#: The modalities that carry speech, which diarization labels by speaker.
_SPEECH = frozenset({Modality.AUDIO, Modality.VIDEO})

#: Rough tokens of the text a bridge makes of a media nothing is kept of yet, counted as
#: :func:`text_tokens` counts Latin-script text (a token per 4 characters): history is dropped on these before
#: its media are bridged, so they lean high (a media trimming drops anyway is then rarely paid for) but
#: only modestly (history that would fit once bridged is rarely dropped). Speech runs ~150 words a minute
#: (2.5 a second) of ~6 characters with the space: ~3.75 per second, for audio and a video's transcript
#: (a video's frame text may come on top: see _Bridging.bridge_history in bridging.py).
BRIDGED_TOKENS_PER_SPEECH_SECOND = 4
#: A dense page of prose holds ~400 words, ~2,400 characters.
BRIDGED_TOKENS_PER_PDF_PAGE = 600
#: The text on a slide or screenshot, a hundred-odd words.
BRIDGED_TOKENS_PER_IMAGE = 150


@dataclass(frozen=True)
class Target:
    """A provider and one of its models."""

    provider: str
    model: str

    @classmethod
    def parse(cls, text: str) -> Target:
        """``provider/model``; the model is everything after the first slash (it may hold more)."""
        provider, _, model = text.partition("/")
        return cls(provider, model)

    def __str__(self) -> str:
        return f"{self.provider}/{self.model}"


@dataclass(frozen=True)
class ProviderStatus:
    """What routing needs to know of one provider."""

    ready: bool
    reason: str
    models: Mapping[str, ModelInfo]


#: provider name -> status; built from the plugin registry by the caller.
Catalog = Mapping[str, ProviderStatus]


@dataclass(frozen=True)
class MediaPart:
    """One media of a request as a refusal names it: where it is, its file name and its format."""

    modality: Modality
    #: Its normalised MIME type.
    mime_type: str
    #: The field a violation names: ``request.messages[i].parts[j].media`` (``i`` counting this turn's messages,
    #: as the client sent them), or ``request.session_id`` for a media of the session's history.
    field: str
    #: Where it is, in words: its field, or ``part 2 of a message of an earlier turn`` (as
    #: :func:`router.bridging.part_names` says it) for one of the history.
    place: str
    #: Its file name, else ``media_id <id>`` for an upload named by its id, else ``""``.
    name: str = ""

    def label(self) -> str:
        """``place (name: mime)``, or ``place (mime)`` without a name."""
        return f"{self.place} ({self.name}: {self.mime_type})" if self.name else f"{self.place} ({self.mime_type})"


@dataclass
class Facts:
    """What routing rules can match on, computed once per request."""

    modalities: frozenset[Modality]
    task: Task
    diarization: bool = False
    images: int = 0
    audio_seconds: float | None = 0.0
    video_seconds: float | None = 0.0
    pdf_pages: int | None = 0
    input_tokens: int = 0
    metadata: Mapping[str, str] = field(default_factory=dict)
    tags: frozenset[str] = frozenset()
    #: This turn's estimated input tokens per modality: what a model's context must hold, since a
    #: session's history is trimmed to fit the chosen model (see :attr:`conversation_tokens`).
    turn_tokens: Mapping[Modality, int] = field(default_factory=dict)
    #: The normalised MIME types of the media, per modality: a model must take each format it gets.
    mime_types: Mapping[Modality, frozenset[str]] = field(default_factory=dict)
    #: The longest media of each speech modality (audio, video), in seconds; those of unknown length
    #: are left out.
    longest_seconds: Mapping[Modality, float] = field(default_factory=dict)
    #: The largest media of each modality, in bytes; those of unknown size (given by URL) are left out.
    largest_bytes: Mapping[Modality, int] = field(default_factory=dict)
    #: The most pages of one PDF (those of unknown page count left out; 0: none known): a model must read
    #: that many (``ModelInfo.max_document_pages``).
    most_pdf_pages: int = 0
    #: The normalised MIME types of the media given only by URL (no bytes), per modality: a model or
    #: bridge must take that modality by URL (:meth:`ModelInfo.takes_url`).
    url_mime_types: Mapping[Modality, frozenset[str]] = field(default_factory=dict)
    #: The modalities only the session's history brings (none of this turn's messages has them): a rule or
    #: target that cannot take them says where they come from.
    history_modalities: frozenset[Modality] = frozenset()
    #: With :attr:`history_modalities`, the facts of this turn alone: whether the turn could be routed
    #: without its history (see :meth:`Router.decide`).
    turn: Facts | None = None
    #: Of a request with a session's history (else empty; not of a transcription, which sends none): the
    #: whole conversation's estimated input tokens per modality, as trimming counts them (see
    #: :func:`estimate_tokens`), and in :attr:`bridged_conversation_tokens` what the media of each modality
    #: count once bridged (:func:`bridged_tokens_guess`): whether a model holds it all (:func:`_drops_history`).
    conversation_tokens: Mapping[Modality, int] = field(default_factory=dict)
    bridged_conversation_tokens: Mapping[Modality, int] = field(default_factory=dict)
    #: With :attr:`conversation_tokens`, the known pages of the whole conversation's PDFs, which it counts at
    #: :data:`TOKENS_PER_PDF_PAGE`: a model with a rate of its own counts them at that (:func:`pdf_page_tokens`).
    conversation_pdf_pages: int = 0
    #: With :attr:`conversation_tokens`, the targets (``provider/model``) known to refuse the session's whole
    #: history for its size on an earlier turn, each with its refusal (the caller adds them from
    #: :meth:`router.dispatch.HistoryCuts.refusals`): each gets it trimmed (:func:`_drops_history`).
    size_refusals: Mapping[str, str] = field(default_factory=dict)
    #: The request's ``options.max_output_tokens`` (0: the model's default): the room left for the answer
    #: (:func:`input_budget`).
    max_output_tokens: int = 0
    #: The targets (``provider/model``) cooling down: each asked, with a retry delay, to be left alone for a while,
    #: with why, as a route note says it after the target's name (the caller adds them from
    #: :meth:`router.cooldowns.Cooldowns.cooling`): a rule tries them after its other targets (:func:`_cooling_last`).
    cooling: Mapping[str, str] = field(default_factory=dict)
    #: The media the facts are of (those of :attr:`mime_types`), each with its place in the request: a refusal
    #: for a format no target takes names them (:meth:`Router.untaken_media`).
    media_parts: tuple[MediaPart, ...] = ()
    #: This turn's size as sent, in bytes (:func:`request_bytes`), by modality and format: what a model's
    #: ``max_request_bytes`` must hold (its text under ``(TEXT, "")``). A transcription's is of the media it
    #: transcribes.
    turn_bytes: Mapping[tuple[Modality, str], int] = field(default_factory=dict)
    #: With :attr:`conversation_tokens`, the same of the whole conversation (the history as sent again): a
    #: model whose ``max_request_bytes`` it exceeds would drop the oldest messages (:func:`_drops_history`).
    conversation_bytes: Mapping[tuple[Modality, str], int] = field(default_factory=dict)
    #: The largest media of each modality and format (normalised MIME type) as sent, in bytes (:func:`sent_bytes`):
    #: what a bridge's ``max_request_bytes`` must hold, a bridge being sent each media alone.
    largest_sent: Mapping[tuple[Modality, str], int] = field(default_factory=dict)
    #: The request's ``options.language`` ("" for none), the language of :attr:`spoken`: a model or bridge that
    #: would transcribe that speech must take it (``ModelInfo.languages``: see :func:`language_refused`).
    language: str = ""
    #: The speech modalities (audio, video) of this turn's media, or of the media a transcription transcribes:
    #: those ``options.language`` describes (a session's earlier media are bridged without it).
    spoken: frozenset[Modality] = frozenset()

    @property
    def url_modalities(self) -> frozenset[Modality]:
        """The modalities of which some media is given only by URL."""
        return frozenset(self.url_mime_types)


def _total(values: Sequence[float | None]) -> float | None:
    """The sum, or None if any value is unknown."""
    return None if any(v is None for v in values) else float(sum(v for v in values if v is not None))


def pdf_page_tokens(model: ModelInfo | None) -> int:
    """The input tokens ``model`` counts per PDF page: its own rate (``ModelInfo.pdf_page_tokens``), else (or
    with no model) the router's :data:`TOKENS_PER_PDF_PAGE`."""
    return (model.pdf_page_tokens if model is not None else 0) or TOKENS_PER_PDF_PAGE


def _is_pdf(media: Media) -> bool:
    """A paged document, counted per page (not a ``text/*`` one, counted by its text)."""
    return media.modality is Modality.DOCUMENT and not is_text_document(media)


def image_tokens(pixels: tuple[int, int] | None) -> int:
    """The estimated input tokens of an image of ``pixels`` (width, height; None when unknown:
    :data:`TOKENS_PER_IMAGE`), the most the public formulas count up to that flat rate: OpenAI's high-detail
    count (fitted in 2048 x 2048, its shortest side then scaled down to 768 if longer, 170 tokens per 512-px
    tile it spans and 85 more: 255 for an icon, 765 for 1024 x 1024, 1105 for 2048 x 4096), and at least
    Anthropic's (width x height / 750) up to :data:`TOKENS_PER_IMAGE`. A small image (an icon: 255) thus
    counts its real cost, and a large one never less than the flat rate did (Claude counts up to ~1,600)."""
    if pixels is None or min(pixels) <= 0:
        return TOKENS_PER_IMAGE
    width, height = pixels
    fitted = min(1.0, 2048 / max(width, height))
    scale = fitted * min(1.0, 768 / (min(width, height) * fitted))
    tiles = math.ceil(width * scale / 512) * math.ceil(height * scale / 512)
    return max(85 + 170 * tiles, min(TOKENS_PER_IMAGE, math.ceil(width * height / 750)))


def _media_tokens(media: Media, pdf_page_tokens: int = TOKENS_PER_PDF_PAGE) -> int:
    if media.modality is Modality.IMAGE:
        return image_tokens(media.pixels)
    if media.modality is Modality.AUDIO:
        return int((media.duration_seconds or 0) * TOKENS_PER_AUDIO_SECOND)
    if media.modality is Modality.VIDEO:
        return int((media.duration_seconds or 0) * TOKENS_PER_VIDEO_SECOND)
    if media.modality is Modality.DOCUMENT:
        if is_text_document(media):  # read as text: counted as a prompt of its text is
            return _text_document_tokens(media)
        return (media.pages or 0) * pdf_page_tokens
    return 0


def media_tokens(media: Media) -> int:
    """The input tokens of ``media`` as a model takes it (0 when its duration or pages are unknown)."""
    return _media_tokens(media)


def bridged_tokens_guess(media: Media) -> int:
    """The tokens of the text a bridge would make of ``media``, before it is made (0 when its duration or
    pages are unknown): see BRIDGED_TOKENS_PER_SPEECH_SECOND."""
    if media.modality is Modality.IMAGE:
        return BRIDGED_TOKENS_PER_IMAGE
    if media.modality in (Modality.AUDIO, Modality.VIDEO):
        return int((media.duration_seconds or 0) * BRIDGED_TOKENS_PER_SPEECH_SECOND)
    if _is_pdf(media):
        return (media.pages or 0) * BRIDGED_TOKENS_PER_PDF_PAGE
    return _media_tokens(media)  # a text document's text is itself


def is_text_document(media: Media) -> bool:
    """A ``text/*`` document (plain text, Markdown, CSV...), as opposed to a PDF."""
    return normalise_mime(media.mime_type).startswith("text/")


def is_url_only(media: Media) -> bool:
    """Whether ``media`` is given by URL alone, with no bytes the router holds (``server.allow_urls``)."""
    return bool(media.url) and media.data is None and media.path is None


def byte_size(media: Media) -> int:
    """The size of ``media`` in bytes: of its data, its declared size or its stored file; 0 when unknown."""
    if media.data is not None:
        return len(media.data)
    if media.size:
        return media.size
    try:
        return media.path.stat().st_size if media.path is not None else 0
    except OSError:
        return 0


def base64_length(size: int) -> int:
    """The length of the base64 text of ``size`` bytes."""
    return 4 * ((size + 2) // 3)


def sent_bytes(media: Media) -> int:
    """The fewest bytes ``media`` surely takes in a request body (see :func:`request_bytes`): its bytes
    base64-encoded, as providers send media inline (4/3 of them), those of a ``text/*`` document as they are
    (its text may be sent); 0 for a media given by URL (its URL is sent) and for an image, which a provider may
    scale down to fit (Claude's plugin does, in a request over its limit), to a size not known before."""
    if media.modality is Modality.IMAGE or is_url_only(media):
        return 0
    size = byte_size(media)
    return size if is_text_document(media) else base64_length(size)


def request_bytes(texts: Iterable[str], media: Iterable[Media]) -> dict[tuple[Modality, str], int]:
    """The size as sent of a request of ``texts`` and ``media``, in bytes, by modality and normalised MIME type
    (the text under ``(TEXT, "")``, in UTF-8): what ``ModelInfo.max_request_bytes`` is checked against, less
    the media a plan's bridges turn into text or convert (:func:`_sent_bytes`).

    A conservative estimate, from the bytes given: a lower bound, so that a model is passed by only for a
    request it surely refuses. Media count as :func:`sent_bytes` says (stored media by id at their stored
    size, images and media given by URL not at all); what the router converts before sending (an image to
    PNG) counts nothing, and the text a bridge makes, the JSON around it all and the answer's room are left
    out. The model's plugin checks the request it builds at call time."""
    sizes: dict[tuple[Modality, str], int] = {}
    for text in texts:
        sizes[Modality.TEXT, ""] = sizes.get((Modality.TEXT, ""), 0) + len(text.encode("utf-8", "surrogatepass"))
    for one in media:
        key = (one.modality, normalise_mime(one.mime_type))
        sizes[key] = sizes.get(key, 0) + sent_bytes(one)
    return sizes


#: The class of each byte of UTF-8 for :func:`text_tokens`, by the block of the character it starts:
#: ``n`` counts as English (4 characters a token): ASCII and the Latin letters, accents (also combining
#: ones: NFD text) and IPA of U+0080-U+037F; ``w`` about a token a character, or more, for tokenizers
#: (o200k, cl100k, Claude's): U+3000-U+FFFF (CJK ideographs and punctuation, kana, Bopomofo, Hangul, Yi,
#: full-width forms) and everything beyond the BMP (emoji, rare ideographs); ``o`` about 2 characters a
#: token: the other scripts (Greek, Cyrillic, Armenian, Hebrew, Arabic, Devanagari and the other Indic
#: scripts, Thai, Georgian, Hangul jamo, Vietnamese letters of U+1E00, symbols and punctuation of U+2000);
#: ``c``, a continuation byte, is not a character.
_UTF8_CLASSES = bytes.maketrans(
    bytes(range(256)),
    b"n" * 0x80 + b"c" * 0x40 + b"n" * (0xCE - 0xC0) + b"o" * (0xE3 - 0xCE) + b"w" * (0x100 - 0xE3))


def text_tokens(text: str) -> int:
    """The estimated tokens of ``text``, close to real tokenizers' counts in every script: a token per 4
    characters of ASCII and Latin-script text, per character of CJK, kana and Hangul, and per 2 characters
    of the other scripts (Cyrillic, Greek, Arabic, Hebrew, Devanagari, Thai...): see :data:`_UTF8_CLASSES`.

    ASCII text costs a length (``str.isascii`` is constant-time); other text an encoding to UTF-8 and a
    pass over its bytes."""
    if text.isascii():
        return len(text) // 4
    return _utf8_tokens(text.encode("utf-8", "surrogatepass"))


def _utf8_tokens(data: bytes) -> int:
    """:func:`text_tokens` of the text ``data`` holds in UTF-8 (other bytes count as what UTF-8 would make
    of them)."""
    classes = data.translate(_UTF8_CLASSES)
    return (4 * classes.count(b"w") + 2 * classes.count(b"o") + classes.count(b"n")) // 4


#: How much of a text document is read to estimate its tokens: a longer one counts its size at the
#: rate of this head (it is UTF-8, as providers read it).
TEXT_SAMPLE_BYTES = 256 * 1024


def _text_document_tokens(media: Media) -> int:
    """The tokens of a ``text/*`` document, as :func:`text_tokens` counts its text: of the whole text up to
    :data:`TEXT_SAMPLE_BYTES`, else of its head scaled to its size. A stored file's head is read once
    (its path names its content); a document whose bytes cannot be read counts a token per 4 bytes."""
    size = byte_size(media)
    if media.data is not None:
        return _scaled_tokens(media.data[:TEXT_SAMPLE_BYTES], size)
    if media.path is not None:
        return _stored_text_tokens(str(media.path), size)
    return size // 4


@functools.lru_cache(maxsize=4096)
def _stored_text_tokens(path: str, size: int) -> int:
    """:func:`_text_document_tokens` of a stored file of ``size`` bytes."""
    try:
        with open(path, "rb") as file:
            head = file.read(TEXT_SAMPLE_BYTES)
    except OSError:
        return size // 4
    return _scaled_tokens(head, size)


def _scaled_tokens(head: bytes, size: int) -> int:
    """The tokens of a text of ``size`` bytes of UTF-8 that starts with ``head``."""
    if not head:
        return size // 4
    tokens = _utf8_tokens(head)
    return tokens if len(head) >= size else tokens * size // len(head)


def _part_tokens(part: Part, pdf_page_tokens: int = TOKENS_PER_PDF_PAGE) -> int:
    return text_tokens(part.text or "") if part.media is None else _media_tokens(part.media, pdf_page_tokens)


def estimate_tokens(messages: Iterable[Message], bridged: Mapping[int, int] | None = None,
                    model: ModelInfo | None = None) -> int:
    """The input tokens of ``messages``, estimated part by part (so estimates add up exactly): text
    as :func:`text_tokens` counts it (a prompt, a system prompt, history or a ``text/*`` document
    alike), images by their pixel size (:func:`image_tokens`), and fixed rates per audio or video second and
    PDF page (media of unknown length count 0); PDF pages at ``model``'s rate when given (:func:`pdf_page_tokens`), as history is trimmed for
    it. A media in ``bridged`` (by ``id``) counts the tokens given there instead: what a bridge will make
    of it."""
    bridged = bridged or {}
    rate = pdf_page_tokens(model)
    return sum(bridged[id(part.media)] if part.media is not None and id(part.media) in bridged
               else _part_tokens(part, rate) for message in messages for part in message.parts)


def _tokens_by_modality(messages: Iterable[Message], pdf_page_tokens: int) -> dict[Modality, int]:
    tokens: dict[Modality, int] = {}
    for message in messages:
        for part in message.parts:
            tokens[part.modality] = tokens.get(part.modality, 0) + _part_tokens(part, pdf_page_tokens)
    return tokens


def facts_of(request: Request) -> Facts:
    """The facts of ``request`` (media durations and pages as the router measured them).

    A transcription transcribes only the newest media (:meth:`Request.current_media`; a session's
    earlier media were transcribed in their own turns), so its facts are those of that media and
    of this turn's text: an image earlier in the session does not stop Whisper.
    """
    task = request.effective_task
    turn = request.messages[request.history_length:]
    conversation: dict[Modality, int] = {}
    bridged: dict[Modality, int] = {}
    conversation_pages = 0
    conversation_bytes: dict[tuple[Modality, str], int] = {}
    # at the floor rate: the context check skips only a model that surely cannot hold the turn
    turn_tokens = _tokens_by_modality(turn, TOKENS_PER_PDF_PAGE_FLOOR)
    if task is Task.TRANSCRIBE:
        media = request.current_media()
        modalities = {m.modality for m in media} | (request.turn_modalities() & {Modality.TEXT})
        tokens = turn_tokens.get(Modality.TEXT, 0) + sum(_media_tokens(m) for m in media)
        turn_bytes = request_bytes(_texts(turn), media)
    else:
        turn_bytes = request_bytes(_texts(turn), request.turn_media())
        media = request.media()
        modalities = request.modalities()
        whole = _tokens_by_modality(request.messages, TOKENS_PER_PDF_PAGE)  # estimate_tokens, per modality
        tokens = sum(whole.values())
        if request.history_length:
            conversation, bridged = whole, _bridged_by_modality(media)
            conversation_pages = sum(part.media.pages or 0 for message in request.messages for part in message.parts
                                     if part.media is not None and _is_pdf(part.media))
            conversation_bytes = request_bytes(_texts(request.messages), media)
    # a transcription's recording may come from the history on purpose: not what is to blame then
    from_history = frozenset(modalities - request.turn_modalities()) if request.history_length and \
        task is not Task.TRANSCRIBE else frozenset()
    audio = [m.duration_seconds for m in media if m.modality is Modality.AUDIO]
    video = [m.duration_seconds for m in media if m.modality is Modality.VIDEO]
    pages = [m.pages for m in media if _is_pdf(m)]
    images = sum(1 for m in media if m.modality is Modality.IMAGE)
    pdf_total = _total(pages)
    return Facts(
        modalities=frozenset(modalities),
        task=task,
        diarization=request.options.diarization,
        images=images,
        audio_seconds=_total(audio),
        video_seconds=_total(video),
        pdf_pages=None if pdf_total is None else int(pdf_total),
        input_tokens=tokens,
        metadata=dict(request.metadata),
        tags=frozenset(request.hints.tags),
        turn_tokens=turn_tokens,
        mime_types=_mime_types(media),
        longest_seconds=_longest(media),
        largest_bytes=_largest(media),
        most_pdf_pages=max((p for p in pages if p is not None), default=0),
        url_mime_types=_mime_types(m for m in media if is_url_only(m)),
        history_modalities=from_history,
        turn=facts_of(_turn_alone(request)) if from_history else None,
        conversation_tokens=conversation,
        bridged_conversation_tokens=bridged,
        conversation_pdf_pages=conversation_pages,
        max_output_tokens=request.options.max_output_tokens,
        media_parts=_media_parts(request, media) if media else (),
        turn_bytes=turn_bytes,
        conversation_bytes=conversation_bytes,
        largest_sent=_largest_sent(media),
        language=request.options.language.strip(),
        spoken=frozenset(modalities if task is Task.TRANSCRIBE else request.turn_modalities()) & _SPEECH,
    )


def _texts(messages: Iterable[Message]) -> list[str]:
    """The text parts of ``messages``."""
    return [part.text for message in messages for part in message.parts if part.text]


def media_name(media: Media) -> str:
    """How a refusal names ``media`` beside its field: its file name, else ``media_id <id>`` for an upload named
    by its id, else ``""`` (see :class:`MediaPart`)."""
    return media.filename or (f"media_id {media.media_id}" if media.media_id else "")


def _media_parts(request: Request, media: Iterable[Media]) -> tuple[MediaPart, ...]:
    """Those of ``request``'s media that are in ``media``, each with its place (see :class:`MediaPart`)."""
    wanted = {id(one) for one in media}
    found = []
    for one, turn, number in request.media_places():
        if id(one) not in wanted:
            continue
        if turn >= 0:
            field_path = place = f"request.messages[{turn}].parts[{number}].media"
        else:
            field_path, place = "request.session_id", f"part {number + 1} of a message of an earlier turn"
        found.append(MediaPart(one.modality, normalise_mime(one.mime_type), field_path, place, media_name(one)))
    return tuple(found)


def _bridged_by_modality(media: Iterable[Media]) -> dict[Modality, int]:
    """The tokens of the text bridges would make of ``media``, per modality (:func:`bridged_tokens_guess`)."""
    tokens: dict[Modality, int] = {}
    for one in media:
        tokens[one.modality] = tokens.get(one.modality, 0) + bridged_tokens_guess(one)
    return tokens


def _turn_alone(request: Request) -> Request:
    """``request`` without its session's history: this turn's messages only."""
    return dataclasses.replace(request, messages=request.messages[request.history_length:], history_length=0)


def _longest(media: Iterable[Media]) -> dict[Modality, float]:
    """The longest known duration of ``media`` per speech modality."""
    longest: dict[Modality, float] = {}
    for one in media:
        if one.modality in _SPEECH and one.duration_seconds:
            longest[one.modality] = max(longest.get(one.modality, 0.0), one.duration_seconds)
    return longest


def _largest(media: Iterable[Media]) -> dict[Modality, int]:
    """The largest known size in bytes of ``media`` per modality."""
    largest: dict[Modality, int] = {}
    for one in media:
        if size := byte_size(one):
            largest[one.modality] = max(largest.get(one.modality, 0), size)
    return largest


def _largest_sent(media: Iterable[Media]) -> dict[tuple[Modality, str], int]:
    """The largest size as sent (:func:`sent_bytes`) of ``media`` per modality and normalised MIME type."""
    largest: dict[tuple[Modality, str], int] = {}
    for one in media:
        if size := sent_bytes(one):
            key = (one.modality, normalise_mime(one.mime_type))
            largest[key] = max(largest.get(key, 0), size)
    return largest


def _mime_types(media: Iterable[Media]) -> dict[Modality, frozenset[str]]:
    """The normalised MIME types of ``media``, per modality."""
    found: dict[Modality, set[str]] = {}
    for one in media:
        found.setdefault(one.modality, set()).add(normalise_mime(one.mime_type))
    return {modality: frozenset(types) for modality, types in found.items()}


def _names(mods: Sequence[Modality] | frozenset[Modality]) -> str:
    return ", ".join(sorted(m.value for m in mods)) or "nothing"


def _not_taken(missing: set[Modality], by_url: frozenset[Modality]) -> str:
    """The modalities a model does not take, in words: those it does not take by URL only said so
    (``image, audio by URL``)."""
    plain, url = frozenset(missing - by_url), frozenset(missing & by_url)
    return ", ".join(([_names(plain)] if plain else []) + ([f"{_names(url)} by URL"] if url else []))


def _from_history(facts: Facts) -> str:
    """Which modalities only the session's history brings, in words (``video from the session's history``),
    or ``""``."""
    return f"{_names(facts.history_modalities)} from the session's history" if facts.history_modalities else ""


def _request_has(facts: Facts) -> str:
    """The request's modalities, as a rule's trace gives them: ``request has [text, video] (video from the
    session's history)``."""
    history = _from_history(facts)
    return f"request has [{_names(facts.modalities)}]" + (f" ({history})" if history else "")


def why_not_matched(match: Match, facts: Facts) -> str | None:
    """The first condition of ``match`` that ``facts`` fail, in words; None if all hold."""
    mods = facts.modalities
    has = _request_has(facts)
    if match.inputs and not set(match.inputs) <= mods:
        return f"needs all of [{_names(match.inputs)}], {has}"
    if match.inputs_any and not set(match.inputs_any) & mods:
        return f"needs any of [{_names(match.inputs_any)}], {has}"
    if match.inputs_none and set(match.inputs_none) & mods:
        return f"needs none of [{_names(match.inputs_none)}], {has}"
    if match.inputs_only and not mods <= set(match.inputs_only):
        return f"needs only [{_names(match.inputs_only)}], {has}"
    if match.task and facts.task not in match.task:
        return f"task is {facts.task.value}, rule wants {', '.join(t.value for t in match.task)}"
    if match.diarization is not None and match.diarization != facts.diarization:
        return f"diarization is {'on' if facts.diarization else 'off'}, rule wants it {'on' if match.diarization else 'off'}"
    for key, value in match.metadata.items():
        got = _metadata_value(facts.metadata, key)
        if got is None:
            return f"no {key} metadata, rule wants {key}={value!r}"
        if composed(got) != value:
            return f"metadata {key}={got!r}, rule wants {value!r}{_look_alike(got, value)}"
    missing_tags = set(match.tags) - facts.tags
    if missing_tags and not all(tag.isascii() for tag in facts.tags):
        missing_tags -= {composed(tag) for tag in facts.tags}
    if missing_tags:
        return f"missing tags: {', '.join(sorted(missing_tags))}"
    # The token estimate is only known when every media's size is: unknown durations count 0.
    sizes_known = None not in (facts.audio_seconds, facts.video_seconds, facts.pdf_pages)
    measures = (
        ("images", match.images, facts.images),
        ("audio_seconds", match.audio_seconds, facts.audio_seconds),
        ("video_seconds", match.video_seconds, facts.video_seconds),
        ("pdf_pages", match.pdf_pages, facts.pdf_pages),
        ("input_tokens", match.input_tokens, facts.input_tokens if sizes_known else None),
    )
    for name, wanted, value in measures:
        if wanted is None:
            continue
        if value is None:
            return f"{name} is unknown, rule wants {wanted.describe()}"
        if not wanted.holds(value):
            return f"{name} is {value:g}, rule wants {wanted.describe()}"
    return None


def _metadata_value(metadata: Mapping[str, str], key: str) -> str | None:
    """The value of ``key`` (in NFC, as a rule's) in a request's ``metadata``, whose keys may be in
    another form (NFD)."""
    value = metadata.get(key)
    if value is not None or key.isascii():
        return value
    return next((v for k, v in metadata.items() if not k.isascii() and composed(k) == key), None)


def _look_alike(got: str | None, wanted: str) -> str:
    """For a request's value that differs from a rule's yet looks the same (compatibility forms such as
    full-width letters, or invisible characters), the code points of both, for ``explain``; else ``""``."""
    if got is None or (got.isascii() and wanted.isascii()):
        return ""
    visible = [unicodedata.normalize("NFKC", "".join(c for c in text if unicodedata.category(c) != "Cf"))
               for text in (got, wanted)]
    if visible[0] != visible[1]:
        return ""
    return f" (code points {_code_points(got)} vs {_code_points(wanted)})"


def _code_points(text: str) -> str:
    return " ".join(f"U+{ord(c):04X}" for c in text)


def _nfc_rule(rule: Rule) -> Rule:
    """``rule`` with the metadata keys, values and tags it matches in NFC, as requests' are compared."""
    match = rule.match
    texts = [*match.metadata, *match.metadata.values(), *match.tags]
    if all(text.isascii() for text in texts):
        return rule
    match = match.model_copy(update={"metadata": {composed(k): composed(v) for k, v in match.metadata.items()},
                                     "tags": [composed(tag) for tag in match.tags]})
    return rule.model_copy(update={"match": match})


class Outcome(enum.StrEnum):
    """What happened to one rule."""

    MATCHED = "matched"
    SKIPPED = "skipped"
    NOT_MATCHED = "not_matched"
    NOT_EVALUATED = "not_evaluated"


@dataclass
class TraceEntry:
    """One rule's outcome and why."""

    rule: str
    outcome: Outcome
    reason: str


@dataclass(frozen=True)
class Bridge:
    """Convert one modality of the request through another model before the answer."""

    modality: Modality
    via: Target
    #: Keep the media and add the bridged text beside it (a video the model sees, whose speakers
    #: only a diarizing bridge can label), instead of replacing the media with it.
    keep_media: bool = False
    #: The formats (normalised MIME types) of the media it converts, those the model does not take;
    #: empty: every media of its modality.
    mime_types: frozenset[str] = frozenset()
    #: The formats the router converts these media to first when it can, in order of preference (PNG, then
    #: JPEG for a picture too large as a PNG; formats the model takes: see :mod:`router.convert`), keeping
    #: them images; ``via`` converts the others.
    convert_to: tuple[str, ...] = ()

    @property
    def output(self) -> str:
        return "transcript" if self.modality in (Modality.AUDIO, Modality.VIDEO) else "text"

    def converts(self, media: Media) -> bool:
        """Whether this bridge converts ``media``: one of its modality, in one of its formats if it names any."""
        return self.converts_format(media.modality, normalise_mime(media.mime_type))

    def converts_format(self, modality: Modality, mime: str) -> bool:
        """Whether this bridge converts media of ``modality`` in the format ``mime`` (normalised)."""
        return modality is self.modality and (not self.mime_types or mime in self.mime_types)

    def __str__(self) -> str:
        beside = " (beside the media)" if self.keep_media else ""
        formats = f" ({', '.join(sorted(self.mime_types))})" if self.mime_types else ""
        first = f"{' or '.join(self.convert_to)}, else " if self.convert_to else ""
        return f"{self.modality.value}{formats}->{first}{self.output}{beside} via {self.via}"


@dataclass
class Plan:
    """A usable target and the bridges it needs."""

    target: Target
    model: ModelInfo
    bridges: list[Bridge] = field(default_factory=list)
    #: Route notes on its bridges: why a bridge listed before one of them was passed by (see
    #: :meth:`Router._bridge_for`); a :class:`Decision` starts its notes with its plan's.
    notes: list[str] = field(default_factory=list)


@dataclass
class Decision:
    """Where a request goes: the winning rule, the plan, its fallbacks and the trace."""

    rule: str
    plan: Plan
    fallbacks: list[Plan]
    trace: list[TraceEntry]
    #: Route notes: on its plan's bridges (:attr:`Plan.notes`), then on the order of the plans (targets cooling
    #: down tried last: :func:`_cooling_last`).
    notes: list[str] = field(default_factory=list)
    #: By target (``provider/model``): those that came before it in the rule's order and were moved after it
    #: for their cool-down. A refusal of that target does not end the call before they are tried (see
    #: :func:`router.dispatch.execute`): they would have been tried first.
    cooling_before: dict[str, frozenset[str]] = field(default_factory=dict)

    @property
    def plans(self) -> list[Plan]:
        return [self.plan, *self.fallbacks]


def bridge_problem(modality: Modality, model: ModelInfo) -> str | None:
    """Why ``model`` can never bridge ``modality`` (convert it for models that cannot take it), or None.

    A bridge transcribes speech (audio, video) and turns images and documents into text; an
    extraction-only model does either.
    """
    if modality not in model.inputs:
        return f"does not take {modality.value}"
    task = Task.TRANSCRIBE if modality in _SPEECH and FEATURE_EXTRACTION_ONLY not in model.features else Task.CHAT
    if not model.can_do(task):
        return f"cannot turn {modality.value} into {'a transcript' if task is Task.TRANSCRIBE else 'text'}"
    return None


def unfit_formats(model: ModelInfo, modality: Modality, mime_types: Iterable[str]) -> frozenset[str]:
    """Those of ``mime_types`` (media of ``modality``) that ``model`` does not take."""
    return frozenset(mime for mime in mime_types if not model.takes_mime(mime, modality))


def url_refused(model: ModelInfo, modalities: Iterable[Modality], facts: Facts) -> frozenset[Modality]:
    """Those of ``modalities`` with media given only by URL that ``model`` does not take by URL."""
    return frozenset(m for m in modalities if m in facts.url_mime_types and not model.takes_url(m))


def primary_language(tag: str) -> str:
    """The primary subtag of the BCP-47 ``tag``, lower-cased, as ``ModelInfo.languages`` holds it (``en-US``
    and ``EN_gb``: ``en``); "" for none."""
    return re.split(r"[-_]", tag.strip(), maxsplit=1)[0].lower()


def takes_language(model: ModelInfo, language: str) -> bool:
    """Whether ``model`` transcribes speech in ``language`` (a BCP-47 tag; "" for any): always when it declares
    no ``languages``, else when they hold the tag's :func:`primary_language`."""
    return not language.strip() or not model.languages or primary_language(language) in model.languages


def language_refused(model: ModelInfo, modalities: Iterable[Modality], facts: Facts) -> str | None:
    """Why ``model`` cannot transcribe the speech of ``modalities`` it would get, in the language the request
    names (:attr:`Facts.language`, for :attr:`Facts.spoken`), for its ``ModelInfo.languages``, or None: also when
    the request names none, the model declares none (any language), or none of ``modalities`` is spoken."""
    if takes_language(model, facts.language) or not facts.spoken & set(modalities):
        return None
    return f"does not transcribe language {facts.language!r} (takes {', '.join(sorted(model.languages))})"


class SizeProblem(str):
    """Why a target cannot be used when it is the input's size alone, as the router estimates or measures it
    before calling any provider: its tokens over the model's context, or a media's bytes, seconds or PDF pages
    over the model's limit. A ``str`` like every other reason :meth:`Router.plan` gives, which also says what
    was measured against which limit (ErrorInfo metadata of :class:`InputTooLarge`: see :func:`_size_refusal`).
    """

    #: The metadata keys and values: what was measured (``estimated_tokens``) and the limit (``context_tokens``).
    measured_key: str
    measured: float
    limit_key: str
    limit: float

    def __new__(cls, text: str, measured: tuple[str, float], limit: tuple[str, float]) -> SizeProblem:
        problem = super().__new__(cls, text)
        problem.measured_key, problem.measured = measured
        problem.limit_key, problem.limit = limit
        return problem

    def of(self, target: Target) -> SizeProblem:
        """This problem named after ``target`` (``openai/whisper-1: 30 MiB of audio is larger ...``)."""
        return SizeProblem(f"{target}: {self}", (self.measured_key, self.measured), (self.limit_key, self.limit))


def too_long(model: ModelInfo, modalities: Iterable[Modality], facts: Facts) -> SizeProblem | None:
    """Why ``model`` cannot take the speech of ``modalities`` for its length (``max_audio_seconds``), or None."""
    if not model.max_audio_seconds:
        return None
    for modality in sorted(modalities, key=lambda m: m.value):
        seconds = facts.longest_seconds.get(modality, 0.0)
        if seconds > model.max_audio_seconds:
            return SizeProblem(f"{seconds:g} s of {modality.value} is longer than its {model.max_audio_seconds:g} s",
                               ("media_seconds", seconds), ("max_audio_seconds", model.max_audio_seconds))
    return None


def too_large(model: ModelInfo, modalities: Iterable[Modality], facts: Facts) -> SizeProblem | None:
    """Why ``model`` cannot take the media of ``modalities`` for their size (``max_media_bytes``) or, of
    documents, for a PDF's pages (``max_document_pages``, if it takes PDFs at all), or None."""
    ordered = sorted(modalities, key=lambda m: m.value)
    for modality in ordered if model.max_media_bytes else ():
        size = facts.largest_bytes.get(modality, 0)
        if size > model.max_media_bytes:
            return SizeProblem(f"{_megabytes(size)} of {modality.value} is larger than its "
                               f"{_megabytes(model.max_media_bytes)} per file",
                               ("media_bytes", size), ("max_media_bytes", model.max_media_bytes))
    pages, limit = facts.most_pdf_pages, model.max_document_pages
    if limit and pages > limit and Modality.DOCUMENT in ordered and model.takes_mime(PDF, Modality.DOCUMENT):
        return SizeProblem(f"{pages} PDF pages is more than its {limit} per PDF",
                           ("pdf_pages", pages), ("max_document_pages", limit))
    return None


def _megabytes(size: int) -> str:
    """``size`` bytes in MiB, as a size limit is shown (``25 MiB``), to a tenth where not whole."""
    return f"{size / 2**20:.1f}".removesuffix(".0") + " MiB"


def _replaced(plan: Plan, facts: Facts) -> set[Modality]:
    """The modalities whose every media ``plan``'s bridges turn into text (a bridge of some formats only
    leaves the others; converted images stay images, and a text beside the media leaves it)."""
    return {b.modality for b in plan.bridges if not b.keep_media and not b.convert_to
            and (not b.mime_types or b.mime_types >= facts.mime_types.get(b.modality, frozenset()))}


def _too_big(plan: Plan, facts: Facts) -> SizeProblem | None:
    """Why ``plan``'s model cannot hold this turn's input, or None.

    Only this turn counts (a session's history is trimmed to fit the model: see :func:`_drops_history`),
    less what bridges replace. Transcribers upload media rather than read it into a context, and
    extraction-only models have none: neither is checked.
    """
    if facts.task is Task.TRANSCRIBE or FEATURE_EXTRACTION_ONLY in plan.model.features:
        return None
    replaced = _replaced(plan, facts)
    tokens = sum(n for modality, n in facts.turn_tokens.items() if modality not in replaced)
    if tokens > plan.model.context_tokens:
        context = plan.model.context_tokens
        return SizeProblem(f"{plan.target}: input of ~{tokens} tokens exceeds its context of {context}",
                           ("estimated_tokens", tokens), ("context_tokens", context))
    return None


def _sent_bytes(plan: Plan, sizes: Mapping[tuple[Modality, str], int]) -> int:
    """Of ``sizes`` (:func:`request_bytes`), the bytes ``plan``'s model is sent: without the media its bridges
    turn into text or convert (a text beside the media leaves it)."""
    return sum(n for (modality, mime), n in sizes.items()
               if not any(b.converts_format(modality, mime) and not b.keep_media for b in plan.bridges))


def over_request_limit(model: ModelInfo, size: int, what: str = "input") -> SizeProblem | None:
    """Why ``model`` cannot take a request of ``size`` bytes as sent (of ``what``: ``input``, ``document
    input``) for its ``ModelInfo.max_request_bytes``, or None."""
    limit = model.max_request_bytes
    if not limit or size <= limit:
        return None
    return SizeProblem(f"{what} of ~{_megabytes(size)} as sent (media base64-encoded) exceeds its request limit of "
                       f"{_megabytes(limit)}", ("request_bytes", size), ("max_request_bytes", limit))


def _over_request(plan: Plan, facts: Facts) -> SizeProblem | None:
    """Why ``plan``'s model cannot take this turn for its size as sent (``ModelInfo.max_request_bytes``, by
    :func:`request_bytes`), or None. Only this turn counts, as for the context: a session's history that makes
    the request larger is dropped, oldest first (see :func:`_drops_history`)."""
    size = _sent_bytes(plan, facts.turn_bytes) if plan.model.max_request_bytes else 0
    problem = over_request_limit(plan.model, size)
    return None if problem is None else problem.of(plan.target)


#: Of a model's context, the share kept free when history is trimmed: token counts are estimated
#: (by :func:`text_tokens`: 4 characters a token of Latin-script text, 1 a CJK/kana/Hangul character,
#: 2 of other scripts), and a tokenizer may count more.
CONTEXT_MARGIN = 0.05


#: Of a model's context, the most kept for an answer whose length the request does not say: a model's
#: default answer length may be as large as its whole context (4,096 for a local 4k model), which left
#: no room for any history.
DEFAULT_ANSWER_SHARE = 0.25


def input_budget(model: ModelInfo, max_output_tokens: int) -> int:
    """The input tokens a request to ``model`` may have: its context less room for the answer and a
    margin. The room is the request's ``max_output_tokens``, else the model's default answer length but
    at most :data:`DEFAULT_ANSWER_SHARE` of its context; within the model's output limit either way."""
    answer = max_output_tokens or min(model.default_max_output_tokens, int(model.context_tokens * DEFAULT_ANSWER_SHARE))
    if model.max_output_tokens:
        answer = min(answer, model.max_output_tokens)
    return max(0, int(model.context_tokens * (1 - CONTEXT_MARGIN)) - answer)


def _drops_history(plan: Plan, facts: Facts) -> str | None:
    """Why ``plan``'s model would get the session's history trimmed (its oldest messages dropped): the
    whole conversation, as trimming counts it (the media its bridges replace as their guessed text, PDF
    pages at the model's rate: :func:`pdf_page_tokens`), exceeds :func:`input_budget`; None when it holds
    it all, or the request has no history. An extraction-only model reads no history: never said to drop
    any. One that refused the history for its size on an earlier turn (:attr:`Facts.size_refusals`) drops
    its oldest messages whatever its context, and so does one whose ``max_request_bytes`` the conversation
    as sent exceeds (:attr:`Facts.conversation_bytes`): its plugin refuses it, and it is tried again with
    less history."""
    if not facts.conversation_tokens or FEATURE_EXTRACTION_ONLY in plan.model.features:
        return None
    if (refusal := facts.size_refusals.get(str(plan.target))) is not None:
        return (f"{plan.target} would drop the session's oldest messages (it refused the request for its size on an "
                f"earlier turn: {refusal})")
    limit = plan.model.max_request_bytes
    if limit and (size := _sent_bytes(plan, facts.conversation_bytes)) > limit:
        return (f"{plan.target} would drop the session's oldest messages (~{_megabytes(size)} as sent with the "
                f"history, over its request limit of {_megabytes(limit)})")
    replaced = _replaced(plan, facts)
    tokens = sum(facts.bridged_conversation_tokens.get(modality, 0) if modality in replaced else n
                 for modality, n in facts.conversation_tokens.items())
    if Modality.DOCUMENT not in replaced:  # its PDF pages were counted at the router's rate, not the model's
        tokens += facts.conversation_pdf_pages * (pdf_page_tokens(plan.model) - TOKENS_PER_PDF_PAGE)
    if tokens <= input_budget(plan.model, facts.max_output_tokens):
        return None
    return (f"{plan.target} would drop the session's oldest messages (~{tokens} tokens with the history, context "
            f"{plan.model.context_tokens} with room for its answer)")


def _roomiest_first(plans: list[Plan], facts: Facts) -> tuple[list[Plan], str]:
    """A rule's usable ``plans`` in the order they are tried for a session: the first whose model holds the
    whole conversation, then the others that hold it, then those that must trim it (each group in the rule's
    order: one that must trim is still tried when the roomier fail). When none holds it, the one that keeps
    the most of it (the largest input budget; the first of those) leads, the others following in the rule's
    order. Also why the first was passed over (``""`` when it leads: it holds it all, keeps the most, or is
    an extraction-only model, which reads no history and which a rule names first on purpose). Without
    history, ``plans`` as they are."""
    if not facts.conversation_tokens:
        return plans, ""
    why = {id(plan): _drops_history(plan, facts) for plan in plans}

    def holds(plan: Plan) -> bool:
        return why[id(plan)] is None and FEATURE_EXTRACTION_ONLY not in plan.model.features

    def budget(plan: Plan) -> int:
        return input_budget(plan.model, facts.max_output_tokens)

    readers = [plan for plan in plans if FEATURE_EXTRACTION_ONLY not in plan.model.features]
    if why[id(plans[0])] is None:
        lead = plans[0]
    elif any(holds(plan) for plan in plans):
        lead = next(plan for plan in plans if holds(plan))
    else:  # every reader must trim: the one that keeps the most of the conversation
        lead = max(readers, key=budget)  # max keeps the first of equals
    rest = [plan for plan in plans if plan is not lead]
    ordered = [lead, *(plan for plan in rest if holds(plan)), *(plan for plan in rest if not holds(plan))]
    passed = "; ".join(reason for plan in plans[:plans.index(lead)] if (reason := why[id(plan)]))
    if passed and not holds(lead):
        passed += f"; none holds it all, and {lead.target} keeps the most of it"
    return ordered, passed


def _cooling_last(plans: list[Plan], facts: Facts
                  ) -> tuple[list[Plan], list[Plan], dict[str, frozenset[str]]]:
    """A rule's ``plans`` with those whose target is cooling down (:attr:`Facts.cooling`) after the others, each
    group in its order, the cooling plans that were moved behind one that is not, and by each target that is
    not, the cooling ones moved behind it (:attr:`Decision.cooling_before`). When every target is cooling (or
    none is), ``plans`` as they are. One dict lookup per plan."""
    ready: list[Plan] = []
    cooling: list[Plan] = []
    before: dict[str, frozenset[str]] = {}
    for plan in plans:
        if str(plan.target) in facts.cooling:
            cooling.append(plan)
        else:
            ready.append(plan)
            if cooling:
                before[str(plan.target)] = frozenset(str(p.target) for p in cooling)
    if not ready or not before:
        return plans, [], {}
    moved = [p for p in cooling if str(p.target) in before[str(ready[-1].target)]]
    return [*ready, *cooling], moved, before


def _cooling_note(plan: Plan, facts: Facts) -> str:
    """The route note of ``plan``, cooling down, tried after a rule's other targets."""
    return f"{plan.target} {facts.cooling[str(plan.target)]}: trying it last"


def beyond_every_context(decision: Decision, facts: Facts, catalog: Catalog) -> str | None:
    """For a decision that reaches an extraction-only model (no answer, only the input's text) while this
    turn's input exceeds the context of every ready language model: a route note saying so; else None."""
    if facts.task is Task.TRANSCRIBE or FEATURE_EXTRACTION_ONLY not in decision.plan.model.features:
        return None
    tokens = sum(facts.turn_tokens.values())
    models = [(Target(name, key), model) for name, status in catalog.items() if status.ready
              for key, model in status.models.items()
              if FEATURE_EXTRACTION_ONLY not in model.features and model.can_do(facts.task)]
    if not models or any(tokens <= model.context_tokens for _, model in models):
        return None
    target, model = max(models, key=lambda item: item[1].context_tokens)
    return (f"no language model could take the input: ~{tokens} tokens exceed the context of every configured "
            f"one (largest: {target}, {model.context_tokens})")


@dataclass
class Router:
    """Compiled routing: rules, default, bridge preferences and override policy."""

    rules: Sequence[Rule]
    default: str | None = None
    bridges: Mapping[Modality, Sequence[str]] = field(default_factory=dict)
    allow_overrides: bool = True
    override_providers: Sequence[str] | None = None

    def __post_init__(self) -> None:
        """Put the rules' metadata and tags in NFC once: requests' are compared in that form."""
        self.rules = [_nfc_rule(rule) for rule in self.rules]

    # -- usability -------------------------------------------------------------------------

    def _bridge_for(self, modality: Modality, facts: Facts, catalog: Catalog,
                    formats: frozenset[str], passed: list[str]) -> Bridge | None:
        """The first usable bridge of ``modality`` for media in ``formats``, or None. A bridge is sent each media
        alone: one whose ``max_request_bytes`` the largest of them as sent (:attr:`Facts.largest_sent`) exceeds,
        or that does not transcribe the language this turn's speech is said to be in (:func:`language_refused`),
        is passed by, and why goes to ``passed``."""
        for text in self.bridges.get(modality, ()):
            target = Target.parse(text)
            status = catalog.get(target.provider)
            model = status.models.get(target.model) if status is not None and status.ready else None
            if model is None or bridge_problem(modality, model):
                continue
            if facts.diarization and modality in _SPEECH and FEATURE_DIARIZATION not in model.features:
                continue
            if unfit_formats(model, modality, formats) or too_long(model, {modality}, facts) \
                    or too_large(model, {modality}, facts):
                continue
            if facts.url_mime_types.get(modality, frozenset()) & formats and not model.takes_url(modality):
                continue
            if problem := language_refused(model, {modality}, facts):
                passed.append(f"{target} passed by as the {modality.value} bridge: {problem}")
                continue
            size = max((facts.largest_sent.get((modality, mime), 0) for mime in formats), default=0)
            if problem := over_request_limit(model, size, f"{modality.value} input"):
                passed.append(f"{target} passed by as the {modality.value} bridge: {problem}")
                continue
            return Bridge(modality, target)
        return None

    def plan(self, target: Target, facts: Facts, catalog: Catalog, bridging: bool) -> Plan | str:
        """A :class:`Plan` for ``target``, or why it cannot be used."""
        status = catalog.get(target.provider)
        if status is None:
            return f"{target}: provider {target.provider!r} is not installed"
        if not status.ready:
            return f"{target}: provider {target.provider!r} is not usable: {status.reason}"
        model = status.models.get(target.model)
        if model is None:
            return f"{target}: provider {target.provider!r} has no model {target.model!r}"
        if not model.can_do(facts.task):
            produces = ", ".join(sorted(model.outputs))
            return f"{target}: cannot {facts.task.value} (produces {produces})"
        needed = set(facts.modalities)
        if facts.task is Task.TRANSCRIBE:
            needed.discard(Modality.TEXT)  # text beside audio to transcribe is only a hint
        diarize_here = facts.diarization and facts.task is Task.TRANSCRIBE
        if diarize_here and FEATURE_DIARIZATION not in model.features:
            return f"{target}: cannot diarize"
        missing = needed - model.inputs
        by_url = url_refused(model, needed - missing, facts)  # bridged, as a modality it does not take
        missing |= by_url
        beside: set[Modality] = set()  # taken as they are, with a diarizing bridge's transcript beside them
        unlabeled: set[Modality] = set()  # taken, but bridged only for their speakers' labels
        if facts.diarization and not diarize_here and FEATURE_DIARIZATION not in model.features:
            # The speakers must come from a diarizing bridge: audio becomes its transcript, while a video
            # the model can see stays, with the transcript beside it. An extraction-only model would make
            # its own transcript of that video, without speakers: it gets the bridge's instead.
            if FEATURE_EXTRACTION_ONLY in model.features:
                unlabeled = (needed & _SPEECH) - missing
            else:
                unlabeled = (needed & {Modality.AUDIO}) - missing
                beside = (needed & {Modality.VIDEO}) - missing - unlabeled
            missing |= unlabeled
        # The formats of a modality it takes but not in every format: only those media are bridged.
        unfit = {m: f for m in sorted(needed - missing, key=lambda m: m.value)
                 if (f := unfit_formats(model, m, facts.mime_types.get(m, ())))}
        for modality in beside & unfit.keys():  # a video it cannot see is replaced by the transcript
            beside.discard(modality)
            missing.add(modality)
            del unfit[modality]
        if long := too_long(model, (needed - missing) & _SPEECH, facts) or too_large(model, needed - missing, facts):
            return long.of(target)
        if problem := language_refused(model, needed - missing, facts):
            return f"{target}: {problem}"
        if not missing and not beside and not unfit:
            plan = Plan(target, model)
            return _too_big(plan, facts) or _over_request(plan, facts) or plan
        if not bridging or facts.task is Task.TRANSCRIBE:
            if missing - unlabeled:
                return f"{target}: does not take {_not_taken(missing - unlabeled, by_url)}"
            if unfit:
                return f"{target}: does not take {', '.join(sorted(set().union(*unfit.values())))}"
            return f"{target}: cannot label the speakers of {_names(frozenset(beside | unlabeled))} and bridging is off"
        bridges = []
        notes: list[str] = []
        for modality in sorted(missing | beside | unfit.keys(), key=lambda m: m.value):
            formats = unfit.get(modality, frozenset())
            passed: list[str] = []
            bridge = self._bridge_for(modality, facts, catalog, formats or facts.mime_types.get(modality, frozenset()),
                                      passed)
            if bridge is None:
                if modality in beside or modality in unlabeled:
                    return f"{target}: {self._no_diarizing_bridge(modality)}"
                extra = " with diarization" if facts.diarization and modality in _SPEECH else ""
                problem = "does not take"
                what = ", ".join(sorted(formats)) if formats else modality.value
                if modality in by_url:
                    what += " by URL"
                elif modality in facts.url_mime_types:  # a bridge must take it by URL
                    extra += " that takes it by URL"
                why = f" ({'; '.join(passed)})" if passed else ""
                return f"{target}: {problem} {what} and no bridge{extra} is usable{why}"
            notes.extend(f"bridging: {reason}" for reason in passed)
            bridges.append(dataclasses.replace(bridge, keep_media=modality in beside, mime_types=formats,
                                               convert_to=target_formats(model, modality, formats)))
        plan = Plan(target, model, bridges, notes)
        return _too_big(plan, facts) or _over_request(plan, facts) or plan

    def _no_diarizing_bridge(self, modality: Modality) -> str:
        """Why a model that takes ``modality`` but cannot label its speakers cannot be used: no diarizing
        bridge of it is usable, with the bridges the config lists for it."""
        listed = ", ".join(self.bridges.get(modality, ())) or "none"
        return (f"cannot label the speakers of {modality.value}, and no diarizing bridge is usable "
                f"(bridges.{modality.value} lists {listed})")

    def usable_targets(self, facts: Facts, catalog: Catalog) -> list[Target]:
        """Every target that could answer directly, in catalog order (for plugins' route_request)."""
        return [
            Target(name, model)
            for name, status in catalog.items()
            for model in status.models
            if isinstance(self.plan(Target(name, model), facts, catalog, bridging=False), Plan)
        ]

    def untaken_media(self, facts: Facts, catalog: Catalog, targets: Iterable[Target]
                      ) -> tuple[str, list[FieldViolation]]:
        """The media of a request nothing could take that are in a format (MIME type) none of ``targets`` (those
        it could go to) takes, nor any bridge of its modality: what to say of them first in the refusal (``""``
        when there are none) and a field violation for each (``logo.svg: image/svg+xml is taken by no configured
        model or bridge``). Only the formats count, never a provider's readiness nor a media's size or URL: a
        model whose provider is not usable, or a bridge the media is too large for, still takes its format; and
        only of a modality some of them take (else the modality is to blame, which the targets' reasons say). A
        format some other model of ``catalog`` takes says which (a rule or bridge naming it would take it)."""
        models = [model for target in targets if (model := _model_of(target, catalog)) is not None]
        why: dict[tuple[Modality, str], str] = {}
        for modality, formats in facts.mime_types.items():
            bridges = [model for text in self.bridges.get(modality, ())
                       if (model := _model_of(Target.parse(text), catalog)) is not None
                       and bridge_problem(modality, model) is None]
            takers = [model for model in models if modality in model.inputs] + bridges
            if not takers:  # the modality is to blame (``does not take video``), not a format of it
                continue
            for mime in formats:
                if any(model.takes_mime(mime, modality) for model in takers):
                    continue
                other = next((Target(provider, name) for provider, status in sorted(
                              catalog.items(), key=lambda item: not item[1].ready)  # a ready one first
                              for name, model in status.models.items() if _takes(model, modality, mime)), None)
                unusable = "" if other is None else _provider_problem(other, catalog)
                why[modality, mime] = (_NOWHERE if other is None else f"{_NO_TARGET} ({other} takes it: a rule or "
                                       "bridge naming it would"
                                       f"{f', once its provider is usable: {unusable}' if unusable else ''})")
        parts = [part for part in facts.media_parts if (part.modality, part.mime_type) in why]
        if not parts:
            return "", []
        violations = [FieldViolation(part.field, _untaken(part, why[part.modality, part.mime_type])) for part in parts]
        said = _NOWHERE if all(text == _NOWHERE for text in why.values()) else _NO_TARGET
        if len(parts) == 1:
            return f"the format of {parts[0].label()} is {said}", violations
        named = ", ".join(part.label() for part in parts[:_NAMED_PARTS])
        more = f" and {len(parts) - _NAMED_PARTS} more (see the field violations)" if len(parts) > _NAMED_PARTS else ""
        return f"the formats of {len(parts)} media are {said}: {named}{more}", violations

    # -- decisions -------------------------------------------------------------------------

    def _plans(self, targets: Sequence[str], facts: Facts, catalog: Catalog,
               bridging: bool) -> tuple[list[Plan], list[tuple[Target, str]]]:
        """The usable targets' plans, and the others with why each cannot be used."""
        plans: list[Plan] = []
        problems: list[tuple[Target, str]] = []
        for text in targets:
            target = Target.parse(text)
            result = self.plan(target, facts, catalog, bridging)
            if isinstance(result, Plan):
                plans.append(result)
            else:
                problems.append((target, result))
        return plans, problems

    def decide(self, facts: Facts, catalog: Catalog, *, override: Target | None = None,
               chosen_by_plugin: Target | None = None) -> Decision:
        """Choose where a request goes. Raises :class:`NoRoute` when nothing can take it, :class:`InputTooLarge`
        when every target it could go to was ruled out for the input's size alone (see :func:`_size_refusal`);
        when this turn alone could be routed, the session's history is to blame and the error says so (see
        :func:`_history_blamed`)."""
        try:
            return self._decide(facts, catalog, override=override, chosen_by_plugin=chosen_by_plugin)
        except NoRoute as exc:
            if type(exc) not in (NoRoute, InputTooLarge) or facts.turn is None:
                raise
            try:
                self._decide(facts.turn, catalog, override=override, chosen_by_plugin=chosen_by_plugin)
            except NoRoute:
                raise exc from None
            blamed = _history_blamed(exc, facts)
            blamed.trace = exc.trace
            raise blamed from None

    def _decide(self, facts: Facts, catalog: Catalog, *, override: Target | None = None,
                chosen_by_plugin: Target | None = None) -> Decision:
        """:meth:`decide`, with no word of the session's history in a :class:`NoRoute`."""
        if override is not None:
            return self._decide_override(override, facts, catalog)
        if chosen_by_plugin is not None:
            result = self.plan(chosen_by_plugin, facts, catalog, bridging=True)
            if isinstance(result, Plan):
                entry = TraceEntry("plugin", Outcome.MATCHED, f"a route_request plugin chose {chosen_by_plugin}")
                return Decision("plugin", result, [], [entry], list(result.notes))
        trace: list[TraceEntry] = []
        #: The rules that matched but had no usable target (then the default), with why each target was not.
        unusable: list[tuple[str, list[tuple[Target, str]]]] = []
        winner: Decision | None = None
        for rule in self.rules:
            if winner is not None:
                trace.append(TraceEntry(rule.name, Outcome.NOT_EVALUATED, f"rule {winner.rule!r} already chose"))
                continue
            failed = why_not_matched(rule.match, facts)
            if failed:
                trace.append(TraceEntry(rule.name, Outcome.NOT_MATCHED, failed))
                continue
            plans, problems = self._plans([rule.use, *rule.fallback], facts, catalog, rule.bridging)
            if not plans:
                trace.append(TraceEntry(rule.name, Outcome.SKIPPED, "no usable target: " + _joined(problems)))
                unusable.append((rule.name, problems))
                continue
            plans, why = _roomiest_first(plans, facts)
            moved: list[Plan] = []
            before: dict[str, frozenset[str]] = {}
            if facts.cooling:  # the only cost without a target cooling down
                plans, moved, before = _cooling_last(plans, facts)
            if moved:
                cooling = "cooling down, tried last: " + ", ".join(str(plan.target) for plan in moved)
                why = f"{why}; {cooling}" if why else cooling
            reason = f"conditions hold; using {plans[0].target}" + (f": {why}" if why else "")
            if problems:
                reason += " (skipped " + _joined(problems) + ")"
            trace.append(TraceEntry(rule.name, Outcome.MATCHED, reason))
            winner = Decision(rule.name, plans[0], plans[1:], trace,
                              [*plans[0].notes, *(_cooling_note(p, facts) for p in moved)], before)
        if winner is not None:
            return winner
        if self.default:
            plans, problems = self._plans([self.default], facts, catalog, bridging=True)
            if plans:
                trace.append(TraceEntry("default", Outcome.MATCHED, f"no rule chose; using default {self.default}"))
                return Decision("default", plans[0], [], trace, list(plans[0].notes))
            trace.append(TraceEntry("default", Outcome.SKIPPED, _joined(problems)))
            unusable.append(("default", problems))
        error = self._no_route(facts, catalog, trace, unusable)
        error.trace = trace
        raise error

    def _decide_override(self, override: Target, facts: Facts, catalog: Catalog) -> Decision:
        if not self.allow_overrides:
            raise OverrideNotAllowed("this router does not allow clients to choose the provider or model")
        if not override.provider:
            if hint := _split_hint(override.model, catalog):
                raise UnknownTarget(f"no provider has a model named {override.model!r}{hint}", violations=[
                    FieldViolation("request.hints.model", f"{override.model!r} is not known{hint}")])
            models = {m for status in catalog.values() for m in status.models}
            raise _unknown(f"no provider has a model named {override.model!r}", "request.hints.model",
                           override.model, models)
        if self.override_providers is not None and override.provider not in self.override_providers:
            allowed = ", ".join(self.override_providers) or "none"
            raise OverrideNotAllowed(f"clients may not choose provider {override.provider!r} (allowed: {allowed})")
        status = catalog.get(override.provider)
        if status is None:
            known = ", ".join(sorted(catalog)) or "none"
            raise _unknown(f"unknown provider {override.provider!r} (known: {known})", "request.hints.provider",
                           override.provider, catalog)
        if override.model and override.model not in status.models:
            if hint := _split_hint(override.model, {override.provider: status}):
                raise UnknownTarget(f"provider {override.provider!r} has no model {override.model!r}{hint}",
                                    violations=[FieldViolation("request.hints.model",
                                                               f"{override.model!r} is not known{hint}")])
            models = ", ".join(status.models)
            raise _unknown(f"provider {override.provider!r} has no model {override.model!r} (it has: {models})",
                           "request.hints.model", override.model, status.models)
        if not status.ready:
            raise ProviderNotConfigured(override.provider, status.reason)
        # a provider named alone: its models that do the task (its transcribers are no chat's candidates)
        names = [override.model] if override.model else [
            name for name, model in status.models.items() if model.can_do(facts.task)] or list(status.models)
        problems = []
        for name in names:
            result = self.plan(Target(override.provider, name), facts, catalog, bridging=True)
            if isinstance(result, Plan):
                entry = TraceEntry("override", Outcome.MATCHED, f"the client chose {result.target}")
                return Decision("override", result, [], [entry], list(result.notes))
            problems.append(result)
        if too_large_for_all := _size_refusal(problems, "the requested override", "; ".join(problems)):
            raise too_large_for_all
        untaken, violations = self.untaken_media(facts, catalog, [Target(override.provider, n) for n in names])
        problem = "the requested override cannot take this request: " + "; ".join([*filter(None, [untaken]),
                                                                                    *problems])
        raise NoRoute(problem, violations=[FieldViolation("request.hints", problem), *violations])

    def _no_route(self, facts: Facts, catalog: Catalog, trace: list[TraceEntry],
                  unusable: Sequence[tuple[str, Sequence[tuple[Target, str]]]]) -> NoRoute:
        """The error for a request no rule, default or fallback can take: why, rule by rule. When no rule
        matched and there is no default, it says so (the file lacks a catch-all), not that no provider
        can take it; when each target of the rules that matched (and of the default) was ruled out for the
        input's size alone, :class:`InputTooLarge` (:func:`_size_refusal`); else see :func:`_unusable_summary`."""
        if facts.diarization:
            ready = [n for n, s in catalog.items() if s.ready and any(
                FEATURE_DIARIZATION in m.features for m in s.models.values())]
            if not ready:
                waiting = [f"{n} ({s.reason})" for n, s in catalog.items() if not s.ready and any(
                    FEATURE_DIARIZATION in m.features for m in s.models.values())]
                hint = ("configure " + " or ".join(waiting)) if waiting else \
                    "install and configure a provider with the diarization feature, e.g. mmrouter-assemblyai"
                return DiarizationUnavailable(
                    f"diarization was requested but no configured provider can diarize: {hint}")
        history = _from_history(facts)
        request = f"({_names(facts.modalities)}, task {facts.task.value}{'; ' + history if history else ''})"
        if self.default is None and all(t.outcome is Outcome.NOT_MATCHED for t in trace):
            summary = "; ".join(f"{t.rule}: {t.reason}" for t in trace)
            rules = f": {summary}" if summary else " (there are no rules)"
            return NoRoute("no rule matched and no default is set: add a `default:` target or a rule that "
                           f"matches this request {request}{rules}")
        not_matched = [t.rule for t in trace if t.outcome is Outcome.NOT_MATCHED]
        summary = _unusable_summary(unusable, not_matched, catalog)
        problems = [problem for _, targets in unusable for _, problem in targets]
        if too_large_for_all := _size_refusal(problems, f"every target this request {request} could go to", summary):
            return too_large_for_all
        untaken, violations = self.untaken_media(facts, catalog, [t for _, targets in unusable for t, _ in targets])
        return NoRoute(f"no provider can take this request {request}: {untaken + '; ' if untaken else ''}{summary}",
                       violations=violations)


#: How many media a refusal for their formats names in its message (the field violations name each).
_NAMED_PARTS = 3
#: Of a media format no model of the catalog takes, as a target or a bridge.
_NOWHERE = "taken by no configured model or bridge"
#: Of one some model takes that no target the request could go to nor a bridge of it is.
_NO_TARGET = "taken by no target this request could go to nor a bridge"


def _model_of(target: Target, catalog: Catalog) -> ModelInfo | None:
    """``target``'s model in ``catalog`` (its provider usable or not), or None."""
    status = catalog.get(target.provider)
    return status.models.get(target.model) if status is not None else None


def _takes(model: ModelInfo, modality: Modality, mime: str) -> bool:
    """Whether ``model`` takes media of ``modality`` in the format ``mime``."""
    return modality in model.inputs and model.takes_mime(mime, modality)


def _untaken(part: MediaPart, why: str) -> str:
    """The field violation's description of ``part``, whose format ``why`` says nothing takes."""
    if part.field == "request.session_id":  # a media of the history: the field does not say which
        return f"its history's {part.place}{f' ({part.name})' if part.name else ''}: {part.mime_type} is {why}"
    return f"{part.name + ': ' if part.name else ''}{part.mime_type} is {why}"


def _history_blamed(exc: NoRoute, facts: Facts) -> NoRoute:
    """``exc``, the refusal of a request this turn of which could be routed alone: what no target takes comes
    from the session's history (a video of an earlier turn, sent again with every turn; a PDF of more pages than
    any target reads). Said first (the message is clipped), with a field violation on ``request.session_id`` and
    what to do; of the same class (an :class:`InputTooLarge` stays one)."""
    what = _names(facts.history_modalities)
    problem = (f"the session's history holds {what} from earlier turns (sent again with every turn), which no "
               "target can take now, while this turn alone could be routed: start the session over with "
               "ResetSession, or send this turn without session_id")
    return type(exc)(f"{problem}. {exc.message}", metadata=exc.metadata, violations=[
        *exc.violations, FieldViolation("request.session_id", f"its history holds {what}, which no target can take "
                                        "now: ResetSession, or send this turn without session_id")])


def _size_refusal(problems: Sequence[str], targets: str, detail: str) -> InputTooLarge | None:
    """The refusal of a request whose every candidate target (``targets`` says which, for the message) was ruled
    out for the input's size alone (each of ``problems`` a :class:`SizeProblem`), before any provider was called:
    INVALID_ARGUMENT ``INPUT_TOO_LARGE``, the reason of a provider's own refusal for size, with ``detail`` (why
    each target was ruled out). ErrorInfo metadata says what was measured against the largest limit of the
    candidates, for each kind of limit reached (``estimated_tokens`` and ``context_tokens``; ``media_bytes`` and
    ``max_media_bytes``; ``media_seconds`` and ``max_audio_seconds``; ``pdf_pages`` and ``max_document_pages``;
    ``request_bytes`` and ``max_request_bytes``). None when there are no problems or one is another (a provider
    not configured, a modality not taken): that is NO_ROUTE."""
    sized = [problem for problem in problems if isinstance(problem, SizeProblem)]
    if not sized or len(sized) < len(problems):
        return None
    metadata: dict[str, str] = {}
    for problem in sorted(sized, key=lambda p: p.limit):  # of each kind, the largest limit is written last
        metadata[problem.measured_key] = f"{problem.measured:.12g}"
        metadata[problem.limit_key] = f"{problem.limit:.12g}"
    return InputTooLarge(f"the input is too large for {targets}, by the router's estimate (no provider was "
                         f"called): {detail}", metadata=metadata)


def _split_hint(model: str, catalog: Catalog) -> str:
    """For a model hint written as routes write targets (``openai/gpt-4o``), naming a provider of ``catalog``
    and one of its models: what to give instead; else ``""``."""
    provider, _, name = model.partition("/")
    if name not in getattr(catalog.get(provider), "models", ()):
        return ""
    return f"; give request.hints.provider {provider!r} and request.hints.model {name!r} (the model alone)"


def _unknown(problem: str, field: str, name: str, known: Iterable[str]) -> UnknownTarget:
    """The refusal of a client's ``name`` (in ``field``) that is none of ``known``, with the name meant:
    the same but for case or spaces, else the closest."""
    known = list(known)
    same = next((k for k in known if k.lower() == name.strip().lower()), None)
    hint = f"; did you mean {same!r}?" if same is not None else did_you_mean(name, known)
    return UnknownTarget(problem + hint, violations=[FieldViolation(field, f"{name!r} is not known{hint}")])


def _joined(problems: Iterable[tuple[Target, str]]) -> str:
    return "; ".join(problem for _, problem in problems)


def _provider_problem(target: Target, catalog: Catalog) -> str | None:
    """Why ``target``'s provider cannot be used at all (as :meth:`Router.plan` first checks), or None."""
    status = catalog.get(target.provider)
    if status is None:
        return "not installed"
    return None if status.ready else status.reason.strip() or "not usable"


def _unusable_summary(unusable: Sequence[tuple[str, Sequence[tuple[Target, str]]]], not_matched: Sequence[str],
                      catalog: Catalog) -> str:
    """Why nothing could take a request, what matters first (the error message is clipped, at 768 bytes by
    the server): each rule that matched (then the default) with why its targets cannot be used, rules whose
    reasons are the same together and a target's reason said again only as ``as above``; then why each
    provider named there is unusable, once (not for each of its targets in each rule); then the names of
    the rules whose conditions do not hold."""
    said: dict[tuple[tuple[Target, str], ...], list[str]] = {}  # a rule's target problems -> the rules they are of
    for name, problems in unusable:
        said.setdefault(tuple(problems), []).append(name)
    providers: dict[str, str] = {}  # unusable provider -> why, in the order they come up
    seen: set[str] = set()
    out = []
    for problems, names in said.items():
        own, grouped = [], []
        for target, problem in problems:
            why = _provider_problem(target, catalog)
            if why is not None:
                grouped.append(target)
                providers.setdefault(target.provider, why)
            elif problem in seen:
                own.append(f"{target}: as above")
            else:
                seen.add(problem)
                own.append(problem)
        if grouped:
            many = len({t.provider for t in grouped}) > 1
            own.append(f"{', '.join(map(str, grouped))}: {'providers' if many else 'provider'} not usable")
        prefix = "" if names == ["default"] else "no usable target: "
        out.append(f"{', '.join(names)}: {prefix}{'; '.join(own)}")
    if providers:
        out.append("unusable providers: " + ", ".join(f"{p} ({why})" for p, why in providers.items()))
    if not_matched:
        out.append("not matched: " + ", ".join(not_matched))
    return "; ".join(out)
