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
