"""The NO_ROUTE message puts what matters first, so that it survives the server's clip (768 bytes).

It listed every rule's reason in trace order: with the embedded rules, no keys and a HEIC photo, the rules
that simply did not match and each cloud target's "no API key" filled the budget, and the decisive reason
(``local/extract: does not take image/heic and no bridge is usable``) was clipped away. It now gives the
rules that matched (then the default) with why each of their targets cannot be used, why each unusable
provider is so once, and the names of the rules that did not match last.
"""

from __future__ import annotations

import functools

import grpc
import pytest
from grpc_helpers import error_details, text_request
from mmrouter.v1 import router_pb2 as pb
from mmrouter_anthropic.models import MODELS as CLAUDE_MODELS
from mmrouter_assemblyai.models import MODELS as AAI_MODELS
from mmrouter_gemini.models import MODELS as GEMINI_MODELS
from mmrouter_local.provider import EXTRACT_MODEL
from mmrouter_openai.models import BUILTIN

from router.config import Match, Rule, embedded_default
from router.errors import NoRoute
from router.routing import ProviderStatus, Router, facts_of
from router.server import MAX_ERROR_MESSAGE_BYTES
from router.types import Media, Message, Modality, ModelInfo, Part, Request, Role

#: What the daemon says of a built-in cloud provider without its key.
NO_KEY = {
    "openai": "no API key: set OPENAI_API_KEY or providers.openai.api_key",
    "anthropic": "no API key: set ANTHROPIC_API_KEY or providers.anthropic.api_key",
    "gemini": "no API key: set GEMINI_API_KEY or GOOGLE_API_KEY or providers.gemini.api_key",
    "assemblyai": "no API key: set ASSEMBLYAI_API_KEY or providers.assemblyai.api_key",
}
LOCAL_HEIC = "local/extract: does not take image/heic and no bridge is usable"
NOT_MATCHED = "not matched: diarization, video-transcription, video, long-audio, documents, transcription"
#: A HEIC photo (the iPhone's format), which neither GPT-4o, Claude nor local's OCR reads.
HEIC = b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + bytes(64)


def local_only() -> dict[str, ProviderStatus]:
    """The built-in providers with their real catalogues, as with no keys: only ``local`` is ready."""
    models = {"openai": [e.info for e in BUILTIN], "anthropic": CLAUDE_MODELS, "gemini": GEMINI_MODELS,
              "assemblyai": AAI_MODELS, "local": [EXTRACT_MODEL]}
    return {name: ProviderStatus(name == "local", NO_KEY.get(name, ""), {m.name: m for m in found})
            for name, found in models.items()}


@functools.cache
def hybrid() -> Router:
    config = embedded_default()
    return Router(rules=config.routes, default=config.default, bridges=config.bridges)


def ask(*media: Media, question: str = "what") -> Request:
    return Request([Message(Role.USER, [Part(text=question), *(Part(media=m) for m in media)])])


def no_route(router: Router, request: Request, catalog) -> str:
    with pytest.raises(NoRoute) as info:
        router.decide(facts_of(request), catalog)
    assert type(info.value) is NoRoute
    return info.value.message


def rule(name: str, use: str, *fallback: str, **match) -> Rule:
    return Rule(name=name, match=Match(**match), use=use, fallback=list(fallback))


# -- through the routing API -----------------------------------------------------------------


def test_a_heic_photo_with_no_keys_names_local_extracts_reason_well_within_the_clip() -> None:
    message = no_route(hybrid(), ask(Media(Modality.IMAGE, "image/heic", data=HEIC)), local_only())
    assert len(message.encode()) <= MAX_ERROR_MESSAGE_BYTES - 100, message
    assert message == (
        "no provider can take this request (image, text, task chat): "
        f"cross-modal, general: no usable target: {LOCAL_HEIC}; "
        "openai/gpt-4o, anthropic/claude-sonnet-4-6, gemini/gemini-2.5-pro: providers not usable; "
        "default: local/extract: as above; "
        f"unusable providers: openai ({NO_KEY['openai']}), anthropic ({NO_KEY['anthropic']}), "
        f"gemini ({NO_KEY['gemini']}); "
        f"{NOT_MATCHED}")


def test_the_rules_that_did_not_match_are_only_named_at_the_end() -> None:
    message = no_route(hybrid(), ask(Media(Modality.IMAGE, "image/heic", data=HEIC)), local_only())
    assert message.endswith("; " + NOT_MATCHED)
    assert "needs any of" not in message and "request has" not in message
    assert message.index(LOCAL_HEIC) < message.index("unusable providers") < message.index("not matched")


def test_a_providers_reason_is_said_once_however_many_of_its_targets_are_skipped() -> None:
    long_reason = "no API key: set OPENAI_API_KEY or providers.openai.api_key " + "x" * 200
    gpt = ModelInfo("gpt-4o", inputs=frozenset({Modality.TEXT, Modality.IMAGE}))
    mini = ModelInfo("gpt-4o-mini", inputs=frozenset({Modality.TEXT, Modality.IMAGE}))
    catalog = {"openai": ProviderStatus(False, long_reason, {"gpt-4o": gpt, "gpt-4o-mini": mini})}
    router = Router(rules=[rule("a", "openai/gpt-4o", "openai/gpt-4o-mini"), rule("b", "openai/gpt-4o-mini"),
                           rule("c", "ghost/model")],
                    default="openai/gpt-4o")
    message = no_route(router, ask(), catalog)
    assert message.count(long_reason) == 1
    assert message == (
        "no provider can take this request (text, task chat): "
        "a: no usable target: openai/gpt-4o, openai/gpt-4o-mini: provider not usable; "
        "b: no usable target: openai/gpt-4o-mini: provider not usable; "
        "c: no usable target: ghost/model: provider not usable; "
        "default: openai/gpt-4o: provider not usable; "
        f"unusable providers: openai ({long_reason}), ghost (not installed)")


def test_a_rules_own_reasons_come_before_its_unusable_providers_and_a_repeated_reason_is_not_said_again() -> None:
    catalog = {**local_only(), "openai": ProviderStatus(True, "", {e.info.name: e.info for e in BUILTIN})}
    router = Router(rules=[rule("pictures", "anthropic/claude-sonnet-4-6", "openai/gpt-4o", "local/extract",
                                inputs_any=[Modality.IMAGE]),
                           rule("also", "local/extract", "openai/gpt-4o")])
    message = no_route(router, ask(Media(Modality.IMAGE, "image/heic", data=HEIC)), catalog)
    gpt = "openai/gpt-4o: does not take image/heic and no bridge is usable"
    assert message == (
        "no provider can take this request (image, text, task chat): "
        "the format of request.messages[0].parts[1].media (image/heic) is taken by no target this request could "
        "go to nor a bridge; "
        f"pictures: no usable target: {gpt}; {LOCAL_HEIC}; anthropic/claude-sonnet-4-6: provider not usable; "
        "also: no usable target: local/extract: as above; openai/gpt-4o: as above; "
        f"unusable providers: anthropic ({NO_KEY['anthropic']})")


def test_the_trace_keeps_every_reason_in_full() -> None:
    """Only the error message is compact: explain's trace of a decision still says everything."""
    decision = hybrid().decide(facts_of(ask(Media(Modality.IMAGE, "image/png", data=b"png"))), local_only())
    reason = next(t.reason for t in decision.trace if t.rule == "cross-modal")
    for provider, target in (("openai", "openai/gpt-4o"), ("anthropic", "anthropic/claude-sonnet-4-6")):
        assert f"{target}: provider '{provider}' is not usable: {NO_KEY[provider]}" in reason
    assert next(t.reason for t in decision.trace if t.rule == "video") == (
        "needs any of [video], request has [image, text]")


# -- through the daemon ------------------------------------------------------------------------


def heic_request() -> pb.MultimodalRequest:
    photo = pb.Media(modality=pb.MODALITY_IMAGE, mime_type="image/heic", data=HEIC, filename="p.heic")
    return text_request("what", media=[photo])


@pytest.mark.parametrize("call", ["ExplainRoute", "Generate"])
def test_the_daemon_with_the_embedded_default_and_no_keys_says_why_local_cannot_read_a_heic_photo(
        start_daemon, call) -> None:
    daemon = start_daemon(None, plugins=())  # the embedded default, no keys: only `local` is ready
    with pytest.raises(grpc.RpcError) as caught:
        if call == "ExplainRoute":
            daemon.stub.ExplainRoute(pb.ExplainRouteRequest(request=heic_request()), timeout=30)
        else:
            daemon.stub.Generate(pb.GenerateRequest(request=heic_request()), timeout=30)
    details = error_details(caught.value)
    assert (details.code, details.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "NO_ROUTE")
    message = details.message
    assert len(message.encode()) < MAX_ERROR_MESSAGE_BYTES, message  # whole, not clipped
    assert message.startswith("no provider can take this request (image, text, task chat): cross-modal, general: "
                              f"no usable target: {LOCAL_HEIC}; "), message
    assert "default: local/extract" in message
    for provider in ("openai", "anthropic", "gemini"):
        assert message.count(f"{provider.upper()}_API_KEY") == 1, message
    assert message.endswith(NOT_MATCHED), message
