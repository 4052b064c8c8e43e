"""generateContent and streamGenerateContent with a body the plugin builds, sent by google-genai's API client.

Why the SDK's private API client (``client.aio._api_client``), not ``client.aio.models.generate_content``
and ``generate_content_stream``: those validate the whole request again as pydantic models
(``types._GenerateContentParameters``) and convert it field by field to the REST API's JSON
(``models._GenerateContentParameters_to_mldev``, ``_common.convert_to_dict``), synchronously on the
event loop: about 1 ms per turn with google-genai 3.6.1 (2,000 turns: 2.1 s during which every other call
of the daemon waited). Issue #9 asks for raw paths where the SDK's own is costly; this is one.
:func:`mmrouter_gemini.convert.prepare` builds that JSON directly (``bench/gemini_history.py`` measures
both), and ``tests/test_gemini_body.py`` pins it down: for rich requests (system text, many turns, a
leading model turn, inline media, Files API and URL references, the generation options) it must EQUAL what
the SDK's own conversion gives, so a change in a newer SDK is caught there.

Sending it through the SDK's API client (``async_request`` / ``async_request_streamed``, called as the
SDK's ``AsyncModels._generate_content[_stream]`` call them) keeps what the SDK does for every call: the
key header, base URL, API version, its other headers (``x-server-timeout`` from the call's timeout), the
plugin's transport (transport.py) and the errors (``errors.APIError`` and its subclasses, which
errors.py maps). Each answer is typed as the SDK types it (``_GenerateContentResponse_from_mldev``, then
``GenerateContentResponse._from_response``), so the rest of the plugin reads ``GenerateContentResponse``.

Left out of the SDK's ``generate_content``: automatic function calling (the plugin sends no tools) and
automatic continuation (a model that stops with ``CONTINUATION`` and a token is not asked again: one call
is one request, and ``CONTINUATION`` is a cut answer, convert.CUT_FINISH).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any


class InvalidModelName(ValueError):
    """A model name the SDK refuses to put in a path (one with ``..``, ``?`` or ``&``): no call can be made
    with it (errors.py maps it to ProviderBadRequest; the settings refuse such a configured name)."""


class NotUtf8(ValueError):
    """An answer the SDK could not decode as UTF-8 (its aiohttp transport decodes a whole body and each
    line of a stream strictly; errors.py maps it to ProviderUnavailable, as the other plugins refuse such
    a stream event). The message says what was wrong, without the bytes."""


#: What was wrong with a whole answer, or a streamed one, that is not valid UTF-8.
NOT_UTF8_BODY = "the server answered with a body that is not valid UTF-8"
NOT_UTF8_EVENT = "the server sent a stream event that is not valid UTF-8"


def _path(client: Any, model: str, method: str) -> str:
    """The call's path under the API version, as the SDK makes it (``models/<model>:<method>``; a
    ``models/`` or ``tunedModels/`` name as it is; a name with ``..``, ``?`` or ``&`` is an
    :class:`InvalidModelName`)."""
    from google.genai import _transformers

    try:
        return f"{_transformers.t_model(client.aio._api_client, model)}:{method}"
    except ValueError as exc:
        raise InvalidModelName(
            f"the model name {model!r} cannot be called: the Gemini SDK refuses it ({exc})") from exc


def _options(timeout_ms: int) -> Any:
    """The call's HTTP options: its timeout (milliseconds; also sent as ``x-server-timeout``)."""
    from google.genai import types

    return types.HttpOptions(timeout=timeout_ms)


def typed(body: str | None) -> Any:
    """One answer or streamed chunk (its JSON text) as the SDK types it: a ``GenerateContentResponse``."""
    from google.genai import models, types

    response = json.loads(body) if body else {}
    return types.GenerateContentResponse._from_response(
        response=models._GenerateContentResponse_from_mldev(response), kwargs={})


async def generate(client: Any, model: str, body: dict[str, Any], timeout_ms: int) -> Any:
    """One generateContent call of ``model`` with ``body`` (the REST API's JSON): the typed answer; an
    answer that is not UTF-8 raises :class:`NotUtf8`."""
    try:
        response = await client.aio._api_client.async_request(
            "post", _path(client, model, "generateContent"), body, _options(timeout_ms))
    except UnicodeDecodeError:
        raise NotUtf8(NOT_UTF8_BODY) from None
    return typed(response.body)


async def stream(client: Any, model: str, body: dict[str, Any], timeout_ms: int) -> AsyncIterator[Any]:
    """One streamGenerateContent call of ``model`` with ``body``: its typed chunks. Sent when the first
    chunk is asked for; closing the generator closes the SDK's stream (and its response). A line of the
    stream that is not UTF-8 raises :class:`NotUtf8` (the SDK's httpx transport, used without aiohttp,
    decodes it with U+FFFD instead: that answer cannot be told from one that has the character)."""
    chunks = await client.aio._api_client.async_request_streamed(
        "post", _path(client, model, "streamGenerateContent") + "?alt=sse", body, _options(timeout_ms))
    try:
        async for chunk in chunks:
            yield typed(chunk.body)
    except UnicodeDecodeError:
        raise NotUtf8(NOT_UTF8_EVENT) from None
    finally:
        await chunks.aclose()
