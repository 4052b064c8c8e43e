"""``mmrouter ask`` and ``mmrouter explain --metadata KEY=VALUE`` send the request's metadata, which routing rules
match on: an operator tries a per-tenant rule from the command line (QA tenant, session 23: neither command could
send metadata, so such a rule could only be tried with a gRPC client of one's own)."""

from __future__ import annotations

import json

from test_cli import Cli, ok

CONFIG = """
providers:
  fake: {api_key: k}
routes:
  - name: acme
    match: {metadata: {tenant: acme}}
    use: fake/omni
  - name: chat
    use: fake/echo
"""


def test_ask_and_explain_send_metadata_that_rules_match(start_daemon) -> None:
    daemon = start_daemon(CONFIG)
    route = json.loads(ok(Cli("explain", "hi", "--metadata", "tenant=acme", "--json",
                              "--address", daemon.address).result()).stdout)
    assert (route["rule"], route["model"]) == ("acme", "omni")
    other = json.loads(ok(Cli("explain", "hi", "--metadata", "tenant=globex", "--metadata", "plan=a=b", "--json",
                              "--address", daemon.address).result()).stdout)
    assert other["rule"] == "chat"
    answered = json.loads(ok(Cli("ask", "hi", "--metadata", "tenant=acme", "--json",
                                 "--address", daemon.address).result()).stdout)
    assert (answered["route"]["rule"], answered["route"]["model"]) == ("acme", "omni")


def test_metadata_without_an_equals_sign_is_a_usage_error(start_daemon) -> None:
    daemon = start_daemon(CONFIG)
    refused = Cli("ask", "hi", "--metadata", "tenant", "--address", daemon.address).result()
    assert refused.returncode == 2 and "--metadata takes KEY=VALUE, not 'tenant'" in refused.stderr, refused.stderr


def test_a_metadata_key_given_twice_and_a_temperature_not_a_number_are_usage_errors(start_daemon) -> None:
    """QA regress23: a repeated --metadata key was silently overwritten; --temperature nan was refused with
    "Input should be less than or equal to 2"."""
    daemon = start_daemon(CONFIG)
    twice = Cli("ask", "hi", "--metadata", "tenant=other", "--metadata", "tenant=acme",
                "--address", daemon.address).result()
    assert twice.returncode == 2 and "--metadata gives 'tenant' twice" in twice.stderr, twice.stderr
    for value in ("nan", "inf", "-0.5"):
        refused = Cli("ask", "hi", "--temperature", value, "--address", daemon.address).result()
        assert refused.returncode == 2, refused.stderr
        assert "--temperature must be a number from 0 to 2" in refused.stderr, refused.stderr


def test_explain_says_a_rule_wants_metadata_the_request_has_not(start_daemon) -> None:
    """QA gitops: explain printed "metadata tenant=None, rule wants 'acme'" for a request without the key."""
    daemon = start_daemon(CONFIG)
    route = json.loads(ok(Cli("explain", "hi", "--json", "--address", daemon.address).result()).stdout)
    [acme] = [entry for entry in route["trace"] if entry["rule"] == "acme"]
    assert "no tenant metadata, rule wants tenant='acme'" in acme["reason"], acme
    assert "None" not in acme["reason"]
