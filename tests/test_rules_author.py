"""A rules author's mistakes that passed silently: overrides open by default, providers no plugin offers,
a reload leaving a ready provider unconfigured, unset ``${VAR}`` in rules, and names or conditions no
request can carry."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from grpc_helpers import text_request, wait_for
from mmrouter.v1 import router_pb2 as pb

from router.config import parse_config
from router.config_warnings import config_warnings
from router.errors import ConfigError
from router.plugins import load_registry
from router.wire import MAX_METADATA_KEY_CHARS, MAX_METADATA_VALUE_CHARS, MAX_TAG_CHARS

MMROUTER = Path(sys.executable).parent / "mmrouter"


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(textwrap.dedent(text).lstrip("\n"), "router.yaml")
    return " ".join(info.value.message.split())


def warnings_of(text: str) -> list[str]:
    config = parse_config(textwrap.dedent(text).lstrip("\n"), "router.yaml")
    return list(config_warnings(config, load_registry(config.providers, disabled=config.plugins.disabled)))


def check(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(MMROUTER), "config", "check", str(path)], capture_output=True, text=True,
                          timeout=60, env={"PATH": "/usr/bin:/bin", "COLUMNS": "200", "NO_COLOR": "1"})


# -- 1. overrides ----------------------------------------------------------------------------


def test_a_file_with_rules_but_no_overrides_section_is_warned_that_clients_may_bypass_them(tmp_path):
    """Without `overrides:`, clients may pick any provider and model with hints: open by default, unsaid."""
    file = tmp_path / "router.yaml"
    file.write_text("routes:\n  - {name: all, use: local/extract}\n")
    result = check(file)
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr
    output = " ".join(result.stderr.split())
    assert ("overrides: not set, so clients may choose any provider and model with hints.provider/hints.model, "
            "bypassing these rules: set `overrides: {allow: false}` to enforce them, or `allow: true` to "
            "silence this") in output
    for overrides in ("overrides: {allow: true}", "overrides: {allow: false}"):
        assert not [w for w in warnings_of(f"default: local/extract\n{overrides}\n") if "overrides" in w]
    assert not [w for w in warnings_of("server: {log_level: info}\n") if "overrides" in w]  # nothing to bypass
    assert [w for w in warnings_of("default: local/extract\n") if w.startswith("overrides: not set")]


def test_override_providers_ignored_by_allow_false_are_warned_of():
    warnings = warnings_of("default: local/extract\noverrides: {allow: false, providers: [openai, local]}\n")
    assert ("overrides.providers: openai, local ignored: with `allow: false` no client may choose a provider "
            "(set `allow: true` to let clients choose among these) (router.yaml, line 2)") in warnings
    assert not [w for w in warnings_of("default: local/extract\noverrides: {allow: true, providers: [openai]}\n")
                if "overrides" in w]


# -- 2. providers no installed plugin offers ---------------------------------------------------

TYPOS = """
routes:
  - name: cheap
    use: opnai/gpt-4o-mini
    fallback: [local/extract]
default: lokal/extract
overrides: {allow: false}
"""


def test_the_daemon_warns_of_targets_whose_provider_no_plugin_offers_at_start_and_refuses_them_on_reload(start_daemon):
    """`use: opnai/gpt-4o-mini` was accepted silently by serve and SIGHUP: the rule quietly went to its fallback."""
    daemon = start_daemon(TYPOS, plugins=())
    logs = " ".join(daemon.logs().split())
    assert (f"routes.0.use 'cheap': no installed plugin offers a provider 'opnai' ({daemon.config_path}, line 4); "
            "did you mean 'openai'?: it is never used "
            "(a rule goes on to its fallbacks)") in logs
    assert f"default: no installed plugin offers a provider 'lokal' ({daemon.config_path}, line 6); did you mean 'local'?" in logs
    assert "WARNING" in daemon.logs().split("provider 'opnai'")[0].splitlines()[-1]
    answer = daemon.stub.Generate(pb.GenerateRequest(request=text_request("hi")), timeout=20).answer
    assert answer.route.provider == "local"  # a warning only: it starts and serves

    # on reload, where the daemon knows its plugins, a provider the running file does not name already is refused
    daemon.config_path.write_text(TYPOS.replace("opnai", "antropic"))
    daemon.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: "reload refused" in daemon.logs()), daemon.logs()
    assert "no installed plugin offers a provider 'antropic'" in daemon.logs(), daemon.logs()
    assert "did you mean 'anthropic'?" in daemon.logs() and "rules reloaded" not in daemon.logs()
    assert daemon.proc.poll() is None


# -- 3. a reload leaving a ready provider not configured -----------------------------------------


async def test_a_reload_that_would_leave_a_ready_provider_not_configured_is_refused(tmp_path, caplog, monkeypatch):
    """With openai ready, `api_key: "${SOME_UNSET_VAR}"` was reloaded: openai became not configured (an
    INFO line) and all its traffic went to the fallbacks."""
    from router.core import App
    from router.plugins import State

    monkeypatch.delenv("SOME_UNSET_VAR", raising=False)
    config = textwrap.dedent(f"""
        server: {{data_dir: '{tmp_path}'}}
        providers:
          openai: {{api_key: "sk-test-ready-0001"}}
        routes:
          - {{name: all, use: openai/gpt-4o, fallback: [local/extract]}}
        """)
    app = App(parse_config(config, "t.yaml"))
    try:
        assert app.registry.entries["openai"].state is State.READY
        old_router, old_registry, old_config = app.router, app.registry, app.config
        caplog.set_level("INFO", logger="router")
        unset = config.replace("sk-test-ready-0001", "${SOME_UNSET_VAR}").replace("name: all", "name: new")
        assert app.reload(parse_config(unset, "t.yaml")) is None
        assert (app.router, app.registry, app.config) == (old_router, old_registry, old_config)
        assert app.registry.entries["openai"].state is State.READY
        refused = [r for r in caplog.records if "reload refused" in r.getMessage()]
        assert refused and refused[0].levelname == "ERROR", caplog.text
        assert ("providers.openai: provider 'openai' is ready and would no longer be configured: "
                "providers.openai.api_key: ${SOME_UNSET_VAR} is not set (to take it out of service on purpose, "
                "list it in plugins.disabled)") in refused[0].getMessage()

        caplog.clear()  # a provider not configured before may stay so; and a new key is taken
        assert app.reload(parse_config(config.replace("sk-test-ready-0001", "sk-test-rotated-0002"), "t.yaml"))
        assert "reload refused" not in caplog.text
    finally:
        await app.aclose()


# -- 4. unset ${VAR} in routes ---------------------------------------------------------------------


def test_an_unset_variable_in_the_rules_is_an_error_naming_the_key_and_variable(monkeypatch):
    """`metadata: {team: "${QA_TEAM}"}` never matched, silently; `use: "${TARGET}"` said `'' is not a
    target` and `max: "${QA_MAX}"` `unable to parse string as a number`, naming no variable."""
    for name in ("QA_TEAM", "TARGET", "QA_MAX", "QA_DEFAULT"):
        monkeypatch.delenv(name, raising=False)
    message = error_of("""
        routes:
          - name: qa
            match:
              metadata: {team: "${QA_TEAM}"}
              images: {max: "${QA_MAX}"}
            use: "${TARGET}"
        default: "${QA_DEFAULT}"
    """)
    assert ("routes.0.match.metadata.team: ${QA_TEAM} is not set (or empty) (router.yaml, line 4): set QA_TEAM, "
            "or write ${QA_TEAM:-} to allow an empty value") in message
    assert "routes.0.match.images.max: ${QA_MAX} is not set (or empty) (router.yaml, line 5)" in message
    assert "routes.0.use: ${TARGET} is not set (or empty) (router.yaml, line 6)" in message
    assert "default: ${QA_DEFAULT} is not set (or empty) (router.yaml, line 7)" in message
    assert "is not a target" not in message and "unable to parse" not in message

    config = parse_config('routes:\n  - {name: qa, match: {metadata: {team: "${QA_TEAM:-qa}"}}, '
                          'use: "${TARGET:-local/extract}"}\n')
    assert config.routes[0].match.metadata == {"team": "qa"} and config.routes[0].use == "local/extract"
    monkeypatch.setenv("QA_TEAM", "blue")
    assert parse_config('routes:\n  - {name: qa, match: {metadata: {team: "${QA_TEAM}"}}, use: local/extract}\n'
                        ).routes[0].match.metadata == {"team": "blue"}


# -- 5. rule names and conditions no request can carry ----------------------------------------------


@pytest.mark.parametrize("name, problem", [
    ('""', "a rule name cannot be empty or blank"),
    ('"   "', "a rule name cannot be empty or blank"),
    ('"a\\nb rule=fake"', "the name has U+000A LINE FEED at character 2, which breaks a log line"),
    ('"tab\\there"', "the name has U+0009 CHARACTER TABULATION at character 4, which breaks a log line"),
    ('"left\\u202eright"', "the name has U+202E RIGHT-TO-LEFT OVERRIDE at character 5, which reorders"),
])
def test_a_blank_or_unprintable_rule_name_is_refused_with_its_key_and_line(name, problem):
    message = error_of(f"default: local/extract\nroutes:\n  - name: {name}\n    use: local/extract\n")
    assert f"routes.0.name: {problem}" in message and "(router.yaml, line 3)" in message, message


@pytest.mark.parametrize("match, key, problem", [
    ('{metadata: {"": x}}', "routes.0.match.metadata", "an empty key"),
    (f"{{metadata: {{{'k' * (MAX_METADATA_KEY_CHARS + 1)}: x}}}}", "routes.0.match.metadata",
     f"has {MAX_METADATA_KEY_CHARS + 1} characters and never matches"),
    (f"{{metadata: {{team: {'v' * (MAX_METADATA_VALUE_CHARS + 1)}}}}}", "routes.0.match.metadata",
     f"the value of 'team' has {MAX_METADATA_VALUE_CHARS + 1} characters and never matches"),
    (f"{{tags: [ok, {'t' * (MAX_TAG_CHARS + 1)}]}}", "routes.0.match.tags",
     f"has {MAX_TAG_CHARS + 1} characters and never matches"),
    ('{tags: [ok, "team\\ta"]}', "routes.0.match.tags", "has U+0009 CHARACTER TABULATION at character 5, which breaks a log line and never matches"),
])
def test_a_condition_no_request_can_carry_is_refused_with_its_key_and_line(match, key, problem):
    message = error_of(f"routes:\n  - name: r\n    use: local/extract\n    match: {match}\n")
    assert f"{key}: " in message and problem in message and "(router.yaml, line 4)" in message, message
    limits = (f"routes:\n  - name: r\n    use: local/extract\n    match: {{metadata: {{{'k' * MAX_METADATA_KEY_CHARS}: "
              f"{'v' * MAX_METADATA_VALUE_CHARS}}}, tags: [{'t' * MAX_TAG_CHARS}]}}\n")
    assert parse_config(limits).routes[0].match.tags == ["t" * MAX_TAG_CHARS]  # the longest a request may send


# -- 6. provider sections' errors with their line ----------------------------------------------------


def test_a_provider_section_its_plugin_refuses_is_named_with_its_line_and_the_setting_meant(tmp_path):
    """`providers.openai.timout: Extra inputs are not permitted` had no file, no line and no "did you mean",
    which the file's other errors have."""
    file = tmp_path / "router.yaml"
    file.write_text("providers:\n  openai:\n    api_key: sk-test-0001\n    timout: 5\n  local: {worker: 2}\n"
                    "default: local/extract\noverrides: {allow: true}\n")
    result = check(file)
    output = " ".join(result.stderr.split())
    assert result.returncode == 1 and "OK" not in result.stdout, output
    assert (f"providers.openai.timout: Extra inputs are not permitted ({file}, line 4); did you mean 'timeout'?"
            in output)
    assert f"providers.local.worker: Extra inputs are not permitted ({file}, line 5); did you mean 'workers'?" in output


def test_no_setting_the_plugin_refuses_is_suggested_for_a_typo(tmp_path):
    """`providers.local.timout` suggested 'timeout', which the local provider refuses ("does not use it;
    remove the key"): the operator was sent from one refusal to another."""
    file = tmp_path / "router.yaml"
    file.write_text("providers:\n  local: {timout: 5, api_kee: x}\ndefault: local/extract\noverrides: {allow: true}\n")
    result = check(file)
    output = " ".join(result.stderr.split())
    assert result.returncode == 1 and "OK" not in result.stdout, output
    assert f"providers.local.timout: Extra inputs are not permitted ({file}, line 2)" in output
    assert f"providers.local.api_kee: Extra inputs are not permitted ({file}, line 2)" in output
    assert "did you mean" not in output


def test_a_section_named_like_another_plugin_that_makes_an_instance_is_warned_of(tmp_path, start_daemon):
    """`local: {plugin: openai}` (a natural name for an Ollama box) served the OpenAI-compatible server as
    `local`, and the local plugin's own provider (its extraction, the bridges' last resort) was gone, unsaid."""
    config = ("providers:\n  local: {plugin: openai, base_url: 'http://127.0.0.1:9/v1', builtin_models: false,\n"
              "          models: [{name: llama3, price: {input_per_mtok: 0}}]}\n"
              "default: local/llama3\noverrides: {allow: true}\n")
    file = tmp_path / "router.yaml"
    file.write_text(config)
    result = check(file)
    output = " ".join(result.stderr.split())
    warning = ("providers.local: `plugin: openai` gives this name to an instance of plugin 'openai', so the 'local' "
               "plugin's own provider is not served: name the section otherwise (say local-openai)")
    assert result.returncode == 0 and output.count(warning) == 1, output
    daemon = start_daemon(config)
    assert wait_for(lambda: warning in " ".join(daemon.logs().split())), daemon.logs()

    renamed = config.replace("  local: {", "  ollama: {").replace("local/llama3", "ollama/llama3")
    file.write_text(renamed)
    assert "is not served" not in check(file).stderr
