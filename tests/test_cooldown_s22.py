"""A target that failed asking to be left alone for a while (a 429, or a 503/529, with ``Retry-After``) is tried
after the rule's other targets until then: later calls go to the fallback first without sending the throttled
provider another request, and their route (and ExplainRoute, `mmrouter explain`) says why. When every target is
cooling down the rule's order stays; a success of the target (here through an override, which is not
reordered) ends its cool-down, as does its delay passing (at most COOLDOWN_MAX_SECONDS).

The daemon runs for real (tests/conftest.py) against the fake OpenAI and Anthropic servers (tests/fakes), which
the official SDKs call.
"""

from __future__ import annotations

import grpc
import pytest
from grpc_helpers import error_details, text_request
from mmrouter.v1 import router_pb2 as pb
from test_cli import Cli, ok
from test_observability import FALLBACK

from router.cooldowns import COOLDOWN_MAX_SECONDS, Cooldowns
from tests.fakes.anthropic import API_KEY as ANTHROPIC_KEY
from tests.fakes.openai import API_KEY as OPENAI_KEY
from tests.fakes.openai import error_body

RATE_LIMITED = error_body("Rate limit reached for gpt-4o on requests per min (RPM)", "requests", "rate_limit_exceeded")
#: The start of the route note of openai/gpt-4o cooling down.
COOLING = "openai/gpt-4o asked to be left alone for another "


@pytest.fixture
def daemon(start_daemon, upstreams):
    """The daemon routing ``main`` to openai/gpt-4o, then anthropic/claude-sonnet-4-6."""
    openai, anthropic = upstreams
    return start_daemon(FALLBACK.format(openai=openai.base_url, anthropic=anthropic.url), plugins=(),
                        env={"OPENAI_TEST_KEY": OPENAI_KEY, "ANTHROPIC_TEST_KEY": ANTHROPIC_KEY})


def generate(daemon, **hints: str) -> pb.Answer:
    request = text_request("hello", hints=pb.RoutingHints(**hints)) if hints else text_request("hello")
    return daemon.stub.Generate(pb.GenerateRequest(request=request), timeout=30).answer


def explain(daemon) -> pb.RouteInfo:
    return daemon.stub.ExplainRoute(pb.ExplainRouteRequest(request=text_request("hello")), timeout=30).route


def attempts(answer: pb.Answer) -> list[tuple[str, bool]]:
    return [(attempt.provider, attempt.ok) for attempt in answer.route.attempts]


def cooling_notes(route: pb.RouteInfo) -> list[str]:
    return [note for note in route.notes if note.startswith(COOLING)]


def test_a_rate_limited_target_is_tried_last_until_its_retry_after_and_a_success_ends_it(daemon, upstreams) -> None:
    openai, _ = upstreams
    openai.fail_next(429, RATE_LIMITED, {"retry-after": "30"})
    first = generate(daemon)
    assert attempts(first) == [("openai", False), ("anthropic", True)]
    sent = len(openai.requests)

    second = generate(daemon)  # straight to the fallback: OpenAI is not sent another request
    assert len(openai.requests) == sent
    assert attempts(second) == [("anthropic", True)]
    assert (second.route.provider, list(second.route.fallbacks)) == ("anthropic", ["openai/gpt-4o"])
    [note] = cooling_notes(second.route)
    assert note.endswith(" s (rate-limited, HTTP 429): trying it last"), note
    assert 0 < int(note.removeprefix(COOLING).split(" ")[0]) <= 30

    planned = explain(daemon)
    assert (planned.provider, list(planned.fallbacks)) == ("anthropic", ["openai/gpt-4o"])
    assert cooling_notes(planned)
    [rule] = [entry for entry in planned.trace if entry.rule == "main"]
    assert "using anthropic/claude-sonnet-4-6: cooling down, tried last: openai/gpt-4o" in rule.reason
    shown = ok(Cli("explain", "hello", "--address", daemon.address).result()).stdout
    assert f"note: {COOLING}" in shown and "(rate-limited, HTTP 429): trying it last" in shown

    chosen = generate(daemon, provider="openai", model="gpt-4o")  # an override is not reordered
    assert attempts(chosen) == [("openai", True)]
    assert not cooling_notes(chosen.route)

    after = generate(daemon)  # its success ended the cool-down
    assert attempts(after) == [("openai", True)]
    assert not cooling_notes(after.route) and not cooling_notes(explain(daemon))


def test_when_every_target_is_cooling_down_the_rule_s_order_stays(daemon, upstreams) -> None:
    openai, anthropic = upstreams
    openai.fail_next(429, RATE_LIMITED, {"retry-after": "30"})
    anthropic.fail_next_api(529, "overloaded_error", "Overloaded", headers={"retry-after": "30"})
    with pytest.raises(grpc.RpcError) as failed:
        generate(daemon)
    assert error_details(failed.value).reason == "PROVIDER_UNAVAILABLE"

    planned = explain(daemon)
    assert (planned.provider, list(planned.fallbacks)) == ("openai", ["anthropic/claude-sonnet-4-6"])
    assert not [note for note in planned.notes if "left alone" in note]
    answer = generate(daemon)  # both are back: the first in the rule's order answers
    assert attempts(answer) == [("openai", True)]


def test_an_unavailable_target_with_a_retry_after_cools_down_and_a_429_without_one_does_not(daemon, upstreams) -> None:
    openai, _ = upstreams
    openai.fail_next(503, error_body("The server is overloaded", "server_error"), {"retry-after": "30"})
    assert attempts(generate(daemon)) == [("openai", False), ("anthropic", True)]
    [note] = cooling_notes(explain(daemon))
    assert note.endswith(" s (unavailable, HTTP 503): trying it last"), note
    assert attempts(generate(daemon, provider="openai", model="gpt-4o")) == [("openai", True)]

    openai.fail_next(429, RATE_LIMITED)  # no Retry-After: nothing to wait for
    assert attempts(generate(daemon)) == [("openai", False), ("anthropic", True)]
    planned = explain(daemon)
    assert planned.provider == "openai" and not cooling_notes(planned)


def test_a_cool_down_ends_when_its_delay_passes_is_capped_and_memory_is_bounded() -> None:
    now = [100.0]
    cooldowns = Cooldowns(kept=2, clock=lambda: now[0])
    assert not cooldowns
    cooldowns.failed("openai/gpt-4o", 86400, "PROVIDER_RATE_LIMITED", 429)  # a day: capped
    cooldowns.failed("anthropic/claude", 0, "PROVIDER_UNAVAILABLE", 529)  # no delay: no cool-down
    assert cooldowns.cooling() == {
        "openai/gpt-4o": f"asked to be left alone for another {COOLDOWN_MAX_SECONDS:.0f} s (rate-limited, HTTP 429)"}
    now[0] += COOLDOWN_MAX_SECONDS - 0.5
    assert cooldowns.cooling()["openai/gpt-4o"].startswith("asked to be left alone for another 1 s")
    now[0] += 0.5
    assert cooldowns.cooling() == {} and not cooldowns  # ended: forgotten

    for seconds, target in ((5, "a/1"), (3, "b/2"), (9, "c/3")):  # beyond `kept`: the soonest to end is forgotten
        cooldowns.failed(target, seconds, "PROVIDER_UNAVAILABLE")
    assert sorted(cooldowns.cooling()) == ["a/1", "c/3"]
    cooldowns.succeeded("a/1")
    assert list(cooldowns.cooling()) == ["c/3"]


def test_list_providers_and_the_cli_show_a_target_cooling_down(daemon, upstreams) -> None:
    """ListProviders names each model's cool-down (seconds left and why), and ``mmrouter providers`` says it
    below its table: an operator sees why a rule's first target gets no calls."""
    openai, _ = upstreams
    openai.fail_next(429, RATE_LIMITED, {"retry-after": "30"})
    assert attempts(generate(daemon)) == [("openai", False), ("anthropic", True)]

    listed = daemon.stub.ListProviders(pb.ListProvidersRequest(), timeout=30).providers
    cooldowns = {f"{p.name}/{m.name}": (m.cooldown_seconds, m.cooldown_reason) for p in listed for m in p.models}
    seconds, reason = cooldowns.pop("openai/gpt-4o")
    assert 0 < seconds <= 30 and reason == "rate-limited, HTTP 429"
    assert set(cooldowns.values()) == {(0.0, "")}  # the others are not cooling down
    shown = ok(Cli("providers", "--address", daemon.address).result()).stdout
    assert "openai/gpt-4o is cooling down for another " in shown
    assert "s (rate-limited, HTTP 429): rules try it after their other targets" in shown

    assert attempts(generate(daemon, provider="openai", model="gpt-4o")) == [("openai", True)]  # ends it
    listed = daemon.stub.ListProviders(pb.ListProvidersRequest(), timeout=30).providers
    assert {(m.cooldown_seconds, m.cooldown_reason) for p in listed for m in p.models} == {(0.0, "")}
    assert "cooling down" not in ok(Cli("providers", "--address", daemon.address).result()).stdout
