"""A fake OpenAI API speaking the real wire format: JSON, SSE streaming and multipart uploads.

Endpoints: ``POST /v1/chat/completions`` (a ``chat.completion`` JSON, or
``chat.completion.chunk`` events ending with a usage chunk when
``stream_options.include_usage`` is set, then ``[DONE]``) and
``POST /v1/audio/transcriptions`` (multipart; ``json``, ``verbose_json`` or
``diarized_json`` answers; ``verbose_json`` has ``segments`` and, when
``timestamp_granularities[]`` asks for ``word``, ``words``). It checks what the real API checks where it
matters to the provider (the bearer key, known models, content part shapes,
data URLs whose bytes match their MIME type, ``input_audio`` formats, the
uploaded file's extension, the 25 MiB cap on a transcription upload) and answers errors in OpenAI's
envelope ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import email.parser
import email.policy
import json
from dataclasses import dataclass, field
from typing import Any

from .base import FakeUpstream, Recorded, Reply

API_KEY = "sk-test-openai-0123456789abcdef"
CHAT_MODELS = frozenset({"gpt-4o", "gpt-4o-mini", "gpt-audio", "gpt-audio-mini"})
#: The most completion tokens each chat model writes; a larger max_tokens / max_completion_tokens is refused.
MAX_COMPLETION_TOKENS = {"gpt-4o": 16_384, "gpt-4o-mini": 16_384, "gpt-audio": 16_384, "gpt-audio-mini": 16_384}
#: The audio-input chat models (gpt-4o(-mini)-audio-preview were shut down on 2026-05-07: unknown here, 404).
AUDIO_CHAT_MODELS = frozenset({"gpt-audio", "gpt-audio-mini"})
STT_MODELS = frozenset({"whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe",
                        "gpt-4o-transcribe-diarize", "gpt-transcribe"})
AUDIO_EXTENSIONS = frozenset({"flac", "mp3", "mp4", "mpeg", "mpga", "m4a", "ogg", "wav", "webm"})
#: What ``/audio/transcriptions`` reads at most; a larger body is refused with 413 (as the real API does).
MAX_TRANSCRIPTION_BYTES = 26_214_400
IMAGE_MAGIC = {"image/png": b"\x89PNG\r\n\x1a\n", "image/jpeg": b"\xff\xd8\xff", "image/gif": b"GIF8",
               "image/webp": b"RIFF"}


def error_body(message: str, err_type: str = "invalid_request_error", code: str | None = None,
               param: str | None = None) -> dict[str, Any]:
    """OpenAI's error envelope."""
    return {"error": {"message": message, "type": err_type, "param": param, "code": code}}


def raw_events(events: list[str], replaced: dict[str, bytes]) -> bytes:
    """A whole SSE body of ``events`` (each a ``data`` string) with each text of ``replaced`` replaced by its
    bytes (which need not be UTF-8)."""
    body = b"".join(f"data: {event}\n\n".encode() for event in events)
    for text, raw in replaced.items():
        body = body.replace(text.encode(), raw)
    return body


class Rejected(Exception):
    """A request the real API would refuse."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


@dataclass
class Upload:
    """A multipart upload the fake received, parsed."""

    fields: dict[str, list[str]] = field(default_factory=dict)
    files: dict[str, tuple[str, str, bytes]] = field(default_factory=dict)  # name -> (filename, type, bytes)

    def field(self, name: str) -> str | None:
        values = self.fields.get(name)
        return values[0] if values else None


def parse_multipart(rec: Recorded) -> Upload:
    """The fields and files of a ``multipart/form-data`` request."""
    content_type = rec.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise Rejected(400, f"expected multipart/form-data, got {content_type!r}")
    raw = f"Content-Type: {content_type}\r\n\r\n".encode() + rec.body
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(raw)
    upload = Upload()
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        filename = part.get_param("filename", header="content-disposition")
        payload = part.get_payload(decode=True) or b""
        if filename is not None:
            upload.files[name] = (filename, part.get_content_type(), payload)
        else:
            upload.fields.setdefault(name, []).append(payload.decode())
    return upload


def decode_data_url(url: str, where: str) -> tuple[str, bytes]:
    """(MIME type, bytes) of a base64 data URL."""
    if not url.startswith("data:") or ";base64," not in url:
        raise Rejected(400, f"{where}: expected a base64 data URL")
    head, data = url[5:].split(";base64,", 1)
    try:
        return head, base64.b64decode(data, validate=True)
    except binascii.Error:
        raise Rejected(400, f"{where}: invalid base64 data") from None


@dataclass
class ReceivedPart:
    """One content part of a chat request, decoded: kind is text, image or audio."""

    kind: str
    text: str = ""
    mime_type: str = ""
    data: bytes = b""
    url: str = ""


class FakeOpenAI(FakeUpstream):
    """The fake server. Set ``reply_chunks`` / ``usage`` to script answers; ``truncate_next`` cuts a
    stream short (its body ends cleanly, without ``[DONE]``)."""

    def __init__(self) -> None:
        super().__init__()
        #: The streamed pieces of the chat answer; the non-streamed answer is their concatenation.
        self.reply_chunks: list[str] = ["Hello", " from", " the fake", " GPT."]
        #: None: no usage chunk even when asked (some OpenAI-compatible servers), the stream still ends with [DONE].
        self.usage: dict[str, int] | None = {"prompt_tokens": 1234, "completion_tokens": 56, "total_tokens": 1290}
        #: If set, the stream sends this error event after the first chunk.
        self.stream_error: str | None = None
        #: The ``type`` and ``code`` of that error event (a rate limit is ``requests`` /
        #: ``rate_limit_exceeded``; vLLM gives the HTTP status as the code, an int).
        self.stream_error_type = "server_error"
        self.stream_error_code: str | int | None = None
        #: Seconds between streamed chunks.
        self.chunk_delay = 0.0
        #: Chat models it serves (an OpenAI-compatible server may add its own, e.g. org/model).
        self.chat_models = set(CHAT_MODELS)
        #: The one API key it accepts.
        self.api_key = API_KEY
        #: Output limits by model (models not named here have none).
        self.max_completion_tokens = dict(MAX_COMPLETION_TOKENS)
        #: The streamed answer's ``finish_reason`` ("length", "content_filter", ...).
        self.finish_reason = "stop"
        #: If set, the model declines: the stream sends this as ``delta.refusal`` instead of content.
        self.refusal: str | None = None
        #: The ``language`` of a ``verbose_json`` transcription: whisper names it ("english", not "en").
        self.language = "english"
        #: Uploaded file name -> the HTTP status its transcription fails with (a clip of several failing).
        self.fail_files: dict[str, int] = {}
        #: Text of the streamed answer -> the bytes sent in its place, when set: the stream goes as one body
        #: whose events have each such text (in their JSON) replaced, e.g. by bytes that are not UTF-8.
        self.event_bytes: dict[str, bytes] = {}
        #: Chat request fields it refuses, as Azure with an older api-version or older LocalAI builds do
        #: (400 "Unrecognized request argument supplied: stream_options").
        self.refused_fields: set[str] = set()

    @property
    def base_url(self) -> str:
        """What to give the SDK as base_url."""
        return f"{self.url}/v1"

    # -- what was received -------------------------------------------------------------------------

    def chat_requests(self) -> list[dict[str, Any]]:
        """The JSON bodies of every chat completion request."""
        return [r.json() for r in self.requests if r.path == "/v1/chat/completions"]

    def uploads(self) -> list[Upload]:
        """Every transcription upload, parsed."""
        return [parse_multipart(r) for r in self.requests if r.path == "/v1/audio/transcriptions"]

    @staticmethod
    def parts(message: dict[str, Any]) -> list[ReceivedPart]:
        """The content of one received message as decoded parts, in order."""
        content = message["content"]
        if isinstance(content, str):
            return [ReceivedPart("text", text=content)]
        out = []
        for part in content:
            if part["type"] == "text":
                out.append(ReceivedPart("text", text=part["text"]))
            elif part["type"] == "image_url":
                url = part["image_url"]["url"]
                if url.startswith("data:"):
                    mime, data = decode_data_url(url, "image_url")
                    out.append(ReceivedPart("image", mime_type=mime, data=data))
                else:
                    out.append(ReceivedPart("image", url=url))
            elif part["type"] == "input_audio":
                audio = part["input_audio"]
                out.append(ReceivedPart("audio", mime_type=audio["format"], data=base64.b64decode(audio["data"])))
        return out

    # -- serving -----------------------------------------------------------------------------------

    def handle(self, request: Recorded, reply: Reply) -> None:
        try:
            if request.headers.get("authorization") != f"Bearer {self.api_key}":
                raise Rejected(401, "Incorrect API key provided: "
                                    f"{request.headers.get('authorization', '')[7:]}. You can find your "
                                    "API key at https://platform.openai.com/account/api-keys.",
                               "invalid_api_key")
            if request.method == "POST" and request.path == "/v1/chat/completions":
                self._chat(request.json(), reply)
            elif request.method == "POST" and request.path == "/v1/audio/transcriptions":
                if len(request.body) > MAX_TRANSCRIPTION_BYTES:
                    reply.json(error_body(f"Maximum content size limit ({MAX_TRANSCRIPTION_BYTES}) exceeded "
                                          f"({len(request.body)} bytes read)", "server_error"), 413)
                    return
                self._transcribe(parse_multipart(request), reply)
            else:
                raise Rejected(404, f"Invalid URL ({request.method} {request.path})")
        except Rejected as exc:
            err_type = "invalid_request_error" if exc.status < 500 else "server_error"
            reply.json(error_body(exc.message, err_type, exc.code), exc.status)

    def _check_chat(self, body: dict[str, Any]) -> None:
        model = body.get("model")
        if model not in self.chat_models:
            raise Rejected(404, f"The model `{model}` does not exist or you do not have access to it.",
                           "model_not_found")
        refused = sorted(self.refused_fields & set(body))
        if refused:
            raise Rejected(400, f"Unrecognized request argument supplied: {refused[0]}")
        limit = self.max_completion_tokens.get(model)
        for key in ("max_completion_tokens", "max_tokens"):
            wanted = body.get(key)
            if limit is not None and isinstance(wanted, int) and wanted > limit:
                raise Rejected(400, f"max_tokens is too large: {wanted}. This model supports at most {limit} "
                                    f"completion tokens, whereas you provided {wanted}.", "invalid_value")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise Rejected(400, "'messages' must be a non-empty array")
        for i, message in enumerate(messages):
            if message.get("role") not in ("system", "developer", "user", "assistant"):
                raise Rejected(400, f"messages[{i}].role: invalid role {message.get('role')!r}")
            content = message.get("content")
            if isinstance(content, str):
                continue
            if message["role"] != "user" or not isinstance(content, list):
                raise Rejected(400, f"messages[{i}].content: must be a string for role {message['role']}")
            for j, part in enumerate(content):
                where = f"messages[{i}].content[{j}]"
                if part.get("type") == "image_url":
                    url = part.get("image_url", {}).get("url", "")
                    if url.startswith("data:"):
                        mime, data = decode_data_url(url, where)
                        if mime not in IMAGE_MAGIC or not data.startswith(IMAGE_MAGIC[mime]):
                            raise Rejected(400, f"{where}: You uploaded an unsupported image.",
                                           "invalid_image_format")
                elif part.get("type") == "input_audio":
                    if model not in AUDIO_CHAT_MODELS:
                        raise Rejected(400, f"{where}: This model does not support audio input.")
                    if part.get("input_audio", {}).get("format") not in ("wav", "mp3"):
                        raise Rejected(400, f"{where}.input_audio.format: must be wav or mp3")
                    base64.b64decode(part["input_audio"]["data"], validate=True)
                elif part.get("type") != "text":
                    raise Rejected(400, f"{where}.type: invalid content part type {part.get('type')!r}")

    def _chat(self, body: dict[str, Any], reply: Reply) -> None:
        self._check_chat(body)
        model = body["model"]
        if not body.get("stream"):
            reply.json({
                "id": "chatcmpl-fake", "object": "chat.completion", "created": 1700000000, "model": model,
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": "".join(self.reply_chunks)}}],
                "usage": self.usage,
            })
            return

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1700000000,
                    "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

        events: list[Any] = [json.dumps(chunk({"role": "assistant", "content": ""}))]
        for i, text in enumerate([] if self.refusal else self.reply_chunks):
            events.append(json.dumps(chunk({"content": text})))
            if i == 0 and self.stream_error:
                error = error_body(self.stream_error, self.stream_error_type)
                error["error"]["code"] = self.stream_error_code
                events.append(json.dumps(error))
                break
        else:
            if self.refusal:
                events.append(json.dumps(chunk({"content": None, "refusal": self.refusal})))
            events.append(json.dumps(chunk({}, self.finish_reason)))
            if self.usage is not None and (body.get("stream_options") or {}).get("include_usage"):
                events.append(json.dumps({"id": "chatcmpl-fake", "object": "chat.completion.chunk",
                                          "created": 1700000000, "model": model, "choices": [],
                                          "usage": self.usage}))
        events.append("[DONE]")
        # The client may give up (timeout or cancellation): then there is nothing to answer.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            if self.event_bytes:
                reply.raw(raw_events(events, self.event_bytes), content_type="text/event-stream")
            else:
                reply.sse(events, delay=self.chunk_delay)


    def _verbose(self, granularities: list[str]) -> dict[str, Any]:
        """A ``verbose_json`` answer: ``segments`` and ``words`` only when their granularity is asked
        (segment is the default), as the real API does."""
        body: dict[str, Any] = {"task": "transcribe", "language": self.language, "duration": 2.5,
                                "text": "Hello there. General Kenobi.", "usage": {"type": "duration", "seconds": 3}}
        if "segment" in granularities:
            body["segments"] = [
                {"id": 0, "seek": 0, "start": 0.0, "end": 1.2, "text": " Hello there.", "tokens": [1, 2],
                 "temperature": 0.0, "avg_logprob": -0.2, "compression_ratio": 0.9, "no_speech_prob": 0.01},
                {"id": 1, "seek": 0, "start": 1.2, "end": 2.5, "text": " General Kenobi.", "tokens": [3],
                 "temperature": 0.0, "avg_logprob": -0.3, "compression_ratio": 0.9, "no_speech_prob": 0.02},
            ]
        if "word" in granularities:
            body["words"] = [{"word": "Hello", "start": 0.0, "end": 0.5}, {"word": "there", "start": 0.5, "end": 1.1},
                             {"word": "General", "start": 1.3, "end": 1.8}, {"word": "Kenobi", "start": 1.8, "end": 2.4}]
        return body

    def _transcribe(self, upload: Upload, reply: Reply) -> None:
        model = upload.field("model")
        if model not in STT_MODELS:
            raise Rejected(404, f"The model `{model}` does not exist or you do not have access to it.",
                           "model_not_found")
        if "file" not in upload.files:
            raise Rejected(400, "you must provide a file")
        filename, _, data = upload.files["file"]
        ext = filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
        if ext not in AUDIO_EXTENSIONS or not data:
            raise Rejected(400, f"Invalid file format. Supported formats: {sorted(AUDIO_EXTENSIONS)}")
        if filename in self.fail_files:
            raise Rejected(self.fail_files[filename], f"could not transcribe {filename}")
        fmt = upload.field("response_format") or "json"
        granularities = upload.fields.get("timestamp_granularities[]", [])
        if granularities and fmt != "verbose_json":
            raise Rejected(400, "timestamp_granularities is only supported with response_format verbose_json")
        if set(granularities) - {"word", "segment"}:
            raise Rejected(400, f"timestamp_granularities: invalid value {granularities!r}")
        if model in ("gpt-4o-transcribe", "gpt-4o-mini-transcribe", "gpt-transcribe") and fmt != "json":
            raise Rejected(400, f"response_format '{fmt}' is not compatible with model '{model}'. Use 'json'.")
        if model == "gpt-4o-transcribe-diarize" and fmt not in ("json", "text", "diarized_json"):
            raise Rejected(400, f"response_format '{fmt}' is not compatible with model '{model}'.")
        if fmt == "verbose_json":
            reply.json(self._verbose(granularities or ["segment"]))
        elif fmt == "diarized_json":
            reply.json({
                "task": "transcribe", "duration": 2.5, "text": "Hello there. General Kenobi.",
                "segments": [
                    {"type": "transcript.text.segment", "id": "seg_0", "start": 0.0, "end": 1.2,
                     "text": "Hello there.", "speaker": "A"},
                    {"type": "transcript.text.segment", "id": "seg_1", "start": 1.2, "end": 2.5,
                     "text": "General Kenobi.", "speaker": "B"},
                ],
                "usage": {"type": "tokens", "input_tokens": 40, "output_tokens": 8, "total_tokens": 48,
                          "input_token_details": {"audio_tokens": 40, "text_tokens": 0}},
            })
        elif model == "whisper-1":
            reply.json({"text": "Hello there. General Kenobi.", "usage": {"type": "duration", "seconds": 3}})
        elif model == "gpt-transcribe":  # detected languages as a list, and token usage
            reply.json({"text": "Hello there. General Kenobi.", "languages": [{"code": "en"}],
                        "usage": {"type": "tokens", "input_tokens": 40, "output_tokens": 8, "total_tokens": 48,
                                  "input_token_details": {"audio_tokens": 40, "text_tokens": 0}}})
        else:
            reply.json({"text": "Hello there. General Kenobi.",
                        "usage": {"type": "tokens", "input_tokens": 40, "output_tokens": 8, "total_tokens": 48,
                                  "input_token_details": {"audio_tokens": 40, "text_tokens": 0}}})
