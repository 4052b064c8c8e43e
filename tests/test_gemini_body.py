"""The generateContent body the Gemini plugin builds itself (mmrouter_gemini.convert.prepare, sent by rest.py)
is what google-genai's own conversion makes of the same contents and config.

The plugin skips the SDK's pydantic validation and conversion of the request (about 1 ms per turn on the event
loop: see mmrouter_gemini/rest.py), so these tests pin the JSON down: for rich requests, what the fake receives
EQUALS ``types._GenerateContentParameters`` + ``models._GenerateContentParameters_to_mldev`` +
``_common.convert_to_dict`` + ``_common.encode_unserializable_types`` (less the ``config``, ``_url`` and
``_query`` keys, as ``AsyncModels._generate_content_stream`` pops them) of the contents and config the plugin
made with the SDK's types before. A newer SDK that converts differently fails here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import sys
from pathlib import Path
from typing import Any

import pytest
from mmrouter_gemini import GeminiProvider
from mmrouter_gemini.convert import LEADING_USER_TURN, gemini_mime, media_size, prepare

from router import Media, Message, Modality, Options, Part, Request, Role, Task
from router.testing import collect
from tests.fakes.gemini import FakeGemini

KEY = "AIza-body-test-key-0123456789"
INLINE_LIMIT = 4000


@pytest.fixture
def fake():
    with FakeGemini(api_key=KEY) as server:
        server.processing_polls = 0
        yield server


def png_bytes() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (3, 3), (1, 2, 3)).save(buf, format="PNG")
    return buf.getvalue()


def stored(tmp_path: Path, modality: Modality, mime_type: str, data: bytes) -> Media:
    """A media in the content-addressed store, as the router hands uploaded media to providers."""
    digest = hashlib.sha256(data).hexdigest()
    path = tmp_path / digest
    path.write_bytes(data)
    return Media(modality, mime_type, path=path, media_id=digest, size=len(data))


def sdk_body(model: str, contents: list[Any], config: Any) -> tuple[dict[str, Any], str]:
    """The body and path google-genai's ``AsyncModels._generate_content_stream`` makes of ``contents`` and
    ``config`` (the Gemini Developer API, not Vertex)."""
    from google import genai
    from google.genai import _common, models, types

    client = genai.Client(api_key=KEY, vertexai=False)
    params = types._GenerateContentParameters(model=model, contents=contents, config=config)
    request = models._GenerateContentParameters_to_mldev(client._api_client, params, None, params)
    path = "{model}:streamGenerateContent".format_map(request["_url"])
    request.pop("config", None)
    request = _common.encode_unserializable_types(_common.convert_to_dict(request))
    return {k: v for k, v in request.items() if k not in ("_url", "_query")}, path


def sdk_request(request: Request, uploaded: dict[bytes, tuple[str, str]], output_limit: int) -> tuple[list, Any]:
    """The contents and config the plugin made of ``request`` with the SDK's types (before it built the JSON
    itself): the same turns merged, leading user turn, inline budget and options. ``uploaded``: the Files API
    copy (URI, MIME type) of each media's bytes that went through the Files API."""
    from google.genai import types

    contents: list[types.Content] = []
    inline_left = INLINE_LIMIT
    for message in request.messages:
        if message.role is Role.SYSTEM:
            continue
        parts = []
        for part in message.parts:
            media = part.media
            if media is None:
                if part.text:
                    parts.append(types.Part.from_text(text=part.text))
                continue
            mime = gemini_mime(media.mime_type)
            if media.url is not None:
                parts.append(types.Part.from_uri(file_uri=media.url, mime_type=mime))
            elif media_size(media) <= inline_left:
                inline_left -= media_size(media)
                parts.append(types.Part.from_bytes(data=media.read_bytes(), mime_type=mime))
            else:
                uri, mime_type = uploaded[media.read_bytes()]
                parts.append(types.Part.from_uri(file_uri=uri, mime_type=mime_type))
        if parts:
            role = "model" if message.role is Role.ASSISTANT else "user"
            if contents and contents[-1].role == role:
                contents[-1].parts.extend(parts)
            else:
                contents.append(types.Content(role=role, parts=parts))
    if contents[0].role == "model":
        contents.insert(0, types.Content(role="user", parts=[types.Part.from_text(text=LEADING_USER_TURN)]))
    options = request.options
    config = types.GenerateContentConfig(
        system_instruction=request.system_prompt or None,
        max_output_tokens=min(options.max_output_tokens, output_limit or options.max_output_tokens) or None,
        temperature=options.temperature,
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
        http_options=types.HttpOptions(timeout=10_000),
    )
    return contents, config


def rich(tmp_path: Path) -> Request:
    """System text, both roles (merged where they repeat), a leading model turn, images, audio, PDF and
    text inline, a video and an audio through the Files API, a video by URL, unicode, the options."""
    wav = b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(256)) * 2
    video = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 24  # over the inline budget: uploaded
    long_audio = b"ID3\x04" + bytes(reversed(range(256))) * 20  # uploaded too
    return Request(messages=[
        Message(Role.SYSTEM, [Part(text="Be terse.")]),
        Message(Role.ASSISTANT, [Part(text="Earlier answer.")]),
        Message(Role.ASSISTANT, [Part(text="And another.")]),
        Message(Role.USER, [Part(text="Look: ünïcødé ✓ \"quotes\" \\ and\nnewlines"),
                            Part(media=Media(Modality.IMAGE, "image/jpg", data=b"\xff\xd8\xff\xe0" + b"\xfb\xff" * 50)),
                            Part(media=Media(Modality.IMAGE, "image/png", data=png_bytes()))]),
        Message(Role.SYSTEM, [Part(text="Answer in English.")]),
        Message(Role.USER, [Part(media=stored(tmp_path, Modality.AUDIO, "audio/x-wav; codecs=1", wav)),
                            Part(media=Media(Modality.DOCUMENT, "application/pdf", data=b"%PDF-1.4\n%\xe2\xe3\n")),
                            Part(media=Media(Modality.DOCUMENT, "text/x-log", data=b"2024-05-01 started"))]),
        Message(Role.ASSISTANT, [Part(text="")]),
        Message(Role.ASSISTANT, [Part(text="Seen.")]),
        Message(Role.USER, [Part(text="And these?"),
                            Part(media=stored(tmp_path, Modality.VIDEO, "video/mp4", video)),
                            Part(media=Media(Modality.VIDEO, "video/mp4", url="https://example.com/talk.mp4")),
                            Part(media=Media(Modality.AUDIO, "audio/mpeg", data=long_audio)),
                            Part(media=Media(Modality.IMAGE, "image/webp", data=b"RIFF\x10\x00\x00\x00WEBPVP8 "))]),
    ], options=Options(task=Task.CHAT, max_output_tokens=300, temperature=0.7))


def many_turns(turns: int) -> Request:
    messages = []
    for i in range(turns):
        messages += [Message(Role.USER, [Part(text=f"q{i}")]), Message(Role.ASSISTANT, [Part(text=f"a{i}")])]
    messages.append(Message(Role.USER, [Part(text="last")]))
    return Request(messages=messages, options=Options(task=Task.CHAT, max_output_tokens=200_000))


CASES = {
    "rich": rich,
    "plain": lambda _: Request(messages=[Message(Role.USER, [Part(text="hi")])], options=Options(task=Task.CHAT)),
    "zero-temperature": lambda _: Request(messages=[Message(Role.SYSTEM, [Part(text="s1")]),
                                                    Message(Role.SYSTEM, [Part(text="s2")]),
                                                    Message(Role.USER, [Part(text="hi")])],
                                          options=Options(task=Task.CHAT, temperature=0.0)),
    "many-turns": lambda _: many_turns(300),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("model_name", ["gemini-2.5-pro", "models/gemini-2.5-flash"])
async def test_the_body_sent_is_the_sdks_conversion_of_the_same_request(fake, tmp_path, case, model_name):
    """What the fake receives (built by the plugin) equals the SDK's own conversion of the typed contents
    and config, and the path is the SDK's."""
    from mmrouter_gemini.models import MODELS

    request = CASES[case](tmp_path)
    p = GeminiProvider.from_settings({"api_key": KEY, "base_url": fake.url, "timeout": 10, "poll_interval": 0.01,
                                      "inline_limit_bytes": INLINE_LIMIT})
    info = p.model("gemini-2.5-pro")
    if model_name != info.name:  # a model named as the API names it ("models/..."), sent as it is
        info = dataclasses.replace(info, name=model_name)
    await collect(p, request, info)
    await p.aclose()
    [sent] = fake.calls("stream")
    uploaded = {bytes(f.data): (f"{fake.url}/v1beta/{name}", f.mime_type) for name, f in fake.files.items()}
    if case == "rich":
        assert len(uploaded) == 2  # the video and the long audio went through the Files API
    output_limit = next(m.max_output_tokens for m in MODELS if m.name == "gemini-2.5-pro")
    expected, path = sdk_body(info.name, *sdk_request(request, uploaded, output_limit))
    assert sent.json() == expected
    assert sent.path == f"/v1beta/{path}" and sent.query == {"alt": ["sse"]}


async def test_prepare_builds_the_sdks_body_without_the_network(tmp_path):
    """The same comparison on prepare's body itself, for a long history and a model-first one (no upload)."""
    async def no_upload(media: Media) -> tuple[str, str]:
        raise AssertionError("nothing is uploaded here")

    for request in (many_turns(2000), Request(messages=[Message(Role.ASSISTANT, [Part(text="a")]),
                                                        Message(Role.USER, [Part(text="q")])],
                                              options=Options(task=Task.CHAT, max_output_tokens=5, temperature=1))):
        prepared = await prepare(request, INLINE_LIMIT, no_upload, "gemini", 65_536)
        expected, _ = sdk_body("gemini-2.5-pro", *sdk_request(request, {}, 65_536))
        assert prepared.body == expected
        assert prepared.file_uris == set()


async def test_the_unary_call_sends_the_same_body(fake, tmp_path):
    """streaming: false sends the same JSON to generateContent, typed back as the SDK does."""
    request = rich(tmp_path)
    p = GeminiProvider.from_settings({"api_key": KEY, "base_url": fake.url, "timeout": 10, "poll_interval": 0.01,
                                      "inline_limit_bytes": INLINE_LIMIT, "streaming": False})
    events = await collect(p, request, p.model("gemini-2.5-flash"))
    await p.aclose()
    assert "".join(getattr(e, "text", "") for e in events) == "Hello from Gemini."
    [sent] = fake.calls("generate")
    uploaded = {bytes(f.data): (f"{fake.url}/v1beta/{name}", f.mime_type) for name, f in fake.files.items()}
    expected, path = sdk_body("gemini-2.5-flash", *sdk_request(request, uploaded, 65_536))
    assert sent.json() == expected
    assert sent.path == "/v1beta/" + path.replace(":streamGenerateContent", ":generateContent")


async def sdk_calls_during(provider: GeminiProvider, request: Request) -> int:
    """How many Python functions of google-genai run (in this thread: the event loop's) while ``provider``
    answers ``request``."""
    calls = 0

    def profile(frame: Any, event: str, arg: Any) -> None:
        nonlocal calls
        if event == "call" and "/google/genai/" in frame.f_code.co_filename:
            calls += 1

    sys.setprofile(profile)
    try:
        await collect(provider, request, provider.model("gemini-2.5-flash"))
    finally:
        sys.setprofile(None)
    return calls


async def test_no_sdk_work_is_done_per_turn(fake):
    """The SDK neither validates nor converts the history: a call with 2,000 turns runs no more of its
    Python code than one with 20 (its own conversion runs several functions per part, on the event loop:
    about 1 ms per turn, measured by bench/gemini_history.py). Counted, not timed."""
    p = GeminiProvider.from_settings({"api_key": KEY, "base_url": fake.url, "timeout": 10})
    await collect(p, many_turns(1), p.model("gemini-2.5-flash"))  # the client and the SDK's imports
    short = await sdk_calls_during(p, many_turns(20))
    long = await sdk_calls_during(p, many_turns(2000))
    await p.aclose()
    assert short > 0  # the answer's chunks are typed by the SDK
    assert long <= short + 20, (short, long)
