"""SIGHUP: the daemon re-reads its routing file; a bad file is refused and the running rules stay."""

from __future__ import annotations

import signal

from grpc_helpers import text_request, wait_for
from mmrouter.v1 import router_pb2 as pb

FIRST = """
providers:
  fake: {api_key: k}
routes:
  - name: to-echo
    use: fake/echo
"""

SECOND = """
providers:
  fake: {api_key: k}
routes:
  - name: tagged
    match: {tags: [vip]}
    use: fake/small
  - name: to-omni
    use: fake/omni
"""


def route_of(daemon, *tags: str) -> tuple[str, str]:
    answer = daemon.stub.Generate(pb.GenerateRequest(request=text_request("hi", hints=pb.RoutingHints(tags=tags))), timeout=20).answer
    return answer.route.rule, f"{answer.route.provider}/{answer.route.model}"


def reload(daemon, text: str, log_line: str) -> None:
    seen = daemon.logs().count(log_line)
    daemon.config_path.write_text(text)
    daemon.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: daemon.logs().count(log_line) > seen), f"no {log_line!r} in the log:\n{daemon.logs()}"


def test_sighup_swaps_in_the_new_rules_and_refuses_a_bad_file(start_daemon) -> None:
    daemon = start_daemon(FIRST)
    assert route_of(daemon) == ("to-echo", "fake/echo")

    reload(daemon, SECOND, "rules reloaded")
    assert route_of(daemon) == ("to-omni", "fake/omni")
    assert route_of(daemon, "vip") == ("tagged", "fake/small")

    reload(daemon, SECOND.replace("use: fake/omni", "use: omni-without-provider"), "reload refused")
    assert "routes.1.use" in daemon.logs() and "line 9" in daemon.logs()
    assert route_of(daemon) == ("to-omni", "fake/omni")  # the running rules stayed

    reload(daemon, SECOND.replace("api_key: k", "api_key: other-key"), "rules reloaded")
    assert "changes to providers take effect only after a restart" in daemon.logs()
    assert "other-key" not in daemon.logs()
    assert daemon.proc.poll() is None


def test_sighup_without_a_config_file_keeps_the_embedded_default(start_daemon) -> None:
    daemon = start_daemon(None)
    daemon.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: "nothing to reload" in daemon.logs()), daemon.logs()
    health = daemon.stub.ListProviders(pb.ListProvidersRequest(), timeout=10)
    assert {p.name for p in health.providers} >= {"openai", "anthropic", "local"} and daemon.proc.poll() is None
