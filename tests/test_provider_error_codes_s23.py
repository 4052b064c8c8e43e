"""A provider's own names of a failure reach the client, and a corrupt image is no size problem for Claude.

QA migrate F2: an app moving from the OpenAI or Anthropic SDK branched on ``err.code`` (``invalid_image_format``,
``content_filter``) or ``err.body["error"]["type"]``; through mmrouter each such 400 was a bare
PROVIDER_BAD_REQUEST whose ErrorInfo named only the provider. The provider's code, type and param now come as
ErrorInfo metadata ``provider_error_code``, ``provider_error_type`` and ``provider_error_param`` (identifiers
only: free text is dropped), from an HTTP error and from an error event inside a stream; ListProviders still
shows none of it.

QA migrate F4: a PNG signature followed by garbage sent to Claude was refused as INPUT_TOO_LARGE, "the image is
1634886241x1734698849 px", its "size" read from ASCII where a PNG has its IHDR chunk. A header that is not a
well-formed IHDR gives no size: the image goes to Claude as given (as OpenAI's and Gemini's plugins send it),
and Claude's refusal is the client's error.

Through the daemon, with the real SDKs against the fakes of tests/fakes."""

from __future__ import annotations

import struct
import zlib

import grpc
import pytest
from conftest import launch_daemon
from grpc_helpers import providers_by_name, text_request
from media_factory import png
from mmrouter.v1 import router_pb2 as pb
from test_hybrid import ALL_KEYS
from test_quota_errors_s22 import CONFIG, failure, google_error

from tests.fakes.anthropic import error_body as anthropic_error
from tests.fakes.openai import error_body as openai_error

BAD_REQUEST = (grpc.StatusCode.INVALID_ARGUMENT, "PROVIDER_BAD_REQUEST")
COULD_NOT_PROCESS = "messages.0.content.0.image.source.base64: Could not process image"


def config(fakes) -> str:
    return CONFIG.format(openai=fakes["openai"].base_url, anthropic=fakes["anthropic"].url,
                         gemini=fakes["gemini"].url, assemblyai=fakes["assemblyai"].url)


@pytest.fixture(scope="module")
def shared_daemon(shared_fakes, plugin_sites, tmp_path_factory):
    """One daemon of test_quota_errors_s22's CONFIG, shared by the module's tests: each makes a provider fail
    with a code, or answer, and reads that call's error or answer alone; starting one per test (and its SDKs'
    imports) took minutes of the suite. Tests sharing it must not make a fake answer with a retry delay (a 429,
    or a 503/529 with Retry-After: a cool-down) or read its health (ListProviders), stats or logs."""
    servers, _reset = shared_fakes
    daemon = launch_daemon(config(servers), tmp=tmp_path_factory.mktemp("error-codes"), env=ALL_KEYS, sites=[])
    yield daemon
    daemon.stop()


@pytest.fixture
def fakes(shared_fakes) -> dict:
    """The shared daemon's fakes, reset to how they started."""
    servers, reset = shared_fakes
    reset()
    return servers


@pytest.fixture
def daemon(shared_daemon, fakes):
    """The module's shared daemon (its fakes reset)."""
    return shared_daemon


def ask(tag: str, *media: pb.Media) -> pb.MultimodalRequest:
    return text_request("what is in this image?", media=list(media), hints=pb.RoutingHints(tags=[tag]))


def image(data: bytes) -> pb.Media:
    return pb.Media(modality=pb.MODALITY_IMAGE, mime_type="image/png", data=data, filename="scan.png")


def provider_ids(metadata: dict[str, str]) -> dict[str, str]:
    """The ``provider_error_*`` entries of an ErrorInfo's metadata."""
    return {key: value for key, value in metadata.items() if key.startswith("provider_error_")}


# -- F2: the provider's code, type and param -----------------------------------------------------------------


@pytest.mark.parametrize(("code", "param"), [("invalid_image_format", None), ("image_parse_error", None),
                                             ("content_filter", "prompt")])
def test_openais_error_code_type_and_param_reach_the_client(daemon, fakes, code, param) -> None:
    """Each was PROVIDER_BAD_REQUEST with metadata {provider} alone: "this image is broken" and "this prompt was
    blocked" could only be told apart by OpenAI's English."""
    fakes["openai"].fail_next(400, openai_error("You uploaded an unsupported image.", "invalid_request_error",
                                                code, param), {"x-request-id": "req_abc"})
    details = failure(daemon, ask("openai", image(png())))
    assert (details.code, details.reason) == BAD_REQUEST, details
    expected = {"provider_error_code": code, "provider_error_type": "invalid_request_error"}
    if param:
        expected["provider_error_param"] = param
    assert provider_ids(details.metadata) == expected
    assert details.metadata["provider"] == "openai" and details.metadata["provider_request_id"] == "req_abc"


def test_an_error_event_inside_openais_stream_names_its_code(daemon, fakes) -> None:
    """A content filter's error event after the first delta, streamed and not."""
    fakes["openai"].stream_error = "The response was filtered due to the prompt triggering content management policy."
    fakes["openai"].stream_error_type = "invalid_request_error"
    fakes["openai"].stream_error_code = "content_filter"
    for stream in (True, False):
        details = failure(daemon, ask("openai"), stream)
        assert (details.code, details.reason) == BAD_REQUEST, details
        assert provider_ids(details.metadata) == {"provider_error_code": "content_filter",
                                                  "provider_error_type": "invalid_request_error"}


def test_free_text_in_a_code_type_or_param_is_not_passed_on(daemon, fakes) -> None:
    """Identifiers only (at most 64 of letters, digits and ._:-[]): a compatible server's sentence, or a code
    of 65 characters, is left to the message; OpenAI's param path with brackets is an identifier."""
    fakes["openai"].fail_next(400, openai_error("bad", "The request was bad, sorry", "x" * 65,
                                                "messages.[1].content.[0].image_url"))
    details = failure(daemon, ask("openai"))
    assert provider_ids(details.metadata) == {"provider_error_param": "messages.[1].content.[0].image_url"}


def test_anthropics_error_type_and_code_reach_the_client(daemon, fakes) -> None:
    """Claude's "Could not process image" (type invalid_request_error), an error code of its details, and an
    overloaded_error event inside the stream."""
    fakes["anthropic"].fail_next_api(400, "invalid_request_error", COULD_NOT_PROCESS)
    details = failure(daemon, ask("claude", image(png())))
    assert (details.code, details.reason) == BAD_REQUEST, details
    assert provider_ids(details.metadata) == {"provider_error_type": "invalid_request_error"}

    fakes["anthropic"].fail_next(400, anthropic_error("invalid_request_error", "At least one of the image "
                                                      "dimensions exceed max allowed size: 8000 pixels",
                                                      {"error_code": "image_dimensions_too_large"}))
    details = failure(daemon, ask("claude"))
    assert details.reason == "INPUT_TOO_LARGE"
    assert provider_ids(details.metadata) == {"provider_error_code": "image_dimensions_too_large",
                                              "provider_error_type": "invalid_request_error"}

    fakes["anthropic"].stream_error = ("overloaded_error", "Overloaded")
    details = failure(daemon, ask("claude"), stream=True)
    assert (details.code, details.reason) == (grpc.StatusCode.UNAVAILABLE, "PROVIDER_UNAVAILABLE")
    assert provider_ids(details.metadata) == {"provider_error_type": "overloaded_error"}


def test_geminis_reason_or_status_is_the_code(daemon, fakes) -> None:
    """Google's status (INVALID_ARGUMENT), or the reason of its ErrorInfo detail when it gave one."""
    fakes["gemini"].fail_next(400, google_error(400, "INVALID_ARGUMENT", "Unable to process input image."))
    details = failure(daemon, ask("gemini", image(png())))
    assert (details.code, details.reason) == BAD_REQUEST, details
    assert provider_ids(details.metadata) == {"provider_error_code": "INVALID_ARGUMENT"}

    fakes["gemini"].fail_next(400, google_error(400, "INVALID_ARGUMENT", "API key not valid.", [
        {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
         "domain": "googleapis.com"}]))
    details = failure(daemon, ask("gemini"))
    assert details.reason == "PROVIDER_AUTH"
    assert provider_ids(details.metadata) == {"provider_error_code": "API_KEY_INVALID"}


def test_listproviders_shows_no_provider_code(start_daemon, fakes) -> None:
    """The provider's health keeps the reason alone, never a provider's text or code. (On its own daemon: it
    reads the health.)"""
    daemon = start_daemon(config(fakes), env=ALL_KEYS, plugins=())
    fakes["openai"].fail_next(400, openai_error("Invalid image.", "invalid_request_error", "image_parse_error"))
    failure(daemon, ask("openai"))
    health = providers_by_name(daemon.stub)["openai"].health
    assert health.last_failure_reason == "PROVIDER_BAD_REQUEST"
    assert "image_parse_error" not in str(health) and "Invalid image" not in str(health)


# -- F4: a corrupt image is not refused for a size it does not have ------------------------------------------


def chunk(kind: bytes, data: bytes, crc: int | None = None) -> bytes:
    """One PNG chunk, its CRC right unless given."""
    crc = zlib.crc32(kind + data) if crc is None else crc
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


SIGNATURE = b"\x89PNG\r\n\x1a\n"
HUGE_IHDR = struct.pack(">IIBBBBB", 1634886241, 1734698849, 8, 2, 0, 0, 0)

CORRUPT = {
    "garbage after the signature": SIGNATURE + b"garbage" * 50,
    "another chunk first": SIGNATURE + chunk(b"tEXt", HUGE_IHDR) + b"garbage" * 50,
    "an IHDR whose CRC is wrong": SIGNATURE + chunk(b"IHDR", HUGE_IHDR, crc=0) + b"garbage" * 50,
    "an IHDR of 0 px": SIGNATURE + chunk(b"IHDR", struct.pack(">IIBBBBB", 0, 9000, 8, 2, 0, 0, 0)) + b"x" * 50,
}


@pytest.mark.parametrize("data", CORRUPT.values(), ids=CORRUPT.keys())
def test_a_corrupt_png_is_refused_as_damaged_not_for_its_size(daemon, fakes, data) -> None:
    """It was INPUT_TOO_LARGE "the image is 1634886241x1734698849 px, over Claude's limit of 8000x8000 px, and it
    could not be scaled down" (refused before sending), which sends a client to make it smaller and the router
    down its size-refusal path (fallbacks, a session's history halved). Since session 25 the router reads each
    image's header at intake: such a PNG is INVALID_REQUEST naming the part as damaged, with no size, and no
    provider is called."""
    details = failure(daemon, ask("claude", image(data)))
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST"), details
    [(field, why)] = details.violations
    assert field.endswith(".media") and why.startswith("scan.png: the image cannot be decoded"), details.violations
    assert "px" not in details.message
    assert fakes["anthropic"].message_calls() == []


def test_claudes_refusal_of_an_image_is_a_bad_request(daemon, fakes) -> None:
    """An image the router reads but Claude will not (its "Could not process image") is PROVIDER_BAD_REQUEST,
    as OpenAI's is."""
    fakes["anthropic"].fail_next_api(400, "invalid_request_error", COULD_NOT_PROCESS)
    details = failure(daemon, ask("claude", image(png("receipt"))))
    assert (details.code, details.reason) == BAD_REQUEST, details
    assert "Could not process image" in details.message and "px" not in details.message
    assert details.metadata["provider_error_type"] == "invalid_request_error"
