"""A request refused because some media's format is taken by nothing names those media (round 24: QA a11y F1).

Five inline images with ``logo.svg`` (``image/svg+xml``, which no model takes and no bridge reads) at part 3 was
refused FAILED_PRECONDITION ``NO_ROUTE`` with only an ErrorInfo: every target "does not take image/svg+xml", no
part index, no file name, no field violation. It stays ``NO_ROUTE`` (a format is "a modality it does not take",
README), and now says first which media are to blame, with a ``BadRequest`` field violation on each
(``request.messages[0].parts[3].media``: ``logo.svg: image/svg+xml is taken by no configured model or bridge``); a
media of the session's history is named by its place, on ``request.session_id``. The daemon runs for real
(tests/conftest.py) with the cloud plugins pointed at the fakes of tests/fakes, which routing refuses before.
"""

from __future__ import annotations

import grpc
import pytest
from grpc_helpers import error_details, text_request
from media_factory import png
from mmrouter.v1 import router_pb2 as pb
from test_formats_e2e import config_for
from test_hybrid import ALL_KEYS
from test_image_types_s21 import saved
from test_no_route_message import HEIC, hybrid, local_only

from router.errors import FieldViolation, NoRoute
from router.routing import ProviderStatus, Router, Target, facts_of
from router.types import Media, Message, Modality, ModelInfo, Part, Request, Role

SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="9" height="9"/></svg>'
NOWHERE = "image/svg+xml is taken by no configured model or bridge"


def image(data: bytes, mime: str, filename: str = "") -> pb.Media:
    return pb.Media(modality=pb.MODALITY_IMAGE, mime_type=mime, data=data, filename=filename)


def refused(daemon, request: pb.MultimodalRequest, call: str = "Generate"):
    """The error details of ``request`` sent with ``call`` (Generate or ExplainRoute)."""
    with pytest.raises(grpc.RpcError) as caught:
        if call == "ExplainRoute":
            daemon.stub.ExplainRoute(pb.ExplainRouteRequest(request=request), timeout=30)
        else:
            daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=30)
    return error_details(caught.value)


@pytest.fixture
def daemon(start_daemon, fakes):
    """The embedded rules, OpenAI, Anthropic and Gemini pointed at their fakes, and ``local``."""
    return start_daemon(config_for(fakes, "openai", "anthropic", "gemini"), env=ALL_KEYS, plugins=())


@pytest.mark.parametrize("call", ["Generate", "ExplainRoute"])
def test_an_svg_among_five_images_is_named_by_its_part_and_file(daemon, fakes, call) -> None:
    media = [image(png("a"), "image/png", "alpha.png"), image(saved("WEBP"), "image/webp", "photo.webp"),
             image(saved("JPEG"), "image/jpeg", "progressive.jpg"), image(SVG, "image/svg+xml", "logo.svg"),
             image(png("t"), "image/png", "tiny.png")]
    details = refused(daemon, text_request("Write alt text for each", media=media), call)
    assert (details.code, details.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "NO_ROUTE")
    assert details.violations == [("request.messages[0].parts[3].media", f"logo.svg: {NOWHERE}")]
    assert details.message.startswith(
        "no provider can take this request (image, text, task chat): the format of request.messages[0].parts[3].media "
        "(logo.svg: image/svg+xml) is taken by no configured model or bridge; "), details.message
    assert "openai/gpt-4o: does not take image/svg+xml" in details.message  # why each target, as before
    assert not fakes["openai"].chat_requests() and not fakes["anthropic"].requests  # refused before any call


def test_many_unnamed_or_uploaded_media_are_counted_after_the_first_three(daemon) -> None:
    data = SVG
    metadata = pb.UploadMetadata(modality=pb.MODALITY_IMAGE, mime_type="image/svg+xml", size_bytes=len(data))
    media_id = daemon.stub.UploadMedia(iter([pb.UploadMediaRequest(metadata=metadata),
                                             pb.UploadMediaRequest(chunk=data)]), timeout=30).media_id
    media = [image(png("a"), "image/png", "a.png"), pb.Media(modality=pb.MODALITY_IMAGE, media_id=media_id),
             image(SVG, "image/svg+xml"), *(image(SVG, "image/svg+xml", f"icon{i}.svg") for i in range(3))]
    details = refused(daemon, text_request("Alt text", media=media))
    assert (details.code, details.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "NO_ROUTE")
    assert details.violations == [
        ("request.messages[0].parts[1].media", f"media_id {media_id}: {NOWHERE}"),
        ("request.messages[0].parts[2].media", NOWHERE),
        *((f"request.messages[0].parts[{3 + i}].media", f"icon{i}.svg: {NOWHERE}") for i in range(3))]
    assert details.message.startswith(
        "no provider can take this request (image, text, task chat): the formats of 5 media are taken by no "
        f"configured model or bridge: request.messages[0].parts[1].media (media_id {media_id}: image/svg+xml), "
        "request.messages[0].parts[2].media (image/svg+xml), request.messages[0].parts[3].media "
        "(icon0.svg: image/svg+xml) and 2 more (see the field violations); "), details.message


# -- through the routing API -----------------------------------------------------------------


def ready() -> dict[str, ProviderStatus]:
    """The built-in providers' real catalogues, all ready."""
    return {name: ProviderStatus(True, "", status.models) for name, status in local_only().items()}


def svg(filename: str = "logo.svg") -> Media:
    return Media(Modality.IMAGE, "image/svg+xml", data=SVG, filename=filename)


def no_route(router: Router, request: Request, catalog, **options) -> NoRoute:
    with pytest.raises(NoRoute) as info:
        router.decide(facts_of(request), catalog, **options)
    return info.value


def test_a_media_of_the_sessions_history_is_named_by_its_place_on_the_session_id() -> None:
    history = [Message(Role.USER, [Part(text="what"), Part(media=svg("old.svg"))]), Message(Role.ASSISTANT, [
        Part(text="a logo")])]
    request = Request([*history, Message(Role.USER, [Part(text="and this?")])], history_length=2)
    error = no_route(hybrid(), request, ready())
    assert error.message.startswith("the session's history holds image from earlier turns"), error.message
    assert "the format of part 2 of a message of an earlier turn (old.svg: image/svg+xml) is taken by no" \
           in error.message
    assert FieldViolation("request.session_id", f"its history's part 2 of a message of an earlier turn (old.svg): "
                                                f"{NOWHERE}") in error.violations


def test_a_format_another_model_takes_names_that_model() -> None:
    gpt = ModelInfo("gpt-4o", inputs=frozenset({Modality.TEXT, Modality.IMAGE}),
                    input_mime_types=frozenset({"image/png", "image/jpeg"}))
    flash = ModelInfo("gemini-flash", inputs=frozenset({Modality.TEXT, Modality.IMAGE}),
                      input_mime_types=frozenset({"image/png", "image/heic"}))
    catalog = {"openai": ProviderStatus(True, "", {"gpt-4o": gpt}),
               "gemini": ProviderStatus(True, "", {"gemini-flash": flash})}
    photo = Media(Modality.IMAGE, "image/heic", data=HEIC, filename="p.heic")
    error = no_route(Router(rules=[], default="openai/gpt-4o"), Request([Message(Role.USER, [
        Part(text="what"), Part(media=photo)])]), catalog)
    assert error.violations == [FieldViolation("request.messages[0].parts[1].media", (
        "p.heic: image/heic is taken by no target this request could go to nor a bridge (gemini/gemini-flash takes "
        "it: a rule or bridge naming it would)"))]


def test_a_format_a_candidate_of_an_unusable_provider_takes_is_not_blamed() -> None:
    """Gemini takes HEIC but has no key: the refusal is its configuration's, not the photo's."""
    photo = Media(Modality.IMAGE, "image/heic", data=HEIC, filename="p.heic")
    error = no_route(hybrid(), Request([Message(Role.USER, [Part(text="what"), Part(media=photo)])]), local_only())
    assert error.violations == []
    assert "is taken by no" not in error.message


def test_an_override_names_the_media_it_cannot_take() -> None:
    request = Request([Message(Role.USER, [Part(text="what"), Part(media=svg())])])
    error = no_route(hybrid(), request, ready(), override=Target("openai", "gpt-4o"))
    assert error.violations[1:] == [FieldViolation("request.messages[0].parts[1].media", f"logo.svg: {NOWHERE}")]
    assert error.message.startswith("the requested override cannot take this request: the format of "
                                    "request.messages[0].parts[1].media (logo.svg: image/svg+xml) is taken by no "
                                    "configured model or bridge; openai/gpt-4o: "), error.message
