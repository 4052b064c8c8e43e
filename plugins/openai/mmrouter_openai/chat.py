"""Chat Completions: turn a router request into OpenAI messages and stream the answer.

Images go as ``image_url`` parts (a data URL for bytes, the URL itself for
URL media); audio goes as ``input_audio`` parts (base64 wav or mp3) for the
audio models. Text-only messages are sent as plain strings, which every
OpenAI-compatible server accepts.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import secrets
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

from router import (
    FinishReason,
    Media,
    Message,
    Modality,
    ModelInfo,
    ProviderBadRequest,
    ProviderUnsupportedInput,
    Request,
    Role,
    TextDelta,
    Usage,
    UsageReport,
)
from router.contract import usage_count
from router.mime import normalise_mime
from router.sdk_http import read_rest, retries_within, sse_events
from router.sniff import animated_gif

from .errors import NOT_JSON, BadAnswer, page_not_answer, whole_request_timeout

if TYPE_CHECKING:
    from openai import AsyncOpenAI

#: What ``input_audio.format`` accepts, by normalised MIME type (:func:`router.mime.normalise_mime`).
AUDIO_FORMATS = {"audio/wav": "wav", "audio/mpeg": "mp3"}


#: Chat Completions' ``finish_reason`` values (others, like ``tool_calls``, are OTHER), and those of
#: compatible servers that mean the model stopped (``eos``, ``eos_token``: TGI, llama.cpp wrappers).
FINISH_REASONS = {"stop": FinishReason.STOP, "length": FinishReason.LENGTH,
                  "content_filter": FinishReason.CONTENT_FILTER, "eos": FinishReason.STOP,
                  "eos_token": FinishReason.STOP}


#: Why a stream event is refused whose data is not UTF-8, or not JSON.
NOT_UTF8_EVENT = "the server sent a stream event that is not valid UTF-8"
NOT_JSON_EVENT = "the server sent a stream event that is not JSON"

#: Why a stream with neither ``data: [DONE]`` nor a finish_reason is refused: OpenAI ends every Chat
#: Completions stream with [DONE] (after the usage chunk when one is asked for); a few OpenAI-compatible
#: servers end after the finish_reason chunk instead.
INCOMPLETE_STREAM = "the stream ended before the answer was complete (no finish_reason, no [DONE])"


class Base64Of:
    """Placeholder for the base64 text of a media's bytes in built parameters.

    :func:`build_params` runs on the event loop and only checks the request; the bytes are read
    and encoded by :func:`request_body` in a worker thread, once per distinct media.
    """

    def __init__(self, media: Media, prefix: str = "") -> None:
        self.media = media
        self.prefix = prefix

    def key(self) -> tuple[object, str]:
        """What identifies the text: the media's id when stored (else the object) and the prefix."""
        return self.media.media_id or id(self.media), self.prefix

    def json_bytes(self) -> bytes:
        """The text as a JSON string: prefix and base64 (blocking: reads a stored file)."""
        data = base64.b64encode(self.media.read_bytes())
        return json.dumps(self.prefix).encode()[:-1] + data + b'"'


def data_url(media: Media) -> Base64Of:
    """``data:<mime>;base64,...`` for media with local bytes (the MIME type normalised), encoded later."""
    return Base64Of(media, f"data:{normalise_mime(media.mime_type)};base64,")


def _media_part(provider: str, model: ModelInfo, media: Media, where: str) -> dict[str, Any]:
    if media.modality not in model.inputs:
        raise ProviderBadRequest(provider, f"{model.name} does not take {media.modality.value} input ({where})")
    if media.modality is Modality.IMAGE:
        url = media.url if media.url and media.data is None and media.path is None else data_url(media)
        return {"type": "image_url", "image_url": {"url": url}}
    if media.modality is Modality.AUDIO:
        fmt = AUDIO_FORMATS.get(normalise_mime(media.mime_type))
        if fmt is None:  # retryable: a bridge (whisper-1) or the rule's next target may take it
            raise ProviderUnsupportedInput(provider, f"{model.name} takes audio as wav or mp3 only, "
                                                     f"got {media.mime_type} ({where})")
        if media.data is None and media.path is None:  # input_audio carries bytes only: retryable, as above
            raise ProviderUnsupportedInput(provider, f"{model.name} cannot fetch audio by URL ({where}; "
                                                     "upload it with UploadMedia; refused before sending)")
        return {"type": "input_audio", "input_audio": {"data": Base64Of(media), "format": fmt}}
    raise ProviderBadRequest(provider, f"{model.name} does not take {media.modality.value} input ({where})")


def local_gifs(request: Request) -> list[Media]:
    """The GIF images of ``request`` with local bytes (those sent inline, which can be checked)."""
    return [m for m in request.media() if m.modality is Modality.IMAGE and normalise_mime(m.mime_type) == "image/gif"
            and (m.data is not None or m.path is not None)]


def part_place(index: int, j: int) -> str:
    """How errors name part ``j`` of message ``index`` of a request: ``messages[0].parts[1]``."""
    return f"messages[{index}].parts[{j}]"


def refuse_animated_gifs(provider: str, model: ModelInfo, gifs: list[Media],
                         places: Mapping[int, str] | None = None) -> None:
    """Raise :class:`ProviderUnsupportedInput` (retryable: the rule's next target is tried) for the first
    animated one of ``gifs``, which OpenAI's chat models refuse, naming it by its file name, else as the router
    names it (``places``, :func:`router.bridging.part_names`: "part 2 of message 1", counting the messages the
    client sent; one sent by ``media_id`` has no file name). Blocking: reads stored files."""
    for media in gifs:
        if animated_gif(media.data if media.data is not None else media.path):
            name = repr(media.filename) if media.filename else (places or {}).get(id(media), "")
            raise ProviderUnsupportedInput(provider, f"{model.name} takes still GIFs only; the GIF"
                                                     f"{f' {name}' if name else ''} is animated (refused before sending)")


#: A media's place in the serialised parameters (compiled once: a per-request pattern would be
#: compiled on every call).
_MARKER = re.compile(rb'"mmrouter-media-([0-9a-f]{16})-(\d+)"')


def request_body(params: dict[str, Any]) -> bytes:
    """The JSON body of a ``/chat/completions`` call with its media read and base64-encoded, each
    distinct media once however many parts name it. Blocking: run it in a worker thread.

    The parameters are serialised with a marker in place of each media, and the encoded media are
    spliced in: the JSON encoder (which holds the GIL, so stalls the event loop too) never scans
    the base64 text, which needs no escaping.
    """
    token = secrets.token_hex(8)  # user text naming a marker cannot guess it: it stays text
    refs: list[Base64Of] = []

    def mark(value: Any) -> Any:
        if isinstance(value, Base64Of):
            refs.append(value)
            return f"mmrouter-media-{token}-{len(refs) - 1}"
        if isinstance(value, dict):
            return {k: mark(v) for k, v in value.items()}
        if isinstance(value, list):
            return [mark(v) for v in value]
        return value

    skeleton = json.dumps(mark(params), ensure_ascii=False, separators=(",", ":")).encode()
    if not refs:
        return skeleton
    pieces: list[bytes] = []
    encoded: dict[tuple[object, str], bytes] = {}
    end = 0
    for found in _MARKER.finditer(skeleton):
        if found[1] != token.encode():
            continue
        ref = refs[int(found[2])]
        if ref.key() not in encoded:
            encoded[ref.key()] = ref.json_bytes()
        pieces += [skeleton[end:found.start()], encoded[ref.key()]]
        end = found.end()
    pieces.append(skeleton[end:])
    return b"".join(pieces)


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
            content.append(_media_part(provider, model, part.media, part_place(index, j)))
        elif part.text:
            content.append({"type": "text", "text": part.text})
    return {"role": role, "content": content}


def build_messages(provider: str, model: ModelInfo, request: Request) -> list[dict[str, Any]]:
    """The ``messages`` array for ``request``: system prompts first (a session's history comes before
    this turn's system messages in ``request``; many chat templates of OpenAI-compatible servers refuse
    a system message after the conversation began), then the conversation in order."""
    indexed = list(enumerate(request.messages))
    ordered = [im for im in indexed if im[1].role is Role.SYSTEM] + [im for im in indexed if im[1].role is not Role.SYSTEM]
    return [_message(provider, model, m, i) for i, m in ordered]


def build_params(provider: str, model: ModelInfo, request: Request, *, legacy_max_tokens: bool,
                 output_limit: int = 0, stream_usage: bool = True) -> dict[str, Any]:
    """Keyword arguments for ``chat.completions.create`` (streaming, with usage at the end when
    ``stream_usage``: ``stream_options``, which some compatible servers refuse, is left out without it).

    The request's ``max_output_tokens`` is capped at ``output_limit``, the model's output limit from the
    catalogue (0: unknown, not capped): the API refuses larger values.
    """
    params: dict[str, Any] = {
        "model": model.name,
        "messages": build_messages(provider, model, request),
        "stream": True,
    }
    if stream_usage:
        params["stream_options"] = {"include_usage": True}
    opts = request.options
    if opts.max_output_tokens > 0:
        wanted = min(opts.max_output_tokens, output_limit) if output_limit > 0 else opts.max_output_tokens
        params["max_tokens" if legacy_max_tokens else "max_completion_tokens"] = wanted
    if opts.temperature is not None and model.takes_temperature:  # else left out (the route says so)
        params["temperature"] = opts.temperature
    return params


async def stream_chat(client: AsyncOpenAI, params: dict[str, Any], timeout: float,
                      with_media: bool = True, deadline: float | None = None) -> AsyncIterator[Any]:
    """Yield :class:`TextDelta` events as chunks arrive, then one :class:`UsageReport`; a stream that
    ends with neither ``data: [DONE]`` nor a finish_reason raises ``openai.APIError`` (the answer is cut),
    and so does an HTML page (a proxy's login page) answered instead of a stream, unread.
    A compatible server that ignores ``"stream": true`` and answers one JSON chat completion is read whole.
    Content given as a list of parts is taken as its text parts (:func:`content_text`); a chunk or
    completion whose fields have another wrong shape raises :class:`BadAnswer`. An event that is not valid
    UTF-8 or not JSON raises ``openai.APIError`` saying which (:data:`NOT_UTF8_EVENT`, :data:`NOT_JSON_EVENT`),
    without the event as its body: errors.py would take that body for the provider's message.

    The request goes through the SDK's own client (auth, headers, base URL, error mapping to
    ``openai.APIStatusError`` and friends), but as a raw streamed response: the SSE events are
    decoded here with ``json.loads`` instead of being validated into ``ChatCompletionChunk``
    models, and the parameters (already plain JSON) skip the SDK's typed-dict transform. This
    halves the plugin's CPU per request and per chunk. The HTTP response is closed when the
    consumer stops early (cancellation). With media (``with_media``) the body is built in a worker
    thread (:func:`request_body`: media read, encoded and serialised there), so large images or audio
    do not stall the event loop. The SDK's retries (``max_retries``) stay within ``deadline``, the call's
    (:func:`router.sdk_http.retries_within`).
    """
    import httpx2
    import openai

    # a text-only body is small: a thread hop would cost more than serialising it here
    body = await asyncio.to_thread(request_body, params) if with_media else request_body(params)
    async with whole_request_timeout(timeout, client, "chat/completions"):
        with retries_within(deadline, client.max_retries):
            response = await client.post("/chat/completions", cast_to=httpx2.Response, content=body,
                                         options={"timeout": timeout}, stream=True)
    content_type = response.headers.get("content-type", "")
    if content_type.startswith("text/html"):  # a proxy's or captive portal's page: no stream, no answer
        await response.aclose()
        raise openai.APIError(page_not_answer("an event stream", f"type {content_type.split(';')[0]}"),
                              request=response.request, body=None)
    if content_type.startswith("application/json"):
        # an OpenAI-compatible server that ignores "stream": one chat completion, answered whole
        try:
            completion = json.loads(await response.aread())
        except httpx2.TimeoutException as exc:
            raise openai.APITimeoutError(request=response.request) from exc
        except httpx2.RequestError as exc:
            raise _broke_while_read(exc, response.request) from exc
        except ValueError:
            raise openai.APIError(NOT_JSON, request=response.request, body=None) from None
        finally:
            await response.aclose()
        for event in _whole_completion(completion, response.request):
            yield event
        return
    usage = Usage()
    finish: FinishReason | None = None
    done = False
    try:
        events = sse_events(response.aiter_bytes())
        async for event in events:
            data = event.data
            if data.startswith(b"[DONE]"):
                done = True
                break
            try:
                chunk = json.loads(data)
            except ValueError as exc:  # bad UTF-8 or bad JSON, said as such: no body (the event is no message)
                raise openai.APIError(NOT_UTF8_EVENT if isinstance(exc, UnicodeDecodeError) else NOT_JSON_EVENT,
                                      request=response.request, body=None) from None
            if not isinstance(chunk, dict):
                continue
            error = chunk.get("error")
            if error:
                message = error.get("message") if isinstance(error, dict) else None
                raise openai.APIError(message if isinstance(message, str) and message
                                      else "An error occurred during streaming", request=response.request, body=error)
            u = chunk.get("usage")
            if u:
                usage = usage_of(u)
            choices = chunk.get("choices")
            if not choices:
                continue
            try:  # the fields' shapes are trusted (no cost): a wrong one fails on its way
                choice = choices[0]
                delta = choice.get("delta")
                reason = choice.get("finish_reason")
                text = delta.get("content") if delta else None
                refusal = delta.get("refusal") if delta else None  # the model declining: its explanation
            except (AttributeError, KeyError, TypeError):
                raise BadAnswer(f"a chunk's choices are not a list of objects with an object delta: "
                                f"{_excerpt(chunk)}") from None
            if text:
                if not isinstance(text, str):
                    text = content_text(text, "a chunk's delta.content")
                if text:
                    yield TextDelta(text)
            if refusal:
                finish = FinishReason.REFUSAL
                yield TextDelta(_refusal_text(refusal, "a chunk's delta.refusal"))
            if reason and finish is not FinishReason.REFUSAL:
                finish = finish_reason_of(reason)
        if done:  # the rest of the body is read (and ignored) so the connection is reused
            await read_rest(events, timeout)
        elif finish is None:
            # The body ended cleanly but early (a dead server behind a proxy, a body delimited by
            # connection close): the answer is cut, so this is a failed call, not a short answer.
            # (Some OpenAI-compatible servers end with the finish_reason chunk and send no [DONE].)
            if usage != Usage():  # billed all the same
                yield UsageReport(usage, finish)
            raise openai.APIError(INCOMPLETE_STREAM, request=response.request, body=None)
    except httpx2.TimeoutException as exc:  # while the body is read: as the SDK reports them
        raise openai.APITimeoutError(request=response.request) from exc
    except httpx2.RequestError as exc:
        raise _broke_while_read(exc, response.request) from exc
    finally:
        await response.aclose()
    yield UsageReport(usage, finish)


def _broke_while_read(exc: BaseException, request: Any) -> Exception:
    """The SDK error for a connection that broke while the answer was read (the server was reached and
    answered: not "cannot reach"), mapped as a failure while answering."""
    import openai

    return openai.APIError(f"the connection broke while the answer was read ({type(exc).__name__}: {exc})",
                           request=request, body=None)


def _whole_completion(completion: Any, request: Any) -> list[Any]:
    """The events of a chat completion answered whole (``chat.completion``, not a stream): its text (or
    refusal), then its usage and finish reason; ``openai.APIError`` for an error, :class:`BadAnswer` for a
    body of no answer or of fields of the wrong shape."""
    import openai

    error = completion.get("error") if isinstance(completion, dict) else None
    if error:
        message = error.get("message") if isinstance(error, dict) else None
        raise openai.APIError(message if isinstance(message, str) and message else "the server answered an error",
                              request=request, body=error)
    choices = completion.get("choices") if isinstance(completion, dict) else None
    message = choices[0].get("message") if isinstance(choices, list) and choices and isinstance(choices[0], dict) \
        else None
    if not isinstance(message, dict):
        raise BadAnswer("the answer holds no message (choices[0].message)")
    events: list[Any] = []
    refusal, text = message.get("refusal"), message.get("content")
    if refusal:
        events.append(TextDelta(_refusal_text(refusal, "the answer's message.refusal")))
        finish: FinishReason | None = FinishReason.REFUSAL
    else:
        text = content_text(text, "the answer's message.content") if text else ""
        if text:
            events.append(TextDelta(text))
        reason = choices[0].get("finish_reason")
        finish = finish_reason_of(reason) if reason else None
    usage = completion.get("usage")
    events.append(UsageReport(usage_of(usage) if usage else Usage(), finish))
    return events


def content_text(content: Any, what: str) -> str:
    """The text of a message's or delta's ``content`` (``what``, for the error): a string as it is, or the
    text parts of a list of content parts joined (Mistral's reasoning models, and LiteLLM passing them on,
    send ``[{"type": "text", "text": ...}]``, next to ``thinking`` parts, which are left out);
    :class:`BadAnswer` for anything else."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(part, dict) for part in content):
        texts = [part.get("text") for part in content if part.get("type") == "text"]
        if all(isinstance(piece, str) for piece in texts):
            return "".join(texts)
    raise BadAnswer(f"{what} is neither text nor a list of text parts: {_excerpt(content)}")


def _refusal_text(refusal: Any, what: str) -> str:
    """A refusal's explanation (``what``, for the error), or :class:`BadAnswer` when it is no text."""
    if isinstance(refusal, str):
        return refusal
    raise BadAnswer(f"{what} is not text: {_excerpt(refusal)}")


def finish_reason_of(reason: Any) -> FinishReason:
    """The finish reason a (non-empty) ``finish_reason`` stands for (OTHER for values not in
    :data:`FINISH_REASONS`), or :class:`BadAnswer` when it is not a string."""
    if not isinstance(reason, str):
        raise BadAnswer(f"finish_reason is not a string: {_excerpt(reason)}")
    return FINISH_REASONS.get(reason, FinishReason.OTHER)


def _excerpt(value: Any) -> str:
    """``value`` as JSON for an error message, shortened (the text of an answer is no secret, but it may be long)."""
    shown = json.dumps(value, ensure_ascii=False, default=str)
    return shown if len(shown) <= 120 else shown[:117] + "..."


def usage_of(reported: Any) -> Usage:
    """Usage from a chat completion's ``usage``: ``prompt_tokens`` include the audio ones and those read
    from OpenAI's prompt cache (``prompt_tokens_details.cached_tokens``), each reported apart as they are
    priced apart. Tokens written to the cache (``cache_write_tokens``) are billed as plain input.
    :class:`BadAnswer` when ``reported`` is no JSON object."""
    if not isinstance(reported, dict):
        raise BadAnswer(f"usage is not an object: {_excerpt(reported)}")
    details = reported.get("prompt_tokens_details")
    details = details if isinstance(details, dict) else {}
    return Usage(input_tokens=usage_count(reported.get("prompt_tokens")),
                 output_tokens=usage_count(reported.get("completion_tokens")),
                 audio_input_tokens=usage_count(details.get("audio_tokens")),
                 cached_input_tokens=usage_count(details.get("cached_tokens")))
