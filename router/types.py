"""The internal request/response model: plain dataclasses, no protobuf.

Routing, bridging, dispatch and provider plugins see only these types;
``router.wire`` is the one place that converts them to and from the wire API.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .mime import normalise_mime


class Modality(enum.StrEnum):
    """A kind of input: text or one of the media kinds."""

    TEXT = "text"
    IMAGE = "image"
    AUDIO = "audio"
    VIDEO = "video"
    DOCUMENT = "document"


class Role(enum.StrEnum):
    """Who wrote a message."""

    USER = "user"
    ASSISTANT = "assistant"
    SYSTEM = "system"


class Task(enum.StrEnum):
    """What the client wants done; ``AUTO`` is resolved by the router."""

    AUTO = "auto"
    CHAT = "chat"
    TRANSCRIBE = "transcribe"


class FinishReason(enum.StrEnum):
    """Why the model stopped writing its answer (as its provider reports it)."""

    STOP = "stop"  # it finished
    LENGTH = "length"  # cut at the output limit (max_output_tokens or the model's own), or its context window filled
    CONTENT_FILTER = "content_filter"  # the provider's safety or content filter stopped or withheld it
    REFUSAL = "refusal"  # the model declined to answer
    OTHER = "other"  # any other reason (a tool call, a pause)


#: Said by the route note of an answer cut short that a larger ``max_output_tokens`` would not lengthen
#: (:func:`router.dispatch.cut_note`): a client (``mmrouter ask``) then does not advise raising it.
NO_LARGER_LIMIT = "a larger max_output_tokens will not help"


@dataclass
class Media:
    """One image, audio clip, video or document.

    Exactly one of ``data`` (inline bytes), ``path`` (a file in the media
    store) or ``url`` is set. ``media_id`` is the sha256 of the content when
    it is known (always for stored media).
    """

    modality: Modality
    mime_type: str
    data: bytes | None = None
    path: Path | None = None
    url: str | None = None
    media_id: str | None = None
    filename: str = ""
    size: int = 0
    #: Cheaply known facts, filled by the router: seconds for audio/video, pages for PDFs, an image's
    #: (width, height) in pixels from its header (:func:`router.routing.image_tokens` estimates its tokens).
    duration_seconds: float | None = None
    pages: int | None = None
    pixels: tuple[int, int] | None = None

    def read_bytes(self) -> bytes:
        """Return the content (reads the stored file for uploaded media)."""
        if self.data is not None:
            return self.data
        if self.path is not None:
            return self.path.read_bytes()
        raise ValueError("media given by URL has no local bytes")


_SUFFIXES = {
    "image/png": ".png", "image/jpeg": ".jpg", "image/gif": ".gif", "image/webp": ".webp",
    "audio/wav": ".wav", "audio/x-wav": ".wav", "audio/wave": ".wav", "audio/mpeg": ".mp3",
    "audio/mp3": ".mp3", "audio/mp4": ".m4a", "audio/m4a": ".m4a", "audio/x-m4a": ".m4a",
    "audio/aac": ".aac", "audio/ogg": ".ogg", "audio/opus": ".ogg", "audio/flac": ".flac", "audio/x-flac": ".flac",
    "audio/webm": ".webm", "video/mp4": ".mp4", "video/webm": ".webm", "video/ogg": ".ogg",
    "video/quicktime": ".mov", "video/x-matroska": ".mkv", "application/pdf": ".pdf",
    "text/plain": ".txt", "text/markdown": ".md", "text/csv": ".csv", "text/html": ".html",
}


def mime_suffix(mime_type: str) -> str:
    """A conventional file suffix for a MIME type, parameters and aliases allowed (``.bin`` if unknown)."""
    return _SUFFIXES.get(normalise_mime(mime_type), ".bin")


@dataclass
class Part:
    """One piece of a message: text or media."""

    text: str | None = None
    media: Media | None = None

    @property
    def modality(self) -> Modality:
        return self.media.modality if self.media is not None else Modality.TEXT


@dataclass
class Message:
    """One turn of a conversation."""

    role: Role
    parts: list[Part]

    @property
    def text(self) -> str:
        """The text parts joined by newlines."""
        return "\n".join(p.text for p in self.parts if p.text is not None)


@dataclass
class Options:
    """What is asked of the model."""

    task: Task = Task.AUTO
    diarization: bool = False
    speakers_expected: int = 0
    language: str = ""
    max_output_tokens: int = 0
    temperature: float | None = None


@dataclass
class RoutingHints:
    """Client steering: an override and free tags."""

    provider: str = ""
    model: str = ""
    tags: list[str] = field(default_factory=list)


@dataclass
class Request:
    """A multimodal request: a conversation plus options."""

    messages: list[Message]
    options: Options = field(default_factory=Options)
    hints: RoutingHints = field(default_factory=RoutingHints)
    session_id: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    #: How many of ``messages``, from the start, are the session's earlier turns (0 without a session).
    history_length: int = 0
    #: The client's id for this turn of its session ("" for none): a turn asked again gets its kept answer.
    turn_id: str = ""
    #: True when the router asks for the text of this request's media to put in another model's prompt (a
    #: bridge, ``bridges.<modality>``), not for an answer its client reads: write nothing meant for a person.
    bridging: bool = False

    def parts(self) -> list[Part]:
        """All parts of all messages, in order."""
        return [p for m in self.messages for p in m.parts]

    def media(self) -> list[Media]:
        """All media of all messages, in order."""
        return [p.media for p in self.parts() if p.media is not None]

    def media_places(self) -> Iterator[tuple[Media, int, int]]:
        """Each media with its place, in order: ``(media, message, part)``, the index of its message among this
        turn's (negative for one of the session's history: -1 the last) and of its part in that message, from 0.
        How the router names a media to its client: ``request.messages[0].parts[1].media`` (a field), "part 2
        of message 1" (:func:`router.bridging.part_names`)."""
        for index, message in enumerate(self.messages):
            for number, part in enumerate(message.parts):
                if part.media is not None:
                    yield part.media, index - self.history_length, number

    def turn_media(self) -> list[Media]:
        """The media of this turn's messages (those after the session's history), in order."""
        return [p.media for m in self.messages[self.history_length:] for p in m.parts if p.media is not None]

    def current_media(self) -> list[Media]:
        """The media of the newest user message that has any, in order.

        This is what a transcription transcribes: in a session (or a conversation sent whole), the
        media of earlier turns come first in ``messages`` and were transcribed when they were sent.
        """
        for message in reversed(self.messages):
            found = [p.media for p in message.parts if p.media is not None]
            if found and message.role is Role.USER:
                return found
        return []

    def modalities(self) -> set[Modality]:
        """The set of modalities present (text only if some text is non-empty).

        A system prompt is an instruction, not an input: its text counts only in a request of
        nothing else, so audio with a system prompt is still audio alone (a transcription).
        """
        return _modalities_of(self.messages)

    def turn_modalities(self) -> set[Modality]:
        """Like :meth:`modalities`, over this turn's messages only (those after the session's history)."""
        return _modalities_of(self.messages[self.history_length:])

    @property
    def system_prompt(self) -> str:
        """The system messages' text joined, or ``""``."""
        return "\n".join(m.text for m in self.messages if m.role is Role.SYSTEM)

    @property
    def effective_task(self) -> Task:
        """The task with ``AUTO`` resolved: audio alone with no question is a transcription.

        Only this turn counts: in a dictation session, the transcripts stored by earlier turns are
        text, yet the next audio sent alone is still to be transcribed.
        """
        if self.options.task is not Task.AUTO:
            return self.options.task
        if self.turn_modalities() == {Modality.AUDIO}:
            return Task.TRANSCRIBE
        return Task.CHAT


def _modalities_of(messages: list[Message]) -> set[Modality]:
    """The modalities of ``messages``; a system prompt's text counts only when nothing else is there."""
    found = {p.media.modality for m in messages for p in m.parts if p.media is not None}

    def has_text(some: list[Message]) -> bool:
        return any(p.text and p.text.strip() for m in some for p in m.parts)

    system = [m for m in messages if m.role is Role.SYSTEM]
    if has_text([m for m in messages if m.role is not Role.SYSTEM]) or (not found and has_text(system)):
        found.add(Modality.TEXT)
    return found


@dataclass(frozen=True)
class Price:
    """US dollars per million tokens in and out, and per hour of audio.

    ``audio_input_per_mtok`` prices the audio part of the input tokens (``Usage.audio_input_tokens``)
    for models that bill audio tokens higher than text; 0 means audio tokens cost ``input_per_mtok``.
    ``cached_input_per_mtok`` prices the input tokens read from the provider's prompt cache
    (``Usage.cached_input_tokens``), whatever their kind; 0 means no discount: they are priced like
    the other input tokens.

    Some models cost more per token when the prompt is long (Gemini 2.5 Pro: above 200k input
    tokens). ``long_context_above_tokens`` (0: no such tier) is that size: a call whose input tokens
    exceed it is priced, all its tokens, at the ``long_context_*`` rates, each of which left at 0 is
    the rate it stands for (``long_context_input_per_mtok`` for ``input_per_mtok``, and so on).
    """

    input_per_mtok: float = 0.0
    output_per_mtok: float = 0.0
    per_audio_hour: float = 0.0
    audio_input_per_mtok: float = 0.0
    cached_input_per_mtok: float = 0.0
    long_context_above_tokens: int = 0
    long_context_input_per_mtok: float = 0.0
    long_context_output_per_mtok: float = 0.0
    long_context_cached_input_per_mtok: float = 0.0

    def cost(self, usage: Usage) -> float:
        """The cost of ``usage`` at this price.

        Input tokens are split three ways: those read from a cache (at ``cached_input_per_mtok``, when
        set), then audio among the rest (at the audio rate), then text (at ``input_per_mtok``). A call
        past ``long_context_above_tokens`` is priced at the long-context rates.
        """
        input_rate, output_rate, cached_rate = self.input_per_mtok, self.output_per_mtok, self.cached_input_per_mtok
        if self.long_context_above_tokens and usage.input_tokens > self.long_context_above_tokens:
            input_rate = self.long_context_input_per_mtok or input_rate
            output_rate = self.long_context_output_per_mtok or output_rate
            cached_rate = self.long_context_cached_input_per_mtok or cached_rate
        cached = min(usage.cached_input_tokens, usage.input_tokens) if cached_rate else 0
        audio = min(usage.audio_input_tokens, usage.input_tokens - cached)
        text = usage.input_tokens - cached - audio
        return (
            text * input_rate / 1e6
            + audio * (self.audio_input_per_mtok or input_rate) / 1e6
            + cached * cached_rate / 1e6
            + usage.output_tokens * output_rate / 1e6
            + usage.audio_seconds * self.per_audio_hour / 3600
        )


#: Output kinds a model can produce.
OUTPUT_TEXT = "text"
OUTPUT_TRANSCRIPT = "transcript"
#: Features a model can declare.
FEATURE_STREAMING = "streaming"
FEATURE_DIARIZATION = "diarization"
FEATURE_EXTRACTION_ONLY = "extraction_only"


#: The top-level MIME types of each media modality (video may also be declared as audio: a soundtrack).
MIME_TOPS: dict[Modality, frozenset[str]] = {
    Modality.IMAGE: frozenset({"image"}), Modality.AUDIO: frozenset({"audio"}),
    Modality.VIDEO: frozenset({"video"}), Modality.DOCUMENT: frozenset({"application", "text"}),
}


@dataclass(frozen=True)
class ModelInfo:
    """What a model takes and gives, how much it holds and what it costs.

    ``input_mime_types`` are the formats of media it takes (see :meth:`takes_mime`); empty: any type
    of its ``inputs``. Each entry is a normalised MIME type (:func:`router.mime.normalise_mime`, so
    ``audio/mpeg`` stands for mp3 and ``audio/mp4`` for m4a) or a wildcard such as ``text/*``.
    ``max_audio_seconds`` is the longest audio or video it takes per media (0: no cap): routing skips
    it for longer speech. ``max_media_bytes`` is the largest media it takes, in bytes (0: no cap; an
    upload limit such as Whisper's 25 MB): routing skips it for a larger media of a modality it takes,
    as for longer speech (a media of unknown size passes). ``max_document_pages`` is the most pages of one
    PDF it reads (0: no cap; Claude's 100 or 600, Gemini's 1000): routing skips it for a PDF with more pages,
    as the router counted them (a PDF of unknown page count passes), unless it does not take PDFs at all
    (they are bridged then); its plugin still checks at call time. ``url_inputs`` are the media modalities it
    takes given by URL (``Media.url``, no bytes: the provider passes the URL on, or fetches it itself);
    None, the default: not declared, every modality is assumed taken by URL. Routing skips a target or
    bridge for media given by URL in a modality it does not list, as for a MIME type it does not take
    (see :meth:`takes_url`). ``pdf_page_tokens`` is the input tokens the model counts per PDF page (0, the
    default: not declared, the router's own estimate of 1,500 is used; Gemini declares the 258 Google
    documents): the history of a session sent to this model is counted at this rate, both to tell whether
    the model holds the whole conversation and to trim it to the model's context, so that a PDF the model
    took whole on one turn is not dropped from its next turns for an estimate it does not count. (This
    turn's own input is checked against the context at the lowest rate any provider counts, 258 a page.)
    ``max_request_bytes`` is the largest whole request it takes, in bytes, as its provider counts it (0: no
    cap; Claude's 32 MB): the body as sent, its media inline base64-encoded (4/3 of their bytes) and its text.
    Routing skips it when this turn, as the router estimates it sent, is larger (see
    :func:`router.routing.request_bytes`: a lower bound, so that a request it passes by is surely refused); a
    session whose history makes it larger ranks it as one that drops the oldest messages. Its plugin still
    checks the request as it builds it, at call time. ``languages`` are the languages it transcribes speech
    in, each a primary BCP-47 subtag in lower case (``en``, ``eng``, ``yue``); empty, the default: any
    language. A request naming a language (``Options.language``, compared by its primary subtag whatever its
    case: ``en-US`` and ``EN_gb`` are ``en``) is not routed to it, as a target or a bridge, for the speech
    (audio, video) of this turn it would transcribe: ``local/extract`` declares ``en`` and ``eng``, its
    speech model being en-US (see :func:`router.routing.language_refused`).
    """

    name: str
    inputs: frozenset[Modality]
    outputs: frozenset[str] = frozenset({OUTPUT_TEXT})
    features: frozenset[str] = frozenset({FEATURE_STREAMING})
    context_tokens: int = 128_000
    price: Price = Price()
    default_max_output_tokens: int = 4096
    #: The most tokens it may write in one answer (0: not known): the router caps a larger
    #: ``options.max_output_tokens`` to it, with a route note, before the provider's ``generate``.
    max_output_tokens: int = 0
    input_mime_types: frozenset[str] = frozenset()
    max_audio_seconds: float = 0
    max_media_bytes: int = 0
    url_inputs: frozenset[Modality] | None = None
    #: Whether its provider sends ``options.temperature`` to it; False: it is left out, and the answer's
    #: route says so in a note.
    takes_temperature: bool = True
    # new fields go last: plugins may give the fields before them by position
    max_document_pages: int = 0
    pdf_page_tokens: int = 0
    max_request_bytes: int = 0
    languages: frozenset[str] = frozenset()

    def can_take(self, modalities: set[Modality]) -> bool:
        """True when every modality in ``modalities`` is an input of this model."""
        return modalities <= self.inputs

    def takes_mime(self, mime: str, modality: Modality | None = None) -> bool:
        """Whether this model takes media of MIME type ``mime`` (declared as ``modality``, if given).

        The rule: with no ``input_mime_types`` it takes every type. Else it takes ``mime`` (normalised)
        when an entry names it exactly or by wildcard (``audio/*``). Otherwise it refuses it only when
        the list speaks of that kind of media: some entry has the same top-level type as ``mime``, or
        one of ``modality``'s top-level types (image, audio, video; application and text for documents).
        A list naming only images thus says nothing of audio, which stays allowed; a list naming
        ``application/pdf`` refuses ``text/plain`` documents unless it also names ``text/*`` or it.
        """
        if not self.input_mime_types:
            return True
        mime = normalise_mime(mime)
        top = mime.split("/", 1)[0]
        if mime in self.input_mime_types or f"{top}/*" in self.input_mime_types:
            return True
        tops = {top} | (MIME_TOPS.get(modality, frozenset()) if modality is not None else set())
        return not any(entry.split("/", 1)[0] in tops for entry in self.input_mime_types)

    def takes_url(self, modality: Modality) -> bool:
        """Whether this model takes media of ``modality`` given by URL: always when ``url_inputs`` is not
        declared (None), else when it lists ``modality``."""
        return self.url_inputs is None or modality in self.url_inputs

    def can_do(self, task: Task) -> bool:
        """True when the model produces what ``task`` needs."""
        if task is Task.TRANSCRIBE:
            return OUTPUT_TRANSCRIPT in self.outputs
        return OUTPUT_TEXT in self.outputs


@dataclass
class Utterance:
    """One stretch of speech by one speaker."""

    text: str
    start: float = 0.0
    end: float = 0.0
    speaker: str = ""
    confidence: float = 0.0


@dataclass
class Word:
    """One recognized word with its times."""

    text: str
    start: float = 0.0
    end: float = 0.0
    speaker: str = ""
    confidence: float = 0.0


@dataclass
class Transcript:
    """Speech as text, with utterances and words where known."""

    text: str
    utterances: list[Utterance] = field(default_factory=list)
    words: list[Word] = field(default_factory=list)
    language: str = ""
    duration_seconds: float = 0.0

    @staticmethod
    def speaker_text(utterances: list[Utterance]) -> str:
        """Plain text with one ``Speaker X: ...`` line per turn; a turn without a speaker (one the
        provider left unlabelled: crosstalk, noise) is its text alone, with no ``Speaker`` prefix."""
        return "\n".join(f"Speaker {u.speaker}: {u.text}" if u.speaker else u.text for u in utterances)

    @staticmethod
    def merged(transcripts: list[Transcript]) -> Transcript:
        """One transcript of several recordings played one after another: times are shifted by the
        durations before them, texts joined (one line each when they hold speaker lines).

        Each recording names its speakers on its own ("A" of one is not "A" of the next): when more
        than one has speakers, they are named anew in order of appearance (A, B, ... then AA, AB, ...)
        so that no two recordings share a name, and the speaker lines are written with the new names.
        """
        if len(transcripts) == 1:
            return transcripts[0]
        renamed = sum(1 for t in transcripts if any(u.speaker for u in t.utterances)) > 1
        names: dict[tuple[int, str], str] = {}

        def name(clip: int, speaker: str) -> str:
            if not renamed or not speaker:
                return speaker
            return names.setdefault((clip, speaker), _speaker_name(len(names)))

        offset = 0.0
        utterances: list[Utterance] = []
        words: list[Word] = []
        texts: list[str] = []
        for clip, t in enumerate(transcripts):
            mine = [Utterance(u.text, round(u.start + offset, 2), round(u.end + offset, 2),
                              name(clip, u.speaker), u.confidence) for u in t.utterances]
            utterances += mine
            words += [Word(w.text, round(w.start + offset, 2), round(w.end + offset, 2),
                           name(clip, w.speaker), w.confidence) for w in t.words]
            speaker_lines = renamed and t.utterances and t.text == Transcript.speaker_text(t.utterances)
            texts.append(Transcript.speaker_text(mine) if speaker_lines else t.text)
            offset += t.duration_seconds
        separator = "\n" if any("\n" in text for text in texts) else " "
        return Transcript(separator.join(text for text in texts if text), utterances, words,
                          transcripts[0].language if transcripts else "", round(offset, 2))


def _speaker_name(index: int) -> str:
    """The ``index``-th speaker name: A..Z, then AA, AB, ..."""
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    return letters[index] if index < 26 else _speaker_name(index // 26 - 1) + letters[index % 26]


@dataclass
class Usage:
    """What a call consumed and cost."""

    input_tokens: int = 0
    output_tokens: int = 0
    audio_seconds: float = 0.0
    cost_usd: float = 0.0
    #: Of ``input_tokens``, how many were audio (priced at ``Price.audio_input_per_mtok``). A provider that
    #: says which cached tokens were audio leaves those out: they count in ``cached_input_tokens``.
    audio_input_tokens: int = 0
    #: Of ``input_tokens``, how many were read from the provider's prompt cache (priced at
    #: ``Price.cached_input_per_mtok``): the repeated prefix of a conversation, say.
    cached_input_tokens: int = 0

    def add(self, other: Usage) -> None:
        """Add ``other`` into this usage."""
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.audio_seconds += other.audio_seconds
        self.cost_usd += other.cost_usd
        self.audio_input_tokens += other.audio_input_tokens
        self.cached_input_tokens += other.cached_input_tokens

    def since(self, reported: Usage, price: Price) -> Usage:
        """What this usage (a call's running total) holds beyond what was ``reported`` already: the next
        of a call's usage reports when it reports in parts (the prompt as soon as the provider counts it,
        so a client that leaves mid-answer is still billed for it; the rest at the end).

        Its cost is the difference of the two totals' costs at ``price`` (a total's own ``cost_usd`` when
        set): a part priced alone would miss a long-context tier, which the whole prompt's size decides.
        """
        total = self.cost_usd or price.cost(self)
        before = reported.cost_usd or price.cost(reported)
        return Usage(
            input_tokens=self.input_tokens - reported.input_tokens,
            output_tokens=self.output_tokens - reported.output_tokens,
            audio_seconds=self.audio_seconds - reported.audio_seconds,
            cost_usd=max(0.0, total - before),
            audio_input_tokens=self.audio_input_tokens - reported.audio_input_tokens,
            cached_input_tokens=self.cached_input_tokens - reported.cached_input_tokens,
        )


@dataclass
class TextDelta:
    """Event: the next piece of the answer's text."""

    text: str


@dataclass
class TranscriptReady:
    """Event: a transcript of speech in the inputs."""

    transcript: Transcript


@dataclass
class UsageReport:
    """Event: what the call consumed, and why the model stopped (``finish_reason``, None when the
    provider does not say, as for transcriptions). The router fills in the cost if the provider
    leaves it 0.

    ``context_window_full``, with ``finish_reason`` :attr:`FinishReason.LENGTH`: the answer was cut because
    the model's context window filled (the prompt and the answer so far; Claude's ``stop_reason``
    ``model_context_window_exceeded``), not at ``max_output_tokens``. The finish reason stays LENGTH, but the
    answer's route note says so instead of naming the output limit: a larger ``max_output_tokens`` cannot help.
    """

    usage: Usage
    finish_reason: FinishReason | None = None
    context_window_full: bool = False


#: The most characters a :class:`RouteNote`'s text may have: a longer one is a bad event (the call fails).
MAX_ROUTE_NOTE_CHARS = 1000


@dataclass
class RouteNote:
    """Event: a note for the answer's route (``route.notes``, which the client gets in the Answer's RouteInfo
    and in StreamGenerate's Done): what the provider did to the request on its way that its client should
    know of, such as an image scaled down before sending (the bundled Anthropic plugin's
    ``messages[0].parts[1] (IMG_0001.jpg) was scaled down to 1568x1176 px before sending: ...``).

    ``text`` is plain text, not empty, of at most :data:`MAX_ROUTE_NOTE_CHARS` characters; anything else
    is a bad event, which fails the call (``PROVIDER_FAILED``) as any other does. The router puts the
    call's ``<provider>/<model>: `` in front of it (do not name yourself), and keeps a note once per
    answer (the same note again, from a call retried with less history, is dropped). Yield it before or
    between the other events, and before the UsageReport with the finish reason (the router reads nothing
    after it). It is kept when the call then fails and a fallback answers, so write what was done, not
    what the answer is. The client gets it as it gets every route note: with configured secrets masked;
    put no key, nor anything the request did not hold, in it."""

    text: str


#: What a provider's ``generate`` yields.
ProviderEvent = TextDelta | TranscriptReady | UsageReport | RouteNote


@dataclass
class CallContext:
    """What a provider call knows beyond the request: its deadline and id.

    ``request_id`` is the call's id in the daemon's log and in its client's trailing metadata (put it
    in your own log lines about the call). ``deadline`` is a ``time.monotonic()`` value (None: no
    deadline): the client's, or the daemon's ``server.max_call_seconds`` if sooner (see
    :meth:`time_remaining`). A call still waiting for its provider then is cancelled, and counted as
    the provider's failure to answer in time (``PROVIDER_TIMEOUT``).

    ``settings`` is reserved and deprecated: the daemon never fills it, so it is always empty (a
    provider's settings come to its plugin's ``register_providers``: keep them on the provider).
    It stays only so that code constructing a ``CallContext`` with it keeps working: do not read it.
    """

    request_id: str
    deadline: float | None = None  # time.monotonic() value, or None for no deadline
    settings: dict = field(default_factory=dict)  # reserved, deprecated: always empty (see above)

    def time_remaining(self) -> float | None:
        """Seconds until the deadline (never negative), or None without one."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.monotonic())

