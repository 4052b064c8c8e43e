"""Routing of media given by URL (``server.allow_urls: true``): ``ModelInfo.url_inputs``.

A model that declares the modalities it takes by URL is passed over, as a target or a bridge, for media
given only by URL in another modality, as it is for a MIME type it does not take, and the trace says
why; a model that does not declare them (None) is assumed to take any. The pure tests route on the
bundled plugins' own declarations (their models modules); the last ones ask a real daemon running the
embedded default policy to explain a route.
"""

from __future__ import annotations

import dataclasses

import pytest
from grpc_helpers import text_request
from mmrouter.v1 import router_pb2 as pb
from mmrouter_anthropic.models import MODELS as CLAUDE_MODELS
from mmrouter_assemblyai.models import MODELS as AAI_MODELS
from mmrouter_gemini.models import MODELS as GEMINI_MODELS
from mmrouter_local.provider import EXTRACT_MODEL
from mmrouter_openai.models import BUILTIN, catalogue

from router import Provider
from router.config import Match, Rule, embedded_default
from router.errors import NoRoute
from router.plugins import model_problem, registered_models
from router.routing import Decision, Outcome, ProviderStatus, Router, Target, facts_of
from router.types import (
    OUTPUT_TRANSCRIPT,
    Media,
    Message,
    Modality,
    ModelInfo,
    Options,
    Part,
    Request,
    Role,
    Task,
    TextDelta,
)

TEXT, IMAGE, AUDIO, VIDEO, DOC = Modality.TEXT, Modality.IMAGE, Modality.AUDIO, Modality.VIDEO, Modality.DOCUMENT
MEDIA = frozenset({IMAGE, AUDIO, VIDEO, DOC})

OPENAI = {e.info.name: e.info for e in BUILTIN}
#: Every bundled provider, ready, with the models its plugin declares.
CATALOG = {
    "openai": ProviderStatus(True, "", OPENAI),
    "anthropic": ProviderStatus(True, "", {m.name: m for m in CLAUDE_MODELS}),
    "gemini": ProviderStatus(True, "", {m.name: m for m in GEMINI_MODELS}),
    "assemblyai": ProviderStatus(True, "", {m.name: m for m in AAI_MODELS}),
    "local": ProviderStatus(True, "", {EXTRACT_MODEL.name: EXTRACT_MODEL}),
}
URL = "https://cdn.example.com/podcast.mp3"


def url_audio() -> Part:
    return Part(media=Media(AUDIO, "audio/mpeg", url=URL))


def url_image() -> Part:
    return Part(media=Media(IMAGE, "image/png", url="https://cdn.example.com/chart.png"))


def bytes_audio() -> Part:
    return Part(media=Media(AUDIO, "audio/mpeg", data=b"mp3", duration_seconds=60.0))


def request(*parts: Part, task: Task = Task.AUTO) -> Request:
    return Request(messages=[Message(Role.USER, list(parts))], options=Options(task=task))


def default_router() -> Router:
    config = embedded_default()
    return Router(rules=config.routes, default=config.default, bridges=config.bridges)


def decide(router: Router, req: Request, catalog=CATALOG) -> Decision:
    return router.decide(facts_of(req), catalog)


def reasons(decision: Decision) -> dict[str, str]:
    return {entry.rule: entry.reason for entry in decision.trace}


# -- the field ---------------------------------------------------------------------------------


def test_a_model_takes_by_url_what_it_declares_and_anything_when_it_declares_nothing() -> None:
    undeclared = ModelInfo("any", inputs=frozenset(Modality))
    assert all(undeclared.takes_url(m) for m in Modality)
    images = dataclasses.replace(undeclared, url_inputs=frozenset({IMAGE}))
    assert images.takes_url(IMAGE) and not images.takes_url(AUDIO)
    assert not any(dataclasses.replace(undeclared, url_inputs=frozenset()).takes_url(m) for m in Modality)


@pytest.mark.parametrize("value, problem", [
    (["audio"], "url_inputs is list, not a frozenset of router.Modality"),
    (frozenset({"sound"}), "url_inputs holds 'sound', not a router.Modality"),
])
def test_the_registry_refuses_a_url_inputs_of_the_wrong_type(value, problem) -> None:
    model = ModelInfo("m", inputs=frozenset({AUDIO}), url_inputs=value)  # type: ignore[arg-type]
    assert (model_problem(model) or "").startswith(problem)


def test_the_registry_takes_url_inputs_by_name_none_or_empty_and_keeps_them_as_modalities() -> None:
    class Named(Provider):
        name = "named"
        models = [ModelInfo("a", inputs=frozenset({AUDIO}), url_inputs=frozenset({"audio"})),  # type: ignore[arg-type]
                  ModelInfo("b", inputs=frozenset({AUDIO}), url_inputs=frozenset()),
                  ModelInfo("c", inputs=frozenset({AUDIO}))]

        async def generate(self, request, model, ctx):  # never called
            yield TextDelta("unused")

    a, b, c = registered_models(Named())
    assert a.url_inputs == frozenset({AUDIO}) and all(isinstance(m, Modality) for m in a.url_inputs)
    assert (b.url_inputs, c.url_inputs) == (frozenset(), None)


def test_the_bundled_plugins_declare_what_they_send_by_url() -> None:
    """What each plugin's convert code sends: OpenAI an image's URL as its ``image_url`` (audio only as
    bytes), Claude images and PDFs as a ``url`` source, Gemini every media as ``fileData``, AssemblyAI the
    URL as ``audio_url``; ``local`` works offline."""
    assert {name: info.url_inputs for name, info in OPENAI.items()} == {
        "gpt-4o": {IMAGE}, "gpt-4o-mini": {IMAGE}, "gpt-audio": set(), "gpt-audio-mini": set(), "whisper-1": set(),
        "gpt-4o-transcribe": set(), "gpt-4o-mini-transcribe": set(), "gpt-4o-transcribe-diarize": set(),
        "gpt-transcribe": set()}
    assert all(m.url_inputs == {IMAGE, DOC} for m in CLAUDE_MODELS)
    assert all(m.url_inputs == MEDIA for m in GEMINI_MODELS)
    assert all(m.url_inputs == {AUDIO, VIDEO} for m in AAI_MODELS)
    assert EXTRACT_MODEL.url_inputs == frozenset()


def test_openai_models_configured_for_a_compatible_server_declare_it_too() -> None:
    models = catalogue(False, [{"name": "llava", "inputs": ["text", "image", "audio"]},
                               {"name": "parakeet", "outputs": ["transcript"]}])
    assert models["llava"].info.url_inputs == {IMAGE}
    assert models["parakeet"].info.url_inputs == frozenset()


# -- facts and planning --------------------------------------------------------------------------


def test_facts_record_the_media_given_only_by_url() -> None:
    facts = facts_of(request(url_audio(), url_image(), Part(media=Media(IMAGE, "image/jpeg", data=b"jpg")),
                             Part(text="compare")))
    assert facts.url_mime_types == {AUDIO: {"audio/mpeg"}, IMAGE: {"image/png"}}
    assert facts.url_modalities == {AUDIO, IMAGE}
    assert facts_of(request(bytes_audio())).url_modalities == frozenset()


def test_url_audio_to_transcribe_skips_whisper_for_assemblyai_with_the_reason() -> None:
    decision = decide(default_router(), request(url_audio()))
    assert (decision.rule, str(decision.plan.target)) == ("transcription", "assemblyai/best")
    assert decision.fallbacks == [], "local/extract takes no audio by URL either"
    reason = reasons(decision)["transcription"]
    assert "openai/whisper-1: does not take audio by URL" in reason
    assert "local/extract: does not take audio by URL" in reason


def test_the_same_audio_as_bytes_still_goes_to_whisper() -> None:
    decision = decide(default_router(), request(bytes_audio()))
    assert (decision.rule, str(decision.plan.target)) == ("transcription", "openai/whisper-1")
    assert [str(p.target) for p in decision.fallbacks] == ["assemblyai/best", "local/extract"]


def test_a_bridge_that_takes_no_audio_by_url_is_passed_over_for_the_next() -> None:
    decision = decide(default_router(), request(url_audio(), Part(text="Summarise this podcast")))
    assert str(decision.plan.target) == "openai/gpt-4o"
    assert [str(b) for b in decision.plan.bridges] == ["audio->transcript via assemblyai/best"]


def test_a_model_that_takes_images_by_url_takes_them_directly_beside_bridged_url_audio() -> None:
    decision = decide(default_router(), request(url_image(), url_audio(), Part(text="Do they match?")))
    assert (decision.rule, str(decision.plan.target)) == ("cross-modal", "openai/gpt-4o")
    assert [str(b) for b in decision.plan.bridges] == ["audio->transcript via assemblyai/best"]


def test_without_a_bridge_that_takes_urls_the_target_is_skipped_saying_so() -> None:
    catalog = {**CATALOG, "assemblyai": ProviderStatus(False, "ASSEMBLYAI_API_KEY is not set", CATALOG["assemblyai"].models)}
    router = Router(rules=[Rule(name="chat", match=Match(), use="openai/gpt-4o")],
                    bridges={AUDIO: ["openai/whisper-1", "assemblyai/best", "local/extract"]})
    with pytest.raises(NoRoute) as caught:
        decide(router, request(url_audio(), Part(text="Summarise this podcast")), catalog)
    assert "openai/gpt-4o: does not take audio and no bridge that takes it by URL is usable" in str(caught.value)


def test_a_model_that_hears_but_not_by_url_needs_a_bridge_that_takes_urls() -> None:
    router = Router(rules=[Rule(name="hear", match=Match(), use="openai/gpt-audio")],
                    bridges={AUDIO: ["openai/whisper-1", "local/extract"]})
    with pytest.raises(NoRoute) as caught:
        decide(router, request(url_audio(), Part(text="Summarise this podcast")))
    assert "openai/gpt-audio: does not take audio by URL and no bridge is usable" in str(caught.value)
    router = dataclasses.replace(router, bridges={AUDIO: ["openai/whisper-1", "assemblyai/best"]})
    decision = decide(router, request(url_audio(), Part(text="Summarise this podcast")))
    assert [str(b) for b in decision.plan.bridges] == ["audio->transcript via assemblyai/best"]


def test_with_bridging_off_the_reason_names_only_what_is_refused_by_url() -> None:
    router = Router(rules=[Rule(name="direct", match=Match(), use="openai/gpt-audio", bridging=False)])
    with pytest.raises(NoRoute) as caught:
        decide(router, request(url_audio(), url_image(), Part(text="what is this?")))
    assert "openai/gpt-audio: does not take image, audio by URL" in str(caught.value)


def test_an_override_to_a_model_that_takes_no_url_is_refused_before_any_call() -> None:
    with pytest.raises(NoRoute, match="openai/whisper-1: does not take audio by URL"):
        default_router().decide(facts_of(request(url_audio())), CATALOG, override=Target("openai", "whisper-1"))


def test_a_model_not_declaring_url_inputs_is_still_planned_for_url_media() -> None:
    ears = ModelInfo("ears", inputs=frozenset({AUDIO}), outputs=frozenset({OUTPUT_TRANSCRIPT}), features=frozenset())
    catalog = {**CATALOG, "thirdparty": ProviderStatus(True, "", {"ears": ears})}
    router = Router(rules=[Rule(name="theirs", match=Match(), use="thirdparty/ears", fallback=["openai/whisper-1"])])
    decision = decide(router, request(url_audio()), catalog)
    assert str(decision.plan.target) == "thirdparty/ears"
    assert decision.trace[0].outcome is Outcome.MATCHED
    assert "(skipped openai/whisper-1: does not take audio by URL)" in decision.trace[0].reason


# -- explain, on a real daemon ----------------------------------------------------------------------

#: The embedded rules and bridges with URLs allowed and OpenAI and AssemblyAI configured (nothing is
#: called: ExplainRoute only plans).
CONFIG = """
server: {allow_urls: true}
extend_default_routes: true
providers:
  openai: {api_key: "sk-explain"}
  assemblyai: {api_key: "aai-explain"}
  local: {}
"""
PODCAST = pb.Media(modality=pb.MODALITY_AUDIO, mime_type="audio/mpeg", url=URL)


def explain(daemon, request: pb.MultimodalRequest) -> pb.Route:
    return daemon.stub.ExplainRoute(pb.ExplainRouteRequest(request=request), timeout=30).route


def test_explain_of_url_audio_names_assemblyai_and_why_not_whisper(start_daemon) -> None:
    daemon = start_daemon(CONFIG, plugins=())
    route = explain(daemon, text_request("", media=[PODCAST], options=pb.Options(task=pb.TASK_TRANSCRIBE)))
    assert (route.rule, route.provider, route.model) == ("transcription", "assemblyai", "best")
    assert list(route.fallbacks) == []
    [transcription] = [t for t in route.trace if t.rule == "transcription"]
    assert transcription.outcome == pb.RULE_OUTCOME_MATCHED
    assert "openai/whisper-1: does not take audio by URL" in transcription.reason


def test_explain_of_a_question_about_url_audio_bridges_through_assemblyai(start_daemon) -> None:
    daemon = start_daemon(CONFIG, plugins=())
    route = explain(daemon, text_request("Summarise this podcast", media=[PODCAST]))
    assert (route.provider, route.model) == ("openai", "gpt-4o")
    assert list(route.bridges) == ["audio->transcript via assemblyai/best"]


def test_a_later_audio_bridge_is_not_tried_on_url_audio_it_cannot_take() -> None:
    """When the planned bridge fails, the next one of ``bridges.audio`` is tried: it was taken whatever it
    took by URL, so a URL clip went to whisper-1 after AssemblyAI failed, and was refused there."""
    from router.bridging import _takes
    from router.plugins import load_registry
    from router.routing import Bridge, Target

    registry = load_registry({"openai": {"api_key": "k"}, "assemblyai": {"api_key": "k"}}, log_broken=False)
    whisper = Bridge(Modality.AUDIO, Target.parse("openai/whisper-1"))
    assemblyai = Bridge(Modality.AUDIO, Target.parse("assemblyai/best"))
    by_url = Media(Modality.AUDIO, "audio/mpeg", url="https://cdn.example.com/talk.mp3")
    as_bytes = Media(Modality.AUDIO, "audio/mpeg", data=b"\xff\xfb" + b"\0" * 64)
    assert not _takes(whisper, by_url, registry) and _takes(whisper, as_bytes, registry)
    assert _takes(assemblyai, by_url, registry)
