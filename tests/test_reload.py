"""SIGHUP: the daemon re-reads its config file (rules, providers); a bad file is refused and the running one stays."""

from __future__ import annotations

import asyncio
import signal
import threading
from contextlib import aclosing

from grpc_helpers import text_request, wait_for
from mmrouter.v1 import router_pb2 as pb

from tests.fakes.openai import FakeOpenAI

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

    reload(daemon, SECOND.replace("api_key: k", "api_key: other-key"), "providers made again")
    assert route_of(daemon) == ("to-omni", "fake/omni")
    assert "other-key" not in daemon.logs()
    reload(daemon, SECOND.replace("routes:", "server: {inline_limit_bytes: 1024}\nroutes:"), "rules reloaded")
    assert "changes to server.inline_limit_bytes take effect only after a restart" in daemon.logs()
    assert daemon.proc.poll() is None


def test_sighup_without_a_config_file_keeps_the_embedded_default(start_daemon) -> None:
    daemon = start_daemon(None)
    daemon.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: "nothing to reload" in daemon.logs()), daemon.logs()
    health = daemon.stub.ListProviders(pb.ListProvidersRequest(), timeout=10)
    assert {p.name for p in health.providers} >= {"openai", "anthropic", "local"} and daemon.proc.poll() is None


OPENAI = """
providers:
  openai: {{api_key: "{key}", base_url: "{url}"}}
routes:
  - name: all
    use: openai/gpt-4o
"""


def test_sighup_rotates_a_provider_key_while_a_call_on_the_old_one_finishes(start_daemon) -> None:
    old_key, new_key = "sk-old-rotated-0001", "sk-new-rotated-0002"
    with FakeOpenAI() as fake:
        fake.api_key = old_key
        daemon = start_daemon(OPENAI.format(key=old_key, url=fake.base_url))
        fake.chunk_delay = 0.4  # the call under way takes ~1.6 s
        slow: list = []
        request = pb.StreamGenerateRequest(request=text_request("a long answer"))
        under_way = threading.Thread(target=lambda: slow.extend(daemon.stub.StreamGenerate(request, timeout=30)))
        under_way.start()
        assert wait_for(lambda: len(fake.requests) == 1), "the first call never reached the provider"

        fake.api_key = new_key  # the provider now refuses the old key: the new one must be used
        reload(daemon, OPENAI.format(key=new_key, url=fake.base_url), "providers made again")
        fake.chunk_delay = 0.0
        answer = daemon.stub.Generate(pb.GenerateRequest(request=text_request("after the rotation")), timeout=20)
        assert answer.answer.text == "Hello from the fake GPT."
        assert fake.requests[-1].headers["authorization"] == f"Bearer {new_key}"

        under_way.join(30)
        done = [e.done.answer for e in slow if e.HasField("done")]
        assert len(done) == 1 and done[0].text == "Hello from the fake GPT.", "the call under way was cut"
        assert old_key not in daemon.logs() and new_key not in daemon.logs()


async def test_a_replaced_registry_is_closed_after_its_last_call(tmp_path) -> None:
    import mmrouter_testkit

    from router.config import parse_config
    from router.core import App
    from router.outcome import Done
    from router.types import Message, Part, Request, Role

    config = FIRST + f"server: {{data_dir: '{tmp_path}'}}\n"
    app = App(parse_config(config, "t.yaml"), extra_plugins={"fake": mmrouter_testkit})
    first = app.registry

    async def ask(text: str) -> str:  # as the servicer does: the answer is closed when Done is read
        request = Request(messages=[Message(Role.USER, [Part(text=text)])])
        async with aclosing(app.answer(request, None)) as events:
            async for event in events:
                if isinstance(event, Done):
                    return event.answer.text
        raise AssertionError("no Done")

    slow = asyncio.create_task(ask("SLOW:0.3"))
    await asyncio.sleep(0.1)
    assert first.calls == 1
    remade, _ = app.reload(parse_config(config.replace("api_key: k", "api_key: k2"), "t.yaml"))
    assert remade and app.registry is not first
    assert "says" in await ask("on the new providers") and app.registry.calls == 0
    assert app._retired == [first]  # still in use by the slow call
    assert "SLOW" in await slow
    assert app._retired == [] and first.calls == 0  # closed once its call ended
    await app.aclose()


async def test_a_new_address_or_data_dir_needs_a_restart_unless_the_command_line_set_it(tmp_path, caplog) -> None:
    import mmrouter_testkit

    from router.config import load_config
    from router.core import App
    from router.server import reload_config

    caplog.set_level("INFO", logger="router")
    path = tmp_path / "router.yaml"

    def server(data_dir: str, address: str) -> str:
        return FIRST + f"server: {{data_dir: '{tmp_path / data_dir}', address: '{address}'}}\n"

    path.write_text(server("a", "127.0.0.1:7001"))
    app = App(load_config(path), extra_plugins={"fake": mmrouter_testkit})
    try:
        for moved, key in ((server("b", "127.0.0.1:7001"), "data_dir"), (server("a", "127.0.0.1:7002"), "address")):
            path.write_text(moved)
            caplog.clear()
            reload_config(app, path)
            assert f"changes to server.{key} take effect only after a restart" in caplog.text, moved
        caplog.clear()  # the command line's --data-dir and --address win over the file: nothing changes
        reload_config(app, path, server_overrides={"data_dir": tmp_path / "a", "address": "127.0.0.1:7001"})
        assert "rules reloaded" in caplog.text and "restart" not in caplog.text
    finally:
        await app.aclose()


FLIP = '''
import router


class Flip(router.Provider):
    name = "flip"

    def __init__(self, junk):
        self.models = ["junk"] if junk else [router.ModelInfo("m", inputs=frozenset({router.Modality.TEXT}))]

    async def generate(self, request, model, ctx):
        yield router.TextDelta("flip")
        yield router.UsageReport(router.Usage())


@router.hookimpl
def register_providers(register, settings):
    register(Flip(bool(settings.get("junk"))))
'''


def test_sighup_that_would_break_a_working_provider_is_refused_but_one_broken_already_does_not_block(
        start_daemon, tmp_path) -> None:
    """The plugin's code is the one already imported, so only the new file can break its provider: like
    a settings typo, that is the operator's mistake (``config check`` refuses it), and the reload is
    refused whole. A provider that was broken before the reload does not stand in its way."""
    from conftest import make_dist_info

    site = tmp_path / "flip-site"
    site.mkdir()
    (site / "mmrouter_flip.py").write_text(FLIP)
    make_dist_info(site, "mmrouter-flip", "flip", "mmrouter_flip")
    daemon = start_daemon("""
        providers: {flip: {junk: true}}
        routes: [{name: r1, use: local/extract}]
        default: local/extract
        """, plugins=(), extra_sites=(site,))

    def flip_state() -> int:
        return {p.name: p for p in daemon.stub.ListProviders(pb.ListProvidersRequest()).providers}["flip"].state

    assert flip_state() == pb.PROVIDER_STATE_BROKEN
    reload(daemon, "providers: {flip: {junk: yes, note: still broken}}\nroutes: [{name: r2, use: local/extract}]\n",
           "providers made again")
    assert route_of(daemon) == ("r2", "local/extract") and flip_state() == pb.PROVIDER_STATE_BROKEN

    reload(daemon, "providers: {flip: {}}\nroutes: [{name: r3, use: flip/m}]\n", "providers made again")
    assert route_of(daemon) == ("r3", "flip/m") and flip_state() == pb.PROVIDER_STATE_READY

    reload(daemon, "providers: {flip: {junk: true}}\nroutes: [{name: r4, use: local/extract}]\n", "reload refused")
    assert "providers.flip: register_providers failed: TypeError: provider 'flip': models[0] is str" in daemon.logs()
    assert route_of(daemon) == ("r3", "flip/m") and flip_state() == pb.PROVIDER_STATE_READY
    assert daemon.proc.poll() is None


def test_sighup_with_a_typo_in_a_provider_section_is_refused_and_the_provider_keeps_answering(start_daemon) -> None:
    """A typo in a key rotation made openai broken and sent every request to the fallback."""
    key = "sk-typo-rotation-0001"
    with FakeOpenAI() as fake:
        fake.api_key = key
        daemon = start_daemon(OPENAI.format(key=key, url=fake.base_url) + "default: local/extract\n")
        typo = OPENAI.format(key=key, url=fake.base_url).replace("base_url:", "timout: 5, base_url:")
        reload(daemon, typo + "default: local/extract\n", "reload refused")
        # said as `config check` and a refused start-up say it: the key's line and the setting meant
        assert (f"SIGHUP: reload refused, the running configuration stays: providers.openai.timout: "
                f"Extra inputs are not permitted ({daemon.config_path}, line 3); did you mean 'timeout'?"
                in daemon.logs()), daemon.logs()
        # the candidate providers of the refused file were never in service: the running openai is not broken
        assert "is broken" not in daemon.logs()
        assert "rules reloaded" not in daemon.logs()
        answer = daemon.stub.Generate(pb.GenerateRequest(request=text_request("hi")), timeout=20).answer
        assert (answer.route.provider, answer.text) == ("openai", "Hello from the fake GPT.")
        assert key not in daemon.logs()


async def test_a_reload_whose_providers_cannot_be_made_is_refused_whole(tmp_path, caplog, monkeypatch) -> None:
    import mmrouter_testkit

    from router import core, server
    from router.config import parse_config
    from router.core import App

    config = FIRST + f"server: {{data_dir: '{tmp_path}'}}\n"
    app = App(parse_config(config, "t.yaml"), extra_plugins={"fake": mmrouter_testkit})
    old_router, old_registry, old_config = app.router, app.registry, app.config

    def cannot(*args, **kwargs):
        raise RuntimeError("entry points unreadable")

    monkeypatch.setattr(core, "load_registry", cannot)  # the registry as a whole fails, not one plugin
    caplog.set_level("ERROR", logger="router")
    try:
        assert app.reload(parse_config(SECOND.replace("api_key: k", "api_key: k2"), "t.yaml")) is None
        assert (app.router, app.registry, app.config) == (old_router, old_registry, old_config)
        assert "reload refused" in caplog.text and "entry points unreadable" in caplog.text
        new_file = tmp_path / "new.yaml"
        new_file.write_text(SECOND.replace("api_key: k", "api_key: k2"))
        caplog.clear()
        caplog.set_level("INFO", logger="router")
        server.reload_config(app, new_file)  # SIGHUP says the reload was refused, not that rules reloaded
        assert "reload refused" in caplog.text and "rules reloaded" not in caplog.text
        assert app.router is old_router
    finally:
        await app.aclose()


def test_sighup_naming_a_model_a_ready_provider_does_not_offer_is_refused(start_daemon) -> None:
    """``use: fake/ech0`` was reloaded ("rules reloaded") and the rule silently skipped on every request
    from then on, though ``config check`` refuses it. The reload is refused now, the log says why as
    config check does, and the running rules stay; a provider without a key only gets a warning."""
    daemon = start_daemon(FIRST)
    typo = SECOND.replace("use: fake/omni", "use: fake/omnii")
    reload(daemon, typo, "reload refused")
    assert ("SIGHUP: reload refused, the running configuration stays: routes.1.use 'to-omni': provider 'fake' "
            "has no model 'omnii' (it has: echo, docs, omni, small, ears, diarizer) "
            f"({daemon.config_path}, line 9); did you mean 'omni'?" in daemon.logs())
    assert "rules reloaded" not in daemon.logs()
    assert route_of(daemon) == ("to-echo", "fake/echo")

    reload(daemon, typo.replace("api_key: k", "api_key: k2"), "routes.1.use 'to-omni': provider 'fake' has no model")
    assert "rules reloaded" not in daemon.logs() and "providers made again" not in daemon.logs()
    assert route_of(daemon) == ("to-echo", "fake/echo")

    no_key = SECOND.replace("use: fake/omni", "use: fake/omni\n    fallback: [openai/gpt4o]")
    reload(daemon, no_key, "rules reloaded")
    assert "routes.1.fallback.0 'to-omni': provider 'openai' has no model 'gpt4o'" in daemon.logs()
    assert "only a warning" in daemon.logs()
    assert route_of(daemon) == ("to-omni", "fake/omni") and daemon.proc.poll() is None


def test_a_broken_plugin_installed_beside_the_running_daemon_does_not_block_reloads(start_daemon, tmp_path) -> None:
    """A plugin installed after the daemon started that fails at import made every reload refused, a key
    rotation included, though the file does not use it (at start-up it is only a warning)."""
    import shutil
    from pathlib import Path

    from conftest import make_dist_info

    site = tmp_path / "later-site"
    site.mkdir()
    daemon = start_daemon(FIRST, extra_sites=(site,))
    shutil.copy(Path(__file__).parent / "testkit" / "mmrouter_broken_import.py", site / "mmrouter_later_broken.py")
    make_dist_info(site, "mmrouter-later-broken", "later", "mmrouter_later_broken")
    # a file that uses it is refused, as one that breaks a provider
    reload(daemon, SECOND.replace("api_key: k", "api_key: k2") + "  - {name: later, match: {tags: [l]}, use: later/m}\n",
           "reload refused")
    assert route_of(daemon) == ("to-echo", "fake/echo")
    reload(daemon, SECOND.replace("api_key: k", "api_key: k2"), "rules reloaded")
    assert "plugin 'later', new since the daemon started, is broken" in daemon.logs()
    assert route_of(daemon) == ("to-omni", "fake/omni")
