"""The rule engine: facts of a request, rule matching, usable targets, bridging, overrides, trace.

Everything here is pure: requests are built from ``router.types`` with media
durations and pages set directly, catalogs from ``ModelInfo`` objects that
mirror what the built-in providers declare. No I/O.
"""

from __future__ import annotations

import dataclasses
import functools

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.config import Match, Range, Rule, embedded_default
from router.errors import (
    DiarizationUnavailable,
    NoRoute,
    OverrideNotAllowed,
    ProviderNotConfigured,
    UnknownTarget,
)
from router.routing import (
    TOKENS_PER_AUDIO_SECOND,
    TOKENS_PER_IMAGE,
    TOKENS_PER_PDF_PAGE,
    TOKENS_PER_VIDEO_SECOND,
    Bridge,
    Decision,
    Outcome,
    Plan,
    ProviderStatus,
    Router,
    Target,
    bridge_problem,
    facts_of,
    why_not_matched,
)
from router.types import (
    FEATURE_DIARIZATION,
    FEATURE_EXTRACTION_ONLY,
    FEATURE_STREAMING,
    OUTPUT_TEXT,
    OUTPUT_TRANSCRIPT,
    Media,
    Message,
    Modality,
    ModelInfo,
    Options,
    Part,
    Request,
    Role,
    RoutingHints,
    Task,
)

TEXT, IMAGE, AUDIO, VIDEO, DOC = Modality.TEXT, Modality.IMAGE, Modality.AUDIO, Modality.VIDEO, Modality.DOCUMENT
ALL = frozenset(Modality)

# -- models, mirroring what the built-in providers declare -----------------------------------

GPT_4O = ModelInfo("gpt-4o", inputs=frozenset({TEXT, IMAGE}))
WHISPER = ModelInfo("whisper-1", inputs=frozenset({AUDIO}), outputs=frozenset({OUTPUT_TRANSCRIPT}),
                    features=frozenset())
CLAUDE = ModelInfo("claude-sonnet-4-6", inputs=frozenset({TEXT, IMAGE, DOC}))
GEMINI = ModelInfo("gemini-2.5-pro", inputs=ALL)
AAI_BEST = ModelInfo("best", inputs=frozenset({AUDIO, VIDEO}), outputs=frozenset({OUTPUT_TRANSCRIPT}),
                     features=frozenset({FEATURE_DIARIZATION}))
EXTRACT = ModelInfo("extract", inputs=ALL, outputs=frozenset({OUTPUT_TEXT, OUTPUT_TRANSCRIPT}),
                    features=frozenset({FEATURE_EXTRACTION_ONLY}))
#: AUDIO test-only model that can answer anything (so a rule's conditions decide alone).
OMNI = ModelInfo("omni", inputs=ALL, outputs=frozenset({OUTPUT_TEXT, OUTPUT_TRANSCRIPT}),
                 features=frozenset({FEATURE_DIARIZATION}), context_tokens=10**12)

PROVIDER_MODELS = {
    "openai": [GPT_4O, WHISPER],
    "anthropic": [CLAUDE],
    "gemini": [GEMINI],
    "assemblyai": [AAI_BEST],
    "local": [EXTRACT],
}
KEY_MISSING = {
    "openai": "OPENAI_API_KEY is not set",
    "anthropic": "ANTHROPIC_API_KEY is not set",
    "gemini": "GEMINI_API_KEY is not set",
    "assemblyai": "ASSEMBLYAI_API_KEY is not set",
    "local": "needs nothing",
}


def status(*models: ModelInfo, ready: bool = True, reason: str = "") -> ProviderStatus:
    return ProviderStatus(ready, reason, {m.name: m for m in models})


def catalog(ready: set[str] | None = None, **extra: ProviderStatus) -> dict[str, ProviderStatus]:
    """All five built-in providers; those not in ``ready`` (default: all) are not configured."""
    ready = set(PROVIDER_MODELS) if ready is None else ready
    result = {
        name: status(*models, ready=name in ready, reason="" if name in ready else KEY_MISSING[name])
        for name, models in PROVIDER_MODELS.items()
    }
    result.update(extra)
    return result


ALL_READY = catalog()
LOCAL_ONLY = catalog({"local"})

# -- requests ------------------------------------------------------------------------------


def text(value: str = "what is this?") -> Part:
    return Part(text=value)


def image() -> Part:
    return Part(media=Media(IMAGE, "image/png", data=b"png"))


def audio(seconds: float | None = 60.0) -> Part:
    return Part(media=Media(AUDIO, "audio/wav", data=b"wav", duration_seconds=seconds))


def video(seconds: float | None = 60.0) -> Part:
    return Part(media=Media(VIDEO, "video/mp4", data=b"mp4", duration_seconds=seconds))


def pdf(pages: int | None = 3) -> Part:
    return Part(media=Media(DOC, "application/pdf", data=b"%PDF", pages=pages))


def request(*parts: Part, task: Task = Task.AUTO, diarization: bool = False,
            metadata: dict[str, str] | None = None, tags: list[str] | None = None) -> Request:
    return Request(
        messages=[Message(Role.USER, list(parts))],
        options=Options(task=task, diarization=diarization),
        hints=RoutingHints(tags=tags or []),
        metadata=metadata or {},
    )


def rule(name: str, use: str, *fallback: str, bridging: bool = True, **match) -> Rule:
    return Rule(name=name, match=Match(**match), use=use, fallback=list(fallback), bridging=bridging)


def decide(router: Router, req: Request, cat=ALL_READY, **kwargs) -> Decision:
    return router.decide(facts_of(req), cat, **kwargs)


def outcomes(decision: Decision) -> list[tuple[str, Outcome]]:
    return [(e.rule, e.outcome) for e in decision.trace]


def chosen(decision: Decision) -> str:
    return str(decision.plan.target)


@functools.cache
def default_router() -> Router:
    config = embedded_default()
    return Router(rules=config.routes, default=config.default, bridges=config.bridges,
                  allow_overrides=config.overrides.allow, override_providers=config.overrides.providers)


# -- facts -----------------------------------------------------------------------------------


def test_facts_measure_what_the_request_holds():
    req = request(text("x" * 400), image(), image(), audio(30), audio(12.5), video(10), pdf(4), pdf(2),
                  metadata={"team": "ops"}, tags=["urgent"])
    facts = facts_of(req)
    assert facts.modalities == {TEXT, IMAGE, AUDIO, VIDEO, DOC}
    assert facts.task is Task.CHAT
    assert facts.images == 2
    assert facts.audio_seconds == 42.5
    assert facts.video_seconds == 10
    assert facts.pdf_pages == 6
    assert facts.input_tokens == (100 + 2 * TOKENS_PER_IMAGE + int(42.5 * TOKENS_PER_AUDIO_SECOND)
                                  + 10 * TOKENS_PER_VIDEO_SECOND + 6 * TOKENS_PER_PDF_PAGE)
    assert facts.metadata == {"team": "ops"}
    assert facts.tags == {"urgent"}


def test_facts_of_a_request_without_media_are_zero_not_unknown():
    facts = facts_of(request(text("hello")))
    assert (facts.images, facts.audio_seconds, facts.video_seconds, facts.pdf_pages) == (0, 0, 0, 0)


def test_one_unknown_duration_or_page_count_makes_the_total_unknown():
    facts = facts_of(request(audio(30), audio(None), video(None), pdf(2), pdf(None)))
    assert facts.audio_seconds is None
    assert facts.video_seconds is None
    assert facts.pdf_pages is None


def test_blank_text_is_not_a_text_input_and_audio_alone_is_a_transcription():
    facts = facts_of(request(text("   "), audio()))
    assert facts.modalities == {AUDIO}
    assert facts.task is Task.TRANSCRIBE
    assert facts_of(request(text("summarize"), audio())).task is Task.CHAT
    assert facts_of(request(audio(), task=Task.CHAT)).task is Task.CHAT


def test_facts_take_media_from_every_message():
    req = Request(messages=[Message(Role.USER, [image()]), Message(Role.ASSISTANT, [text("ok")]),
                            Message(Role.USER, [image(), text("and this?")])])
    assert facts_of(req).images == 2


# -- matching ------------------------------------------------------------------------------

# (conditions, request, whether the rule matches, words the reason must contain when it does not)
MATCH_CASES = [
    pytest.param({"inputs": [TEXT, IMAGE]}, request(text(), image()), True, "", id="inputs-all-of"),
    pytest.param({"inputs": [TEXT, IMAGE]}, request(image()), False, "needs all of [image, text]", id="inputs-missing-one"),
    pytest.param({"inputs_any": [AUDIO, VIDEO]}, request(text(), video()), True, "", id="inputs_any"),
    pytest.param({"inputs_any": [AUDIO, VIDEO]}, request(text(), image()), False, "needs any of [audio, video]",
                 id="inputs_any-none-present"),
    pytest.param({"inputs_none": [IMAGE]}, request(text(), audio()), True, "", id="inputs_none"),
    pytest.param({"inputs_none": [IMAGE, VIDEO]}, request(text(), image()), False, "needs none of [image, video]",
                 id="inputs_none-present"),
    pytest.param({"inputs_only": [TEXT, IMAGE]}, request(image()), True, "", id="inputs_only-subset"),
    pytest.param({"inputs_only": [TEXT, IMAGE]}, request(text(), image(), audio()), False,
                 "needs only [image, text], request has [audio, image, text]", id="inputs_only-extra"),
    pytest.param({"task": [Task.TRANSCRIBE]}, request(audio()), True, "", id="task-auto-resolved"),
    pytest.param({"task": [Task.TRANSCRIBE]}, request(text(), audio()), False,
                 "task is chat, rule wants transcribe", id="task-other"),
    pytest.param({"diarization": True}, request(audio(), diarization=True), True, "", id="diarization-on"),
    pytest.param({"diarization": True}, request(audio()), False, "diarization is off, rule wants it on",
                 id="diarization-off"),
    pytest.param({"diarization": False}, request(audio(), diarization=True), False,
                 "diarization is on, rule wants it off", id="diarization-unwanted"),
    pytest.param({"metadata": {"team": "ops"}}, request(text(), metadata={"team": "ops", "x": "y"}), True, "",
                 id="metadata"),
    pytest.param({"metadata": {"team": "ops"}}, request(text(), metadata={"team": "dev"}), False,
                 "metadata team='dev', rule wants 'ops'", id="metadata-other"),
    pytest.param({"metadata": {"team": "ops"}}, request(text()), False, "no team metadata, rule wants team='ops'",
                 id="metadata-absent"),
    pytest.param({"tags": ["a", "b"]}, request(text(), tags=["b", "a", "c"]), True, "", id="tags"),
    pytest.param({"tags": ["a", "b"]}, request(text(), tags=["a"]), False, "missing tags: b", id="tags-missing"),
    pytest.param({"images": Range(min=2)}, request(image(), image()), True, "", id="images-min-inclusive"),
    pytest.param({"images": Range(min=2)}, request(image()), False, "images is 1, rule wants >= 2",
                 id="images-below"),
    pytest.param({"audio_seconds": Range(max=60)}, request(audio(60)), True, "", id="audio-max-inclusive"),
    pytest.param({"audio_seconds": Range(min=1800)}, request(audio(600)), False,
                 "audio_seconds is 600, rule wants >= 1800", id="audio-short"),
    pytest.param({"audio_seconds": Range(min=1800)}, request(audio(None)), False,
                 "audio_seconds is unknown, rule wants >= 1800", id="audio-unknown"),
    pytest.param({"audio_seconds": Range(max=1800)}, request(audio(None)), False, "audio_seconds is unknown",
                 id="audio-unknown-max"),
    pytest.param({"video_seconds": Range(min=10, max=20)}, request(video(15)), True, "", id="video-range"),
    pytest.param({"video_seconds": Range(min=10, max=20)}, request(video(21)), False,
                 "video_seconds is 21, rule wants 10..20", id="video-over"),
    pytest.param({"video_seconds": Range(max=20)}, request(video(None)), False, "video_seconds is unknown",
                 id="video-unknown"),
    pytest.param({"pdf_pages": Range(min=50)}, request(pdf(80)), True, "", id="pages"),
    pytest.param({"pdf_pages": Range(min=50)}, request(pdf(10)), False, "pdf_pages is 10, rule wants >= 50",
                 id="pages-few"),
    pytest.param({"pdf_pages": Range(max=50)}, request(pdf(None)), False, "pdf_pages is unknown",
                 id="pages-unknown"),
    pytest.param({"input_tokens": Range(min=100_000)}, request(pdf(100)), True, "", id="tokens"),
    pytest.param({"input_tokens": Range(min=100_000)}, request(text("hi")), False,
                 "input_tokens is 0, rule wants >= 100000", id="tokens-few"),
    pytest.param({"input_tokens": Range(max=8_000)}, request(text("hi"), video(None)), False,
                 "input_tokens is unknown", id="tokens-unknown-with-unmeasured-media"),
    pytest.param({"pdf_pages": Range()}, request(pdf(None)), False, "pdf_pages is unknown, rule wants any value",
                 id="open-range-unknown"),
    pytest.param({}, request(text()), True, "", id="empty-match-always-holds"),
]


@pytest.mark.parametrize(("conditions", "req", "matches", "reason"), MATCH_CASES)
def test_each_condition_matches_or_says_why_not(conditions, req, matches, reason):
    why = why_not_matched(Match(**conditions), facts_of(req))
    if matches:
        assert why is None
    else:
        assert why is not None
        assert reason in why


@pytest.mark.parametrize(("conditions", "req", "matches", "reason"), MATCH_CASES)
def test_decide_follows_each_condition(conditions, req, matches, reason):
    router = Router(rules=[rule("r", "zz/omni", **conditions)], default="zz/omni")
    decision = decide(router, req, {"zz": status(OMNI)})
    assert decision.rule == ("r" if matches else "default")
    entry = decision.trace[0]
    assert entry.outcome is (Outcome.MATCHED if matches else Outcome.NOT_MATCHED)
    assert reason in entry.reason


def test_every_condition_of_a_rule_must_hold():
    match = Match(inputs_any=[AUDIO], task=[Task.CHAT], tags=["x"])
    assert why_not_matched(match, facts_of(request(text(), audio(), tags=["x"]))) is None
    assert "missing tags" in why_not_matched(match, facts_of(request(text(), audio())))
    assert "task is transcribe" in why_not_matched(match, facts_of(request(audio(), tags=["x"])))


def test_rules_are_tried_in_order_and_the_first_usable_match_wins():
    router = Router(rules=[
        rule("images", "openai/gpt-4o", inputs_any=[IMAGE]),
        rule("anything", "anthropic/claude-sonnet-4-6"),
        rule("also-anything", "gemini/gemini-2.5-pro"),
    ])
    decision = decide(router, request(text("hello")))
    assert decision.rule == "anything"
    assert chosen(decision) == "anthropic/claude-sonnet-4-6"
    assert outcomes(decision) == [("images", Outcome.NOT_MATCHED), ("anything", Outcome.MATCHED),
                                  ("also-anything", Outcome.NOT_EVALUATED)]
    assert "'anything' already chose" in decision.trace[2].reason


# -- targets and fallbacks -----------------------------------------------------------------


def test_usable_fallbacks_follow_the_primary_in_order_and_unusable_ones_are_dropped():
    router = Router(rules=[rule("r", "openai/gpt-4o", "nope/model", "anthropic/claude-sonnet-4-6",
                                "gemini/gemini-2.5-pro", "local/extract")])
    decision = decide(router, request(text(), image()), catalog({"openai", "gemini", "local"}))
    assert chosen(decision) == "openai/gpt-4o"
    assert [str(p.target) for p in decision.fallbacks] == ["gemini/gemini-2.5-pro", "local/extract"]
    assert [str(p.target) for p in decision.plans] == ["openai/gpt-4o", "gemini/gemini-2.5-pro", "local/extract"]
    reason = decision.trace[0].reason
    assert "using openai/gpt-4o" in reason
    assert "nope/model: provider 'nope' is not installed" in reason
    assert "anthropic/claude-sonnet-4-6: provider 'anthropic' is not usable: ANTHROPIC_API_KEY is not set" in reason


def test_an_unusable_primary_gives_way_to_the_first_usable_fallback():
    router = Router(rules=[rule("r", "openai/gpt-4o", "anthropic/claude-sonnet-4-6", "local/extract")])
    decision = decide(router, request(text(), image()), catalog({"anthropic", "local"}))
    assert chosen(decision) == "anthropic/claude-sonnet-4-6"
    assert [str(p.target) for p in decision.fallbacks] == ["local/extract"]
    assert "skipped openai/gpt-4o: provider 'openai' is not usable: OPENAI_API_KEY is not set" in \
        decision.trace[0].reason


@pytest.mark.parametrize(("target", "cat", "problem"), [
    ("nope/model", ALL_READY, "nope/model: provider 'nope' is not installed"),
    ("openai/gpt-4o", catalog(set()), "provider 'openai' is not usable: OPENAI_API_KEY is not set"),
    ("openai/gpt-9", ALL_READY, "provider 'openai' has no model 'gpt-9'"),
    ("assemblyai/best", ALL_READY, "assemblyai/best: cannot chat (produces transcript)"),
    ("anthropic/claude-sonnet-4-6", catalog({"anthropic"}), "does not take audio and no bridge is usable"),
])
def test_a_rule_whose_targets_are_all_unusable_is_skipped_with_the_reason(target, cat, problem):
    router = Router(rules=[rule("first", target), rule("second", "local/extract")])
    req = request(text("question"), audio())
    cat = {**cat, "local": status(EXTRACT)}
    decision = decide(router, req, cat)
    assert outcomes(decision) == [("first", Outcome.SKIPPED), ("second", Outcome.MATCHED)]
    assert decision.trace[0].reason.startswith("no usable target: ")
    assert problem in decision.trace[0].reason


def test_a_broken_provider_is_skipped_with_its_reason():
    cat = {**ALL_READY, "openai": status(ready=False, reason="failed to import mmrouter-openai: boom")}
    router = Router(rules=[rule("r", "openai/gpt-4o", "local/extract")])
    decision = decide(router, request(text()), cat)
    assert chosen(decision) == "local/extract"
    assert "failed to import mmrouter-openai: boom" in decision.trace[0].reason


def test_transcription_needs_a_model_with_transcript_output():
    router = Router(rules=[rule("r", "openai/gpt-4o", "gemini/gemini-2.5-pro", "openai/whisper-1")],
                    bridges={AUDIO: ["openai/whisper-1"]})
    decision = decide(router, request(audio()))
    assert chosen(decision) == "openai/whisper-1"
    assert decision.fallbacks == []
    assert "openai/gpt-4o: cannot transcribe (produces text)" in decision.trace[0].reason
    assert "gemini/gemini-2.5-pro: cannot transcribe (produces text)" in decision.trace[0].reason


def test_text_beside_audio_to_transcribe_is_only_a_hint():
    router = Router(rules=[rule("r", "openai/whisper-1")])
    decision = decide(router, request(text("names: Ada, Grace"), audio(), task=Task.TRANSCRIBE))
    assert chosen(decision) == "openai/whisper-1"
    assert decision.plan.bridges == []


def test_transcription_is_never_bridged():
    # whisper takes audio only; a video to transcribe is not converted for it, even with a bridge.
    router = Router(rules=[rule("r", "openai/whisper-1")], bridges={VIDEO: ["local/extract"]})
    with pytest.raises(NoRoute) as info:
        decide(router, request(video(), task=Task.TRANSCRIBE))
    assert "openai/whisper-1: does not take video" in info.value.message


# -- bridging ------------------------------------------------------------------------------

BRIDGES = {AUDIO: ["openai/whisper-1", "assemblyai/best", "local/extract"], VIDEO: ["local/extract", "assemblyai/best"],
           DOC: ["local/extract"], IMAGE: ["local/extract"]}


def test_a_model_without_audio_input_is_usable_through_the_first_ready_bridge():
    router = Router(rules=[rule("r", "anthropic/claude-sonnet-4-6")], bridges=BRIDGES)
    decision = decide(router, request(text("summarize"), audio()))
    assert chosen(decision) == "anthropic/claude-sonnet-4-6"
    assert decision.plan.bridges == [Bridge(AUDIO, Target("openai", "whisper-1"))]
    assert str(decision.plan.bridges[0]) == "audio->transcript via openai/whisper-1"


def test_bridges_follow_the_configured_preference_order():
    router = Router(rules=[rule("r", "anthropic/claude-sonnet-4-6")],
                    bridges={AUDIO: ["assemblyai/best", "openai/whisper-1"]})
    decision = decide(router, request(text("summarize"), audio()))
    assert decision.plan.bridges == [Bridge(AUDIO, Target("assemblyai", "best"))]


def test_bridges_that_are_not_ready_or_cannot_take_the_modality_are_passed_over():
    router = Router(rules=[rule("r", "anthropic/claude-sonnet-4-6")],
                    bridges={AUDIO: ["missing/x", "openai/gpt-4o", "assemblyai/best", "local/extract"]})
    cat = catalog({"anthropic", "openai", "local"})
    decision = decide(router, request(text("summarize"), audio()), cat)
    assert decision.plan.bridges == [Bridge(AUDIO, Target("local", "extract"))]


def test_every_missing_modality_gets_its_bridge():
    router = Router(rules=[rule("r", "openai/gpt-4o")], bridges=BRIDGES)
    decision = decide(router, request(text("compare"), audio(), pdf(), video()))
    assert decision.plan.bridges == [Bridge(AUDIO, Target("openai", "whisper-1")),
                                     Bridge(DOC, Target("local", "extract")),
                                     Bridge(VIDEO, Target("local", "extract"))]


def test_with_bridging_off_a_model_that_cannot_take_the_inputs_is_skipped():
    router = Router(rules=[rule("r", "anthropic/claude-sonnet-4-6", "gemini/gemini-2.5-pro", bridging=False)],
                    bridges=BRIDGES)
    decision = decide(router, request(text("summarize"), audio()))
    assert chosen(decision) == "gemini/gemini-2.5-pro"
    assert decision.plan.bridges == []
    assert "anthropic/claude-sonnet-4-6: does not take audio" in decision.trace[0].reason


def test_without_a_usable_bridge_the_target_is_skipped():
    router = Router(rules=[rule("r", "anthropic/claude-sonnet-4-6")], bridges={VIDEO: ["local/extract"]})
    with pytest.raises(NoRoute) as info:
        decide(router, request(text("summarize"), audio()))
    assert "does not take audio and no bridge is usable" in info.value.message
    assert info.value.reason == "NO_ROUTE"


def test_diarized_audio_for_a_chat_model_needs_a_diarizing_bridge():
    router = Router(rules=[rule("r", "openai/gpt-4o")], bridges=BRIDGES)
    decision = decide(router, request(text("who was angry?"), image(), audio(), diarization=True))
    # whisper comes first in preference but cannot diarize
    assert decision.plan.bridges == [Bridge(AUDIO, Target("assemblyai", "best"))]


def test_a_model_that_hears_audio_but_cannot_diarize_gets_a_diarizing_bridge():
    router = Router(rules=[rule("r", "gemini/gemini-2.5-pro")], bridges=BRIDGES)
    decision = decide(router, request(text("who said what?"), audio(), diarization=True))
    assert decision.plan.bridges == [Bridge(AUDIO, Target("assemblyai", "best"))]
    assert decide(router, request(text("what is said?"), audio())).plan.bridges == []


def test_diarized_video_for_a_model_that_cannot_diarize_gets_a_diarizing_bridge():
    """Gemini takes video but cannot label speakers: the speakers must come from a diarizing bridge."""
    router = Router(rules=[rule("r", "gemini/gemini-2.5-pro", "local/extract")], bridges=BRIDGES)
    decision = decide(router, request(text("who said what?"), video(), diarization=True))
    # local/extract comes first for video but cannot diarize; Gemini keeps the video, the transcript goes beside it
    assert decision.plan.bridges == [Bridge(VIDEO, Target("assemblyai", "best"), keep_media=True)]
    assert decide(router, request(text("what is shown?"), video())).plan.bridges == []
    # an extraction-only model would make its own transcript, without speakers: it gets the bridge's instead
    fallback = decide(router, request(text("who?"), video(), diarization=True), catalog({"local", "assemblyai"}))
    assert chosen(fallback) == "local/extract"
    assert fallback.plan.bridges == [Bridge(VIDEO, Target("assemblyai", "best"))]
    with pytest.raises(DiarizationUnavailable):  # no diarizing provider: refused, not silently undiarized
        decide(router, request(text("who?"), video(), diarization=True), catalog({"gemini", "local"}))


def test_no_diarizing_bridge_means_the_target_is_skipped():
    router = Router(rules=[rule("r", "openai/gpt-4o")], bridges={AUDIO: ["openai/whisper-1", "local/extract"]})
    with pytest.raises(NoRoute) as info:
        decide(router, request(text("who?"), audio(), diarization=True))
    assert type(info.value) is NoRoute  # assemblyai is ready, just not a configured bridge
    assert "openai/gpt-4o: does not take audio and no bridge with diarization is usable" in info.value.message
    with pytest.raises(DiarizationUnavailable):
        decide(router, request(text("who?"), audio(), diarization=True), catalog({"openai", "local"}))


def test_transcription_with_diarization_needs_the_diarization_feature():
    router = Router(rules=[rule("r", "openai/whisper-1", "local/extract", "assemblyai/best")])
    decision = decide(router, request(audio(), diarization=True))
    assert chosen(decision) == "assemblyai/best"
    assert "openai/whisper-1: cannot diarize" in decision.trace[0].reason
    assert "local/extract: cannot diarize" in decision.trace[0].reason


# -- default, NoRoute, DiarizationUnavailable ----------------------------------------------


def test_the_default_answers_when_no_rule_chooses():
    router = Router(rules=[rule("images", "openai/gpt-4o", inputs_any=[IMAGE]),
                           rule("unusable", "anthropic/claude-sonnet-4-6")],
                    default="local/extract")
    decision = decide(router, request(text("hi")), catalog({"openai", "local"}))
    assert decision.rule == "default"
    assert chosen(decision) == "local/extract"
    assert decision.fallbacks == []
    assert outcomes(decision) == [("images", Outcome.NOT_MATCHED), ("unusable", Outcome.SKIPPED),
                                  ("default", Outcome.MATCHED)]
    assert "no rule chose; using default local/extract" in decision.trace[-1].reason


def test_the_default_is_not_in_the_trace_when_a_rule_chooses():
    router = Router(rules=[rule("r", "openai/gpt-4o")], default="local/extract")
    assert outcomes(decide(router, request(text()))) == [("r", Outcome.MATCHED)]


def test_no_route_when_nothing_fits_lists_every_reason():
    router = Router(rules=[rule("images", "openai/gpt-4o", inputs_any=[IMAGE]), rule("r", "openai/gpt-4o")],
                    default="anthropic/claude-sonnet-4-6")
    with pytest.raises(NoRoute) as info:
        decide(router, request(video()), catalog({"openai", "anthropic"}))
    err = info.value
    assert type(err) is NoRoute
    assert err.reason == "NO_ROUTE"
    assert err.code is grpc.StatusCode.FAILED_PRECONDITION
    assert "(video, task chat)" in err.message
    # what matters first: the rules that matched, then the default; those that did not match only named, last
    assert err.message == ("no provider can take this request (video, task chat): "
                           "r: no usable target: openai/gpt-4o: does not take video and no bridge is usable; "
                           "default: anthropic/claude-sonnet-4-6: does not take video and no bridge is usable; "
                           "not matched: images")


def test_no_rules_and_no_default_is_no_route():
    with pytest.raises(NoRoute) as info:
        decide(Router(rules=[]), request(text()))
    assert info.value.message == ("no rule matched and no default is set: add a `default:` target or a rule that "
                                  "matches this request (text, task chat) (there are no rules)")


def test_when_no_rule_matches_and_there_is_no_default_the_message_says_so_with_each_rule():
    """It said "no provider can take this request", though no provider was even tried."""
    router = Router(rules=[rule("images", "openai/gpt-4o", inputs_any=[IMAGE])])
    with pytest.raises(NoRoute) as info:
        decide(router, request(text()))
    assert info.value.message == ("no rule matched and no default is set: add a `default:` target or a rule that "
                                  "matches this request (text, task chat): images: needs any of [image], request "
                                  "has [text]")
    skipped = Router(rules=[rule("r", "anthropic/claude-sonnet-4-6")])  # a rule matched, its target unusable
    with pytest.raises(NoRoute) as info:
        decide(skipped, request(text()), catalog({"openai"}))
    assert info.value.message.startswith("no provider can take this request (text, task chat): r: no usable target")


def test_diarization_unavailable_names_the_provider_to_configure():
    router = default_router()
    with pytest.raises(DiarizationUnavailable) as info:
        decide(router, request(audio(), diarization=True), LOCAL_ONLY)
    err = info.value
    assert isinstance(err, NoRoute)
    assert err.reason == "DIARIZATION_UNAVAILABLE"
    assert err.code is grpc.StatusCode.FAILED_PRECONDITION
    assert "configure assemblyai (ASSEMBLYAI_API_KEY is not set)" in err.message


def test_diarization_unavailable_for_a_chat_about_diarized_audio_too():
    with pytest.raises(DiarizationUnavailable):
        decide(default_router(), request(text("who spoke?"), audio(), diarization=True), LOCAL_ONLY)


def test_diarization_unavailable_suggests_a_plugin_when_none_is_installed():
    cat = {"local": status(EXTRACT), "openai": status(GPT_4O, WHISPER)}
    with pytest.raises(DiarizationUnavailable) as info:
        decide(default_router(), request(audio(), diarization=True), cat)
    assert "install and configure a provider with the diarization feature" in info.value.message


def test_a_ready_diarizer_that_no_rule_uses_is_plain_no_route():
    router = Router(rules=[rule("r", "openai/whisper-1")])
    with pytest.raises(NoRoute) as info:
        decide(router, request(audio(), diarization=True))
    assert type(info.value) is NoRoute


# -- client overrides ----------------------------------------------------------------------


def test_an_override_bypasses_the_rules():
    router = Router(rules=[rule("r", "openai/gpt-4o")], default="openai/gpt-4o")
    decision = decide(router, request(text(), image()), override=Target("anthropic", "claude-sonnet-4-6"))
    assert decision.rule == "override"
    assert chosen(decision) == "anthropic/claude-sonnet-4-6"
    assert outcomes(decision) == [("override", Outcome.MATCHED)]


def test_overrides_can_be_disallowed():
    router = Router(rules=[rule("r", "openai/gpt-4o")], allow_overrides=False)
    with pytest.raises(OverrideNotAllowed) as info:
        decide(router, request(text()), override=Target("openai", "gpt-4o"))
    assert info.value.reason == "OVERRIDE_NOT_ALLOWED"
    assert info.value.code is grpc.StatusCode.PERMISSION_DENIED


def test_overrides_can_be_restricted_to_some_providers():
    router = Router(rules=[], override_providers=["local", "anthropic"])
    with pytest.raises(OverrideNotAllowed) as info:
        decide(router, request(text()), override=Target("openai", "gpt-4o"))
    assert "clients may not choose provider 'openai' (allowed: local, anthropic)" in info.value.message
    assert chosen(decide(router, request(text()), override=Target("local", "extract"))) == "local/extract"


def test_an_empty_provider_list_allows_no_override():
    router = Router(rules=[], override_providers=[])
    with pytest.raises(OverrideNotAllowed, match=r"allowed: none"):
        decide(router, request(text()), override=Target("local", "extract"))


@pytest.mark.parametrize(("override", "words"), [
    (Target("mistral", "large"), "unknown provider 'mistral' (known: anthropic, assemblyai, gemini, local, openai)"),
    (Target("openai", "gpt-9"), "provider 'openai' has no model 'gpt-9' (it has: gpt-4o, whisper-1)"),
    (Target("", "gpt-9"), "no provider has a model named 'gpt-9'"),
    # the provider/model form routes are written in: the two hints named
    (Target("", "openai/gpt-4o"), "no provider has a model named 'openai/gpt-4o'; give request.hints.provider "
                                  "'openai' and request.hints.model 'gpt-4o' (the model alone)"),
    (Target("openai", "openai/gpt-4o"), "provider 'openai' has no model 'openai/gpt-4o'; give request.hints.provider "
                                        "'openai' and request.hints.model 'gpt-4o' (the model alone)"),
])
def test_an_unknown_override_target(override, words):
    with pytest.raises(UnknownTarget) as info:
        decide(Router(rules=[]), request(text()), override=override)
    assert words in info.value.message
    assert info.value.code is grpc.StatusCode.NOT_FOUND


def test_an_unknown_model_is_unknown_even_when_overrides_are_restricted():
    router = Router(rules=[], override_providers=["openai"])
    with pytest.raises(UnknownTarget):
        decide(router, request(text()), override=Target("", "gpt-9"))


def test_an_override_to_a_provider_not_configured():
    with pytest.raises(ProviderNotConfigured) as info:
        decide(Router(rules=[]), request(text()), LOCAL_ONLY, override=Target("openai", "gpt-4o"))
    assert info.value.reason == "PROVIDER_NOT_CONFIGURED"
    assert info.value.provider == "openai"
    assert "OPENAI_API_KEY is not set" in info.value.message


@pytest.mark.parametrize(("req", "model"), [
    (request(audio()), "whisper-1"),
    (request(text(), image()), "gpt-4o"),
])
def test_an_override_of_the_provider_only_picks_a_model_that_takes_the_inputs(req, model):
    cat = {"openai": status(WHISPER, GPT_4O)}
    decision = decide(Router(rules=[]), req, cat, override=Target("openai", ""))
    assert decision.plan.target == Target("openai", model)


def test_an_override_model_that_cannot_take_the_request_is_no_route():
    with pytest.raises(NoRoute) as info:
        decide(Router(rules=[]), request(video()), override=Target("openai", "gpt-4o"))
    assert "the requested override cannot take this request" in info.value.message


def test_an_override_may_use_bridges():
    router = Router(rules=[], bridges=BRIDGES)
    decision = decide(router, request(text("summarize"), audio()), override=Target("openai", "gpt-4o"))
    assert decision.plan.bridges == [Bridge(AUDIO, Target("openai", "whisper-1"))]


def test_a_plugin_choice_is_used_when_usable_else_the_rules_decide():
    router = Router(rules=[rule("r", "openai/gpt-4o")])
    picked = decide(router, request(text()), chosen_by_plugin=Target("anthropic", "claude-sonnet-4-6"))
    assert (picked.rule, chosen(picked)) == ("plugin", "anthropic/claude-sonnet-4-6")
    fallback = decide(router, request(text()), chosen_by_plugin=Target("openai", "whisper-1"))
    assert (fallback.rule, chosen(fallback)) == ("r", "openai/gpt-4o")


def test_usable_targets_are_those_that_take_the_request_directly():
    router = Router(rules=[], bridges=BRIDGES)
    found = {str(t) for t in router.usable_targets(facts_of(request(text(), audio())), ALL_READY)}
    assert found == {"gemini/gemini-2.5-pro", "local/extract"}


# -- trace -----------------------------------------------------------------------------------


def test_the_trace_lists_every_rule_once_in_order_with_its_outcome_and_why():
    router = Router(rules=[
        rule("diarization", "assemblyai/best", diarization=True),
        rule("documents", "anthropic/claude-sonnet-4-6", inputs_any=[DOC]),
        rule("images", "openai/gpt-4o", inputs_any=[IMAGE]),
        rule("general", "openai/gpt-4o"),
        rule("last", "local/extract"),
    ], default="local/extract")
    decision = decide(router, request(text(), image()), catalog({"anthropic", "local"}))
    assert outcomes(decision) == [
        ("diarization", Outcome.NOT_MATCHED),
        ("documents", Outcome.NOT_MATCHED),
        ("images", Outcome.SKIPPED),
        ("general", Outcome.SKIPPED),
        ("last", Outcome.MATCHED),
    ]
    reasons = [e.reason for e in decision.trace]
    assert reasons[0] == "diarization is off, rule wants it on"
    assert reasons[1] == "needs any of [document], request has [image, text]"
    assert "openai/gpt-4o: provider 'openai' is not usable: OPENAI_API_KEY is not set" in reasons[2]
    assert reasons[4] == "conditions hold; using local/extract"
    assert [o.value for o in Outcome] == ["matched", "skipped", "not_matched", "not_evaluated"]


# -- the embedded default: the hybrid policy -------------------------------------------------

CLOUD_TARGETS = {
    "documents": ["anthropic/claude-sonnet-4-6", "gemini/gemini-2.5-pro"],
    "cross-modal": ["openai/gpt-4o", "anthropic/claude-sonnet-4-6", "gemini/gemini-2.5-pro"],
    "transcription": ["openai/whisper-1", "assemblyai/best"],
    "video": ["gemini/gemini-2.5-pro"],
}


@pytest.mark.parametrize(("req", "winner"), [
    pytest.param(request(text("summarize"), pdf(12)), "documents", id="pdf"),
    pytest.param(request(text("what is this?"), image()), "cross-modal", id="image"),
    pytest.param(request(audio(90)), "transcription", id="audio"),
    pytest.param(request(text("what happens?"), video(30)), "video", id="video"),
])
def test_default_policy_with_only_local_ready_answers_offline(req, winner):
    decision = decide(default_router(), req, LOCAL_ONLY)
    assert decision.rule == winner
    assert chosen(decision) == "local/extract"
    assert decision.plan.bridges == []
    entry = next(e for e in decision.trace if e.rule == winner)
    assert entry.outcome is Outcome.MATCHED
    for target in CLOUD_TARGETS[winner]:
        provider = target.split("/")[0]
        assert f"{target}: provider '{provider}' is not usable: {KEY_MISSING[provider]}" in entry.reason
    assert [e.rule for e in decision.trace] == [r.name for r in default_router().rules]


def test_default_policy_with_only_local_ready_answers_plain_text_offline():
    decision = decide(default_router(), request(text("hello")), LOCAL_ONLY)
    assert (decision.rule, chosen(decision)) == ("general", "local/extract")


@pytest.mark.parametrize(("req", "winner", "target"), [
    pytest.param(request(audio(300), diarization=True), "diarization", "assemblyai/best", id="diarization"),
    pytest.param(request(text("what is this?"), image()), "cross-modal", "openai/gpt-4o", id="image+text"),
    pytest.param(request(text("summarize"), pdf(5)), "documents", "anthropic/claude-sonnet-4-6", id="pdf"),
    pytest.param(request(text("describe"), video(120)), "video", "gemini/gemini-2.5-pro", id="video"),
    pytest.param(request(audio(300)), "transcription", "openai/whisper-1", id="transcription"),
    pytest.param(request(text("hello")), "general", "openai/gpt-4o", id="plain-text"),
    pytest.param(request(text("summarize the call"), audio(3600)), "long-audio", "gemini/gemini-2.5-pro",
                 id="long-audio-chat"),
])
def test_default_policy_with_every_provider_ready(req, winner, target):
    decision = decide(default_router(), req, ALL_READY)
    assert (decision.rule, chosen(decision)) == (winner, target)
    assert decision.plan.bridges == []


def test_default_policy_fallbacks_with_every_provider_ready():
    decision = decide(default_router(), request(text("what is this?"), image()), ALL_READY)
    assert [str(p.target) for p in decision.fallbacks] == [
        "anthropic/claude-sonnet-4-6", "gemini/gemini-2.5-pro", "local/extract"]


def test_default_policy_chat_about_an_image_with_diarized_audio_bridges_through_assemblyai():
    decision = decide(default_router(), request(text("who is in the photo and who spoke?"), image(), audio(60),
                                                diarization=True), ALL_READY)
    assert (decision.rule, chosen(decision)) == ("cross-modal", "openai/gpt-4o")
    assert decision.plan.bridges == [Bridge(AUDIO, Target("assemblyai", "best"))]


def test_default_policy_audio_chat_bridges_through_whisper_for_gpt_4o():
    decision = decide(default_router(), request(text("what is said?"), audio(60)), ALL_READY)
    assert (decision.rule, chosen(decision)) == ("general", "openai/gpt-4o")
    assert decision.plan.bridges == [Bridge(AUDIO, Target("openai", "whisper-1"))]


# -- properties ------------------------------------------------------------------------------

MODALITIES = st.sampled_from(list(Modality))
MOD_SETS = st.frozensets(MODALITIES, min_size=1)
MODELS = st.builds(
    ModelInfo,
    name=st.sampled_from(["m1", "m2", "m3"]),
    inputs=MOD_SETS,
    outputs=st.frozensets(st.sampled_from([OUTPUT_TEXT, OUTPUT_TRANSCRIPT]), min_size=1),
    features=st.frozensets(st.sampled_from([FEATURE_DIARIZATION, FEATURE_STREAMING, FEATURE_EXTRACTION_ONLY])),
)
CATALOGS = st.dictionaries(
    st.sampled_from(["p1", "p2", "p3"]),
    st.builds(lambda ready, models: ProviderStatus(ready, "" if ready else "not configured",
                                                   {m.name: m for m in models}),
              st.booleans(), st.lists(MODELS, max_size=3)),
    max_size=3,
)
TARGETS = st.builds(lambda p, m: f"{p}/{m}", st.sampled_from(["p1", "p2", "p3", "px"]),
                    st.sampled_from(["m1", "m2", "m3"]))
OPT_RANGES = st.none() | st.builds(lambda a, b: Range(min=min(a, b), max=max(a, b)),
                                   st.integers(0, 5000), st.integers(0, 5000))
MATCHES = st.builds(
    lambda tags, **conditions: Match(**conditions, **({"tags": tags} if tags else {})),
    inputs=st.none() | st.lists(MODALITIES, min_size=1, max_size=2),
    inputs_any=st.none() | st.lists(MODALITIES, min_size=1, max_size=2),
    inputs_none=st.none() | st.lists(MODALITIES, min_size=1, max_size=2),
    inputs_only=st.none() | st.lists(MODALITIES, min_size=1, max_size=3),
    task=st.none() | st.lists(st.sampled_from([Task.CHAT, Task.TRANSCRIBE]), min_size=1, max_size=2),
    diarization=st.none() | st.booleans(),
    tags=st.lists(st.sampled_from(["a", "b"]), max_size=1),
    images=OPT_RANGES,
    audio_seconds=OPT_RANGES,
    input_tokens=OPT_RANGES,
)
RULE_LISTS = st.lists(
    st.builds(lambda match, targets, bridging: (match, targets[0], targets[1:], bridging),
              MATCHES, st.lists(TARGETS, min_size=1, max_size=3, unique=True), st.booleans()),
    max_size=5,
).map(lambda specs: [Rule(name=f"rule-{i}", match=m, use=u, fallback=f, bridging=b)
                     for i, (m, u, f, b) in enumerate(specs)])
BRIDGE_MAPS = st.dictionaries(MODALITIES, st.lists(TARGETS, max_size=2), max_size=3)
PARTS = st.one_of(
    st.sampled_from(["hi", "", "a longer question about the inputs"]).map(text),
    st.just(None).map(lambda _: image()),
    (st.none() | st.floats(0, 4000)).map(audio),
    (st.none() | st.floats(0, 4000)).map(video),
    (st.none() | st.integers(0, 300)).map(pdf),
)
REQUESTS = st.builds(
    lambda parts, task, diarization, tags: request(*parts, task=task, diarization=diarization, tags=tags),
    st.lists(PARTS, min_size=1, max_size=4), st.sampled_from(list(Task)), st.booleans(),
    st.lists(st.sampled_from(["a", "b"]), max_size=2),
)
ROUTERS = st.builds(lambda rules, default, bridges: Router(rules=rules, default=default, bridges=bridges),
                    RULE_LISTS, st.none() | TARGETS, BRIDGE_MAPS)

PROPERTY = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _needed(facts) -> set[Modality]:
    needed = set(facts.modalities)
    if facts.task is Task.TRANSCRIBE:
        needed.discard(TEXT)
    return needed


def _assert_usable(plan: Plan, facts, cat, router: Router) -> None:
    status_ = cat[plan.target.provider]
    assert status_.ready
    model = status_.models[plan.target.model]
    assert plan.model == model
    assert model.can_do(facts.task)
    bridged = {b.modality for b in plan.bridges}
    assert len(bridged) == len(plan.bridges)
    # bridges cover exactly the inputs the model cannot take (plus audio it cannot diarize)
    missing = _needed(facts) - model.inputs
    if facts.diarization and facts.task is not Task.TRANSCRIBE and FEATURE_DIARIZATION not in model.features:
        missing |= _needed(facts) & {AUDIO}
    assert bridged == missing
    if facts.diarization and facts.task is Task.TRANSCRIBE:
        assert FEATURE_DIARIZATION in model.features
        assert not plan.bridges
    if facts.task is Task.CHAT and FEATURE_EXTRACTION_ONLY not in model.features:
        replaced = {b.modality for b in plan.bridges if not b.keep_media}
        assert sum(n for m, n in facts.turn_tokens.items() if m not in replaced) <= model.context_tokens
    for bridge in plan.bridges:
        assert str(bridge.via) in router.bridges[bridge.modality]
        via = cat[bridge.via.provider]
        assert via.ready
        assert bridge.modality in via.models[bridge.via.model].inputs
        if facts.diarization and bridge.modality is AUDIO:
            assert FEATURE_DIARIZATION in via.models[bridge.via.model].features


@PROPERTY
@given(router=ROUTERS, req=REQUESTS, cat=CATALOGS)
def test_property_decide_gives_a_usable_plan_or_no_route_and_is_deterministic(router, req, cat):
    facts = facts_of(req)
    try:
        decision = router.decide(facts, cat)
    except NoRoute as exc:
        with pytest.raises(type(exc)) as again:
            router.decide(facts_of(req), cat)
        assert again.value.message == exc.message
        assert exc.message
        if isinstance(exc, DiarizationUnavailable):
            assert facts.diarization
            assert not any(s.ready and any(FEATURE_DIARIZATION in m.features for m in s.models.values())
                           for s in cat.values())
        return
    again = router.decide(facts_of(req), cat)
    assert (again.rule, again.plans, again.trace) == (decision.rule, decision.plans, decision.trace)
    for plan in decision.plans:
        _assert_usable(plan, facts, cat, router)
    if decision.rule == "default":
        assert str(decision.plan.target) == router.default
    else:
        winner = next(r for r in router.rules if r.name == decision.rule)
        assert why_not_matched(winner.match, facts) is None
        usable = [t for t in [winner.use, *winner.fallback]
                  if isinstance(router.plan(Target.parse(t), facts, cat, winner.bridging), Plan)]
        assert [str(p.target) for p in decision.plans] == usable


@PROPERTY
@given(router=ROUTERS, req=REQUESTS, cat=CATALOGS)
def test_property_the_trace_has_one_entry_per_rule_in_order(router, req, cat):
    # a default that takes anything, so every decision succeeds and its trace can be read
    router = dataclasses.replace(router, default="zz/omni")
    trace = router.decide(facts_of(req), {**cat, "zz": status(OMNI)}).trace
    names = [e.rule for e in trace]
    assert names[: len(router.rules)] == [r.name for r in router.rules]
    assert names[len(router.rules):] in ([], ["default"])
    outcomes_ = [e.outcome for e in trace]
    assert outcomes_.count(Outcome.MATCHED) == 1
    first = outcomes_.index(Outcome.MATCHED)
    assert all(o in (Outcome.NOT_MATCHED, Outcome.SKIPPED) for o in outcomes_[:first])
    assert all(o is Outcome.NOT_EVALUATED for o in outcomes_[first + 1:])
    assert all(e.reason for e in trace)


@settings(PROPERTY, max_examples=60)
@given(req=REQUESTS, ready=st.sets(st.sampled_from(sorted(PROVIDER_MODELS))))
def test_property_the_default_policy_with_local_ready_always_answers_without_diarization(req, ready):
    req.options.diarization = False
    cat = catalog(ready | {"local"})
    decision = decide(default_router(), req, cat)
    assert decision.rule != "default"
    _assert_usable(decision.plan, facts_of(req), cat, default_router())
    assert str(decision.plans[-1].target) == "local/extract"


# -- sessions: a turn is judged by what it sends ---------------------------------------------


def session(history: list[Message], *parts: Part, task: Task = Task.AUTO, diarization: bool = False) -> Request:
    """A session's stored ``history`` followed by this turn's user message of ``parts``."""
    return Request(messages=[*history, Message(Role.USER, list(parts))],
                   options=Options(task=task, diarization=diarization), history_length=len(history))


def turn(*parts: Part, reply: str = "ok") -> list[Message]:
    return [Message(Role.USER, list(parts)), Message(Role.ASSISTANT, [text(reply)])]


@pytest.mark.parametrize("earlier", [
    pytest.param(turn(text("what is this?"), image()), id="image"),
    pytest.param(turn(text("summarise"), pdf(2)), id="pdf"),
])
def test_a_transcription_in_a_session_is_judged_by_this_turn_s_media_only(earlier):
    decision = decide(default_router(), session(earlier, audio(20), task=Task.TRANSCRIBE))
    assert (decision.rule, chosen(decision)) == ("transcription", "openai/whisper-1")
    assert [str(p.target) for p in decision.fallbacks] == ["assemblyai/best", "local/extract"]
    facts = facts_of(session(earlier, audio(20), task=Task.TRANSCRIBE))
    assert facts.modalities == {AUDIO} and facts.audio_seconds == 20 and facts.images == 0

    diarized = decide(default_router(), session(earlier, audio(20), task=Task.TRANSCRIBE, diarization=True))
    assert (diarized.rule, chosen(diarized)) == ("diarization", "assemblyai/best")


def test_a_chat_in_a_session_still_sees_the_history_s_media():
    facts = facts_of(session(turn(text("what is this?"), image()), text("and its colour?")))
    assert facts.modalities == {TEXT, IMAGE} and facts.images == 1
    assert decide(default_router(), session(turn(text("what is this?"), image()), text("and its colour?"))).rule \
        == "cross-modal"


def test_audio_alone_in_a_dictation_session_is_still_a_transcription():
    history = turn(audio(20), reply="Dear team, the meeting is moved to Friday.")
    req = session(history, audio(20))
    assert req.effective_task is Task.TRANSCRIBE
    decision = decide(default_router(), req)
    assert (decision.rule, chosen(decision)) == ("transcription", "openai/whisper-1")
    assert facts_of(session(history, text("make it shorter"))).task is Task.CHAT


# -- context windows -------------------------------------------------------------------------

#: About 180k tokens by the router's estimate (a token per 4 characters).
LONG_TEXT = "lorem ipsum dolor " * 40_000
GPT_4O_128K = dataclasses.replace(GPT_4O, context_tokens=128_000)
CLAUDE_200K = dataclasses.replace(CLAUDE, context_tokens=200_000)
SIZED = catalog(openai=status(GPT_4O_128K, WHISPER), anthropic=status(CLAUDE_200K))


def test_a_target_whose_context_cannot_hold_the_input_is_skipped_with_the_sizes():
    router = Router(rules=[rule("general", "openai/gpt-4o", "anthropic/claude-sonnet-4-6", "local/extract")])
    decision = decide(router, request(text(LONG_TEXT)), SIZED)
    assert chosen(decision) == "anthropic/claude-sonnet-4-6"
    assert [str(p.target) for p in decision.fallbacks] == ["local/extract"]
    assert "skipped openai/gpt-4o: input of ~180000 tokens exceeds its context of 128000" in decision.trace[0].reason
    with pytest.raises(NoRoute, match="exceeds its context of 128000"):
        decide(router, request(text(LONG_TEXT)), SIZED, override=Target("openai", "gpt-4o"))


def test_a_session_goes_to_the_rule_target_that_holds_its_history():
    router = Router(rules=[rule("general", "openai/gpt-4o", "anthropic/claude-sonnet-4-6")])
    long_history = session(turn(text(LONG_TEXT)), text("and then?"))
    decision = decide(router, long_history, SIZED)
    assert chosen(decision) == "anthropic/claude-sonnet-4-6"
    assert [str(p.target) for p in decision.fallbacks] == ["openai/gpt-4o"]  # trimmed, if Claude fails
    long_turn = session(turn(text("hi")), text(LONG_TEXT))
    assert chosen(decide(router, long_turn, SIZED)) == "anthropic/claude-sonnet-4-6"


def test_a_session_tries_the_targets_that_hold_its_history_before_those_that_must_trim_it():
    mini = dataclasses.replace(GPT_4O_128K, name="gpt-4o-mini")
    sized = catalog(openai=status(GPT_4O_128K, mini, WHISPER), anthropic=status(CLAUDE_200K),
                    gemini=status(dataclasses.replace(GEMINI, context_tokens=1_048_576)))
    router = Router(rules=[rule("general", "openai/gpt-4o", "local/extract", "openai/gpt-4o-mini",
                                "anthropic/claude-sonnet-4-6", "gemini/gemini-2.5-pro")])
    long_history = session(turn(text(LONG_TEXT)), text("and then?"))
    decision = decide(router, long_history, sized)
    assert chosen(decision) == "anthropic/claude-sonnet-4-6"
    assert [str(p.target) for p in decision.fallbacks] == [
        "gemini/gemini-2.5-pro", "openai/gpt-4o", "local/extract", "openai/gpt-4o-mini"]
    assert "openai/gpt-4o would drop the session's oldest messages" in decision.trace[0].reason
    assert "gpt-4o-mini would drop" in decision.trace[0].reason
    # a conversation no target holds goes to the one that keeps the most of it
    longer = session(turn(text(LONG_TEXT * 7)), text("and then?"))  # ~1.26M tokens: over every context
    decision = decide(router, longer, sized)
    assert chosen(decision) == "gemini/gemini-2.5-pro"
    assert decision.trace[0].reason.endswith("none holds it all, and gemini/gemini-2.5-pro keeps the most of it")
    # a rule that names the extraction first keeps it first: it reads no history, on purpose
    extract_first = Router(rules=[rule("docs", "local/extract", "anthropic/claude-sonnet-4-6")])
    assert chosen(decide(extract_first, long_history, sized)) == "local/extract"


def test_bridged_media_do_not_count_against_the_context_but_transcribers_are_not_checked():
    hours = 3 * 3600  # ~345k tokens of audio: too much for gpt-4o, yet it reads only the transcript
    router = Router(rules=[rule("r", "openai/gpt-4o")], bridges={AUDIO: ["openai/whisper-1"]})
    decision = decide(router, request(text("summarise"), audio(hours)), SIZED)
    assert chosen(decision) == "openai/gpt-4o"
    assert decision.plan.bridges == [Bridge(AUDIO, Target("openai", "whisper-1"))]
    small_gemini = catalog(gemini=status(dataclasses.replace(GEMINI, context_tokens=128_000)))
    router = Router(rules=[rule("r", "gemini/gemini-2.5-pro", "local/extract")])
    decision = decide(router, request(text("summarise"), audio(hours)), small_gemini)
    assert chosen(decision) == "local/extract"  # extraction-only: no context to fill
    assert f"input of ~{hours * TOKENS_PER_AUDIO_SECOND + 2} tokens exceeds" in decision.trace[0].reason
    whisper_16k = catalog(openai=status(GPT_4O, dataclasses.replace(WHISPER, context_tokens=16_000)))
    transcription = Router(rules=[rule("r", "openai/whisper-1")])
    assert chosen(decide(transcription, request(audio(hours)), whisper_16k)) == "openai/whisper-1"


def test_a_long_pdf_is_checked_at_the_fewest_tokens_a_page_may_count():
    """Gemini counts 258 tokens a PDF page: 720 pages fit its 1M context though the router's estimate
    (1,500 a page) would not; 5,000 pages do not fit at any rate."""
    gemini_1m = catalog(gemini=status(dataclasses.replace(GEMINI, context_tokens=1_048_576)))
    router = Router(rules=[rule("docs", "gemini/gemini-2.5-pro", "local/extract")])
    assert chosen(decide(router, request(text("summarise"), pdf(720)), gemini_1m)) == "gemini/gemini-2.5-pro"
    assert chosen(decide(router, request(text("summarise"), pdf(5000)), gemini_1m)) == "local/extract"


def test_text_documents_count_their_tokens_and_leave_page_rules_measurable():
    """A text document (CSV, Markdown) is a token per 4 bytes, for rules and the context check; it has
    no pages, so a request with one still has a known PDF page count."""
    csv = Part(media=Media(DOC, "text/csv", data=b"a,b\n" * 250_000))  # 1 MB: ~250k tokens
    facts = facts_of(request(text("sum column b"), csv, pdf(4)))
    assert facts.pdf_pages == 4 and facts.input_tokens >= 250_000
    router = Router(rules=[rule("small", "anthropic/claude-sonnet-4-6", "gemini/gemini-2.5-pro",
                                input_tokens=Range(max=100_000)),
                           rule("big", "gemini/gemini-2.5-pro")])
    both = catalog(anthropic=status(CLAUDE_200K), gemini=status(dataclasses.replace(GEMINI, context_tokens=1_048_576)))
    assert decide(router, request(text("sum column b"), csv), both).rule == "big"
    router = Router(rules=[rule("docs", "anthropic/claude-sonnet-4-6", "gemini/gemini-2.5-pro")])
    decision = decide(router, request(text("sum column b"), csv), both)
    assert chosen(decision) == "gemini/gemini-2.5-pro" and "exceeds its context of 200000" in decision.trace[0].reason


# -- bridges that can never serve ------------------------------------------------------------


def test_bridge_problem_names_targets_that_can_never_bridge_their_modality():
    assert bridge_problem(AUDIO, CLAUDE) == "does not take audio"
    chat_hears = ModelInfo("gpt-4o-audio-preview", inputs=frozenset({TEXT, AUDIO}))
    assert bridge_problem(AUDIO, chat_hears) == "cannot turn audio into a transcript"
    assert bridge_problem(IMAGE, WHISPER) == "does not take image"
    assert bridge_problem(DOC, AAI_BEST) == "does not take document"
    assert [bridge_problem(m, EXTRACT) for m in (AUDIO, VIDEO, IMAGE, DOC)] == [None] * 4
    assert bridge_problem(AUDIO, WHISPER) is None and bridge_problem(IMAGE, GPT_4O) is None
    # routing passes such a bridge over for the next one
    cat = catalog(openai=status(GPT_4O, WHISPER, chat_hears))
    router = Router(rules=[rule("r", "anthropic/claude-sonnet-4-6")],
                    bridges={AUDIO: ["openai/gpt-4o-audio-preview", "assemblyai/best"]})
    assert decide(router, request(text("summarise"), audio()), cat).plan.bridges == [
        Bridge(AUDIO, Target("assemblyai", "best"))]


# -- the default policy: video transcription, diarization with OpenAI only ---------------------

GPT_4O_DIARIZE = ModelInfo("gpt-4o-transcribe-diarize", inputs=frozenset({AUDIO}),
                           outputs=frozenset({OUTPUT_TRANSCRIPT}), features=frozenset({FEATURE_DIARIZATION}))


def test_default_policy_transcribes_a_video_with_assemblyai_and_still_asks_gemini_about_it():
    decision = decide(default_router(), request(video(30), task=Task.TRANSCRIBE), ALL_READY)
    assert (decision.rule, chosen(decision)) == ("video-transcription", "assemblyai/best")
    assert [str(p.target) for p in decision.fallbacks] == ["local/extract"]
    offline = decide(default_router(), request(video(30), task=Task.TRANSCRIBE), LOCAL_ONLY)
    assert (offline.rule, chosen(offline)) == ("video-transcription", "local/extract")
    asked = decide(default_router(), request(text("what happens?"), video(30)), ALL_READY)
    assert (asked.rule, chosen(asked)) == ("video", "gemini/gemini-2.5-pro")


def test_default_policy_diarizes_with_openai_when_it_is_the_only_key():
    cat = catalog({"openai", "local"}, openai=status(GPT_4O, WHISPER, GPT_4O_DIARIZE))
    decision = decide(default_router(), request(audio(60), task=Task.TRANSCRIBE, diarization=True), cat)
    assert (decision.rule, chosen(decision)) == ("diarization", "openai/gpt-4o-transcribe-diarize")
    asked = decide(default_router(), request(text("who spoke?"), audio(60), diarization=True), cat)
    assert (asked.rule, chosen(asked)) == ("general", "openai/gpt-4o")
    assert asked.plan.bridges == [Bridge(AUDIO, Target("openai", "gpt-4o-transcribe-diarize"))]
    # AssemblyAI stays first when it is configured
    everyone = {**ALL_READY, "openai": status(GPT_4O, WHISPER, GPT_4O_DIARIZE)}
    assert chosen(decide(default_router(), request(audio(60), task=Task.TRANSCRIBE, diarization=True),
                         everyone)) == "assemblyai/best"
    assert decide(default_router(), request(text("who spoke?"), audio(60), diarization=True),
                  everyone).plan.bridges == [Bridge(AUDIO, Target("assemblyai", "best"))]


# -- media sizes (ModelInfo.max_media_bytes) ---------------------------------------------------

#: Whisper as the openai plugin declares it: at most 25 MiB a file.
CAPPED_WHISPER = dataclasses.replace(WHISPER, max_media_bytes=25 * 1024 * 1024)


def sized_audio(size: int) -> Part:
    """Audio of ``size`` bytes, as an uploaded file the router holds (its size known without its bytes)."""
    return Part(media=Media(AUDIO, "audio/wav", size=size, duration_seconds=60.0, media_id="m1"))


def test_facts_keep_the_largest_media_of_each_modality():
    facts = facts_of(request(text(), sized_audio(10), sized_audio(30_000_000), image()))
    assert facts.largest_bytes == {AUDIO: 30_000_000, IMAGE: 3}
    url_only = Media(AUDIO, "audio/wav", url="https://example.com/a.wav")
    assert facts_of(request(text(), Part(media=url_only))).largest_bytes == {}  # unknown size: left out


def test_a_bridge_whose_model_caps_the_file_size_is_passed_over_for_a_larger_file():
    """Whisper takes 25 MiB a file: a 30 MB recording goes to the next audio bridge, in the plan that
    explain shows as in the one Generate follows; a file under the cap still goes to Whisper."""
    cat = catalog(openai=status(GPT_4O, CAPPED_WHISPER))
    router = Router(rules=[rule("r", "openai/gpt-4o")], bridges={AUDIO: ["openai/whisper-1", "local/extract"]})
    big = decide(router, request(text("summarise"), sized_audio(30_000_000)), cat)
    assert big.plan.bridges == [Bridge(AUDIO, Target("local", "extract"))]
    small = decide(router, request(text("summarise"), sized_audio(20_000_000)), cat)
    assert small.plan.bridges == [Bridge(AUDIO, Target("openai", "whisper-1"))]


def test_a_target_whose_model_caps_the_file_size_is_skipped_with_the_reason():
    cat = catalog(openai=status(GPT_4O, CAPPED_WHISPER))
    router = Router(rules=[rule("transcription", "openai/whisper-1", "assemblyai/best", task=[Task.TRANSCRIBE])])
    decision = decide(router, request(sized_audio(60 * 1024 * 1024), task=Task.TRANSCRIBE), cat)
    assert chosen(decision) == "assemblyai/best"
    assert "openai/whisper-1: 60 MiB of audio is larger than its 25 MiB per file" in decision.trace[0].reason
    with pytest.raises(NoRoute, match=r"openai/whisper-1: 30\.5 MiB of audio is larger than its 25 MiB per file"):
        decide(Router(rules=[], default="openai/whisper-1"), request(sized_audio(32_000_000), task=Task.TRANSCRIBE),
               cat)


# -- diarization without a diarizing bridge ---------------------------------------------------


@pytest.mark.parametrize("listed", [[], ["openai/whisper-1", "local/extract"]], ids=["none", "whisper-local"])
def test_no_route_for_diarization_says_the_model_cannot_label_speakers_not_that_it_does_not_take_audio(listed):
    """local/extract takes audio: it only cannot label who speaks, and no diarizing bridge is listed."""
    router = Router(rules=[], default="local/extract", bridges={AUDIO: listed} if listed else {})
    with pytest.raises(NoRoute) as info:
        decide(router, request(text("who said what?"), audio(), diarization=True))
    shown = ", ".join(listed) or "none"
    assert ("local/extract: cannot label the speakers of audio, and no diarizing bridge is usable "
            f"(bridges.audio lists {shown})") in info.value.message, info.value.message
    assert "does not take audio" not in info.value.message


def test_a_model_that_sees_audio_but_cannot_diarize_is_said_to_lack_the_speakers():
    gpt_audio = ModelInfo("gpt-audio", inputs=frozenset({TEXT, AUDIO}))
    router = Router(rules=[rule("r", "openai/gpt-audio")], bridges={AUDIO: ["openai/whisper-1"]})
    cat = catalog(openai=status(gpt_audio, WHISPER))
    with pytest.raises(NoRoute, match=r"openai/gpt-audio: cannot label the speakers of audio, and no diarizing "
                                      r"bridge is usable \(bridges\.audio lists openai/whisper-1\)"):
        decide(router, request(text("who?"), audio(), diarization=True), cat)
    no_bridging = Router(rules=[rule("r", "openai/gpt-audio", bridging=False)])
    with pytest.raises(NoRoute, match="openai/gpt-audio: cannot label the speakers of audio and bridging is off"):
        decide(no_bridging, request(text("who?"), audio(), diarization=True), cat)
