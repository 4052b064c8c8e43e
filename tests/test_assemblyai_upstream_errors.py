"""The AssemblyAI provider's errors when the upload or the transcript create fails: Retry-After of a 503/529,
one clean line for a body that is not JSON, a wrong base_url (404, 3xx); with the real SDK against the fake."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from mmrouter_assemblyai import AssemblyAIProvider, AssemblyAISettings

from router import Media, Message, Modality, Options, Part, Request, Role, Task
from router.errors import ProviderError, ProviderRateLimited, ProviderUnavailable
from router.testing import collect
from tests.fakes.assemblyai import FakeAssemblyAI

KEY = "aai-test-key-7c1d-secret"
UPLOADED = {"upload_url": "https://cdn.assemblyai.com/upload/x"}
#: An nginx 500 page over several lines, echoing the key (a proxy logging the request), and long.
NGINX_500 = ("<html>\r\n<head><title>500 Internal Server Error</title></head>\r\n<body>\n\t"
             f"<center><h1>500 Internal Server Error</h1></center>\n<!-- authorization: {KEY} -->\n"
             + "<!-- padding -->\n" * 200 + "</body>\n</html>\n")


def audio_request() -> Request:
    media = Media(Modality.AUDIO, "audio/wav", data=b"RIFF....WAVEfmt fake audio")
    return Request(messages=[Message(Role.USER, [Part(media=media)])], options=Options(task=Task.TRANSCRIBE))


@pytest.fixture
def fake() -> Iterator[FakeAssemblyAI]:
    with FakeAssemblyAI(api_key=KEY) as upstream:
        yield upstream


async def failure(base_url: str) -> ProviderError:
    """The error of one transcription through the API at ``base_url``."""
    provider = AssemblyAIProvider(AssemblyAISettings.load(
        "assemblyai", {"api_key": KEY, "base_url": base_url, "timeout": 5, "poll_interval": 0.01}))
    try:
        with pytest.raises(ProviderError) as info:
            await collect(provider, audio_request(), provider.model("best"))
    finally:
        await provider.aclose()
    assert KEY not in str(info.value)
    return info.value


def fail_at(fake: FakeAssemblyAI, path: str, status: int, body: dict, headers: dict[str, str]) -> None:
    """Fail the call ``path`` names (the upload, or the transcript create after a successful upload)."""
    if path == "/v2/transcript":
        fake.fail_next(200, UPLOADED, path="/v2/upload")
    fake.fail_next(status, body, headers, path=path)


@pytest.mark.parametrize("path", ["/v2/upload", "/v2/transcript"])
@pytest.mark.parametrize(("status", "seconds"), [(503, "11"), (529, "13"), (500, "5"), (429, "7")])
async def test_a_503_or_529_that_says_when_to_retry_keeps_its_retry_after(fake: FakeAssemblyAI, path: str,
                                                                          status: int, seconds: str) -> None:
    fail_at(fake, path, status, {"error": "Service temporarily unavailable"}, {"Retry-After": seconds})
    error = await failure(fake.url)
    assert type(error) is (ProviderRateLimited if status == 429 else ProviderUnavailable)
    assert error.retry_after == float(seconds)
    assert "Service temporarily unavailable" in error.message


@pytest.mark.parametrize(("path", "what"), [
    ("/v2/upload", "Failed to upload audio file"),
    ("/v2/transcript", "failed to transcribe url https://cdn.assemblyai.com/upload/x"),
])
async def test_a_body_that_is_not_json_is_one_short_line_without_the_request_repr(fake: FakeAssemblyAI, path: str,
                                                                                  what: str) -> None:
    if path == "/v2/transcript":
        fake.fail_next(200, UPLOADED, path="/v2/upload")
    fake.page_next(500, NGINX_500, path=path)
    error = await failure(fake.url)
    assert type(error) is ProviderUnavailable
    assert error.message.startswith(
        f"assemblyai: HTTP 500: {what}: <html> <head><title>500 Internal Server Error</title></head> <body> "
        "<center><h1>500 Internal Server Error</h1></center> <!-- authorization: *** -->")
    assert "Request" not in error.message and "Reason" not in error.message
    assert "\n" not in error.message and "\t" not in error.message and "  " not in error.message
    assert error.message.endswith("...") and len(error.message) < 400  # cut short: not the 3.7 kB page


async def test_an_empty_error_body_says_what_failed(fake: FakeAssemblyAI) -> None:
    fake.page_next(502, "", "text/plain", path="/v2/upload")
    error = await failure(fake.url)
    assert error.message == "assemblyai: HTTP 502: Failed to upload audio file"


async def test_a_json_error_stays_assemblyais_message(fake: FakeAssemblyAI) -> None:
    fake.fail_next(500, {"error": "Internal\n  server error"}, path="/v2/upload")
    error = await failure(fake.url)
    assert error.message == "assemblyai: HTTP 500: Failed to upload audio file: Internal server error"


async def test_a_base_url_where_the_api_is_not_is_unavailable_and_names_base_url(fake: FakeAssemblyAI) -> None:
    """The usual mistake: a base_url ending in /v2. The fake (as the API) answers 404 to /v2/v2/upload; no
    model is involved, so it is no PROVIDER_MODEL_NOT_FOUND: UNAVAILABLE (a fallback answers) naming base_url."""
    error = await failure(f"{fake.url}/v2")
    assert type(error) is ProviderUnavailable and error.reason == "PROVIDER_UNAVAILABLE"
    assert error.message == (
        f"assemblyai: the AssemblyAI API was not found at {fake.url}/v2 (HTTP 404: Failed to upload audio file: "
        "Not found: POST /v2/v2/upload): check base_url (the API's root, such as https://api.assemblyai.com, "
        "without /v2)")
    assert fake.created == []


@pytest.mark.parametrize("path", ["/v2/upload", "/v2/transcript"])
@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_a_redirect_is_not_followed_and_names_both_ends(fake: FakeAssemblyAI, path: str, status: int) -> None:
    with FakeAssemblyAI(api_key=KEY) as elsewhere:
        port = elsewhere.url.rsplit(":", 1)[1]
        if path == "/v2/transcript":
            fake.fail_next(200, UPLOADED, path="/v2/upload")
        fake.page_next(status, "", "text/plain", path=path,
                       headers={"Location": f"http://user:pw-secret@127.0.0.1:{port}{path}?token=q-secret#f"})
        error = await failure(fake.url)
        assert elsewhere.requests == []
    assert type(error) is ProviderUnavailable
    assert error.message == (f"assemblyai: the AssemblyAI API at {fake.url} answered HTTP {status} redirecting to "
                             f"http://127.0.0.1:{port}{path}; redirects are not followed: set "
                             "providers.assemblyai.base_url to where the API is served")


async def test_a_relative_redirect_names_the_full_target_and_a_base_url_s_credentials_are_not_shown(
        fake: FakeAssemblyAI) -> None:
    port = fake.url.rsplit(":", 1)[1]
    fake.page_next(302, "<p>Moved</p>", headers={"Location": "/eu/v2/upload?x=1"})
    error = await failure(f"http://svc:pw-secret@127.0.0.1:{port}")
    assert error.message == (f"assemblyai: the AssemblyAI API at http://127.0.0.1:{port} answered HTTP 302 "
                             f"redirecting to http://127.0.0.1:{port}/eu/v2/upload; redirects are not followed: "
                             "set providers.assemblyai.base_url to where the API is served")
