"""Reloads that cannot take routing down: a file read empty or half written, a ready instance's section
removed, a SIGHUP during the stop, the reply a session keeps over a reload, placeholder keys equal to a name."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from contextlib import aclosing
from pathlib import Path

import grpc
import pytest
from grpc_helpers import text_request, wait_for
from mmrouter.v1 import router_pb2 as pb

from tests.fakes.openai import FakeOpenAI
from tests.test_reload import FIRST, reload, route_of

ROUTED = """
providers:
  fake: {api_key: k}
routes:
  - name: to-echo
    use: fake/echo
overrides: {allow: false}
"""

REFUSED = "SIGHUP: reload refused, the running configuration stays"


def test_a_reload_that_reads_the_file_empty_or_half_written_is_refused(start_daemon) -> None:
    """``cat new.yaml > router.yaml`` and a SIGHUP between its truncation and its writing: the empty file
    was served (NO_ROUTE for every call, overrides.allow back on) until the next SIGHUP."""
    daemon = start_daemon(ROUTED)
    reload(daemon, "", REFUSED)
    assert "the file is empty" in daemon.logs() and "replace the file atomically" in daemon.logs()
    reload(daemon, "# nothing yet\n\n", "the file is empty")
    half = ROUTED.split("routes:")[0]  # cut at a line boundary, before its rules
    reload(daemon, half, "the file has no routes and no default")
    assert "rules reloaded" not in daemon.logs()
    assert route_of(daemon) == ("to-echo", "fake/echo")
    with pytest.raises(grpc.RpcError) as refused:  # overrides.allow stayed false
        daemon.stub.ExplainRoute(pb.ExplainRouteRequest(request=text_request(
            "hi", hints=pb.RoutingHints(provider="openai"))), timeout=20)
    assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED

    # the file written whole: served, and the log says what changed, by name
    reload(daemon, ROUTED.replace("name: to-echo\n    use: fake/echo", "name: to-omni\n    use: fake/omni"),
           "SIGHUP: rules added: to-omni; removed: to-echo")  # logged after "rules reloaded": waited for itself
    assert "rules reloaded" in daemon.logs()
    assert route_of(daemon) == ("to-omni", "fake/omni")


def test_a_reload_that_removes_rules_or_the_default_is_a_warning(start_daemon) -> None:
    """A file cut after its first rule (read mid-write) still parses: served, it dropped the later rules and the
    default with one INFO line; the WARNING names what went."""
    whole = ROUTED.replace("overrides: {allow: false}\n", "  - name: general\n    use: fake/omni\ndefault: fake/echo\n")
    daemon = start_daemon(whole)
    cut = whole.split("  - name: general")[0]
    reload(daemon, cut, "rules reloaded")
    [warning] = [line for line in daemon.logs().splitlines() if "this reload removed" in line]
    assert " WARNING " in warning and "removed rule general and the default" in warning, warning
    reload(daemon, whole, "rules added: general")
    assert len([line for line in daemon.logs().splitlines() if "this reload removed" in line]) == 1  # added: no warning


def test_start_up_with_no_routes_and_no_default_says_every_request_is_refused(start_daemon) -> None:
    daemon = start_daemon("providers:\n  fake: {api_key: k}\n")
    assert "no routes and no default: every request will be refused" in daemon.logs()


INSTANCE = """
providers:
  local: {{workers: 1}}
  backup: {{plugin: openai, api_key: "sk-backup-0123456789", base_url: "{url}"}}
routes:
  - name: general
    use: backup/gpt-4o
    fallback: [local/extract]
overrides: {{allow: false}}
"""


def explained(daemon) -> str:
    route = daemon.stub.ExplainRoute(pb.ExplainRouteRequest(request=text_request("hi")), timeout=20).route
    return f"{route.provider}/{route.model}"


def test_removing_the_section_of_a_ready_instance_the_rules_name_is_refused(start_daemon) -> None:
    """Deleting (or misspelling) ``backup:`` moved its traffic to the fallback, with a warning that no
    installed plugin offers 'backup'. Refused now, as a ready built-in provider losing its configuration;
    a removal whose rules no longer name it goes through."""
    with FakeOpenAI() as fake:
        good = INSTANCE.format(url=fake.base_url)
        daemon = start_daemon(good)
        assert explained(daemon) == "backup/gpt-4o"
        without = "\n".join(line for line in good.splitlines() if "backup: {plugin" not in line)
        reload(daemon, without, REFUSED)
        assert ("providers.backup: provider 'backup' is ready and would no longer be configured: the file has no "
                "section for it, and routes.0.use still names it" in daemon.logs()), daemon.logs()
        assert "no installed plugin offers a provider 'backup'" not in daemon.logs()
        assert explained(daemon) == "backup/gpt-4o"

        reload(daemon, good.replace("backup: {plugin", "backpu: {plugin"), "did you mean 'backpu'?")
        assert "rules reloaded" not in daemon.logs() and explained(daemon) == "backup/gpt-4o"

        reload(daemon, without.replace("use: backup/gpt-4o\n    fallback: [local/extract]", "use: local/extract"),
               "SIGHUP: providers removed: backup")  # the reload's last line: the log writer may be behind
        assert "rules reloaded" in daemon.logs() and "SIGHUP: rules changed: general" in daemon.logs()
        assert explained(daemon) == "local/extract"


def test_sighups_around_the_stop_neither_reload_nor_end_the_daemon(start_daemon, tmp_path) -> None:
    """A SIGHUP in the last moments of the exit ended the daemon (status 129: SIGHUP's default action once
    asyncio's loop was closed), and one during the drain made providers again that were about to be closed."""
    markers = tmp_path / "markers"
    markers.mkdir()
    daemon = start_daemon(FIRST.replace("api_key: k", f"api_key: k, marker_dir: '{markers}'"))
    answers: list = []
    slow = threading.Thread(target=lambda: answers.append(daemon.stub.Generate(
        pb.GenerateRequest(request=text_request("SLOW:1.5")), timeout=30)))
    slow.start()
    assert wait_for(lambda: list(markers.glob("started-*")), timeout=20), "the call never reached the provider"
    daemon.proc.send_signal(signal.SIGTERM)  # the drain waits for the call under way
    assert wait_for(lambda: "shutting down" in daemon.logs(), timeout=20), daemon.logs()
    daemon.config_path.write_text(FIRST.replace("api_key: k", "api_key: k2"))  # a reload would remake it
    deadline = time.monotonic() + 60
    while daemon.proc.poll() is None and time.monotonic() < deadline:  # SIGHUPs until the process is gone
        os.kill(daemon.proc.pid, signal.SIGHUP)
        time.sleep(0.005)
    slow.join(30)
    assert daemon.proc.wait(10) == 0, daemon.logs()
    after_stop = daemon.logs().split("shutting down", 1)[1]
    assert "rules reloaded" not in after_stop and "providers made again" not in after_stop
    assert answers and "SLOW" in answers[0].answer.text, "the call under way was drained"


async def test_a_session_keeps_the_placeholder_for_an_extraction_answered_over_a_reload_disabling_it(tmp_path) -> None:
    """The reply kept for a question ``local/extract`` answered is the "not answered" placeholder, even when
    a reload during the call disabled ``local``: it was told by the current registry, not the call's."""
    from router.config import parse_config
    from router.core import NOT_ANSWERED_TURN, App
    from router.outcome import Done, RouteChosen
    from router.types import Message, Part, Request, Role

    text = f"routes: [{{name: all, use: local/extract}}]\nserver: {{data_dir: '{tmp_path}'}}\n"
    app = App(parse_config(text, "a.yaml"))
    try:
        request = Request(messages=[Message(Role.USER, [Part(text="what does it say?")])], session_id="s-kept")
        async with aclosing(app.answer(request, None)) as events:
            async for event in events:
                if isinstance(event, RouteChosen):  # the call runs on local: disable it now
                    assert app.reload(parse_config(text + "plugins: {disabled: [local]}\n", "b.yaml")) is not None
                    assert app.registry.ready("local") is None
                done = event if isinstance(event, Done) else None
        assert done is not None and "Extracted by local provider" in done.answer.text
        history = await app.sessions.run(app.sessions.history, "s-kept", app.load_media)
        assert [m.parts[0].text for m in history if m.role is Role.ASSISTANT] == [NOT_ANSWERED_TURN]
    finally:
        await app.aclose()


OLLAMA = """
providers:
  ollama: {{plugin: openai, api_key: {key}, base_url: "http://127.0.0.1:9/v1", builtin_models: false,
           models: [{{name: llama3}}]}}
routes:
  - name: all
    use: ollama/llama3
server: {{data_dir: '{data}'}}
"""


async def test_a_placeholder_key_equal_to_a_name_is_not_masked_and_a_refused_reload_adds_no_secret(
        tmp_path, caplog) -> None:
    """``api_key: ollama`` masked the provider's name as ``***`` in every log line, route and error; and a
    refused reload's keys were masked for the rest of the daemon's life."""
    from router import redact
    from router.core import App, config_secrets
    from router.server import reload_config, unmask_names

    caplog.set_level(logging.WARNING, logger="router")
    path = tmp_path / "router.yaml"
    path.write_text(OLLAMA.format(key="ollama", data=tmp_path))
    from router.config import load_config

    config = load_config(path)
    assert "ollama" not in config_secrets(config)
    log_filter = redact.SecretFilter(config_secrets(config))
    app = App(config)  # its plugin remembers the key it resolved (a key from the environment) in every filter
    unmask_names(log_filter, config)
    try:
        assert app.redact("using ollama/llama3") == "using ollama/llama3"
        assert log_filter.clean("provider ollama ready") == "provider ollama ready"
        assert caplog.text.count("providers.ollama: a secret setting (its key?) is 'ollama'") == 1

        refused = OLLAMA.format(key="zq-refused-reload-key-0001", data=tmp_path).replace("use: ollama/llama3",
                                                                                  "use: ollama/llama4")
        path.write_text(refused)
        reload_config(app, path, log_filter=log_filter)
        assert REFUSED in caplog.text
        assert "zq-refused-reload-key-0001" not in log_filter.secrets, "a refused reload's key is masked from then on"
        assert app.redact("zq-refused-reload-key-0001") == "zq-refused-reload-key-0001", "nor in what clients get"

        path.write_text(OLLAMA.format(key="zq-accepted-reload-key-0002", data=tmp_path))
        reload_config(app, path, log_filter=log_filter)
        assert "zq-accepted-reload-key-0002" in log_filter.secrets and "zq-accepted-reload-key-0002" in app.secrets
        path.write_text(OLLAMA.format(key="ollama", data=tmp_path))
        reload_config(app, path, log_filter=log_filter)
        assert caplog.text.count("is 'ollama', the name of a provider") == 1, "warned of once"
    finally:
        await app.aclose()


async def test_a_reload_reads_its_file_once(tmp_path, caplog) -> None:
    """The file was read twice (to load it, then for its errors' lines): a writer between the two gave
    lines of another text. A FIFO gives each read its own text: the error's line is the first text's."""
    import mmrouter_testkit

    from router.config import parse_config
    from router.core import App
    from router.server import reload_config

    running = f"providers:\n  openai: {{api_key: sk-x-0001}}\nroutes: [{{name: r, use: fake/echo}}]\n" \
              f"server: {{data_dir: '{tmp_path}'}}\n"
    app = App(parse_config(running, "r.yaml"), extra_plugins={"fake": mmrouter_testkit})
    first = running.replace("api_key: sk-x-0001", "api_key: sk-x-0001, timout: 5")  # the typo on line 2
    second = "\n\n\n\n" + first  # the same typo on line 6
    fifo = tmp_path / "router.yaml"
    os.mkfifo(fifo)

    def write(text: str, within: float) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # no reader yet
                time.sleep(0.01)
                continue
            os.set_blocking(fd, True)
            os.write(fd, text.encode())
            os.close(fd)
            return

    def writer() -> None:
        write(first, 20)
        time.sleep(0.5)  # the first read has its whole text before the next writer comes
        write(second, 3)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    caplog.set_level(logging.ERROR, logger="router")
    try:
        reload_config(app, Path(fifo))
        assert f"providers.openai.timout: Extra inputs are not permitted ({fifo}, line 2)" in caplog.text, caplog.text
    finally:
        thread.join(10)
        await app.aclose()
