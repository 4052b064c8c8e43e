"""Chat Completions: turn a router request into OpenAI messages and stream the answer.

Images go as ``image_url`` parts (a data URL for bytes, the URL itself for
URL media); audio goes as ``input_audio`` parts (base64 wav or mp3) for the
audio models. Text-only messages are sent as plain strings, which every
OpenAI-compatible server accepts.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from router import (
    Media,
    Message,
    Modality,
    ModelInfo,
    ProviderBadRequest,
    Request,
    Role,
    TextDelta,
    Usage,
    UsageReport,
)

if TYPE_CHECKING:
    from openai import AsyncOpenAI

#: What ``input_audio.format`` accepts, by MIME type.
AUDIO_FORMATS = {
    "audio/wav": "wav", "audio/x-wav": "wav", "audio/wave": "wav", "audio/vnd.wave": "wav",
    "audio/mpeg": "mp3", "audio/mp3": "mp3",
}


#: Non-standard MIME types clients send, and the registered type the API expects instead.
MIME_ALIASES = {"image/jpg": "image/jpeg", "image/pjpeg": "image/jpeg", "image/x-png": "image/png",
                "audio/x-wav": "audio/wav", "audio/wave": "audio/wav", "audio/vnd.wave": "audio/wav",
                "audio/mp3": "audio/mpeg", "audio/x-m4a": "audio/mp4", "audio/m4a": "audio/mp4",
                "audio/x-flac": "audio/flac"}


def normalise_mime(mime_type: str) -> str:
    """The lower-case MIME type without parameters, with common aliases resolved (``image/jpg`` -> ``image/jpeg``)."""
    base = mime_type.split(";", 1)[0].strip().lower()
    return MIME_ALIASES.get(base, base)


def data_url(media: Media) -> str:
    """``data:<mime>;base64,...`` for media with local bytes (the MIME type normalised)."""
    data = base64.b64encode(media.read_bytes()).decode("ascii")
    return f"data:{normalise_mime(media.mime_type)};base64,{data}"


def _media_part(provider: str, model: ModelInfo, media: Media, where: str) -> dict[str, Any]:
    if media.modality not in model.inputs:
        raise ProviderBadRequest(provider, f"{model.name} does not take {media.modality.value} input ({where})")
    if media.modality is Modality.IMAGE:
        url = media.url if media.url and media.data is None and media.path is None else data_url(media)
        return {"type": "image_url", "image_url": {"url": url}}
    if media.modality is Modality.AUDIO:
        fmt = AUDIO_FORMATS.get(normalise_mime(media.mime_type))
        if fmt is None:
            raise ProviderBadRequest(provider, f"{model.name} takes audio as wav or mp3 only, "
                                               f"got {media.mime_type} ({where})")
        if media.data is None and media.path is None:
            raise ProviderBadRequest(provider, f"{model.name} cannot fetch audio by URL ({where})")
        data = base64.b64encode(media.read_bytes()).decode("ascii")
        return {"type": "input_audio", "input_audio": {"data": data, "format": fmt}}
    raise ProviderBadRequest(provider, f"{model.name} does not take {media.modality.value} input ({where})")


def _message(provider: str, model: ModelInfo, message: Message, index: int) -> dict[str, Any]:
    role = message.role.value
    has_media = any(p.media is not None for p in message.parts)
    if message.role is not Role.USER or not has_media:
        if has_media:
            raise ProviderBadRequest(provider, f"messages[{index}]: only user messages may carry media")
        return {"role": role, "content": message.text}
    content: list[dict[str, Any]] = []
    for j, part in enumerate(message.parts):
        if part.media is not None:
            content.append(_media_part(provider, model, part.media, f"messages[{index}].parts[{j}]"))
        elif part.text:
            content.append({"type": "text", "text": part.text})
    return {"role": role, "content": content}


def build_messages(provider: str, model: ModelInfo, request: Request) -> list[dict[str, Any]]:
    """The ``messages`` array for ``request``: system prompts, history and the question, in order."""
    return [_message(provider, model, m, i) for i, m in enumerate(request.messages)]


def build_params(provider: str, model: ModelInfo, request: Request, *, legacy_max_tokens: bool,
                 output_limit: int = 0) -> dict[str, Any]:
    """Keyword arguments for ``chat.completions.create`` (streaming with usage at the end).

    The request's ``max_output_tokens`` is capped at ``output_limit``, the model's output limit from the
    catalogue (0: unknown, not capped): the API refuses larger values.
    """
    params: dict[str, Any] = {
        "model": model.name,
        "messages": build_messages(provider, model, request),
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    opts = request.options
    if opts.max_output_tokens > 0:
        wanted = min(opts.max_output_tokens, output_limit) if output_limit > 0 else opts.max_output_tokens
        params["max_tokens" if legacy_max_tokens else "max_completion_tokens"] = wanted
    if opts.temperature is not None:
        params["temperature"] = opts.temperature
    return params


async def stream_chat(client: AsyncOpenAI, params: dict[str, Any], timeout: float) -> AsyncIterator[Any]:
    """Yield :class:`TextDelta` events as chunks arrive, then one :class:`UsageReport`.

    The request goes through the SDK's own client (auth, headers, base URL, error mapping to
    ``openai.APIStatusError`` and friends), but as a raw streamed response: the SSE events are
    decoded here with ``json.loads`` instead of being validated into ``ChatCompletionChunk``
    models, and the parameters (already plain JSON) skip the SDK's typed-dict transform. This
    halves the plugin's CPU per request and per chunk. The HTTP response is closed when the
    consumer stops early (cancellation).
    """
    import httpx2
    import openai

    response = await client.post("/chat/completions", cast_to=httpx2.Response, body=params,
                                 options={"timeout": timeout}, stream=True)
    usage = Usage()
    done = False
    try:
        async for data in _sse_data(response, openai, httpx2):
            # After [DONE] the rest of the body is read (and ignored) so the connection is reused.
            if done or data.startswith("[DONE]"):
                done = True
                continue
            try:
                chunk = json.loads(data)
            except ValueError:
                raise openai.APIError("the server sent a stream event that is not JSON",
                                      request=response.request, body=data[:200]) from None
            if not isinstance(chunk, dict):
                continue
            error = chunk.get("error")
            if error:
                message = error.get("message") if isinstance(error, dict) else None
                raise openai.APIError(message if isinstance(message, str) and message
                                      else "An error occurred during streaming", request=response.request, body=error)
            u = chunk.get("usage")
            if u:
                details = u.get("prompt_tokens_details") or {}
                usage = Usage(input_tokens=u.get("prompt_tokens") or 0, output_tokens=u.get("completion_tokens") or 0,
                              audio_input_tokens=details.get("audio_tokens") or 0)
            choices = chunk.get("choices")
            if choices:
                delta = choices[0].get("delta")
                text = delta.get("content") if delta else None
                if text:
                    yield TextDelta(text)
    finally:
        await response.aclose()
    yield UsageReport(usage)


async def _sse_data(response: Any, openai: Any, httpx2: Any) -> AsyncIterator[str]:
    """The ``data`` of each server-sent event of ``response`` (multi-line data joined by newlines)."""
    buffer = b""
    data: list[bytes] = []
    try:
        async for piece in response.aiter_bytes():
            buffer += piece
            if b"\n" not in piece and b"\r" not in piece:
                continue
            lines = buffer.splitlines(keepends=True)
            buffer = lines.pop() if not lines[-1].endswith((b"\n", b"\r")) else b""
            for line in lines:
                line = line.rstrip(b"\r\n")
                if not line:  # the blank line ends an event
                    if data:
                        yield b"\n".join(data).decode("utf-8")
                        data = []
                elif line.startswith(b"data:"):
                    value = line[5:]
                    data.append(value[1:] if value.startswith(b" ") else value)
        if buffer.strip().startswith(b"data:"):
            value = buffer.strip()[5:]
            data.append(value[1:] if value.startswith(b" ") else value)
        if data:
            yield b"\n".join(data).decode("utf-8")
    except httpx2.TimeoutException as exc:
        raise openai.APITimeoutError(request=response.request) from exc
    except httpx2.RequestError as exc:
        raise openai.APIConnectionError(request=response.request) from exc
