"""Protobuf <-> the internal model, and nothing else.

:func:`request_from_proto` validates as it converts and raises
:class:`InvalidRequest` (with every bad field listed) for bad input.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, replace
from urllib.parse import urlsplit

from mmrouter.v1 import router_pb2 as pb

from . import routing
from .errors import FieldViolation, InvalidRequest, MimeMismatch, PayloadTooLarge, UnknownMedia
from .media import MEDIA_MODALITIES, is_media_id, modality_name, stored_type_problem
from .outcome import Answer, RouteInfo, Step
from .plugins import ProviderEntry, State
from .sniff import HEAD_BYTES, content_mime, mime_problem
from .text import composed, describe, name_problem, refused_at
from .types import (
    FinishReason,
    Media,
    Message,
    Modality,
    ModelInfo,
    Options,
    Part,
    Request,
    Role,
    RoutingHints,
    Task,
    Transcript,
    Usage,
)

_MODALITY = {pb.MODALITY_TEXT: Modality.TEXT, pb.MODALITY_IMAGE: Modality.IMAGE, pb.MODALITY_AUDIO: Modality.AUDIO,
             pb.MODALITY_VIDEO: Modality.VIDEO, pb.MODALITY_DOCUMENT: Modality.DOCUMENT}
_MODALITY_PB = {v: k for k, v in _MODALITY.items()}
#: ROLE_UNSPECIFIED is the user's in a request of one message; a longer one is refused (see :func:`role_problems`)
_ROLE = {pb.ROLE_UNSPECIFIED: Role.USER, pb.ROLE_USER: Role.USER, pb.ROLE_ASSISTANT: Role.ASSISTANT,
         pb.ROLE_SYSTEM: Role.SYSTEM}
_TASK = {pb.TASK_UNSPECIFIED: Task.AUTO, pb.TASK_AUTO: Task.AUTO, pb.TASK_CHAT: Task.CHAT,
         pb.TASK_TRANSCRIBE: Task.TRANSCRIBE}
_OUTCOME = {routing.Outcome.MATCHED: pb.RULE_OUTCOME_MATCHED, routing.Outcome.SKIPPED: pb.RULE_OUTCOME_SKIPPED,
            routing.Outcome.NOT_MATCHED: pb.RULE_OUTCOME_NOT_MATCHED,
            routing.Outcome.NOT_EVALUATED: pb.RULE_OUTCOME_NOT_EVALUATED}
_STATE = {State.READY: pb.PROVIDER_STATE_READY, State.NOT_CONFIGURED: pb.PROVIDER_STATE_NOT_CONFIGURED,
          State.BROKEN: pb.PROVIDER_STATE_BROKEN, State.DISABLED: pb.PROVIDER_STATE_DISABLED}

#: Looks up an uploaded media id; raises UnknownMedia.
ResolveMedia = Callable[[str], Media]


def modality_to_proto(modality: Modality) -> int:
    """The wire value of ``modality``."""
    return _MODALITY_PB[modality]


def modality_from_proto(value: int) -> Modality | None:
    """The internal modality of a wire enum value (None if unspecified or unknown)."""
    return _MODALITY.get(value)


def modality_problem(value: int) -> str:
    """Why the modality ``value`` of a media part or an upload, no media modality, is refused. Unset, it may
    be a name the client's library did not know: protobufjs (Node.js) sends an enum name it does not know,
    such as ``'IMAGE'``, as 0 without a word."""
    if value == pb.MODALITY_UNSPECIFIED:
        return (f"must be {MEDIA_MODALITIES}; it is unset (MODALITY_UNSPECIFIED, 0): a client library may send a name it does not know, "
                "such as 'IMAGE', as 0")
    return f"must be {MEDIA_MODALITIES}, not {pb.Modality.Name(value) if value in _MODALITY else value}"


def _media_from_proto(media: pb.Media, path: str, limits: Limits, resolve: ResolveMedia,
                      problems: list[FieldViolation]) -> Media | None:
    modality = _MODALITY.get(media.modality)
    if modality is None or modality is Modality.TEXT:
        problems.append(FieldViolation(f"{path}.modality", modality_problem(media.modality)))
        return None
    name_issues = [*filename_problems(media.filename, f"{path}.filename"),
                   *mime_type_problems(media.mime_type, f"{path}.mime_type")]
    if name_issues:
        problems += name_issues
        return None
    source = media.WhichOneof("source")
    if source is None:
        problems.append(FieldViolation(path, "set one of its fields data, media_id or url"))
        return None
    if source == "media_id":
        return _stored_media(media, modality, path, resolve, problems)
    if not media.mime_type:
        problems.append(FieldViolation(f"{path}.mime_type", "required, e.g. image/png"))
        return None
    if source == "url":
        if not limits.allow_urls:
            problems.append(FieldViolation(f"{path}.url", "media URLs are not allowed by this router's config; "
                                           "send the bytes or upload them with UploadMedia"))
            return None
        problem = url_problem(media.url)
        if problem:
            problems.append(FieldViolation(f"{path}.url", problem))
            return None
        return Media(modality, media.mime_type, url=media.url, filename=media.filename)
    data = media.data
    if len(data) > limits.inline_bytes:
        raise PayloadTooLarge(
            f"{path}.data is {len(data)} bytes, over the inline limit of {limits.inline_bytes}: "
            "upload it with UploadMedia and send its media_id instead",
            violations=[FieldViolation(f"{path}.data", f"over the inline limit of {limits.inline_bytes} bytes; "
                                       "use UploadMedia")],
            metadata={"limit": "inline_limit_bytes", "limit_bytes": str(limits.inline_bytes),
                      "size_bytes": str(len(data))},
        )
    if not data:
        problems.append(FieldViolation(f"{path}.data", "is empty"))
        return None
    problem = mime_problem(media.mime_type, modality, data[:HEAD_BYTES])
    if problem:
        raise MimeMismatch(f"{path}: {problem}", violations=[FieldViolation(f"{path}.mime_type", problem)])
    # routing and plugins go by the type: an m4a declared audio/aac is audio/mp4 from here on
    mime = content_mime(media.mime_type, data[:HEAD_BYTES])
    return Media(modality, mime, data=data, filename=media.filename, size=len(data))


def _stored_media(media: pb.Media, modality: Modality, path: str, resolve: ResolveMedia,
                  problems: list[FieldViolation]) -> Media | None:
    """The uploaded media that ``media`` names by its ``media_id``, checked against the modality and
    MIME type the part declares (as inline media are: MIME_MISMATCH on another type). Its file name is
    the part's, or none: one stored media serves every client that sends the same bytes, and one
    client's name for them must not reach another (in answers, or sent to its provider)."""
    if not is_media_id(media.media_id):
        problems.append(FieldViolation(f"{path}.media_id", NOT_A_MEDIA_ID))
        return None
    try:
        stored = resolve(media.media_id)
    except UnknownMedia as exc:  # the part that names it: a request may name many
        raise UnknownMedia(exc.message, violations=[FieldViolation(f"{path}.media_id", exc.message)],
                           metadata=exc.metadata) from None
    if stored.modality is Modality.VIDEO and modality is Modality.AUDIO:  # its sound, as inline video bytes
        stored = replace(stored, modality=modality)                       # sent as audio are
    elif stored.modality is not modality:
        also = (" (or as MODALITY_AUDIO, for its sound)" if stored.modality is Modality.VIDEO
                else ", or upload it with UploadMedia as video (its record then serves both)"
                if stored.modality is Modality.AUDIO and modality is Modality.VIDEO else "")
        problems.append(FieldViolation(f"{path}.modality", f"media {media.media_id} was uploaded as "
                                       f"{stored.modality.value}: send its modality as "
                                       f"{modality_name(stored.modality)}{also}"))
    problem = stored_type_problem(media.mime_type, stored) if media.mime_type else None
    if problem:
        raise MimeMismatch(f"{path}: {problem}", violations=[FieldViolation(f"{path}.mime_type", problem)])
    if media.filename != stored.filename:  # this part's own name, or none: never another client's
        stored = replace(stored, filename=media.filename)
    return stored


def url_problem(url: str) -> str:
    """Why a media URL is refused, or "": only http(s) URLs with a host reach providers (an SDK may
    read any other string as a path on the daemon's host)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "is not a valid URL"
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return "must be an http:// or https:// URL with a host"
    return ""


#: The most bytes of media one request may refer to by default: as much as one upload may hold
#: (``server.max_upload_bytes``' default), so any single upload stays usable.
MAX_REQUEST_MEDIA_BYTES = 64 * 1024**3
#: The most routing tags a request may carry, and the longest tag: each is kept with the request's
#: statistics rows.
MAX_TAGS = 32
#: The most parts a request may hold, in all its messages: each becomes an object, and each bad one a
#: listed problem (4 million empty parts, 8 MB on the wire, held the event loop for 12 s and took 1.8 GB).
#: A conversation sent whole with one part a turn may have this many turns.
MAX_PARTS = 100_000
#: The most problems an InvalidRequest's message joins: the status is cut to a few hundred bytes anyway,
#: and a million empty messages made a 70 MB message on the event loop.
MAX_JOINED_PROBLEMS = 32
MAX_TAG_CHARS = 128
#: The longest session id: it is stored with every turn of its session.
MAX_SESSION_ID_CHARS = 256
MAX_TURN_ID_CHARS = 128
#: The longest provider and model names a client may ask for (``hints``): they are logged and answered back.
MAX_HINT_CHARS = 256
#: The longest media file name: it is stored with an upload, logged, and sent to providers.
MAX_FILENAME_CHARS = 255
#: The longest media type (RFC 6838 allows 127 characters each side of the ``/``, and parameters follow).
MAX_MIME_TYPE_CHARS = 255
#: The most metadata entries a request may carry, and the longest key and value: rules match on them.
MAX_METADATA_ENTRIES = 64
MAX_METADATA_KEY_CHARS = 128
MAX_METADATA_VALUE_CHARS = 1024
#: The longest language tag (BCP-47 asks that 35 characters be supported).
MAX_LANGUAGE_CHARS = 64
#: The most media ids one DeleteMedia call may name: the store's thread deletes them in one transaction.
MAX_DELETE_MEDIA_IDS = 1000
#: What is wrong with a media id (a part's ``media_id``, DeleteMedia's ``media_ids``) that has not its form.
NOT_A_MEDIA_ID = "is not a media id (64 lower-case hex digits): send the media_id UploadMedia returned, as it returned it"
#: A BCP-47 language tag, by its syntax: a language of 2 or 3 letters, then subtags of 1 to 8 letters or digits.
_LANGUAGE_TAG = re.compile(r"[A-Za-z]{2,3}(?:-[A-Za-z0-9]{1,8})*")
#: Why a media part in a system message is refused: OpenAI, Anthropic and Gemini refuse it (not retryably:
#: no fallback was tried), transcribers and ``local`` transcribe user messages only, ``local``'s extraction
#: took it for the user's, and a session keeps no system message: the request means something else.
SYSTEM_MEDIA = ("a system message holds text only (instructions for the model): send the media in a user "
                "message")
#: Why a media part in an assistant message is refused: OpenAI and Claude refuse it (not retryably: no
#: fallback was tried), and a session started with it on Gemini, which takes it, kept it in its history,
#: so that every later turn sent to OpenAI or Claude failed.
ASSISTANT_MEDIA = ("only user messages may carry media: an assistant message holds text only; put the media in "
                   "a user message")
#: Why a user message with no media and only blank text is refused: the question cannot be blank. Each
#: provider did something else with it, and Claude 4.6 was told to continue the answer before it.
BLANK_USER = ("a user message needs text or media: this one has no media and its text is empty or only "
              "whitespace; send the question in it, or leave the message out")


class Limits:
    """The request limits wire conversion enforces.

    ``media_bytes`` bounds the sum of the sizes of all media a request refers to, inline or by
    ``media_id``, counting every reference: a plugin that sends media inline sends an upload named
    twice twice, so a tiny request naming one large upload many times is refused here.
    """

    def __init__(self, inline_bytes: int, allow_urls: bool, media_bytes: int = MAX_REQUEST_MEDIA_BYTES) -> None:
        self.inline_bytes = inline_bytes
        self.allow_urls = allow_urls
        self.media_bytes = media_bytes


def _resolve_once(resolve: ResolveMedia) -> ResolveMedia:
    """``resolve`` that looks each media id up once (a request may name one upload many times)."""
    found: dict[str, Media] = {}

    def once(media_id: str) -> Media:
        if media_id not in found:
            found[media_id] = resolve(media_id)
        return found[media_id]

    return once


def _check_media_bytes(request: Request, limit: int) -> None:
    """Raise :class:`PayloadTooLarge` when the media ``request`` refers to add up to more than ``limit`` bytes."""
    media = request.media()
    total = sum(m.size for m in media)
    if total <= limit:
        return
    problem = (f"the request's {len(media)} media parts refer to {total} bytes in all, over the limit of {limit} "
               "bytes of media per request (server.max_request_media_bytes; a media_id named twice counts twice): "
               "send fewer or smaller media")
    raise PayloadTooLarge(problem, violations=[FieldViolation("request.messages", problem)],
                          metadata={"limit": "max_request_media_bytes", "limit_bytes": str(limit),
                                    "size_bytes": str(total)})


def request_from_proto(msg: pb.MultimodalRequest, limits: Limits, resolve: ResolveMedia) -> Request:
    """Convert and validate a wire request. Raises InvalidRequest listing every bad field, or
    PayloadTooLarge when its media are over ``limits``."""
    _check_counts(msg)
    resolve = _resolve_once(resolve)
    problems: list[FieldViolation] = []
    messages = []
    # a session's transcription of its history's recording asks for that recording alone: no message needed
    history_transcription = bool(msg.session_id) and msg.options.task == pb.TASK_TRANSCRIBE
    if not msg.messages and not history_transcription:
        problems.append(FieldViolation("request.messages", "at least one message is required"))
    for i, message in enumerate(msg.messages):
        if message.role not in _ROLE:
            problems.append(FieldViolation(f"request.messages[{i}].role", f"unknown role {message.role}"))
        if not message.parts:
            problems.append(FieldViolation(f"request.messages[{i}].parts", "a message needs at least one part"))
        parts = []
        for j, part in enumerate(message.parts):
            path = f"request.messages[{i}].parts[{j}]"
            kind = part.WhichOneof("content")
            if kind == "text":
                parts.append(Part(text=part.text))
            elif kind == "media":
                if message.role == pb.ROLE_SYSTEM:
                    problems.append(FieldViolation(f"{path}.media", SYSTEM_MEDIA))
                elif message.role == pb.ROLE_ASSISTANT:
                    problems.append(FieldViolation(path, ASSISTANT_MEDIA))
                media = _media_from_proto(part.media, f"{path}.media", limits, resolve, problems)
                if media is not None:
                    parts.append(Part(media=media))
            else:
                problems.append(FieldViolation(path, "unknown or empty part: set text or media"))
        messages.append(Message(_ROLE.get(message.role, Role.USER), parts))
    options = msg.options
    if options.task not in _TASK:
        problems.append(FieldViolation("request.options.task", f"unknown task {options.task}"))
    if options.speakers_expected < 0:
        problems.append(FieldViolation("request.options.speakers_expected", "cannot be negative"))
    if options.max_output_tokens < 0:
        problems.append(FieldViolation("request.options.max_output_tokens", "cannot be negative"))
    if options.HasField("temperature") and not 0 <= options.temperature <= 2:
        problems.append(FieldViolation("request.options.temperature", "must be between 0 and 2"))
    problems += _language_problems(options.language)
    problems += _tag_problems(msg.hints.tags)
    problems += session_id_problems(msg.session_id)
    problems += turn_id_problems(msg.turn_id, msg.session_id)
    problems += name_problems(msg.hints.provider, "request.hints.provider", MAX_HINT_CHARS, "the name")
    problems += name_problems(msg.hints.model, "request.hints.model", MAX_HINT_CHARS, "the name")
    problems += _metadata_problems(msg.metadata)
    request = Request(
        messages=messages,
        options=Options(
            # a number of speakers to expect asks for them to be told apart: routing must send it to a
            # diarizing model (AssemblyAI diarized on it alone, Whisper dropped it silently)
            task=_TASK.get(options.task, Task.AUTO), diarization=options.diarization or options.speakers_expected > 0,
            speakers_expected=options.speakers_expected, language=options.language,
            max_output_tokens=options.max_output_tokens,
            temperature=shortest_float32(options.temperature) if options.HasField("temperature") else None,
        ),
        hints=RoutingHints(msg.hints.provider, msg.hints.model, [composed(tag) for tag in msg.hints.tags]),
        session_id=msg.session_id,
        metadata=dict(msg.metadata),
        turn_id=msg.turn_id,
    )
    if not problems and not request.modalities() and not (history_transcription and not msg.messages):
        problems.append(FieldViolation("request.messages", "the request has no content: all text parts are empty"))
    elif not problems:
        problems += role_problems(msg)  # first: the checks below read who wrote each message
        if not problems:
            problems += blank_user_problems(request)
        # a session's too: its history holds a question, but one answered already (a transcription of the
        # history's recording asks for that recording: task_problems checks it has one)
        if not problems and not history_transcription:
            problems += question_problems(request)
    if not problems:  # a media part refused above is missing from ``request``
        problems += task_problems(request)
    if problems:
        raise InvalidRequest("invalid request: " + "; ".join(f"{p.field}: {p.description}"
                                                              for p in problems[:MAX_JOINED_PROBLEMS]),
                             violations=problems)
    _check_media_bytes(request, limits.media_bytes)
    return request


def shortest_float32(value: float) -> float:
    """The shortest decimal that is the same 32-bit float as ``value`` (a proto ``float`` widened to a
    double): a client's 0.7 reaches the provider as 0.7, not 0.699999988079071. ``value`` itself when none is
    (a NaN), or when a shorter decimal is beyond float32's range (near its largest, 3.4e38)."""
    packed = struct.pack("<f", value)
    try:
        return next((short for digits in range(1, 10)
                     if struct.pack("<f", short := float(f"{value:.{digits}g}")) == packed), value)
    except OverflowError:  # FLT_MAX's 4 digits, 3.403e38, round past it
        return value


def _check_counts(msg: pb.MultimodalRequest) -> None:
    """Refuse, before anything is read, a request with more messages or parts than :data:`MAX_PARTS` (a
    message needs a part, so no valid request has more messages than parts) or more metadata entries than
    :data:`MAX_METADATA_ENTRIES`: each would become an object, and each bad one a listed problem (a million
    empty messages, 2 MB on the wire, held the event loop for 10 s and took 570 MB)."""
    if len(msg.messages) > MAX_PARTS:
        problem = f"{len(msg.messages)} messages; at most {MAX_PARTS}"
        raise InvalidRequest(f"invalid request: {problem}", violations=[FieldViolation("request.messages", problem)])
    parts_in_all = sum(len(message.parts) for message in msg.messages)
    if parts_in_all > MAX_PARTS:
        problem = f"{parts_in_all} parts in all; at most {MAX_PARTS}"
        raise InvalidRequest(f"invalid request: {problem}", violations=[FieldViolation("request.messages", problem)])
    if len(msg.metadata) > MAX_METADATA_ENTRIES:
        problem = f"{len(msg.metadata)} entries; at most {MAX_METADATA_ENTRIES}"
        raise InvalidRequest(f"invalid request: request.metadata: {problem}",
                             violations=[FieldViolation("request.metadata", problem)])


def _tag_problems(tags: Sequence[str]) -> list[FieldViolation]:
    """What is wrong with a request's tags: each is kept with its statistics rows (``stats --by tag``)."""
    if len(tags) > MAX_TAGS:
        return [FieldViolation("request.hints.tags", f"{len(tags)} tags; at most {MAX_TAGS}")]
    problems = []
    for i, tag in enumerate(tags):  # printable as a session id: stats --by tag prints them, the log names them
        field = f"request.hints.tags[{i}]"
        problems += name_problems(tag, field, MAX_TAG_CHARS, "the tag") if tag else [FieldViolation(field, "empty")]
    return problems


#: Why a message of a conversation without its role is refused (see :func:`role_problems`).
UNSET_ROLE = ("unset (ROLE_UNSPECIFIED, 0): in a conversation give each message its role, ROLE_USER, ROLE_ASSISTANT or ROLE_SYSTEM "
              "(a client library may send a name it does not know, such as 'assistant', as 0)")


def role_problems(msg: pb.MultimodalRequest) -> list[FieldViolation]:
    """A violation on the role of the first message of a conversation (a request of more than one message)
    that leaves it unset. ROLE_UNSPECIFIED is the user's in a request of one message only: protobufjs
    (Node.js) sends a role name it does not know (OpenAI's ``'system'``, ``'assistant'``) as 0 without a
    word, and the system prompt and the model's earlier answers reached the provider as the user's words."""
    if len(msg.messages) < 2:
        return []
    unset = next((i for i, message in enumerate(msg.messages) if message.role == pb.ROLE_UNSPECIFIED), None)
    return [] if unset is None else [FieldViolation(f"request.messages[{unset}].role", UNSET_ROLE)]


def blank_user_problems(request: Request) -> list[FieldViolation]:
    """A violation for each user message with no media whose text is empty or only whitespace. Plugins
    left it out or sent it as is, so a conversation ending with one asked nothing, or (Claude 4.6) asked
    to continue the assistant's answer before it. A blank assistant message is kept: an answer a content
    filter withheld is empty, and clients send it back with the conversation."""
    return [FieldViolation(f"request.messages[{i}]", BLANK_USER) for i, message in enumerate(request.messages)
            if message.role is Role.USER
            and not any(part.media is not None or part.text.strip() for part in message.parts)]


def question_problems(request: Request) -> list[FieldViolation]:
    """What is wrong when ``request`` has no user message with content: system or assistant messages alone
    ask nothing. Some models answered such a request and others refused it (Claude), so the same request
    failed or not by the fallback taken. A call on a session is no different: the question its history
    ends with was answered, and asked again it was answered anew (OpenAI), or its answer continued
    (Claude), a turn billed and not kept."""
    if any(message.role is Role.USER and any(part.media is not None or part.text.strip() for part in message.parts)
           for message in request.messages):
        return []
    session = " (a session's history does not count: its last question was answered)" if request.session_id else ""
    return [FieldViolation("request.messages", "no user message with text or media: system and assistant "
                           f"messages alone ask nothing{session}; send the question as a user message")]


def task_problems(request: Request, history_read: bool = False) -> list[FieldViolation]:
    """What is wrong with the task for what the request holds: a transcription transcribes the audio and
    video of the newest user message with media (:meth:`Request.current_media`), and with none there no
    provider can do it. A session's request without media may transcribe its history's, unseen here
    unless ``history_read`` (``request`` holds the history then)."""
    if request.options.task is not Task.TRANSCRIBE:
        return []
    media = request.current_media()
    if any(m.modality in (Modality.AUDIO, Modality.VIDEO) for m in media):
        return []
    if not media and request.session_id and not history_read:
        return []
    where = "this request and its session's history have" if history_read and request.session_id else \
        "this request has"
    return [FieldViolation("request.options.task", "TASK_TRANSCRIBE transcribes the audio or video of the newest "
                           f"user message with media, and {where} none there: send the recording in that "
                           "message, or ask with TASK_CHAT")]


def _language_problems(language: str) -> list[FieldViolation]:
    """What is wrong with ``options.language``: empty (detect it) or a BCP-47 tag."""
    if not language or (len(language) <= MAX_LANGUAGE_CHARS and _LANGUAGE_TAG.fullmatch(language)):
        return []
    return [FieldViolation("request.options.language", "not a BCP-47 language tag: a language code of 2 or 3 "
                           "letters, then subtags of 1 to 8 letters or digits after a '-', e.g. en, en-US or "
                           f"zh-Hant-TW, at most {MAX_LANGUAGE_CHARS} characters; leave it empty to detect it")]


def session_id_problems(session_id: str, field: str = "request.session_id") -> list[FieldViolation]:
    """What is wrong with a session id: it is kept with every turn of its session. Its characters are those
    of every name (:func:`name_problems`), but a control character or line separator is refused for what it
    does where a client shows the id, not in the daemon's log, which never holds an id (only a hash of it)."""
    index = refused_at(session_id) if len(session_id) <= MAX_SESSION_ID_CHARS else None
    if index is None or not _breaks_a_line(session_id[index]):  # a bidi control, a lone surrogate: as for every name
        return name_problems(session_id, field, MAX_SESSION_ID_CHARS, "the id")
    return [FieldViolation(field, f"has {describe(session_id[index])} at character {index + 1}, which no session id "
                           "may hold (it breaks the line a client shows the id on; the daemon logs only a hash of "
                           "it): send the id without it")]


def media_ids_problems(media_ids: Sequence[str], field: str = "media_ids") -> list[FieldViolation]:
    """What is wrong with the media ids a DeleteMedia call names: 1 to :data:`MAX_DELETE_MEDIA_IDS` of them,
    each of a media id's form (never quoted back: a client's typo may be anything)."""
    if not 0 < len(media_ids) <= MAX_DELETE_MEDIA_IDS:
        return [FieldViolation(field, f"{len(media_ids)} media ids; give 1 to {MAX_DELETE_MEDIA_IDS}")]
    return [FieldViolation(f"{field}[{i}]", NOT_A_MEDIA_ID) for i, media_id in enumerate(media_ids)
            if not is_media_id(media_id)]


def turn_id_problems(turn_id: str, session_id: str) -> list[FieldViolation]:
    """What is wrong with a turn id: it names a turn of a session, so it needs one; it is stored with the
    turn, a name of at most :data:`MAX_TURN_ID_CHARS` characters (:func:`name_problems`)."""
    if turn_id and not session_id:
        return [FieldViolation("request.turn_id", "names a turn of a session, and the request has no session_id: "
                               "send it with the session_id, or leave it empty")]
    return name_problems(turn_id, "request.turn_id", MAX_TURN_ID_CHARS, "the id")


def _breaks_a_line(char: str) -> bool:
    """Whether ``char``, one names may not hold, is a control character or a line or paragraph separator."""
    return char < "\u00a0" or char in "\u2028\u2029"


def filename_problems(filename: str, field: str) -> list[FieldViolation]:
    """What is wrong with a media file name: it is stored with an upload, logged and sent to providers."""
    return name_problems(filename, field, MAX_FILENAME_CHARS, "the name")


def mime_type_problems(mime_type: str, field: str) -> list[FieldViolation]:
    """What is wrong with a media type a client sends: it is stored with an upload, logged, answered
    back and quoted in errors (a NO_ROUTE message names it)."""
    return name_problems(mime_type, field, MAX_MIME_TYPE_CHARS, "the type")


def name_problems(value: str, field: str, max_chars: int, what: str) -> list[FieldViolation]:
    """What is wrong with a name a client sends that the daemon keeps, logs or sends on: longer than
    ``max_chars``, or holding a character that breaks a log line or misleads its reader (a control
    character, a line separator, a bidirectional override: :mod:`router.text`); the message names it."""
    if len(value) > max_chars:
        return [FieldViolation(field, f"{len(value)} characters; at most {max_chars}")]
    problem = name_problem(value)
    if problem:
        return [FieldViolation(field, f"{problem}: send {what} without it")]
    return []


def _metadata_problems(metadata: Mapping[str, str]) -> list[FieldViolation]:
    """What is wrong with a request's metadata entries (their number is checked first, by
    :func:`_check_counts`): rules match on them, and each call holds them."""
    problems = []
    for key, value in metadata.items():
        if len(key) > MAX_METADATA_KEY_CHARS:
            problems.append(FieldViolation("request.metadata", f"the key {key[:32]!r}... has {len(key)} characters; "
                                           f"at most {MAX_METADATA_KEY_CHARS}"))
        elif len(value) > MAX_METADATA_VALUE_CHARS:
            problems.append(FieldViolation(f"request.metadata[{json.dumps(key, ensure_ascii=False)}]",
                                           f"{len(value)} characters; at most {MAX_METADATA_VALUE_CHARS}"))
    return problems


# -- answers ---------------------------------------------------------------------------------


def usage_to_proto(usage: Usage) -> pb.Usage:
    return pb.Usage(input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
                    audio_seconds=usage.audio_seconds, cost_usd=usage.cost_usd,
                    audio_input_tokens=usage.audio_input_tokens,
                    cached_input_tokens=usage.cached_input_tokens)


def transcript_to_proto(t: Transcript) -> pb.Transcript:
    return pb.Transcript(
        text=t.text, language=t.language, duration_seconds=t.duration_seconds,
        utterances=[pb.Utterance(speaker=u.speaker, start_seconds=u.start, end_seconds=u.end, text=u.text,
                                 confidence=u.confidence) for u in t.utterances],
        words=[pb.Word(text=w.text, start_seconds=w.start, end_seconds=w.end, speaker=w.speaker,
                       confidence=w.confidence) for w in t.words],
    )


def _step_to_proto(step: Step) -> pb.Step:
    return pb.Step(purpose=step.purpose, provider=step.provider, model=step.model, latency_ms=step.latency_ms,
                   usage=usage_to_proto(step.usage))


def _same(text: str) -> str:
    return text


def route_to_proto(route: RouteInfo, redact: Callable[[str], str] = _same, *, every_rule: bool = True) -> pb.Route:
    """The route as sent to clients; ``redact`` cleans the free texts that plugins may have written
    (attempt errors, notes, rule reasons), so a key quoted in a plugin's exception never leaves. Without
    ``every_rule`` (an answer's route), the trace leaves out the rules after the one that chose (not
    evaluated: their entries say only that): with thousands of rules they made a short answer hundreds of KB."""
    trace = route.trace if every_rule else [t for t in route.trace if t.outcome is not routing.Outcome.NOT_EVALUATED]
    return pb.Route(
        rule=route.rule, provider=route.provider, model=route.model, fallbacks=route.fallbacks,
        bridges=route.bridges, latency_ms=route.latency_ms, notes=[redact(n) for n in dict.fromkeys(route.notes)],
        trace=[pb.RuleTrace(rule=t.rule, outcome=_OUTCOME[t.outcome], reason=redact(t.reason)) for t in trace],
        attempts=[pb.Attempt(provider=a.provider, model=a.model, ok=a.ok, error=redact(a.error) if a.error else "",
                             latency_ms=a.latency_ms) for a in route.attempts],
        steps=[_step_to_proto(s) for s in route.steps],
    )


_FINISH = {
    FinishReason.STOP: pb.FINISH_REASON_STOP, FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
    FinishReason.CONTENT_FILTER: pb.FINISH_REASON_CONTENT_FILTER, FinishReason.REFUSAL: pb.FINISH_REASON_REFUSAL,
    FinishReason.OTHER: pb.FINISH_REASON_OTHER,
}


def answer_to_proto(answer: Answer, redact: Callable[[str], str] = _same) -> pb.Answer:
    """The answer as sent to clients (see :func:`route_to_proto` for ``redact``)."""
    out = pb.Answer(text=answer.text, usage=usage_to_proto(answer.usage),
                    route=route_to_proto(answer.route, redact, every_rule=False))
    if answer.finish_reason is not None:
        out.finish_reason = _FINISH[answer.finish_reason]
    if answer.transcript is not None:
        out.transcript.CopyFrom(transcript_to_proto(answer.transcript))
    return out


def model_to_proto(model: ModelInfo) -> pb.ModelInfo:
    """``model`` as ``ListProviders`` gives it; ``url_inputs`` not declared (None) are every media modality of
    its inputs (:meth:`ModelInfo.takes_url` takes them all)."""
    by_url = model.inputs - {Modality.TEXT} if model.url_inputs is None else model.url_inputs
    return pb.ModelInfo(
        name=model.name, inputs=[modality_to_proto(m) for m in sorted(model.inputs, key=lambda m: m.value)],
        outputs=sorted(model.outputs), features=sorted(model.features), context_tokens=model.context_tokens,
        price=pb.Price(**asdict(model.price)), input_mime_types=sorted(model.input_mime_types),
        max_audio_seconds=model.max_audio_seconds, max_output_tokens=model.max_output_tokens,
        default_max_output_tokens=model.default_max_output_tokens,
        url_inputs=[modality_to_proto(m) for m in sorted(by_url, key=lambda m: m.value)],
        max_media_bytes=model.max_media_bytes, max_document_pages=model.max_document_pages,
        takes_temperature=model.takes_temperature, max_request_bytes=model.max_request_bytes,
        languages=sorted(model.languages),
    )


def provider_to_proto(entry: ProviderEntry, redact: Callable[[str], str] = _same) -> pb.ProviderInfo:
    return pb.ProviderInfo(name=entry.name, plugin=entry.plugin, state=_STATE[entry.state], reason=redact(entry.reason),
                           models=[model_to_proto(m) for m in entry.models])
