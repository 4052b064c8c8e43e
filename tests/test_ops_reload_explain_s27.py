"""An operator's reloads and explain (QA ops27): a reload naming a provider no installed plugin offers is refused,
every refused reload is one ERROR line of one wording with no warning about the refused file, and explain of a
request no rule can route gives each rule's outcome with the NO_ROUTE refusal."""

from __future__ import annotations

import json

import grpc
import pytest
from grpc_helpers import error_details, text_request
from mmrouter.v1 import router_pb2 as pb
from test_cli import run_cli
from test_hybrid import ALL_KEYS
from test_reload import reload

from router.cli_calls import status_detail

REFUSED = "SIGHUP: reload refused, the running configuration stays: "
#: The keys of the providers :data:`RULES` configures: AssemblyAI (installed) is not configured.
KEYS = {name: key for name, key in ALL_KEYS.items() if not name.startswith("ASSEMBLYAI")}

#: Claude for the legal team (Gemini its fallback), GPT-4o for the rest; a rule naming a provider no plugin offers
#: (a warning at start: reloads that keep it are not refused for it).
RULES = """
providers:
  openai: {{api_key: "${{OPENAI_API_KEY}}", base_url: "{openai}", timeout: 20}}
  anthropic: {{api_key: "${{ANTHROPIC_API_KEY}}", base_url: "{anthropic}", timeout: 20}}
  gemini: {{api_key: "${{GEMINI_API_KEY}}", base_url: "{gemini}", timeout: 20}}
routes:
  - name: legal-docs
    match: {{tags: [legal]}}
    use: anthropic/claude-sonnet-4-6
    fallback: [gemini/gemini-2.5-pro]
  - name: later
    match: {{tags: [later]}}
    use: mistral/mistral-large
    fallback: [local/extract]
  - name: general
    use: openai/gpt-4o
default: local/extract
overrides: {{allow: false}}
"""


def explained(daemon, *tags: str) -> tuple[str, str]:
    """The rule and target ExplainRoute gives a text request with ``tags``."""
    route = daemon.stub.ExplainRoute(pb.ExplainRouteRequest(
        request=text_request("hi", hints=pb.RoutingHints(tags=tags))), timeout=20).route
    return route.rule, f"{route.provider}/{route.model}"


def refusals(daemon) -> list[str]:
    """The log's lines that refuse a reload."""
    return [line for line in daemon.logs().splitlines() if "reload refused" in line]


@pytest.fixture
def daemon(start_daemon, fakes):
    """A daemon serving :data:`RULES` on the cloud fakes, and the text that started it."""
    rules = RULES.format(openai=fakes["openai"].base_url, anthropic=fakes["anthropic"].url, gemini=fakes["gemini"].url)
    served = start_daemon(rules, env=KEYS, plugins=())
    served.extra["rules"] = rules
    return served


def test_a_reload_naming_a_provider_no_plugin_offers_is_refused(daemon, fakes) -> None:
    """`use: antropic/...` was accepted with a warning, moving the legal team's traffic to Gemini, its fallback."""
    rules = daemon.extra["rules"]
    assert explained(daemon, "legal") == ("legal-docs", "anthropic/claude-sonnet-4-6")
    reloads = daemon.logs().count("rules reloaded")

    reload(daemon, rules.replace("use: anthropic/", "use: antropic/"), "reload refused")
    [line] = refusals(daemon)
    assert "ERROR" in line and f"{REFUSED}routes.0.use" in line, line
    assert "no installed plugin offers a provider 'antropic'" in line and "did you mean 'anthropic'?" in line, line
    assert "routing would skip it on every request" in line, line
    assert daemon.logs().count("rules reloaded") == reloads
    assert explained(daemon, "legal") == ("legal-docs", "anthropic/claude-sonnet-4-6")  # not Gemini
    answer = daemon.stub.Generate(pb.GenerateRequest(request=text_request(
        "hi", hints=pb.RoutingHints(tags=["legal"]))), timeout=30).answer
    assert (answer.route.provider, len(fakes["anthropic"].message_calls())) == ("anthropic", 1)

    # the provider the running file named already (a warning at start) holds no reload back
    reload(daemon, rules.replace("fallback: [gemini/gemini-2.5-pro]", "fallback: [local/extract]"), "rules reloaded")
    assert daemon.logs().count("no installed plugin offers a provider 'mistral'") == 2  # at start, and now
    assert len(refusals(daemon)) == 1


def test_every_refused_reload_is_one_error_line_of_one_wording_with_no_warning_about_its_file(daemon) -> None:
    rules = daemon.extra["rules"]
    reload(daemon, rules.replace("use: openai/gpt-4o", "use: openai/gpt-40"), "did you mean 'gpt-4o'?")
    reload(daemon, rules.replace("match: {tags: [legal]}", "matchh: {tags: [legal]}"), "matchh")
    # a rule for the AssemblyAI plugin (installed, no key) was warned of before the file was refused
    logged = len(daemon.logs())
    reload(daemon, rules.replace("default: local/extract", "  - {name: meetings, use: assemblyai/best}\n"
                                                           "default: local/extrat"), "did you mean 'extract'?")
    assert "WARNING" not in daemon.logs()[logged:] and "has no usable target" not in daemon.logs(), daemon.logs()
    lines = refusals(daemon)
    assert len(lines) == 3 and all(REFUSED in line and "ERROR router.core" in line for line in lines), lines
    assert REFUSED + "invalid configuration" in lines[1]
    assert explained(daemon, "legal") == ("legal-docs", "anthropic/claude-sonnet-4-6")


def test_explain_of_a_request_no_rule_can_route_gives_each_rules_outcome_with_the_refusal(start_daemon, fakes) -> None:
    """A request a rule matched but none of its targets nor the default could take: ExplainRoute fails as Generate
    does (NO_ROUTE), and its error carries the trace (a Route detail): why `meetings` did not match."""
    rules = f"""
providers:
  openai: {{api_key: "${{OPENAI_API_KEY}}", base_url: "{fakes['openai'].base_url}", timeout: 20}}
routes:
  - name: meetings
    match: {{inputs_any: [audio], task: [transcribe]}}
    use: openai/whisper-1
  - name: legal-docs
    match: {{tags: [legal]}}
    use: anthropic/claude-sonnet-4-6
default: gemini/gemini-2.5-pro
"""
    daemon = start_daemon(rules, env={"OPENAI_API_KEY": ALL_KEYS["OPENAI_API_KEY"]}, plugins=())
    request = text_request("hi", hints=pb.RoutingHints(tags=["legal"]))
    for call in (daemon.stub.ExplainRoute, daemon.stub.Generate):
        with pytest.raises(grpc.RpcError) as refused:
            call((pb.ExplainRouteRequest if call == daemon.stub.ExplainRoute else pb.GenerateRequest)(
                request=request), timeout=20)
        details = error_details(refused.value)
        assert (details.code, details.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "NO_ROUTE")
        route = status_detail(refused.value, pb.Route)
        assert route is not None and (route.rule, route.provider, route.model) == ("", "", "")
        trace = [(t.rule, pb.RuleOutcome.Name(t.outcome), t.reason) for t in route.trace]
        assert [t[:2] for t in trace] == [("meetings", "RULE_OUTCOME_NOT_MATCHED"),
                                          ("legal-docs", "RULE_OUTCOME_SKIPPED"), ("default", "RULE_OUTCOME_SKIPPED")]
        assert trace[0][2] == "needs any of [audio], request has [text]"
        assert "provider 'anthropic' is not usable" in trace[1][2] and "gemini" in trace[2][2]
        assert not route.notes

    table = run_cli("explain", "hi", "--tag", "legal", "--address", daemon.address)
    assert table.returncode == 1, table
    assert "needs any of [audio], request has [text]" in table.stdout, table.stdout
    assert [line.split()[:2] for line in table.stdout.splitlines()[2:]] == [
        ["meetings", "not"], ["legal-docs", "skipped"], ["default", "skipped"]], table.stdout
    assert "FAILED_PRECONDITION: no provider can take this request" in table.stderr, table.stderr
    assert "reason NO_ROUTE" in table.stderr.splitlines()[-1], table.stderr
    as_json = run_cli("explain", "hi", "--tag", "legal", "--json", "--address", daemon.address)
    printed = json.loads(as_json.stdout)
    assert (as_json.returncode, printed["error"]["reason"]) == (1, "NO_ROUTE")
    assert [t["rule"] for t in printed["route"]["trace"]] == ["meetings", "legal-docs", "default"]

    # thousands of rules: the trace is cut to fit the error's trailers, and says so (gRPC clients refuse more)
    many = "".join(f"  - {{name: team-{i}, match: {{metadata: {{team: t{i}}}}}, use: openai/gpt-4o}}\n"
                   for i in range(300))
    reload(daemon, rules.replace("routes:\n", "routes:\n" + many), "rules reloaded")
    with pytest.raises(grpc.RpcError) as refused:
        daemon.stub.ExplainRoute(pb.ExplainRouteRequest(request=request), timeout=20)
    assert error_details(refused.value).reason == "NO_ROUTE"
    route = status_detail(refused.value, pb.Route)
    assert route.trace[0].rule == "team-0" and len(route.trace) < 303
    assert route.notes == [f"each reason is cut to 200 bytes, and the last {303 - len(route.trace)} of its 303 rule "
                           "outcomes are left out, for the error to fit in gRPC's trailers"]
