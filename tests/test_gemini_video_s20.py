"""Video through the Gemini plugin (QA report "video", sections 1-4 and 6): a media whose Files API processing
FAILED is remembered and not uploaded again; a video named as audio is sent as its container's audio type;
the processing wait names the limit that ended it; the models declare the Files API's per-file limit; an
upload cut midway says how far it got. Through the real google-genai SDK against the fake Gemini API, in the
provider and in the router (App)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import time
from contextlib import aclosing
from datetime import timedelta
from pathlib import Path

import pytest
from mmrouter_gemini import GeminiProvider
from mmrouter_gemini.files import upload_key

from router import CallContext, Media, Message, Modality, Options, Part, Request, Role, Task
from router.config import parse_config
from router.core import App
from router.errors import ProviderTimeout, ProviderUnavailable, ProviderUnsupportedInput
from router.outcome import Answer, Done
from router.testing import collect
from tests.fakes.gemini import FakeGemini

KEY = "AIza-video-s20-0123456789"
FLASH = "gemini-2.5-flash"


@pytest.fixture
def fake():
    with FakeGemini(api_key=KEY) as server:
        server.processing_polls = 0
        yield server


def make_provider(fake: FakeGemini, **overrides) -> GeminiProvider:
    settings = {"api_key": KEY, "base_url": fake.url, "timeout": 10, "poll_interval": 0.02, "inline_limit_bytes": 0}
    settings.update(overrides)
    return GeminiProvider.from_settings(settings)


def stored(directory: Path, size: int = 3000, modality: Modality = Modality.VIDEO,
           mime_type: str = "video/mp4", seed: bytes = b"") -> Media:
    """A media of ``size`` bytes in a content-addressed store, as the router hands uploaded media to providers."""
    data = (b"\x00\x00\x00\x18ftypmp42" + seed + bytes(range(256)) * (size // 256 + 1))[:size]
    digest = hashlib.sha256(data).hexdigest()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / digest
    path.write_bytes(data)
    return Media(modality, mime_type, path=path, media_id=digest, size=size, filename="clip.mp4")


def ask(*media: Media) -> Request:
    parts = [Part(text="What happens?"), *(Part(media=m) for m in media)]
    return Request(messages=[Message(Role.USER, parts)], options=Options(task=Task.CHAT))


def media_parts(fake: FakeGemini) -> list[dict]:
    """The media parts of the last generate call the fake got."""
    [call] = fake.calls("stream")[-1:]
    return [p for p in call.json()["contents"][0]["parts"] if "text" not in p]


# -- 1. a media whose processing FAILED ---------------------------------------------------------------------


async def test_a_failed_media_is_refused_again_without_an_upload_and_its_copy_is_deleted(fake, tmp_path):
    fake.processing_polls, fake.fail_processing = 1, True
    p = make_provider(fake)
    video = stored(tmp_path)
    with pytest.raises(ProviderUnsupportedInput) as first:
        await collect(p, ask(video), p.model(FLASH))
    assert "could not process" in first.value.message and "refused before" not in first.value.message
    assert len(fake.calls("upload_start")) == 1
    assert [r.path for r in fake.calls("file_delete")] == ["/v1beta/files/fake0001"]  # the useless copy
    assert fake.files == {}

    fake.fail_processing = False  # would succeed now: the refusal is remembered all the same
    for _ in range(3):  # the later turns and requests with the same media
        with pytest.raises(ProviderUnsupportedInput) as again:
            await collect(p, ask(video), p.model(FLASH))
        assert again.value.message.startswith(first.value.message)
        assert "refused before: not uploaded again until" in again.value.message
    assert len(fake.calls("upload_start")) == 1 and fake.calls("stream") == []

    other = make_provider(fake)  # the same key and endpoint (a reload): it knows too
    with pytest.raises(ProviderUnsupportedInput, match="refused before"):
        await collect(other, ask(video), other.model(FLASH))
    assert len(fake.calls("upload_start")) == 1
    # the same bytes as another type are another copy: tried
    await collect(p, ask(stored(tmp_path, modality=Modality.AUDIO, mime_type="audio/mp4")), p.model(FLASH))
    assert len(fake.calls("upload_start")) == 2
    await p.aclose()
    await other.aclose()


async def test_a_failed_media_is_tried_again_once_its_copy_would_have_expired(fake, tmp_path):
    fake.processing_polls, fake.fail_processing = 1, True
    fake.file_ttl = timedelta(seconds=1)
    p = make_provider(fake)
    video = stored(tmp_path)
    with pytest.raises(ProviderUnsupportedInput):
        await collect(p, ask(video), p.model(FLASH))
    fake.fail_processing = False
    for _ in range(100):  # bounded: 10 s
        await asyncio.sleep(0.1)
        if p.files.failed(upload_key(video, video.media_id)) is None:
            break
    events = await collect(p, ask(video), p.model(FLASH))
    assert any(getattr(e, "text", "") for e in events)
    assert len(fake.calls("upload_start")) == 2
    await p.aclose()


async def test_a_failed_delete_of_the_failed_copy_does_not_change_the_refusal(fake, tmp_path, caplog):
    fake.processing_polls, fake.fail_processing = 1, True
    fake.delete_status = 500
    p = make_provider(fake)
    with caplog.at_level(logging.WARNING, logger="mmrouter_gemini.files"), \
            pytest.raises(ProviderUnsupportedInput, match="could not process"):
        await collect(p, ask(stored(tmp_path)), p.model(FLASH))
    await p.aclose()
    assert len(fake.calls("file_delete")) == 1 and list(fake.files) == ["files/fake0001"]
    [warning] = [r.getMessage() for r in caplog.records if "could not delete" in r.getMessage()]
    assert "files/fake0001" in warning and "HTTP 500" in warning and KEY not in warning


async def test_a_failed_media_falls_back_at_once_on_later_requests_in_the_router(fake, tmp_path):
    fake.processing_polls, fake.fail_processing = 1, True
    config = parse_config(f"""
providers:
  gemini: {{api_key: "{KEY}", base_url: "{fake.url}", timeout: 10, inline_limit_bytes: 0, poll_interval: 0.02}}
  gemini-backup: {{plugin: gemini, api_key: "{KEY}", base_url: "{fake.url}", timeout: 10, poll_interval: 0.02}}
plugins:
  disabled: [openai, assemblyai, local, anthropic]
routes:
  - name: video
    match: {{inputs_any: [video]}}
    use: gemini/gemini-2.5-pro
    fallback: [gemini-backup/{FLASH}]
default: gemini/{FLASH}
server:
  data_dir: "{tmp_path / 'data'}"
""", "t.yaml")
    app = App(config)
    video = stored(tmp_path / "media")
    for turn in range(3):
        done = await answer(app, ask(video))
        assert (done.route.provider, done.text) == ("gemini-backup", "Hello from Gemini.")
        [failed, _] = done.route.attempts
        assert "could not process" in failed.error and ("refused before" in failed.error) == (turn > 0)
    assert len(fake.calls("upload_start")) == 1  # the backup sends it inline
    await app.aclose()


# -- 2. a video named as audio ------------------------------------------------------------------------------


@pytest.mark.parametrize(("mime", "sent"), [("video/mp4", "audio/mp4"), ("video/quicktime", "audio/mp4"),
                                            ("video/webm", "audio/webm")])
async def test_a_video_named_as_audio_is_uploaded_and_sent_as_its_audio_type(fake, tmp_path, mime, sent):
    p = make_provider(fake)
    recording = stored(tmp_path, modality=Modality.AUDIO, mime_type=mime)
    await collect(p, ask(recording), p.model(FLASH))
    [start] = fake.calls("upload_start")
    assert start.headers["x-goog-upload-header-content-type"] == sent
    assert [part["fileData"]["mime_type"] for part in media_parts(fake)] == [sent]
    assert p.files.cached(upload_key(recording, recording.media_id)).mime_type == sent  # the key says what was sent
    await collect(p, ask(recording), p.model(FLASH))
    assert len(fake.calls("upload_start")) == 1  # found again by that key
    # the same bytes named as video: sent as video, another copy
    await collect(p, ask(stored(tmp_path, mime_type=mime)), p.model(FLASH))
    assert [s.headers["x-goog-upload-header-content-type"] for s in fake.calls("upload_start")] == [sent, mime]
    await p.aclose()


async def test_a_video_named_as_audio_inline_and_by_url_is_sent_as_its_audio_type(fake, tmp_path):
    p = make_provider(fake, inline_limit_bytes=1_000_000)
    data = b"\x00\x00\x00\x18ftypmp42" + bytes(100)
    url = Media(Modality.AUDIO, "video/mp4", url="https://media.example/talk.mp4")
    await collect(p, ask(Media(Modality.AUDIO, "video/mp4", data=data), url), p.model(FLASH))
    inline, by_url = media_parts(fake)
    assert inline["inlineData"]["mime_type"] == "audio/mp4"
    assert base64.urlsafe_b64decode(inline["inlineData"]["data"]) == data
    assert by_url["fileData"] == {"file_uri": "https://media.example/talk.mp4", "mime_type": "audio/mp4"}
    await p.aclose()


@pytest.mark.parametrize("mime", ["video/x-msvideo", "video/mpeg", "video/3gpp", "video/x-ms-wmv"])
async def test_a_video_named_as_audio_without_an_audio_type_is_refused_before_anything_is_sent(fake, tmp_path, mime):
    p = make_provider(fake)
    first = stored(tmp_path / "v")  # would be uploaded first: the refusal comes before
    with pytest.raises(ProviderUnsupportedInput) as refused:
        await collect(p, ask(first, stored(tmp_path / "a", modality=Modality.AUDIO, mime_type=mime)),
                      p.model(FLASH))
    assert refused.value.retryable  # the router tries the next target or a bridge
    assert f"no audio type for the {mime} container" in refused.value.message
    assert "refused before sending" in refused.value.message
    assert fake.requests == []
    await p.aclose()


# -- 3. what ended the processing wait ----------------------------------------------------------------------


async def test_max_processing_seconds_caps_the_wait_within_a_deadline_and_is_named(fake, tmp_path):
    fake.processing_polls = 10_000
    p = make_provider(fake, max_processing_seconds=0.3)
    ctx = CallContext(request_id="t", deadline=time.monotonic() + 60)
    with pytest.raises(ProviderTimeout) as timed_out:
        [e async for e in p.generate(ask(stored(tmp_path)), p.model(FLASH), ctx)]
    message = timed_out.value.message
    assert "still PROCESSING after 0.3 s" in message and "providers.gemini.max_processing_seconds" in message
    assert "deadline" not in message
    await p.aclose()


async def test_the_call_deadline_ending_the_wait_is_named(fake, tmp_path):
    fake.processing_polls = 10_000
    p = make_provider(fake)  # 600 s
    await collect(p, ask(), p.model(FLASH))  # loads the SDK and connects first
    ctx = CallContext(request_id="t", deadline=time.monotonic() + 1.0)
    with pytest.raises(ProviderTimeout) as timed_out:
        [e async for e in p.generate(ask(stored(tmp_path)), p.model(FLASH), ctx)]
    message = timed_out.value.message
    assert "still PROCESSING when the call's deadline ran out" in message
    assert "max_processing_seconds" not in message
    await p.aclose()


async def test_a_call_ended_while_processing_logs_that_the_file_was_still_processing(fake, tmp_path, caplog):
    fake.processing_polls = 10_000
    p = make_provider(fake)
    ctx = CallContext(request_id="req-9")

    async def run() -> list:
        return [e async for e in p.generate(ask(stored(tmp_path)), p.model(FLASH), ctx)]

    with caplog.at_level(logging.WARNING, logger="mmrouter_gemini.files"):
        task = asyncio.ensure_future(run())
        for _ in range(500):  # bounded: 10 s
            if fake.calls("file_get"):
                break
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    await p.aclose()
    [line] = [r.getMessage() for r in caplog.records if "still PROCESSING" in r.getMessage()]
    assert "files/fake0001" in line and "req-9" in line


# -- 4. the Files API's per-file limit, declared ------------------------------------------------------------


ROUTER_CONFIG = """
providers:
  gemini: {api_key: "%(key)s", base_url: "%(url)s", timeout: 10, poll_interval: 0.02, max_file_bytes: 2097152,
           inline_limit_bytes: %(inline)d}
  gemini-big: {plugin: gemini, api_key: "%(key)s", base_url: "%(url)s", timeout: 10, poll_interval: 0.02,
               inline_limit_bytes: 0}
plugins:
  disabled: [openai, assemblyai, local, anthropic]
routes:
  - name: video
    match: {inputs_any: [video]}
    use: gemini/gemini-2.5-pro
    fallback: [gemini-big/gemini-2.5-flash]
default: gemini/gemini-2.5-flash
server:
  data_dir: "%(data)s"
"""


def router_app(fake: FakeGemini, tmp_path: Path, inline: int) -> App:
    return App(parse_config(ROUTER_CONFIG % {"key": KEY, "url": fake.url, "inline": inline,
                                             "data": tmp_path / "data"}, "t.yaml"))


async def answer(app: App, request: Request) -> Answer:
    async with aclosing(app.answer(request, None)) as events:
        async for event in events:
            if isinstance(event, Done):
                return event.answer
    raise AssertionError("no Done")


def test_the_models_declare_the_files_api_limit_or_the_inline_limit_if_larger():
    default = GeminiProvider.from_settings({"api_key": KEY})
    assert {m.max_media_bytes for m in default.models} == {2 * 1024**3}
    configured = GeminiProvider.from_settings({"api_key": KEY, "max_file_bytes": 1000, "inline_limit_bytes": 5000,
                                               "models": [{"name": "gemini-9", "price": {"input_per_mtok": 1,
                                                                                         "output_per_mtok": 1}}]})
    assert {m.name: m.max_media_bytes for m in configured.models}["gemini-9"] == 5000
    assert {m.max_media_bytes for m in configured.models} == {5000}


async def test_routing_and_explain_skip_gemini_for_a_media_over_its_files_api_limit(fake, tmp_path):
    app = router_app(fake, tmp_path, inline=0)
    video = stored(tmp_path / "media", 3 * 1024 * 1024)
    explained = await app.explain(ask(video))
    assert (explained.provider, explained.model) == ("gemini-big", "gemini-2.5-flash")
    reasons = " ".join(t.reason for t in explained.trace)
    assert "3 MiB of video is larger than its 2 MiB per file" in reasons
    done = await answer(app, ask(video))
    assert (done.route.provider, done.text) == ("gemini-big", "Hello from Gemini.")
    assert [a.provider for a in done.route.attempts] == ["gemini-big"]  # gemini was not called to refuse it
    assert len(fake.calls("upload_start")) == 1
    await app.aclose()


async def test_a_media_over_the_files_api_limit_that_goes_inline_still_goes_to_gemini(fake, tmp_path):
    app = router_app(fake, tmp_path, inline=8 * 1024 * 1024)
    video = stored(tmp_path / "media", 3 * 1024 * 1024)
    explained = await app.explain(ask(video))
    assert (explained.provider, explained.model) == ("gemini", "gemini-2.5-pro")
    done = await answer(app, ask(video))
    assert (done.route.provider, done.route.model) == ("gemini", "gemini-2.5-pro")
    assert fake.calls("upload_start") == [] and "inlineData" in media_parts(fake)[0]
    await app.aclose()


# -- 6. an upload cut midway --------------------------------------------------------------------------------


@pytest.mark.parametrize(("failures", "taken"), [([None, "disconnect"], 8 * 1024 * 1024), (["disconnect"], 0)])
async def test_an_upload_cut_midway_says_how_far_it_got(fake, tmp_path, failures, taken):
    size = 9 * 1024 * 1024  # two chunks of the SDK's 8 MiB
    fake.chunk_failures = list(failures)
    p = make_provider(fake)
    with pytest.raises(ProviderUnavailable) as cut:
        await collect(p, ask(stored(tmp_path, size)), p.model(FLASH))
    message = cut.value.message
    assert f"the file upload was cut after {taken} of {size} bytes" in message, message
    assert "Server disconnected" in message and "could not reach" not in message
    assert len(fake.calls("upload_chunk")) == len(failures)
    events = await collect(p, ask(stored(tmp_path, size)), p.model(FLASH))  # the next call uploads it again
    assert any(getattr(e, "text", "") for e in events)
    await p.aclose()
