"""Routing config as code (a CI `config check`, SIGHUP deploys): shell forms of ``$`` references refused,
rules whose every target's provider is not configured warned of, ``config check --json``."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from test_config import MMROUTER, check, error_of, serve_exit, yaml
from test_reload import reload, route_of

from router.config import parse_config

#: What an operator used to shell and docker-compose writes: none of it read the environment.
SHELL_FORMS = yaml("""
    server:
      address: 127.0.0.1:0
      auth_token: "${MMROUTER_TOKEN:?missing}"
    providers:
      openai: {api_key: "$TEAM_OPENAI_KEY"}
      local: {}
    routes:
      - name: search
        match: {metadata: {team: "${SEARCH_TEAM-search}"}}
        use: local/extract
    default: local/extract
    overrides: {allow: false}
""")


def run_check(path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``mmrouter config check`` with ``args``, in an environment without API keys."""
    return subprocess.run([str(MMROUTER), "config", "check", *args, str(path)], capture_output=True, text=True,
                          timeout=60, env={"PATH": "/usr/bin:/bin", "COLUMNS": "400", "NO_COLOR": "1", **(env or {})})


def test_config_check_and_serve_refuse_shell_forms_of_references_naming_key_line_and_syntax(tmp_path):
    """``auth_token: "${MMROUTER_TOKEN:?missing}"`` made that text, published in git, the daemon's token."""
    file = tmp_path / "router.yaml"
    file.write_text(SHELL_FORMS.replace("127.0.0.1:0", f"127.0.0.1:0\n  data_dir: {tmp_path / 'data'}"))
    checked = check(file)
    assert checked.returncode == 1 and "OK" not in checked.stdout, checked.stderr
    output = " ".join(checked.stderr.split())
    assert ("server.auth_token: '${MMROUTER_TOKEN:?…}' is not a supported reference (" f"{file}, line 4): only "
            "${VAR} and ${VAR:-default} read the environment: write ${MMROUTER_TOKEN} or ${MMROUTER_TOKEN:-default}"
            ) in output
    assert (f"providers.openai.api_key: '$TEAM_OPENAI_KEY' does not read the environment (it would be the text "
            f"'$TEAM_OPENAI_KEY') ({file}, line 6)") in output
    assert (f"routes.0.match.metadata.team: '${{SEARCH_TEAM-…}}' is not a supported reference ({file}, line 10): "
            "only ${VAR} and ${VAR:-default} read the environment: write ${SEARCH_TEAM:-default}") in output
    served = serve_exit(file)
    assert served.returncode == 2, served.stdout + served.stderr
    assert "server.auth_token: '${MMROUTER_TOKEN:?…}' is not a supported reference" in " ".join(served.stderr.split())
    assert "listening" not in served.stderr


@pytest.mark.parametrize("value, shown", [
    ("${TOKEN:=x}", "'${TOKEN:=…}' is not a supported reference"),
    ("${TOKEN?}", "'${TOKEN?…}' is not a supported reference"),
    ("${TOKEN:+x}", "'${TOKEN:+…}' is not a supported reference"),
    ("${1}", "a '${' that starts no ${VAR} reference"),
    ("ab${cd", "a '${' that starts no ${VAR} reference"),
    ("  $TOKEN ", "'$TOKEN' does not read the environment"),
])
def test_every_unsupported_form_is_refused_without_quoting_the_rest_of_the_value(value, shown):
    message = error_of(f'server:\n  auth_token: "{value}"\n')
    assert f"server.auth_token: {shown}" in message and "(router.yaml, line 2)" in message
    if "does not read" not in shown:
        assert value not in message  # never more of the value than a variable's name


def test_a_literal_dollar_and_the_supported_references_are_still_taken(monkeypatch):
    """A key or password holding ``$`` as text (not a whole ``$NAME``, nor ``${``) is the text written."""
    monkeypatch.setenv("TEST_MMR_KEY", "sk-env")
    monkeypatch.delenv("TEST_MMR_UNSET", raising=False)
    config = parse_config(yaml("""
        server: {auth_token: "pa$sword$"}
        providers:
          openai: {api_key: "${TEST_MMR_KEY}", base_url: "${TEST_MMR_UNSET:-http://x/v1}"}
          anthropic: {api_key: "$1-abc$$def"}
        routes:
          - {name: a, match: {metadata: {team: "cost$center", env: "${TEST_MMR_UNSET:-prod}"}}, use: local/extract}
    """))
    assert config.server.auth_token == "pa$sword$"
    assert config.providers["openai"] == {"api_key": "sk-env", "base_url": "http://x/v1"}
    assert config.providers["anthropic"]["api_key"] == "$1-abc$$def"
    assert config.routes[0].match.metadata == {"team": "cost$center", "env": "prod"}


def test_a_reload_refuses_a_shell_form_and_the_running_rules_stay(start_daemon):
    daemon = start_daemon("providers:\n  fake: {api_key: k}\nroutes:\n  - {name: all, use: fake/echo}\n")
    reload(daemon, 'providers:\n  fake: {api_key: "${FAKE_KEY:?unset}"}\nroutes:\n  - {name: new, use: fake/small}\n',
           "reload refused")
    assert "providers.fake.api_key: '${FAKE_KEY:?…}' is not a supported reference" in daemon.logs()
    assert route_of(daemon) == ("all", "fake/echo")


def test_a_bad_task_is_refused_naming_only_the_tasks_a_rule_may_match():
    message = error_of("routes:\n  - name: a\n    use: a/b\n    match: {task: [chat, trnscribe]}\n")
    assert ("routes.0.match.task: 'trnscribe' is not a task: write chat and/or transcribe (or leave task out); "
            "did you mean 'transcribe'? (router.yaml, line 4)") in message
    assert "auto" not in message


UNCONFIGURED = yaml("""
    providers:
      local: {}
    routes:
      - name: research-team
        match: {tags: [research]}
        use: gemini/gemini-2.5-pro
      - name: with-fallback
        match: {tags: [other]}
        use: gemini/gemini-2.5-pro
        fallback: [local/extract]
      - name: general
        use: local/extract
    default: local/extract
    overrides: {allow: false}
""")
RESEARCH_WARNING = ("routes.0: rule 'research-team' has no usable target, so every request it matches goes on to "
                    "the next rules: provider 'gemini' is not configured (no API key: set GEMINI_API_KEY or GOOGLE_API_KEY "
                    "or providers.gemini.api_key) ({}, line 4)")


def test_config_check_warns_of_a_rule_whose_only_provider_is_not_configured(tmp_path):
    file = tmp_path / "router.yaml"
    file.write_text(UNCONFIGURED)
    strict = run_check(file, "--strict")
    assert strict.returncode == 1, strict.stderr
    lines = strict.stderr.splitlines()
    assert lines == [RESEARCH_WARNING.format(file), "1 warning(s), failing as --strict asks"]  # not the rule with a fallback
    assert run_check(file, env={"GEMINI_API_KEY": "k"}).stderr == ""  # configured where it runs: nothing to say


def test_an_unset_key_variable_is_said_once_not_again_for_each_rule(tmp_path):
    """CI without the production secrets: the provider's ``${VAR}`` warning already says it."""
    file = tmp_path / "router.yaml"
    file.write_text('providers:\n  openai: {api_key: "${TEAM_OPENAI_KEY}"}\nroutes:\n  - {name: a, use: openai/gpt-4o}\n'
                    "overrides: {allow: false}\n")
    warnings = run_check(file).stderr.splitlines()
    assert warnings == ["providers.openai.api_key: ${TEAM_OPENAI_KEY} is not set: provider 'openai' is not "
                        "configured here (set it where the daemon runs)"]


def test_config_check_json_gives_each_problem_its_severity_key_and_line(tmp_path):
    file = tmp_path / "router.yaml"
    file.write_text(UNCONFIGURED.replace("use: local/extract\ndefault", "use: local/extrat\ndefault"))
    result = run_check(file, "--json")
    assert result.returncode == 1 and result.stderr == "", result.stderr
    report = json.loads(result.stdout)
    assert report["file"] == str(file) and report["ok"] is False
    assert [(p["severity"], p["key"]) for p in report["problems"]] == [
        ("error", "routes.2.use"), ("warning", "routes.0")]
    assert report["problems"][1]["message"] == RESEARCH_WARNING.format(file)
    assert [p["line"] for p in report["problems"]] == [12, 4]
    schema = tmp_path / "schema.yaml"
    schema.write_text(SHELL_FORMS)
    problems = json.loads(run_check(schema, "--json").stdout)["problems"]
    assert [(p["severity"], p["key"], p["line"]) for p in problems] == [
        ("error", "server.auth_token", 3), ("error", "providers.openai.api_key", 5),
        ("error", "routes.0.match.metadata.team", 9)]
    good = tmp_path / "good.yaml"
    good.write_text(UNCONFIGURED)
    warned = run_check(good, "--json", env={"GEMINI_API_KEY": "k"})
    assert warned.returncode == 0 and json.loads(warned.stdout) == {"file": str(good), "ok": True, "problems": []}
    missing = run_check(tmp_path / "missing.yaml", "--json")
    assert missing.returncode == 2 and json.loads(missing.stdout)["problems"][0]["severity"] == "error"


def test_the_daemon_warns_at_start_and_reload_of_a_rule_with_no_configured_target(start_daemon):
    """The research team's traffic went to another model, unsaid: only an INFO line said gemini had no key."""
    daemon = start_daemon(UNCONFIGURED)  # launch_daemon drops every *_API_KEY
    warning = RESEARCH_WARNING.format(daemon.config_path)
    assert f"WARNING router.core: {warning}" in daemon.logs()
    assert "with-fallback" not in daemon.logs()
    seen = daemon.logs().count(warning)
    reload(daemon, UNCONFIGURED.replace("tags: [research]", "tags: [research, lab]"), "rules reloaded")
    assert daemon.logs().count(warning) == seen + 1
