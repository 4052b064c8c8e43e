"""A fake Anthropic Messages API speaking the real wire format (JSON and SSE).

It checks requests the way the real API does where it matters to the
provider (the API key, in ``x-api-key`` or ``Authorization: Bearer``, the ``anthropic-version`` headers, ``max_tokens``,
roles that start with ``user`` and alternate, non-blank text blocks, image
media types that match the bytes, PDFs that are PDFs) and answers with a
``message`` JSON or the ``message_start`` ... ``message_stop`` event stream.
Errors use Anthropic's envelope ``{"type": "error", "error": {"type", "message"}}`` (plus
``details`` where the SDK reads an ``error_code``). Like the real API it refuses a body over 32 MB
(413 ``request_too_large``), an image over 5 MB of base64 or over 8000 px on a side (2000 px in a
request of more than 20 images), more than 100 images and more than 100 PDF pages in one request.
"""

from __future__ import annotations

import base64
import binascii
import io
import time
import typing
from dataclasses import dataclass
from typing import Any

from anthropic.types.model import Model

from .base import FakeUpstream, Recorded, Reply

API_KEY = "sk-ant-test-0123456789abcdef"
#: The models the API answers: those the installed SDK names (newer than the plugin's catalogue too)
#: and the plugin's catalogue.
KNOWN_MODELS = frozenset(
    {name for arg in typing.get_args(Model) for name in typing.get_args(arg)}
    | {"claude-sonnet-4-6", "claude-sonnet-4-5", "claude-opus-4-5", "claude-haiku-4-5"}
)
#: The Claude 4.5 models (and their dated snapshots), the last with a 200k-token context window and
#: prefill. The API answers 400 to a prefill on the others (Claude 4.6 and later:
#: platform.claude.com/docs/en/api/errors, "Prefill not supported"), which hold 1M tokens.
CLAUDE_4_5 = ("claude-sonnet-4-5", "claude-opus-4-5", "claude-haiku-4-5")
IMAGE_MAGIC = {
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/gif": (b"GIF87a", b"GIF89a"),
    "image/webp": (b"RIFF",),
}


#: The API's size limits (see mmrouter_anthropic.limits for the sources).
MAX_REQUEST_BYTES = 32 * 1024 * 1024
MAX_IMAGE_BASE64 = 5 * 1024 * 1024
#: Images and PDF pages per request: 100 for a 200k-token context window, 600 for a larger one.
MAX_IMAGES = 100
MAX_PDF_PAGES = 100
MAX_ITEMS_LARGE_CONTEXT = 600


def error_body(err_type: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    """Anthropic's error envelope."""
    error: dict[str, Any] = {"type": err_type, "message": message}
    if details is not None:
        error["details"] = details
    return {"type": "error", "error": error, "request_id": "req_fake"}


@dataclass
class Block:
    """One media block the fake received, decoded."""

    type: str  # "image" or "document"
    source_type: str  # "base64", "text" or "url"
    media_type: str
    data: bytes
    title: str | None = None


class RequestRejected(Exception):
    """A request the real API would refuse: its status, error type, message and details."""

    def __init__(self, status: int, err_type: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status, self.err_type, self.message, self.details = status, err_type, message, details


def _check_block(block: Any, where: str, role: str) -> None:
    if not isinstance(block, dict) or "type" not in block:
        raise RequestRejected(400, "invalid_request_error", f"{where}: content block must be an object")
    kind = block["type"]
    if kind == "text":
        if not isinstance(block.get("text"), str) or not block["text"].strip():
            raise RequestRejected(400, "invalid_request_error", f"{where}: text content blocks must be non-empty")
        return
    if role != "user":
        raise RequestRejected(400, "invalid_request_error", f"{where}: {kind} blocks are allowed only in user turns")
    source = block.get("source") or {}
    if kind == "image" and source.get("type") == "base64":
        media_type = source.get("media_type")
        if media_type not in IMAGE_MAGIC:
            raise RequestRejected(400, "invalid_request_error", f"{where}.source.media_type: bad {media_type!r}")
        encoded = len(source.get("data") or "")
        if encoded > MAX_IMAGE_BASE64:
            raise RequestRejected(400, "invalid_request_error", f"{where}.source.base64: image exceeds 5 MB "
                                                                f"maximum: {encoded} bytes > {MAX_IMAGE_BASE64} bytes")
        data = _b64(source.get("data"), where)
        if not data.startswith(IMAGE_MAGIC[media_type]):
            raise RequestRejected(400, "invalid_request_error",
                                  f"{where}: Image does not match the provided media type {media_type}")
    elif kind == "document" and source.get("type") == "base64":
        if source.get("media_type") != "application/pdf":
            raise RequestRejected(400, "invalid_request_error", f"{where}: documents must be application/pdf")
        if not _b64(source.get("data"), where).startswith(b"%PDF-"):
            raise RequestRejected(400, "invalid_request_error", f"{where}: The PDF specified was not valid")
    elif kind == "document" and source.get("type") == "text":
        if source.get("media_type") != "text/plain" or not isinstance(source.get("data"), str):
            raise RequestRejected(400, "invalid_request_error", f"{where}: bad text document source")
    elif kind in ("image", "document") and source.get("type") == "url":
        if not str(source.get("url", "")).startswith(("http://", "https://")):
            raise RequestRejected(400, "invalid_request_error", f"{where}: bad url")
    else:
        raise RequestRejected(400, "invalid_request_error", f"{where}: unsupported block {kind!r}")


def _b64(value: Any, where: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise RequestRejected(400, "invalid_request_error", f"{where}: invalid base64 data") from None


def _image_sides(block: dict[str, Any]) -> int:
    """The longest side of a base64 image block, in pixels (0 for an image by URL or one PIL cannot read)."""
    from PIL import Image, UnidentifiedImageError

    source = block["source"]
    if source.get("type") != "base64":
        return 0
    try:
        with Image.open(io.BytesIO(base64.b64decode(source["data"]))) as image:
            return max(image.size)
    except (UnidentifiedImageError, OSError, ValueError):
        return 0


def _pdf_pages(block: dict[str, Any]) -> int:
    """The pages of a base64 PDF document block (0 for others, and for a PDF pypdf cannot read)."""
    import pypdf

    source = block["source"]
    if source.get("type") != "base64" or source.get("media_type") != "application/pdf":
        return 0
    try:
        return len(pypdf.PdfReader(io.BytesIO(base64.b64decode(source["data"]))).pages)
    except (pypdf.errors.PyPdfError, OSError, ValueError):
        return 0


def check_sizes(messages: list[dict[str, Any]], model: str = "") -> None:
    """Refuse the request over the image count, image sides or PDF pages, as the real API does (counts
    of ``model``'s context window: 100 for Claude 4.5, 600 for later models)."""
    max_images = MAX_IMAGES if model.startswith(CLAUDE_4_5) else MAX_ITEMS_LARGE_CONTEXT
    max_pages = MAX_PDF_PAGES if model.startswith(CLAUDE_4_5) else MAX_ITEMS_LARGE_CONTEXT
    blocks = [(f"messages.{i}.content.{j}", block) for i, m in enumerate(messages)
              if isinstance(m["content"], list) for j, block in enumerate(m["content"])]
    images = [(where, b) for where, b in blocks if b["type"] == "image"]
    if len(images) > max_images:
        raise RequestRejected(400, "invalid_request_error",
                              f"messages: Too many images: {len(images)} > {max_images} images per request")
    max_side = 2000 if len(images) > 20 else 8000
    over = [where for where, b in images if _image_sides(b) > max_side]
    if over:
        raise RequestRejected(
            400, "invalid_request_error",
            f"{over[0]}.image.source.base64.data: At least one of the image dimensions exceed max allowed "
            f"size: {max_side} pixels",
            {"error_code": "image_dimensions_too_large", "max_side_length_pixels": max_side, "paths": over})
    if sum(_pdf_pages(b) for _, b in blocks if b["type"] == "document") > max_pages:
        raise RequestRejected(400, "invalid_request_error",
                              f"A maximum of {max_pages} PDF pages may be provided.")


def validate(body: Any) -> None:
    """Raise :class:`RequestRejected` where the real Messages API would refuse ``body``."""
    if not isinstance(body, dict):
        raise RequestRejected(400, "invalid_request_error", "body must be a JSON object")
    for key in ("model", "max_tokens", "messages"):
        if key not in body:
            raise RequestRejected(400, "invalid_request_error", f"{key}: Field required")
    if not isinstance(body["max_tokens"], int) or body["max_tokens"] < 1:
        raise RequestRejected(400, "invalid_request_error", "max_tokens: must be a positive integer")
    for sampling in ("temperature", "top_p", "top_k"):  # API version 2026-10-21 removed them
        if sampling in body:
            raise RequestRejected(400, "invalid_request_error", f"{sampling}: Extra inputs are not permitted")
    system = body.get("system")
    if system is not None and not isinstance(system, str | list):
        raise RequestRejected(400, "invalid_request_error", "system: must be a string or text blocks")
    messages = body["messages"]
    if not isinstance(messages, list) or not messages:
        raise RequestRejected(400, "invalid_request_error", "messages: at least one message is required")
    if messages[0].get("role") != "user":
        raise RequestRejected(400, "invalid_request_error", "messages: first message must use the user role")
    for i, message in enumerate(messages):
        role = message.get("role")
        if role not in ("user", "assistant"):
            raise RequestRejected(400, "invalid_request_error", f"messages.{i}.role: bad role {role!r}")
        if i and messages[i - 1]["role"] == role:
            raise RequestRejected(400, "invalid_request_error", "messages: roles must alternate")
        content = message.get("content")
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        if not isinstance(content, list) or not content:
            raise RequestRejected(400, "invalid_request_error", f"messages.{i}: content must be non-empty")
        for j, block in enumerate(content):
            _check_block(block, f"messages.{i}.content.{j}", role)
    check_sizes(messages, str(body.get("model", "")))
    last = messages[-1]
    if last["role"] == "assistant" and not str(body.get("model", "")).startswith(CLAUDE_4_5):
        raise RequestRejected(400, "invalid_request_error", "This model does not support assistant message "
                                                            "prefill. The conversation must end with a user message.")
    if last["role"] == "assistant":
        final = last["content"] if isinstance(last["content"], str) else last["content"][-1].get("text", "")
        if final != final.rstrip():
            raise RequestRejected(400, "invalid_request_error",
                                  "final assistant content cannot end with trailing whitespace")


def sent_key(request: Recorded) -> str | None:
    """The API key a request carried: ``x-api-key``, or ``Authorization: Bearer`` (newer SDKs)."""
    if "x-api-key" in request.headers:
        return request.headers["x-api-key"]
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token if scheme.lower() == "bearer" and token else None


def media_blocks(body: dict[str, Any]) -> list[Block]:
    """Every image and document block of a request body, decoded, in order."""
    found: list[Block] = []
    for message in body["messages"]:
        content = message["content"]
        for block in content if isinstance(content, list) else []:
            if block["type"] not in ("image", "document"):
                continue
            source = block["source"]
            if source["type"] == "base64":
                data = base64.b64decode(source["data"])
            elif source["type"] == "text":
                data = source["data"].encode()
            else:
                data = source["url"].encode()
            found.append(Block(block["type"], source["type"], source.get("media_type", ""), data,
                               block.get("title")))
    return found


class FakeAnthropic(FakeUpstream):
    """The fake Messages API. Set ``chunks``, ``input_tokens`` and ``output_tokens`` to shape answers,
    ``stream_error`` to send an ``error`` event after the first delta, ``delay`` to answer late;
    ``truncate_next`` cuts a stream short (its body ends cleanly, without ``message_stop``)."""

    def __init__(self, api_key: str = API_KEY) -> None:
        super().__init__()
        self.api_key = api_key
        self.chunks: list[str] = ["Hello", " from", " fake", " Claude."]
        self.input_tokens = 31
        self.output_tokens = 9
        self.stream_error: tuple[str, str] | None = None
        #: The streamed message's ``stop_reason`` ("max_tokens", "refusal", ...).
        self.stop_reason = "end_turn"
        self.delay = 0.0
        #: Raw answers (status, body, content type, headers) to give the next requests instead of the
        #: API's, one per request in order: a proxy's HTML error page, a redirect (see :meth:`page_next`).
        self.pages: list[tuple[int, bytes, str, dict[str, str]]] = []

    # -- what was received -------------------------------------------------------------------
    def message_calls(self) -> list[Recorded]:
        """The POST /v1/messages requests received, in order."""
        return [r for r in self.requests if r.method == "POST" and r.path == "/v1/messages"]

    def last_body(self) -> dict[str, Any]:
        """The JSON body of the last messages call."""
        calls = self.message_calls()
        assert calls, "the fake received no messages call"
        return calls[-1].json()

    def fail_next_api(self, status: int, err_type: str, message: str,
                      headers: dict[str, str] | None = None) -> None:
        """Answer the next request with an Anthropic-shaped error."""
        self.fail_next(status, error_body(err_type, message), headers)

    def page_next(self, status: int, body: bytes | str, content_type: str = "text/html",
                  headers: dict[str, str] | None = None) -> None:
        """Answer the next request with ``body`` as is (not Anthropic's envelope), as a proxy or
        gateway before the API may: an nginx error page, a captive portal's 200 page, a 3xx ``Location``."""
        data = body.encode() if isinstance(body, str) else body
        self.pages.append((status, data, content_type, dict(headers or {})))

    # -- answering ---------------------------------------------------------------------------
    def handle(self, request: Recorded, reply: Reply) -> None:
        if self.pages:  # whatever the path: a gateway answers for any
            status, body, content_type, headers = self.pages.pop(0)
            reply.raw(body, status, content_type, headers)
            return
        if request.method != "POST" or request.path != "/v1/messages":
            reply.json(error_body("not_found_error", f"Not found: {request.path}"), 404)
            return
        if sent_key(request) != self.api_key:
            reply.json(error_body("authentication_error", "invalid x-api-key"), 401)
            return
        if not request.headers.get("anthropic-version"):
            reply.json(error_body("invalid_request_error", "anthropic-version: header is required"), 400)
            return
        if len(request.body) > MAX_REQUEST_BYTES:
            reply.json(error_body("request_too_large", "Request exceeds the maximum allowed number of bytes. "
                                                       "The maximum request size is 32 MB."), 413)
            return
        try:
            body = request.json()
            validate(body)
        except RequestRejected as exc:
            reply.json(error_body(exc.err_type, exc.message, exc.details), exc.status)
            return
        except ValueError:
            reply.json(error_body("invalid_request_error", "body is not JSON"), 400)
            return
        if body["model"] not in KNOWN_MODELS:
            reply.json(error_body("not_found_error", f"model: {body['model']}"), 404)
            return
        if self.delay:
            time.sleep(self.delay)
        try:
            if body.get("stream"):
                reply.sse(self._events(body["model"]))
            else:
                reply.json(self._message(body["model"]))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client hung up mid-answer (cancelled or timed out): nothing to do

    def _usage(self, output_tokens: int) -> dict[str, Any]:
        return {"input_tokens": self.input_tokens, "output_tokens": output_tokens,
                "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}

    def _message(self, model: str) -> dict[str, Any]:
        return {"id": "msg_fake", "type": "message", "role": "assistant", "model": model,
                "content": [{"type": "text", "text": "".join(self.chunks)}],
                "stop_reason": "end_turn", "stop_sequence": None, "usage": self._usage(self.output_tokens)}

    def _events(self, model: str) -> list[tuple[str, Any]]:
        start = {**self._message(model), "content": [], "stop_reason": None, "usage": self._usage(1)}
        events: list[tuple[str, Any]] = [
            ("message_start", {"type": "message_start", "message": start}),
            ("content_block_start", {"type": "content_block_start", "index": 0,
                                     "content_block": {"type": "text", "text": ""}}),
            ("ping", {"type": "ping"}),
        ]
        for n, chunk in enumerate(self.chunks):
            events.append(("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                   "delta": {"type": "text_delta", "text": chunk}}))
            if n == 0 and self.stream_error is not None:
                events.append(("error", error_body(*self.stream_error)))
                return events
        events += [
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            ("message_delta", {"type": "message_delta",
                               "delta": {"stop_reason": self.stop_reason, "stop_sequence": None},
                               "usage": {"output_tokens": self.output_tokens}}),
            ("message_stop", {"type": "message_stop"}),
        ]
        return events
