"""An image's estimated tokens follow its pixel size (round 25: QA a11y F5).

Routing counted a flat 765 tokens an image (``TOKENS_PER_IMAGE``), so 300 16x16 icons (~230k tokens) skipped
GPT-4o's 128k context for Claude, though OpenAI counts such an icon at 85-255 tokens. The router reads each
image's pixel size from its header while it measures the request's media, and ``router.routing.image_tokens``
counts it as OpenAI's high-detail formula does (and at least as Anthropic's up to 765): the icons go to GPT-4o,
while a large image counts at least the 765 it did. An image of unknown size (given by URL, or that Pillow
does not read) still counts 765. The daemon runs the embedded rules on the cloud fakes (``tests/conftest.py``).
"""

from __future__ import annotations

import pytest
from grpc_helpers import text_request
from media_factory import blank_png, png
from mmrouter.v1 import router_pb2 as pb
from test_hybrid import generate

from router.routing import TOKENS_PER_IMAGE, estimate_tokens, image_tokens, media_tokens
from router.sniff import measure_media
from router.types import Media, Message, Modality, Part, Role


def images(data: bytes, count: int) -> list[pb.Media]:
    return [pb.Media(modality=pb.MODALITY_IMAGE, mime_type="image/png", data=data, filename=f"icon{i}.png")
            for i in range(count)]


def explain(daemon, request: pb.MultimodalRequest) -> pb.Route:  # type: ignore[no-untyped-def]
    return daemon.stub.ExplainRoute(pb.ExplainRouteRequest(request=request), timeout=60).route


@pytest.mark.parametrize("pixels, tokens", [
    ((16, 16), 255), ((64, 32), 255),  # one 512-px tile
    ((1000, 400), 534),  # two tiles (425) for OpenAI; Anthropic counts 400,000 / 750
    ((1024, 1024), 765), ((4000, 3000), 765), ((6000, 4000), 1105), ((2048, 4096), 1105), ((3000, 1000), 1445),
    (None, TOKENS_PER_IMAGE),
])
def test_an_image_counts_by_its_pixels_and_a_large_one_at_least_the_flat_rate(pixels, tokens) -> None:
    assert image_tokens(pixels) == tokens
    if pixels is not None and min(pixels) >= 768:
        assert image_tokens(pixels) >= TOKENS_PER_IMAGE


def test_an_image_of_unknown_size_counts_the_flat_rate() -> None:
    """By URL (nothing is measured), or stored without facts: 765 each, as before."""
    by_url = Media(Modality.IMAGE, "image/png", url="https://example.com/a.png")
    measured = Media(Modality.IMAGE, "image/png", data=png(size=(16, 16)))
    measured.pixels = measure_media(measured.data, Modality.IMAGE).pixels
    assert (media_tokens(by_url), media_tokens(measured)) == (TOKENS_PER_IMAGE, 255)
    message = Message(Role.USER, [Part(media=by_url), Part(media=measured)])
    assert estimate_tokens([message]) == TOKENS_PER_IMAGE + 255


def test_three_hundred_icons_go_to_gpt_4o(shared) -> None:
    daemon, fakes = shared
    request = text_request("Alt text for each icon", media=images(png(size=(16, 16)), 300))
    route = explain(daemon, request)
    assert (route.provider, route.model) == ("openai", "gpt-4o"), route
    answer = generate(daemon, request)
    assert (answer.route.provider, answer.route.model) == ("openai", "gpt-4o")
    sent = fakes["openai"].chat_requests()[-1]["messages"][-1]["content"]
    assert sum(part["type"] == "image_url" for part in sent) == 300
    assert not fakes["anthropic"].requests


def test_large_images_still_count_at_least_as_before(shared) -> None:
    """170 images of 1024 x 1024 count 765 each, as before: ~130k tokens, over GPT-4o's context."""
    daemon, fakes = shared
    request = text_request("Alt text for each", media=images(blank_png(1024, 1024), 170))
    route = explain(daemon, request)
    assert (route.provider, route.model) != ("openai", "gpt-4o")
    skipped = str(route.trace)
    assert "openai/gpt-4o: input of ~130" in skipped and "exceeds its context of 128000" in skipped, skipped
    assert not any(fake.requests for fake in fakes.values())

