"""What the Gemini provider remembers of its Files API uploads, and when it forgets them: through the
real google-genai SDK against the fake Gemini API, in the provider and in the router (App)."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import time
from contextlib import aclosing
from pathlib import Path

import mmrouter_gemini.files
import pytest
from mmrouter_gemini import GeminiProvider
from mmrouter_gemini.files import RemoteFile, upload_key

from router import CallContext, Media, Message, Modality, Options, Part, Request, Role, Task
from router.config import parse_config
from router.core import App
from router.errors import ProviderTimeout, ProviderUnavailable
from router.outcome import Answer, Done
from router.testing import collect
from tests.fakes.base import Recorded, Reply
from tests.fakes.gemini import _MODEL_CALL, FakeGemini, _error
from tests.test_gemini_provider import stored_video

KEY = "AIza-files-secret-0123456789"
OTHER_KEY = "AIza-other-project-9876543210"
RETIRED = "gemini-2.5-pro"


class RetiringGemini(FakeGemini):
    """The fake Gemini API where :data:`RETIRED` is gone, answered as Google answers a retired model."""

    def _generate(self, request: Recorded, reply: Reply, *, stream: bool) -> None:
        if _MODEL_CALL.match(request.path)["model"] == RETIRED:
            return reply.json(_error(404, "NOT_FOUND", f"models/{RETIRED} is not found for API version "
                                     "v1beta, or is not supported for generateContent."), 404)
        return super()._generate(request, reply, stream=stream)


@pytest.fixture
def fake():
    with RetiringGemini(api_key=KEY) as server:
        server.processing_polls = 0
        yield server


def make_provider(fake: FakeGemini, **overrides) -> GeminiProvider:
    settings = {"api_key": KEY, "base_url": fake.url, "timeout": 10, "poll_interval": 0.02,
                "inline_limit_bytes": 0}
    settings.update(overrides)
    return GeminiProvider.from_settings(settings)


def copy_of(p: GeminiProvider, media: Media) -> RemoteFile | None:
    """The copy of the stored ``media`` that ``p`` remembers (by its sha256 and MIME type), or None."""
    return p.files.cached(upload_key(media, media.media_id))


def ask(*media: Media) -> Request:
    parts = [Part(text="What happens?"), *(Part(media=m) for m in media)]
    return Request(messages=[Message(Role.USER, parts)], options=Options(task=Task.CHAT))


CONFIG = """
providers:
  gemini: {api_key: "%(key)s", base_url: "%(url)s", timeout: 10, inline_limit_bytes: 0, poll_interval: 0.02}
  anthropic: {api_key: a, timeout: %(anthropic_timeout)d}
plugins:
  disabled: [openai, assemblyai, local]
routes:
  - name: video
    match: {inputs_any: [video]}
    use: gemini/%(primary)s
    fallback: [gemini/gemini-2.5-flash]
default: gemini/gemini-2.5-flash
server:
  data_dir: "%(data)s"
"""


def app_config(fake: FakeGemini, tmp_path: Path, primary: str = RETIRED, anthropic_timeout: int = 120):
    text = CONFIG % {"key": KEY, "url": fake.url, "primary": primary, "data": tmp_path / "data",
                     "anthropic_timeout": anthropic_timeout}
    return parse_config(text, "t.yaml")


async def answer(app: App, request: Request) -> Answer:
    async with aclosing(app.answer(request, None)) as events:
        async for event in events:
            if isinstance(event, Done):
                return event.answer
    raise AssertionError("no Done")


async def test_a_retired_primary_model_does_not_make_its_fallback_upload_the_media_again(fake, tmp_path):
    app = App(app_config(fake, tmp_path))
    video = stored_video(tmp_path / "media")
    for _ in range(3):
        done = await answer(app, ask(video))
        assert done.text == "Hello from Gemini."
        assert (done.route.provider, done.route.model) == ("gemini", "gemini-2.5-flash")
    assert len(fake.calls("upload_start")) == 1  # the 404s named the model, not the file
    assert len(fake.files) == 1
    assert len(fake.calls("stream")) == 6  # each call: the retired model, then the fallback
    await app.aclose()


async def test_only_the_copy_the_api_forgot_is_uploaded_again(fake, tmp_path):
    p = make_provider(fake)
    first, second = stored_video(tmp_path / "a", 3000), stored_video(tmp_path / "b", 4000)
    await collect(p, ask(first, second), p.model("gemini-2.5-flash"))
    assert len(fake.calls("upload_start")) == 2
    gone = copy_of(p, first).name
    del fake.files[gone]  # deleted upstream: the API names it in a 403
    events = await collect(p, ask(first, second), p.model("gemini-2.5-flash"))
    assert any(getattr(e, "text", "") for e in events)
    assert len(fake.calls("upload_start")) == 3  # the first again; the second's copy was still good
    assert copy_of(p, first).name != gone
    await p.aclose()


async def test_the_same_bytes_sent_as_another_mime_type_are_uploaded_again_as_that_type(fake, tmp_path):
    """An .mp4 sent as video/mp4, then (for its sound) as audio/mp4: Gemini reads a file as the type it was
    uploaded with, so each type gets its own copy, referenced with its own type; each type sent again reuses
    its copy."""
    video = stored_video(tmp_path)
    audio = dataclasses.replace(video, modality=Modality.AUDIO, mime_type="audio/mp4")
    p = make_provider(fake)
    for media in (video, audio, video, audio):
        events = await collect(p, ask(media), p.model("gemini-2.5-flash"))
        assert any(getattr(e, "text", "") for e in events)
    await p.aclose()
    starts = fake.calls("upload_start")
    assert [s.headers["x-goog-upload-header-content-type"] for s in starts] == ["video/mp4", "audio/mp4"]
    assert sorted(f.mime_type for f in fake.files.values()) == ["audio/mp4", "video/mp4"]
    assert all(bytes(f.data) == video.path.read_bytes() for f in fake.files.values())
    uri_of = {f.mime_type: f"{fake.url}/v1beta/{f.name}" for f in fake.files.values()}
    sent = [call.json()["contents"][0]["parts"][1]["fileData"] for call in fake.calls("stream")]
    assert sent == [{"file_uri": uri_of[mime], "mime_type": mime}
                    for mime in ("video/mp4", "audio/mp4", "video/mp4", "audio/mp4")]
    assert copy_of(p, video).mime_type == "video/mp4" and copy_of(p, audio).mime_type == "audio/mp4"


async def test_a_copy_gone_upstream_while_still_processing_is_uploaded_again(fake, tmp_path):
    fake.processing_polls = 10_000
    p = make_provider(fake, poll_interval=0.05, max_processing_seconds=0.3)
    video = stored_video(tmp_path)
    with pytest.raises(ProviderTimeout, match="PROCESSING"):
        await collect(p, ask(video), p.model("gemini-2.5-flash"))
    [name] = fake.files
    assert copy_of(p, video).state == "PROCESSING"  # kept: the next call polls on
    del fake.files[name]  # then deleted (or purged) upstream: its poll answers 403
    fake.processing_polls = 0
    for _ in range(2):
        events = await collect(p, ask(video), p.model("gemini-2.5-flash"))
        assert any(getattr(e, "text", "") for e in events)
    assert len(fake.calls("upload_start")) == 2  # uploaded again once, then remembered
    assert copy_of(p, video).state == "ACTIVE"
    await p.aclose()


async def test_providers_with_the_same_key_and_endpoint_share_their_uploads(fake, tmp_path):
    video = stored_video(tmp_path)
    first, again = make_provider(fake), make_provider(fake)
    await collect(first, ask(video), first.model("gemini-2.5-flash"))
    await collect(again, ask(video), again.model("gemini-2.5-flash"))
    assert len(fake.calls("upload_start")) == 1

    fake.api_key = OTHER_KEY  # another key is another project: its files are not ours
    other = make_provider(fake, api_key=OTHER_KEY)
    await collect(other, ask(video), other.model("gemini-2.5-flash"))
    assert len(fake.calls("upload_start")) == 2
    assert other.files.uploads is not first.files.uploads

    shared = mmrouter_gemini.files._SHARED
    ours = [key for key in shared if key[1] == fake.url]
    assert len(ours) == 2
    assert not any(KEY in str(key) or OTHER_KEY in str(key) for key in ours)  # a fingerprint, not the key
    for p in (first, again, other):
        await p.aclose()
    del first, again, other, p
    gc.collect()
    assert not any(key[1] == fake.url for key in shared)  # the memory goes with the last provider using it


async def test_a_reload_that_remakes_the_providers_keeps_the_gemini_uploads(fake, tmp_path):
    app = App(app_config(fake, tmp_path, primary="gemini-2.5-flash-lite"))
    video = stored_video(tmp_path / "media")
    await answer(app, ask(video))
    changed = app_config(fake, tmp_path, primary="gemini-2.5-flash-lite", anthropic_timeout=60)  # only anthropic's
    remade, _ = app.reload(changed)
    assert remade
    done = await answer(app, ask(video))
    assert done.text == "Hello from Gemini."
    assert len(fake.calls("upload_start")) == 1
    await app.aclose()


class PurgingGemini(RetiringGemini):
    """The fake where the first :attr:`purges` files are purged while still processing: their first poll
    answers :attr:`status` (403 "... may not exist", as Google answers, or 404)."""

    def __init__(self, api_key: str, purges: int, status: int = 403) -> None:
        super().__init__(api_key=api_key)
        self.purges, self.status = purges, status

    def _file_get(self, request: Recorded, reply: Reply) -> None:
        name = "files/" + request.path.rsplit("/", 1)[-1]
        with self._files_lock:
            file = self.files.get(name)
            if file is not None and file.polls == 0 and self.purges > 0:
                self.purges -= 1
                del self.files[name]
        if self.status == 404 and name not in self.files:
            return reply.json(_error(404, "NOT_FOUND", f"File {name} not found."), 404)
        return super()._file_get(request, reply)


@pytest.mark.parametrize("status", [403, 404])
async def test_a_file_uploaded_in_this_call_and_purged_while_processing_is_uploaded_again(tmp_path, status):
    """The README's promise holds for a file uploaded in this call too: gone upstream while PROCESSING,
    it is uploaded again within the call, not taken for a refused key (403) or an unknown model (404)."""
    with PurgingGemini(KEY, purges=1, status=status) as fake:
        p = make_provider(fake)
        events = await collect(p, ask(stored_video(tmp_path)), p.model("gemini-2.5-flash"))
        await p.aclose()
    assert any(getattr(e, "text", "") for e in events)
    assert len(fake.calls("upload_start")) == 2
    assert copy_of(p, stored_video(tmp_path)).state == "ACTIVE"


@pytest.mark.parametrize("remembered", [False, True], ids=["uploaded-now", "remembered"])
async def test_a_file_purged_again_after_its_new_upload_is_unavailable_naming_it(tmp_path, remembered):
    """Uploaded again once; gone again, the call fails retryably, naming the file, and nothing is
    remembered of it."""
    from router.errors import ProviderUnavailable

    with PurgingGemini(KEY, purges=0) as fake:
        fake.processing_polls = 10_000
        p = make_provider(fake, poll_interval=0.05, max_processing_seconds=0.2)
        video = stored_video(tmp_path)
        if remembered:  # a copy left PROCESSING by an earlier call
            with pytest.raises(ProviderTimeout):
                await collect(p, ask(video), p.model("gemini-2.5-flash"))
            fake.files.clear()
        fake.purges = 2
        with pytest.raises(ProviderUnavailable) as caught:
            await collect(p, ask(video), p.model("gemini-2.5-flash"))
        await p.aclose()
    assert len(fake.calls("upload_start")) == 2
    last = fake.calls("file_get")[-1].path.rsplit("/", 1)[-1]
    assert f"files/{last}" in caught.value.message and "while it was processing" in caught.value.message
    assert copy_of(p, video) is None


async def test_an_upload_start_without_an_upload_url_is_unavailable(tmp_path):
    """A gateway that answers the upload's start 200 without X-Goog-Upload-URL: the SDK's KeyError is a bad
    answer (the router falls back), not a plugin failure."""
    from router.errors import ProviderUnavailable
    from tests.fakes.raw import RawServer

    server = RawServer(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
                       b"Connection: close\r\n\r\n{}")
    p = GeminiProvider.from_settings({"api_key": KEY, "base_url": f"http://127.0.0.1:{server.port}", "timeout": 5,
                                      "inline_limit_bytes": 0})
    try:
        with pytest.raises(ProviderUnavailable, match="file upload failed: bad answer") as caught:
            await collect(p, ask(stored_video(tmp_path)), p.model("gemini-2.5-flash"))
    finally:
        await p.aclose()
        server.close()
    assert "Upload URL was not returned" in caught.value.message


class BadFinalizeGemini(RetiringGemini):
    """The fake whose upload's last answer (finalize) is :attr:`final` instead of ``{"file": {...}}``."""

    def __init__(self, api_key: str, final: object) -> None:
        super().__init__(api_key=api_key)
        self.final = final

    def _upload_chunk(self, request: Recorded, reply: Reply) -> None:
        if "finalize" not in request.headers.get("x-goog-upload-command", ""):
            return super()._upload_chunk(request, reply)
        reply.json(self.final, headers={"X-Goog-Upload-Status": "final"})


@pytest.mark.parametrize("final", [{}, [], {"file": {}}], ids=["no-file", "a-list", "a-file-without-a-name"])
async def test_a_finalize_answer_without_the_file_is_unavailable(tmp_path, final):
    from router.errors import ProviderUnavailable

    with BadFinalizeGemini(KEY, final) as fake:
        p = make_provider(fake)
        with pytest.raises(ProviderUnavailable, match="file upload failed: bad answer"):
            await collect(p, ask(stored_video(tmp_path)), p.model("gemini-2.5-flash"))
        await p.aclose()
    assert fake.calls("file_get") == [] and fake.calls("stream") == []


# -- transient failures of the status polls of a PROCESSING file --------------------------------------------


@pytest.mark.parametrize("failure", [503, 500, 502, 504, 429, "disconnect"])
async def test_transient_poll_failures_are_polled_again_with_one_upload(fake, tmp_path, failure):
    """Two failed polls of a file still PROCESSING (a 5xx, a 429, a dropped connection): the file is fine and
    processing goes on, so the call polls again and answers, with the media uploaded once."""
    fake.poll_failures = [failure, failure]
    p = make_provider(fake)
    video = stored_video(tmp_path)
    events = await collect(p, ask(video), p.model("gemini-2.5-flash"))
    await p.aclose()
    assert any(getattr(e, "text", "") for e in events)
    assert len(fake.calls("upload_start")) == 1
    assert len(fake.calls("file_get")) == 3  # two failed, then ACTIVE
    assert copy_of(p, video).state == "ACTIVE"


@pytest.mark.parametrize("status", [429, 503])
async def test_a_failed_poll_with_retry_after_waits_it(fake, tmp_path, status):
    fake.poll_failures = [(status, {"Retry-After": "1"})]
    p = make_provider(fake)
    p.client()  # the SDK imported first: its import is not the wait measured
    started = time.monotonic()
    events = await collect(p, ask(stored_video(tmp_path)), p.model("gemini-2.5-flash"))
    elapsed = time.monotonic() - started
    await p.aclose()
    assert any(getattr(e, "text", "") for e in events)
    assert 1.0 <= elapsed < 2.5  # the Retry-After, not the 0.02 s poll interval
    assert len(fake.calls("upload_start")) == 1 and len(fake.calls("file_get")) == 2


async def test_a_retry_after_is_not_waited_past_the_processing_bound(fake, tmp_path):
    """Without time for it (here max_processing_seconds; the call's deadline alike) a long Retry-After is
    not waited: the poll's own error ends the call, at the bound."""
    from router.errors import ProviderRateLimited

    fake.poll_failures = [(429, {"Retry-After": "30"})] * 3
    p = make_provider(fake, max_processing_seconds=0.4)
    p.client()
    started = time.monotonic()
    with pytest.raises(ProviderRateLimited):
        await collect(p, ask(stored_video(tmp_path)), p.model("gemini-2.5-flash"))
    elapsed = time.monotonic() - started
    await p.aclose()
    assert elapsed < 2.0
    assert len(fake.calls("file_get")) == 2  # failed, retried at the bound, failed: no time left


async def test_consecutive_poll_failures_beyond_the_bound_fail_unavailable(fake, tmp_path):
    from mmrouter_gemini.files import MAX_POLL_FAILURES

    from router.errors import ProviderUnavailable

    fake.poll_failures = [503] * (MAX_POLL_FAILURES + 3)
    p = make_provider(fake)
    video = stored_video(tmp_path)
    with pytest.raises(ProviderUnavailable, match="503"):
        await collect(p, ask(video), p.model("gemini-2.5-flash"))
    await p.aclose()
    assert len(fake.calls("file_get")) == MAX_POLL_FAILURES
    assert len(fake.calls("upload_start")) == 1
    assert copy_of(p, video).state == "PROCESSING"  # kept: the next call polls on
    assert fake.calls("stream") == []


async def test_a_successful_poll_resets_the_count_of_failed_polls(fake, tmp_path):
    from mmrouter_gemini.files import MAX_POLL_FAILURES

    fake.processing_polls = 1  # the poll answered between the failures is still PROCESSING
    bad = [503] * (MAX_POLL_FAILURES - 1)
    fake.poll_failures = [*bad, None, *bad]
    p = make_provider(fake)
    events = await collect(p, ask(stored_video(tmp_path)), p.model("gemini-2.5-flash"))
    await p.aclose()
    assert any(getattr(e, "text", "") for e in events)
    assert len(fake.calls("file_get")) == 2 * MAX_POLL_FAILURES
    assert len(fake.calls("upload_start")) == 1


async def test_a_403_after_a_retried_502_still_uploads_the_purged_file_again(fake, tmp_path):
    fake.poll_failures = [502, 403]  # the file purged while the first poll failed
    p = make_provider(fake)
    video = stored_video(tmp_path)
    events = await collect(p, ask(video), p.model("gemini-2.5-flash"))
    await p.aclose()
    assert any(getattr(e, "text", "") for e in events)
    assert len(fake.calls("upload_start")) == 2  # forgotten and uploaded again, as without the 502
    assert copy_of(p, video).state == "ACTIVE"


@pytest.mark.parametrize("status", [400, 401])
async def test_a_non_transient_poll_failure_after_a_retried_one_fails_at_once(fake, tmp_path, status):
    from router.errors import ProviderError

    fake.poll_failures = [503, status, 503]
    p = make_provider(fake)
    with pytest.raises(ProviderError, match=str(status)):
        await collect(p, ask(stored_video(tmp_path)), p.model("gemini-2.5-flash"))
    await p.aclose()
    assert len(fake.calls("file_get")) == 2 and len(fake.calls("upload_start")) == 1


async def test_each_retried_poll_failure_is_logged_as_a_warning_without_the_key(fake, tmp_path, caplog):
    caplog.set_level("WARNING", logger="mmrouter_gemini.files")
    fake.poll_failures = [502, 504]
    p = make_provider(fake)
    await collect(p, ask(stored_video(tmp_path)), p.model("gemini-2.5-flash"))
    await p.aclose()
    [name] = fake.files
    warnings = [r for r in caplog.records if r.name == "mmrouter_gemini.files" and r.levelname == "WARNING"]
    assert len(warnings) == 2
    assert all(name in r.getMessage() for r in warnings)
    assert "HTTP 502" in warnings[0].getMessage() and "HTTP 504" in warnings[1].getMessage()
    assert not any(KEY in r.getMessage() for r in caplog.records)


async def test_cancelling_the_call_while_a_failed_poll_waits_stops_at_once(fake, tmp_path):
    fake.poll_failures = [(503, {"Retry-After": "30"})]
    p = make_provider(fake)
    ctx = CallContext(request_id="t")  # no deadline: only max_processing_seconds (600 s) bounds the wait

    async def run() -> list:
        return [e async for e in p.generate(ask(stored_video(tmp_path)), p.model("gemini-2.5-flash"), ctx)]

    task = asyncio.ensure_future(run())
    for _ in range(200):
        if fake.calls("file_get"):
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)  # the failed poll answered: the call waits the Retry-After
    assert not task.done()
    task.cancel()
    started = time.monotonic()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 0.5
    await p.aclose()
    assert len(fake.calls("file_get")) == 1


@pytest.mark.parametrize("body", [
    {},
    {"name": "files/fake0001", "mimeType": "video/mp4", "uri": "x"},
    {"name": "files/fake0001", "mimeType": "video/mp4", "uri": "x", "state": "STATE_UNSPECIFIED"},
    {"name": "files/fake0001", "mimeType": "video/mp4", "uri": "x", "state": "SCANNING"},
], ids=["empty", "no-state", "unspecified", "unknown"])
@pytest.mark.filterwarnings("ignore:SCANNING is not a valid FileState")  # the SDK's, parsing the answer
async def test_a_file_status_without_a_known_state_is_a_bad_answer_at_once(fake, tmp_path, body):
    """A 200 status without PROCESSING, ACTIVE or FAILED (a gateway's answer: the API leaves out only the
    enum's default, STATE_UNSPECIFIED, which no file has) is not waited on until the deadline: the call
    fails at once, retryably, so that a fallback answers."""
    fake.fail_next(200, body, path="/v1beta/files/fake0001")
    p = make_provider(fake)
    try:
        with pytest.raises(ProviderUnavailable) as caught:
            await collect(p, ask(stored_video(tmp_path)), p.model("gemini-2.5-flash"), timeout=20)
    finally:
        await p.aclose()
    what = f"the state {body['state']} (not PROCESSING, ACTIVE or FAILED)" if "state" in body else "no state"
    assert caught.value.message == f"gemini: bad answer from the Files API: the status of files/fake0001 has {what}"
    assert len(fake.calls("file_get")) == 1  # not polled again
    assert fake.calls("stream") == []

