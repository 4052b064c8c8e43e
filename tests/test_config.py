"""The configuration: YAML -> validated settings, errors with key, problem, file and line; the default."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from grpc_helpers import text_request
from mmrouter.v1 import router_pb2 as pb

from router.config import (
    Config,
    Range,
    embedded_default,
    expand_env,
    load_config,
    parse_config,
)
from router.errors import ConfigError
from router.routing import Target
from router.types import Modality, Task

MMROUTER = Path(sys.executable).parent / "mmrouter"


def yaml(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def error_of(text: str, source: str = "router.yaml") -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(yaml(text), source)
    assert info.value.reason == "INVALID_CONFIG"
    return info.value.message


GOOD = yaml("""
    server:
      address: 0.0.0.0:6000
      inline_limit_bytes: 1000
      max_message_bytes: 2097152
    plugins: {disabled: [gemini]}
    providers:
      openai: {api_key: sk-test}
      local:
    routes:
      - name: meetings
        match:
          inputs_any: [audio, video]
          diarization: true
          task: transcribe
          audio_seconds: {min: 60, max: 7200}
          metadata: {team: ops}
          tags: [meeting]
        use: assemblyai/best
        fallback: [local/extract]
      - name: images
        match: {inputs: [text, image], images: {max: 4}, input_tokens: {max: 100000}}
        use: openai/gpt-4o
        bridging: false
    default: local/extract
    overrides: {allow: true, providers: [openai]}
    bridges:
      audio: [openai/whisper-1, local/extract]
""")


# -- good files ------------------------------------------------------------------------------


def test_a_good_file_is_parsed_into_settings():
    config = parse_config(GOOD, "router.yaml")
    assert config.server.address == "0.0.0.0:6000"
    assert (config.server.inline_limit_bytes, config.server.max_message_bytes) == (1000, 2097152)
    assert config.plugins.disabled == ["gemini"]
    assert config.providers == {"openai": {"api_key": "sk-test"}, "local": {}}
    meetings, images = config.routes
    assert meetings.name == "meetings"
    assert meetings.match.inputs_any == [Modality.AUDIO, Modality.VIDEO]
    assert meetings.match.diarization is True
    assert meetings.match.task == [Task.TRANSCRIBE]  # one task may be written without a list
    assert meetings.match.audio_seconds == Range(min=60, max=7200)
    assert meetings.match.metadata == {"team": "ops"}
    assert meetings.match.tags == ["meeting"]
    assert (meetings.use, meetings.fallback, meetings.bridging) == ("assemblyai/best", ["local/extract"], True)
    assert images.match.inputs == [Modality.TEXT, Modality.IMAGE]
    assert images.match.images == Range(max=4)
    assert images.bridging is False
    assert config.default == "local/extract"
    assert config.overrides.providers == ["openai"]
    assert config.bridges == {Modality.AUDIO: ["openai/whisper-1", "local/extract"]}
    assert config.extend_default_routes is False


def test_an_empty_file_is_the_built_in_settings():
    config = parse_config("", "empty.yaml")
    assert config == parse_config("# nothing\n")
    assert config.routes == []
    assert config.default is None
    assert config.overrides.allow is True
    assert config.server.max_concurrent_uploads == 32


def test_targets_may_have_model_names_with_dots_colons_and_at_signs():
    config = parse_config("default: ollama/llama3.2-vision:11b@q4\n")
    assert config.default == "ollama/llama3.2-vision:11b@q4"


def test_a_model_name_may_hold_slashes_the_first_one_ends_the_provider():
    config = parse_config("default: openai/meta-llama/Llama-3.1-8B-Instruct\n")
    assert Target.parse(config.default) == Target("openai", "meta-llama/Llama-3.1-8B-Instruct")


# -- errors: key path, problem, file and line ------------------------------------------------


def test_a_log_level_is_one_of_logging_s_levels_in_any_case():
    assert parse_config("server: {log_level: warning}\n").server.log_level == "WARNING"
    message = error_of("""
        server:
          log_level: loud
    """)
    assert "server.log_level" in message and "DEBUG" in message and "(router.yaml, line 2)" in message


def test_a_bad_modality_names_the_key_the_choices_and_the_line():
    message = error_of("""
        routes:
          - name: sound
            match:
              inputs_any: [audio, sound]
            use: openai/whisper-1
    """)
    assert message.startswith("invalid configuration:")
    assert "routes.0.match.inputs_any.1: Input should be 'text', 'image', 'audio', 'video' or 'document'" in message
    assert "(router.yaml, line 4)" in message


def test_a_bad_modality_as_a_bridges_key():
    message = error_of("""
        bridges:
          sound: [local/extract]
    """)
    assert "bridges.sound: Input should be 'text'" in message
    assert "(router.yaml, line 2)" in message


def test_text_is_no_bridge_key_and_an_empty_rule_tag_is_refused():
    """Both were accepted and did nothing: text is never bridged, and a request's tags are never empty."""
    message = error_of("""
        bridges:
          text: [local/extract]
    """)
    assert "bridges: text is never bridged" in message and "(router.yaml, line 2)" in message
    message = error_of("""
        routes:
          - name: a
            match: {tags: [batch, ""]}
            use: openai/gpt-4o
    """)
    assert "routes.0.match.tags: an empty tag never matches" in message


@pytest.mark.parametrize(("text", "key", "line"), [
    pytest.param("routes:\n  - name: a\n    use: gpt-4o\n", "routes.0.use", 3, id="use"),
    pytest.param("routes:\n  - name: a\n    use: openai/gpt-4o\n    fallback:\n      - local/extract\n      - local\n",
                 "routes.0.fallback.1", 6, id="fallback"),
    pytest.param("default: openai\n", "default", 1, id="default"),
    pytest.param("bridges:\n  image: [local/extract]\n  audio:\n    - openai/whisper-1\n    - whisper\n",
                 "bridges.audio.1", 5, id="bridge"),
    pytest.param("default: openai/gpt 4o\n", "default", 1, id="space"),
    pytest.param("default: openai/\n", "default", 1, id="no-model"),
    pytest.param("default: openai//gpt-4o\n", "default", 1, id="empty-segment"),
    pytest.param("default: openai/org/\n", "default", 1, id="trailing-slash"),
])
def test_a_bad_target_says_how_to_write_one(text, key, line):
    message = error_of(text)
    assert f"{key}: " in message
    assert "is not a target: write provider/model, e.g. openai/gpt-4o" in message
    assert f"(router.yaml, line {line})" in message


@pytest.mark.parametrize(("text", "key", "line"), [
    pytest.param("serverr: {}\n", "serverr", 1, id="top-level"),
    pytest.param("server:\n  adress: x\n", "server.adress", 2, id="server"),
    pytest.param("routes:\n  - name: a\n    use: openai/gpt-4o\n    match:\n      input: [text]\n",
                 "routes.0.match.input", 5, id="match"),
    pytest.param("routes:\n  - name: a\n    use: openai/gpt-4o\n    fallbacks: [local/extract]\n",
                 "routes.0.fallbacks", 4, id="rule"),
    pytest.param("routes:\n  - name: a\n    use: a/b\n    match: {audio_seconds: {minimum: 3}}\n",
                 "routes.0.match.audio_seconds.minimum", 4, id="range"),
])
def test_an_unknown_key_is_named_with_its_line(text, key, line):
    message = error_of(text)
    assert f"{key}: Extra inputs are not permitted (router.yaml, line {line})" in message


def test_duplicate_rule_names_are_rejected_naming_both_rules():
    message = error_of("""
        routes:
          - name: chat
            use: openai/gpt-4o
          - name: other
            use: openai/gpt-4o
          - name: chat
            use: local/extract
    """)
    assert "routes: rules 0 and 2 are both named 'chat': rule names must be unique" in message
    assert "(router.yaml, line 2)" in message


@pytest.mark.parametrize(("text", "key", "problem", "line"), [
    pytest.param("server:\n  inline_limit_bytes: lots\n", "server.inline_limit_bytes",
                 "Input should be a valid integer", 2, id="int"),
    pytest.param("server:\n  inline_limit_bytes: 0\n", "server.inline_limit_bytes",
                 "Input should be greater than 0", 2, id="positive"),
    pytest.param("server:\n  max_concurrent_uploads: 0\n", "server.max_concurrent_uploads",
                 "Input should be greater than 0", 2, id="uploads-positive"),
    pytest.param("overrides:\n  allow: maybe\n", "overrides.allow", "Input should be a valid boolean", 2,
                 id="bool"),
    pytest.param("routes: {name: a}\n", "routes", "Input should be a valid list", 1, id="list"),
    pytest.param("routes:\n  - name: a\n    use: a/b\n    match: {tags: nope}\n", "routes.0.match.tags",
                 "Input should be a valid list", 4, id="tags"),
    pytest.param("routes:\n  - name: a\n    use: a/b\n    match: {task: [chat, sing]}\n", "routes.0.match.task",
                 "'sing' is not a task: write chat and/or transcribe (or leave task out)", 4, id="task"),
    pytest.param("routes:\n  - name: a\n    use: a/b\n    match: {images: 3}\n", "routes.0.match.images",
                 "Input should be a valid dictionary", 4, id="range-not-mapping"),
    pytest.param("routes:\n  - name: a\n    use: a/b\n    match: {pdf_pages: {min: 9, max: 3}}\n",
                 "routes.0.match.pdf_pages", "min (9) cannot exceed max (3)", 4, id="range-backwards"),
    pytest.param("routes:\n  - name: a\n", "routes.0.use", "Field required", 2, id="missing-use"),
    pytest.param("providers:\n  openai: sk-123\n", "providers.openai", "Input should be a valid dictionary", 2,
                 id="provider-section"),
])
def test_wrong_types_name_the_key_the_problem_and_the_line(text, key, problem, line):
    message = error_of(text)
    assert f"{key}: {problem}" in message
    assert f"(router.yaml, line {line})" in message


@pytest.mark.parametrize("task", ["[auto]", "auto", "[chat, auto]"])
def test_a_rule_on_task_auto_is_refused_it_could_never_match(task):
    message = error_of(f"routes:\n  - name: a\n    use: a/b\n    match: {{task: {task}}}\n")
    assert ("routes.0.match.task: 'auto' never matches: a request's task is resolved to chat or transcribe "
            "before rules are matched; write chat and/or transcribe (or leave task out) (router.yaml, line 4)"
            ) in message


@pytest.mark.parametrize("bound", [".nan", ".inf", "-.inf", "'${RULE_MIN:-nan}'"])
def test_a_range_bound_must_be_a_finite_number(bound):
    # NaN compares false with everything: the rule would silently never match
    message = error_of(f"routes:\n  - name: a\n    use: a/b\n    match: {{audio_seconds: {{min: {bound}}}}}\n")
    assert "routes.0.match.audio_seconds.min: Input should be a finite number (router.yaml, line 4)" in message


@pytest.mark.parametrize("key", ["task", "inputs", "inputs_any", "inputs_none", "inputs_only", "tags"])
def test_an_empty_condition_list_is_refused_it_would_match_everything(key):
    message = error_of(f"routes:\n  - name: a\n    use: a/b\n    match: {{{key}: []}}\n")
    assert (f"routes.0.match.{key}: must list at least one value (leave the key out for no condition) "
            "(router.yaml, line 4)") in message


@pytest.mark.parametrize(("fallback", "problem"), [
    ("[local/extract, openai/gpt-4o]", "fallback.1 repeats openai/gpt-4o, already at use"),
    ("[local/extract, local/extract]", "fallback.1 repeats local/extract, already at fallback.0"),
])
def test_a_target_listed_twice_in_a_rule_is_refused_naming_both_places(fallback, problem):
    message = error_of(f"routes:\n  - name: a\n    use: openai/gpt-4o\n    fallback: {fallback}\n")
    assert f"routes.0.fallback: {problem}: list each target once (router.yaml, line 4)" in message


def test_every_problem_is_listed_one_per_line():
    message = error_of("""
        server:
          address: 5
          log_level: [x]
        default: nope
    """)
    problems = message.splitlines()[1:]
    assert len(problems) == 3
    assert problems[0].strip().startswith("server.address:")
    assert problems[1].strip().startswith("server.log_level:")
    assert "(router.yaml, line 3)" in problems[1]
    assert problems[2].strip().startswith("default:")


def test_inline_limit_above_the_message_limit_is_rejected():
    message = error_of("""
        server:
          inline_limit_bytes: 3000000
          max_message_bytes: 2097152
    """)
    assert "server: inline_limit_bytes cannot exceed max_message_bytes (router.yaml, line 2)" in message
    config = parse_config("server: {inline_limit_bytes: 2097152, max_message_bytes: 2097152}\n")
    assert config.server.inline_limit_bytes == 2097152


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_the_top_level_must_be_a_mapping(text):
    with pytest.raises(ConfigError) as info:
        parse_config(text, "router.yaml")
    assert info.value.message.startswith("router.yaml: the top level must be a mapping of settings, not ")


def test_invalid_yaml_names_the_file_and_line():
    with pytest.raises(ConfigError) as info:
        parse_config("routes:\n  - name: a\n    use: [unclosed\n", "router.yaml")
    message = info.value.message
    assert message.startswith("router.yaml: not valid YAML:")
    assert "line 4" in message


def test_a_file_that_cannot_be_read(tmp_path):
    with pytest.raises(ConfigError, match=r"cannot read config file .*missing\.yaml"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize(("text", "key", "line", "first"), [
    pytest.param("""
        routes:
          - {name: meetings, use: local/extract}
        default: local/extract
        routes:
          - {name: docs, use: local/extract}
    """, "routes", 4, 1, id="second-routes-section"),
    pytest.param("""
        routes:
          - name: docs
            use: openai/gpt-4o
            use: local/extract
    """, "use", 4, 3, id="rule-with-two-use"),
    pytest.param("providers: {openai: {timeout: 5, timeout: 60}}\n", "timeout", 1, 1, id="flow-mapping"),
])
def test_a_duplicate_key_is_refused_naming_the_key_and_both_lines(text, key, line, first):
    """YAML keeps the last of two equal keys: a second ``routes:`` would silently drop every earlier rule."""
    message = error_of(text)
    assert message == (f"router.yaml, line {line}: duplicate key {key!r} (first at line {first}): "
                       "YAML would silently keep only the last one; write each key once")


def test_a_merge_key_may_still_be_overridden():
    """``<<: *anchor`` then a key of the anchor: an override YAML defines, not a duplicate."""
    config = parse_config(yaml("""
        routes:
          - &first {name: a, use: local/extract}
          - {<<: *first, name: b, use: openai/gpt-4o}
    """))
    assert [(r.name, r.use) for r in config.routes] == [("a", "local/extract"), ("b", "openai/gpt-4o")]


def test_a_file_that_is_not_utf8_names_the_file_byte_and_line(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("routes:\n  - name: x   # café\n    use: local/extract\n".encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.message == f"{path}: not UTF-8 text: byte 27 (line 2) is b'\\xe9'; save the file as UTF-8"

    for args in (["config", "check", str(path)], ["serve", "--config", str(path), "--address", "127.0.0.1:0",
                                                   "--data-dir", str(tmp_path / "data")]):
        result = subprocess.run([str(MMROUTER), *args], capture_output=True, text=True, timeout=60,
                                env={"PATH": "/usr/bin:/bin", "COLUMNS": "300", "NO_COLOR": "1"})
        # config check: a problem in the file's content (1); serve: a start refused (2)
        assert result.returncode == (1 if args[0] == "config" else 2), result.stderr
        assert "Traceback" not in result.stderr
        assert result.stderr.strip() == info.value.message


def test_sighup_with_a_file_turned_non_utf8_is_refused_and_the_running_config_stays(start_daemon):
    daemon = start_daemon("providers:\n  fake: {api_key: k}\nroutes:\n  - {name: all, use: fake/echo}\n")
    daemon.config_path.write_bytes("routes:\n  - {name: caf\u00e9, use: fake/small}\n".encode("latin-1"))
    daemon.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while "reload refused" not in daemon.logs() and time.monotonic() < deadline:
        time.sleep(0.05)
    logs = daemon.logs()
    assert f"SIGHUP: reload refused, the running configuration stays: {daemon.config_path}: not UTF-8 text" in logs
    assert "Traceback" not in logs and "Exception in callback" not in logs
    answer = daemon.stub.Generate(pb.GenerateRequest(request=text_request("hi"))).answer
    assert (answer.route.rule, answer.route.model) == ("all", "echo")


# -- environment expansion -------------------------------------------------------------------


def test_env_references_are_expanded_from_the_environment(monkeypatch):
    monkeypatch.setenv("TEST_MMR_KEY", "sk-from-env")
    monkeypatch.setenv("TEST_MMR_LIMIT", "4096")
    monkeypatch.delenv("TEST_MMR_UNSET", raising=False)
    config = parse_config(yaml("""
        server:
          inline_limit_bytes: ${TEST_MMR_LIMIT}
        providers:
          openai: {api_key: "${TEST_MMR_KEY}", org: "org-${TEST_MMR_UNSET}", base: "${TEST_MMR_UNSET:-http://x}"}
        default: ${TEST_MMR_TARGET:-local/extract}
    """))
    assert config.providers["openai"] == {"api_key": "sk-from-env", "org": "org-", "base": "http://x"}
    assert config.server.inline_limit_bytes == 4096
    assert config.default == "local/extract"


def test_a_set_variable_wins_over_the_fallback_but_an_empty_one_does_not(monkeypatch):
    monkeypatch.setenv("TEST_MMR_A", "set")
    monkeypatch.setenv("TEST_MMR_EMPTY", "")
    assert expand_env("${TEST_MMR_A:-fallback}") == "set"
    assert expand_env("${TEST_MMR_EMPTY:-fallback}") == "fallback"
    assert expand_env({"k": ["${TEST_MMR_A}/${TEST_MMR_A}", 3, None]}) == {"k": ["set/set", 3, None]}
    assert expand_env("$TEST_MMR_A and ${not-a-name}") == "$TEST_MMR_A and ${not-a-name}"


def test_an_expanded_value_is_validated_too(monkeypatch):
    monkeypatch.setenv("TEST_MMR_TARGET", "no-slash")
    message = error_of("default: ${TEST_MMR_TARGET}\n")
    assert "default: 'no-slash' is not a target" in message


def test_an_expanded_value_is_not_parsed_as_yaml(monkeypatch):
    monkeypatch.setenv("TEST_MMR_KEY", "a: [b")
    config = parse_config('providers: {openai: {api_key: "${TEST_MMR_KEY}"}}\n')
    assert config.providers["openai"]["api_key"] == "a: [b"


def serve_exit(config_file: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``mmrouter serve`` on ``config_file``, expected to refuse to start."""
    return subprocess.run([str(MMROUTER), "serve", "--config", str(config_file), *extra], capture_output=True,
                          text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "COLUMNS": "200", "NO_COLOR": "1",
                                                      **(env or {})})


def test_an_unset_variable_in_the_server_section_is_refused_naming_the_key_and_variable(monkeypatch):
    """An unset ${MMROUTER_TOKEN} served without authentication; an unset data_dir wrote to the working directory."""
    monkeypatch.delenv("TEST_MMR_TOKEN", raising=False)
    monkeypatch.setenv("TEST_MMR_EMPTY", "")
    message = error_of("""
        server:
          auth_token: "${TEST_MMR_TOKEN}"
          data_dir: "${TEST_MMR_EMPTY}"
          tls: {cert_file: "${TEST_MMR_TOKEN}/server.pem", key_file: k.pem}
    """)
    assert ("server.auth_token: ${TEST_MMR_TOKEN} is not set (or empty) (router.yaml, line 2): set TEST_MMR_TOKEN, "
            "or write ${TEST_MMR_TOKEN:-} to allow an empty value") in message
    assert "server.data_dir: ${TEST_MMR_EMPTY} is not set (or empty) (router.yaml, line 3)" in message
    assert "server.tls.cert_file: ${TEST_MMR_TOKEN} is not set (or empty) (router.yaml, line 4)" in message
    allowed = parse_config('server: {auth_token: "${TEST_MMR_TOKEN:-}"}\nproviders: {openai: {api_key: "${TEST_MMR_TOKEN}"}}\n')
    assert allowed.server.auth_token == "" and allowed.providers["openai"]["api_key"] == ""  # providers: unconfigured
    monkeypatch.setenv("TEST_MMR_TOKEN", "a-token-1234")
    assert parse_config('server: {auth_token: "${TEST_MMR_TOKEN}"}\n').server.auth_token == "a-token-1234"


def test_serve_and_config_check_refuse_an_auth_token_whose_variable_is_unset(tmp_path):
    file = tmp_path / "router.yaml"
    file.write_text('server:\n  address: 127.0.0.1:0\n  auth_token: "${MMROUTER_TOKEN}"\n'
                    f'  data_dir: "{tmp_path / "data"}"\n')
    served = serve_exit(file)
    assert served.returncode == 2, served.stdout + served.stderr
    output = " ".join(served.stderr.split())
    assert "server.auth_token: ${MMROUTER_TOKEN} is not set (or empty)" in output and "line 3" in output
    assert "listening" not in output
    checked = check(file)
    assert checked.returncode == 1 and "OK" not in checked.stdout
    assert "server.auth_token: ${MMROUTER_TOKEN} is not set" in " ".join(checked.stderr.split())


@pytest.mark.parametrize("address, problem", [
    ("127.0.0.1:500051", "port 500051 is over 65535 in '127.0.0.1:500051'"),
    ("127.0.0.1", "'127.0.0.1' is not host:port"),
    ("::1:50051", "'::1:50051' is not host:port: write e.g. 127.0.0.1:50051, [::1]:50051"),
    ("[::g]:50051", "[::g] is not an IPv6 address"),
    ("unix:", "'unix:' names no socket"),
])
def test_a_bad_server_address_is_refused_naming_the_key(address, problem):
    """gRPC took a port over 65535 modulo 65536 (500051 listened on 41299) and no port as 443."""
    message = error_of(f"server:\n  address: '{address}'\n")
    assert f"server.address: {problem}" in message and "(router.yaml, line 2)" in message


@pytest.mark.parametrize("address", ["0.0.0.0:0", "localhost:65535", "[::1]:50051", "[fe80::1%eth0]:1",
                                     "unix:/run/mmrouter.sock", "unix-abstract:mmrouter"])
def test_good_server_addresses_are_taken(address):
    assert parse_config(f"server: {{address: '{address}'}}\n").server.address == address


def test_serve_and_config_check_refuse_a_port_over_65535(tmp_path):
    file = tmp_path / "router.yaml"
    file.write_text(f"server:\n  data_dir: '{tmp_path / 'data'}'\n  address: 127.0.0.1:500051\n")
    checked = check(file)
    assert checked.returncode == 1 and "OK" not in checked.stdout
    assert "server.address: port 500051 is over 65535" in " ".join(checked.stderr.split())
    good = tmp_path / "good.yaml"
    good.write_text(f"server: {{data_dir: '{tmp_path / 'data'}'}}\n")
    from_file, from_option = serve_exit(file), serve_exit(good, "--address", "127.0.0.1:99999")
    for served in (from_file, from_option):
        output = " ".join(served.stderr.split())
        assert served.returncode == 2 and "over 65535" in output and "listening" not in output, output
    assert "line 3" in from_file.stderr and "server.address (--address): port 99999" in from_option.stderr


# -- the embedded default and extending it ---------------------------------------------------


def test_load_config_none_is_the_embedded_default_and_it_is_valid(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    config = load_config(None)
    assert config == embedded_default()
    assert isinstance(config, Config)
    assert [r.name for r in config.routes] == [
        "diarization", "video-transcription", "video", "long-audio", "documents", "transcription", "cross-modal",
        "general"]
    assert config.default == "local/extract"
    assert set(config.providers) == {"openai", "anthropic", "gemini", "assemblyai", "local"}
    assert config.providers["openai"] == {"api_key": ""}
    assert config.bridges[Modality.AUDIO] == ["openai/whisper-1", "assemblyai/best", "local/extract",
                                              "openai/gpt-4o-transcribe-diarize"]
    # every rule except diarization falls back to the offline provider last
    for rule in config.routes[1:]:
        assert [rule.use, *rule.fallback][-1] == "local/extract"


def test_the_embedded_default_reads_keys_from_the_environment(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    assert load_config(None).providers["anthropic"] == {"api_key": "sk-ant-test"}


def test_load_config_reads_a_file(tmp_path):
    path = tmp_path / "router.yaml"
    path.write_text(GOOD)
    assert load_config(path) == parse_config(GOOD)
    assert load_config(str(path)).default == "local/extract"


def test_a_file_error_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("default: nope\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert f"({path}, line 1)" in info.value.message


def test_extend_default_routes_appends_the_default_rules_after_the_files():
    config = parse_config(yaml("""
        extend_default_routes: true
        routes:
          - name: mine
            match: {tags: [cheap]}
            use: openai/gpt-4o-mini
          - name: general
            use: anthropic/claude-haiku-4-5
        bridges:
          audio: [openai/gpt-4o-transcribe]
    """))
    default = embedded_default()
    names = [r.name for r in config.routes]
    assert names == ["mine", "general"] + [r.name for r in default.routes if r.name != "general"]
    assert config.routes[1].use == "anthropic/claude-haiku-4-5"  # the file's rule wins a name clash
    assert config.routes[2:] == [r for r in default.routes if r.name != "general"]
    assert config.default == default.default
    assert config.bridges[Modality.AUDIO] == ["openai/gpt-4o-transcribe"]
    assert config.bridges[Modality.VIDEO] == default.bridges[Modality.VIDEO]


def test_extend_default_routes_keeps_the_files_default():
    config = parse_config("extend_default_routes: true\ndefault: openai/gpt-4o\n")
    assert config.default == "openai/gpt-4o"
    assert [r.name for r in config.routes] == [r.name for r in embedded_default().routes]


def test_without_extend_default_routes_only_the_files_rules_apply():
    config = parse_config("routes:\n  - name: mine\n    use: openai/gpt-4o\n")
    assert [r.name for r in config.routes] == ["mine"]
    assert config.default is None


def test_range_describes_itself():
    assert Range(min=1, max=2.5).describe() == "1..2.5"
    assert Range(min=3).describe() == ">= 3"
    assert Range(max=3).describe() == "<= 3"
    assert Range().describe() == "any value"
    assert Range().holds(-1e9)
    assert Range(min=1, max=1).holds(1)


# -- mmrouter config check -------------------------------------------------------------------


def check(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(MMROUTER), "config", "check", str(path)], capture_output=True, text=True,
                          timeout=60, env={"PATH": "/usr/bin:/bin", "COLUMNS": "200", "NO_COLOR": "1"})


def test_config_check_cli(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml("""
        routes:
          - name: a
            use: openai/gpt-4o
            match:
              inputs: [text, smell]
    """))
    ok = check(good)
    assert ok.returncode == 0, ok.stderr
    assert "OK" in ok.stdout
    assert "2 rule(s), default local/extract" in ok.stdout

    failed = check(bad)
    assert failed.returncode == 1
    output = " ".join((failed.stdout + failed.stderr).split())
    assert "routes.0.match.inputs.1" in output
    assert "line 5" in output
    assert "OK" not in failed.stdout


def test_config_check_refuses_a_target_repeated_in_a_rule(tmp_path):
    twice = tmp_path / "twice.yaml"
    twice.write_text(yaml("""
        routes:
          - name: pictures
            match: {inputs_any: [image]}
            use: openai/gpt-4o
            fallback: [anthropic/claude-sonnet-4-6, openai/gpt-4o]
    """))
    failed = check(twice)
    output = " ".join((failed.stdout + failed.stderr).split())
    assert failed.returncode == 1 and "OK" not in failed.stdout, output
    assert "routes.0.fallback: fallback.1 repeats openai/gpt-4o, already at use" in output and "line 5" in output


def test_config_check_asks_the_plugins_about_their_sections(tmp_path):
    """Provider settings are the plugins' to judge: a bad value or price fails the check with its key;
    a section no installed plugin reads is pointed out."""
    bad = tmp_path / "providers.yaml"
    bad.write_text(yaml("""
        providers:
          openai: {api_key: sk-x, timeout: soon}
          anthropic:
            prices: {claude-sonnet-4-6: {input: 3}}
          opneai: {api_key: sk-y}
        default: local/extract
    """))
    failed = check(bad)
    output = " ".join((failed.stdout + failed.stderr).split())
    assert failed.returncode == 1 and "OK" not in failed.stdout, output
    assert "providers.openai.timeout" in output
    assert "providers.anthropic.prices.claude-sonnet-4-6.input: unknown price" in output
    assert "providers.opneai: no installed plugin" in output
    assert "sk-x" not in output and "Traceback" not in output


def test_config_check_names_a_target_whose_model_the_provider_does_not_have(tmp_path):
    typo = tmp_path / "typo.yaml"
    typo.write_text(yaml("""
        routes:
          - name: pictures
            match: {inputs_any: [image]}
            use: openai/gpt4o
            fallback: [anthropic/claude-sonnet-4-6]
        default: local/extract
        bridges:
          audio: [ghost/whisper]
    """))
    failed = check(typo)
    output = " ".join((failed.stdout + failed.stderr).split())
    assert failed.returncode == 1 and "OK" not in failed.stdout, output
    assert "routes.0.use 'pictures': provider 'openai' has no model 'gpt4o' (it has: gpt-4o," in output
    assert f"({typo}, line 4); did you mean 'gpt-4o'?" in output
    assert "routes.0.fallback.0" not in output and "default" not in output
    assert "bridges.audio.0: no provider 'ghost' here" in output

    fixed = tmp_path / "fixed.yaml"
    fixed.write_text(typo.read_text().replace("gpt4o", "gpt-4o"))
    ok = check(fixed)
    assert ok.returncode == 0 and "OK" in ok.stdout, ok.stderr  # an unknown provider is only a warning
    assert "no provider 'ghost' here" in " ".join(ok.stderr.split())


def test_show_default_prints_a_file_that_config_check_accepts(tmp_path):
    """``show-default > router.yaml`` is the documented start of one's own file: it must stay valid YAML
    when piped (no wrapping of long comment lines), with every target known to its provider."""
    shown = subprocess.run([str(MMROUTER), "config", "show-default"], capture_output=True, text=True, timeout=60,
                           env={"PATH": "/usr/bin:/bin", "COLUMNS": "40"})
    assert shown.returncode == 0, shown.stderr
    copy = tmp_path / "router.yaml"
    copy.write_text(shown.stdout)
    ok = check(copy)
    assert ok.returncode == 0 and "OK" in ok.stdout, ok.stdout + ok.stderr


def test_config_check_takes_configured_models_and_refuses_what_the_plugin_cannot_send(tmp_path):
    """A model newer than a plugin's catalogue is added under ``models:`` and may be routed to; one
    without a price, or reading what its plugin cannot send, fails the check with its key."""
    newer = tmp_path / "newer.yaml"
    newer.write_text(yaml("""
        providers:
          anthropic:
            models: [{name: claude-sonnet-5-5, price: {input_per_mtok: 3, output_per_mtok: 15}}]
          gemini:
            models: [{name: gemini-3.5-flash, price: {input_per_mtok: 0.5, output_per_mtok: 3}}]
        routes:
          - name: documents
            match: {inputs_any: [document]}
            use: anthropic/claude-sonnet-5-5
          - name: video
            match: {inputs_any: [video]}
            use: gemini/gemini-3.5-flash
        default: local/extract
    """))
    ok = check(newer)
    assert ok.returncode == 0 and "OK" in ok.stdout, ok.stdout + ok.stderr

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml("""
        providers:
          anthropic:
            models: [{name: claude-sonnet-5-5, inputs: [text, audio], price: {input_per_mtok: 3}}]
          gemini:
            models: [{name: gemini-3.5-flash}, {name: "gemini-9\\e[31m", price: {input_per_mtok: 1}}]
        default: local/extract
    """))
    failed = check(bad)
    output = " ".join((failed.stdout + failed.stderr).split())
    assert failed.returncode == 1 and "OK" not in failed.stdout, output
    assert "providers.anthropic.models.0.inputs: this plugin cannot send audio" in output
    assert "providers.gemini.models.0.price: Field required" in output
    # a control character (an ESC that would drive the terminal of `providers` and `stats`) is refused
    assert "providers.gemini.models.1.name: String should match pattern" in output
    assert "\x1b" not in output


def test_config_check_warns_of_a_bridge_target_that_can_never_bridge(tmp_path):
    """A chat model that cannot hear listed as an audio bridge is passed over by routing: the check says so."""
    deaf = tmp_path / "deaf.yaml"
    deaf.write_text(yaml("""
        bridges:
          audio: [anthropic/claude-sonnet-4-6, local/extract]
        default: local/extract
    """))
    result = check(deaf)
    output = " ".join((result.stdout + result.stderr).split())
    assert result.returncode == 0 and "OK" in result.stdout, output  # a warning, not an error
    assert "bridges.audio.0: anthropic/claude-sonnet-4-6 does not take audio: it never bridges audio" in output
    assert "bridges.audio.1" not in output


def test_server_limits_and_keepalive_have_defaults_and_bounds():
    server = parse_config("").server
    assert (server.max_concurrent_calls, server.keepalive_seconds) == (1024, 30.0)  # >= bench/'s 1,000 streams
    assert parse_config("server: {auth_token: ' tok-1 '}").server.auth_token == "tok-1"
    assert "server.keepalive_seconds: Input should be greater than or equal to 1" in error_of(
        "server: {keepalive_seconds: 0.5}")
    assert "server.max_concurrent_calls: Input should be greater than 0" in error_of("server: {max_concurrent_calls: 0}")


def test_the_calls_one_connection_may_have_under_way_have_a_default_and_a_bound():
    assert parse_config("").server.max_concurrent_streams == 1024  # one channel (one connection) may use every call slot
    assert parse_config("server: {max_concurrent_streams: 1000}").server.max_concurrent_streams == 1000
    assert "server.max_concurrent_streams: Input should be greater than 0" in error_of(
        "server: {max_concurrent_streams: 0}")
    # gRPC takes an int32: a larger value passed config check and crashed serve
    assert "server.max_concurrent_streams: Input should be less than or equal to 2147483647" in error_of(
        "server: {max_concurrent_streams: 3000000000}")


# -- rules that can never be used, names the router keeps, models a ready provider lacks ---------------


@pytest.mark.parametrize("name", ["default", "override", "plugin"])
def test_a_rule_may_not_take_a_name_the_router_gives_its_own_decisions(name, tmp_path):
    """A rule named ``default`` merged with the router's default in ``mmrouter stats`` and showed two
    ``default`` rows in explain: such names are refused, by the daemon too."""
    text = f"routes:\n  - name: mine\n    use: local/extract\n  - name: {name}\n    match: {{tags: [x]}}\n" \
           "    use: local/extract\n"
    message = error_of(text)
    assert (f"routes: rule 1 is named {name!r}, a name the router uses for its own decisions (default, override, "
            "plugin): give the rule another name (router.yaml, line 2)") in message
    file = tmp_path / "router.yaml"
    file.write_text(text + f"server: {{data_dir: '{tmp_path / 'data'}', address: '127.0.0.1:0'}}\n")
    served = serve_exit(file)
    assert served.returncode == 2 and f"rule 1 is named {name!r}" in " ".join(served.stderr.split()), served.stderr
    assert "listening" not in served.stderr


def test_config_check_warns_of_rules_that_can_never_serve_a_request(tmp_path):
    """Each rule below passed the check with OK yet never served anything; each is now named with the
    reason (a warning: exit 0), while the rules that can serve get no word."""
    never = tmp_path / "never.yaml"
    never.write_text(yaml("""
        providers: {local: {}}
        routes:
          - name: transcribe-claude
            match: {inputs_any: [audio], task: [transcribe]}
            use: anthropic/claude-sonnet-4-6
          - name: chat-whisper
            match: {task: [chat], tags: [voice]}
            use: openai/whisper-1
          - name: diarize-whisper
            match: {inputs_any: [audio], task: [transcribe], diarization: true}
            use: openai/whisper-1
          - name: deaf-no-bridging
            match: {inputs: [audio]}
            use: anthropic/claude-sonnet-4-6
            bridging: false
          - name: contradictory
            match: {inputs: [audio], inputs_none: [audio]}
            use: local/extract
          - name: only-excludes
            match: {inputs: [image], inputs_only: [text, audio]}
            use: local/extract
          - name: transcription
            match: {inputs_any: [audio], task: [transcribe]}
            use: openai/whisper-1
            fallback: [anthropic/claude-sonnet-4-6]
          - name: catch-all
            use: local/extract
          - name: pictures
            match: {inputs_any: [image]}
            use: openai/gpt-4o
          - name: meetings
            match: {inputs_any: [audio], diarization: true}
            use: assemblyai/best
    """))
    result = check(never)
    output = " ".join(result.stderr.split())
    assert result.returncode == 0 and "OK — 10 rule(s)" in result.stdout, output
    assert ("routes.0 'transcribe-claude': never used, no target can serve what it matches: "
            "anthropic/claude-sonnet-4-6 cannot transcribe (it produces text)") in output
    assert ("routes.1 'chat-whisper': never used, no target can serve what it matches: openai/whisper-1 cannot "
            "chat (it produces transcript)") in output
    assert "routes.2 'diarize-whisper': never used, no target can serve what it matches: openai/whisper-1 " \
           "cannot diarize" in output
    assert "routes.3 'deaf-no-bridging': never used, no target can serve what it matches: " \
           "anthropic/claude-sonnet-4-6 does not take audio and bridging is off" in output
    assert "routes.4 'contradictory': inputs and inputs_none both name audio: it never matches a request" in output
    assert "routes.5 'only-excludes': inputs names image, which inputs_only leaves out: it never matches" in output
    assert ("routes.8 'pictures': never serves a request: routes.7 'catch-all' before it has no conditions and its "
            "target local/extract is always usable, so it takes every request but diarized transcriptions") in output
    for usable in ("routes.6 ", "routes.7 'catch-all':", "routes.9 "):  # a diarizing one still gets what local cannot
        assert usable not in output


def test_a_rule_taking_formats_the_catch_all_cannot_read_is_not_called_unreachable(tmp_path):
    """local/extract cannot read HEIC photos, which routing then sends on to a later rule on Gemini:
    that rule serves requests, so config check must not invite the operator to delete it."""
    path = tmp_path / "heic.yaml"
    path.write_text(yaml("""
        providers:
          gemini: {api_key: "gm-key-123456789"}
          local: {}
        routes:
          - name: offline
            use: local/extract
          - name: photos
            match: {inputs_any: [image]}
            use: gemini/gemini-2.5-flash
        default: local/extract
    """))
    result = check(path)
    assert result.returncode == 0 and "never serves" not in result.stderr, result.stderr


def test_config_check_warns_of_targets_whose_provider_is_disabled(tmp_path):
    """``plugins.disabled: [openai]`` with openai targets: the check was silent and the rules were skipped
    at run time with "disabled in config"."""
    disabled = tmp_path / "disabled.yaml"
    disabled.write_text(yaml("""
        plugins: {disabled: [openai]}
        routes:
          - name: r
            use: openai/gpt-4o
          - name: r2
            use: anthropic/claude-sonnet-4-6
            fallback: [openai/gpt-4o]
        default: openai/gpt-4o
        bridges:
          audio: [openai/whisper-1, local/extract]
    """))
    result = check(disabled)
    output = " ".join(result.stderr.split())
    assert result.returncode == 0 and "OK" in result.stdout, output
    for key, target, line in [("routes.0.use 'r'", "openai/gpt-4o", 4), ("routes.1.fallback.0 'r2'", "openai/gpt-4o", 7),
                              ("default", "openai/gpt-4o", 8), ("bridges.audio.0", "openai/whisper-1", 10)]:
        assert (f"{key}: {target}: never used, provider 'openai' is off: disabled in config "
                f"(plugins.disabled) ({disabled}, line {line})") in output
    assert "routes.0 'r': never used, no target can serve what it matches: openai/gpt-4o: its provider is " \
           f"disabled ({disabled}, line 3)" in output
    assert "routes.1 'r2'" not in output and "bridges.audio.1" not in output


def test_extend_default_routes_names_the_embedded_rules_a_rule_of_yours_replaces(tmp_path, start_daemon):
    """A narrow ``documents`` rule of one's own silently removed the embedded ``documents`` rule (plain
    PDFs then went to ``general``): config check and the daemon's start-up log now say so."""
    text = yaml("""
        extend_default_routes: true
        routes:
          - name: documents
            match: {inputs_any: [document], tags: [legal]}
            use: anthropic/claude-opus-4-5
          - name: general
            use: openai/gpt-4o
            fallback: [anthropic/claude-sonnet-4-6, gemini/gemini-2.5-pro, local/extract]
    """)
    file = tmp_path / "extend.yaml"
    file.write_text(text)
    result = check(file)
    output = " ".join(result.stderr.split())
    assert result.returncode == 0 and "OK" in result.stdout, output
    assert ("routes.0 'documents' replaces the embedded rule of that name (extend_default_routes): the embedded "
            "one is not used; rename yours to keep both") in output
    assert "'general' replaces" not in output  # the same rule as the embedded one: nothing is lost
    daemon = start_daemon(text, plugins=())
    assert ("routes.0 'documents' replaces the embedded rule of that name (extend_default_routes): the embedded "
            "one is not used") in daemon.logs()
    assert "'general' replaces" not in daemon.logs()


MISSING_MODEL = """
providers: {local: {}}
routes:
  - name: pics
    match: {inputs_any: [image]}
    use: local/extrat
  - name: chat
    use: openai/gpt4o
default: local/extract
"""


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_serve_refuses_a_target_whose_ready_provider_has_no_such_model_as_config_check_does(tmp_path, log_format):
    """``use: local/extrat`` failed config check but serve started without a word and skipped the rule on
    every request. The provider without a key (openai here) cannot be trusted to know its models: its
    target stays a warning."""
    file = tmp_path / "router.yaml"
    file.write_text(MISSING_MODEL + f"server: {{log_format: {log_format}, data_dir: '{tmp_path / 'data'}', "
                                    "address: '127.0.0.1:0'}\n")
    served = serve_exit(file, env={"GRPC_VERBOSITY": "NONE"})
    problem = (f"routes.0.use 'pics': provider 'local' has no model 'extrat' (it has: extract) ({file}, line 6); "
               "did you mean 'extract'?")
    assert served.returncode == 2, served.stderr
    assert problem in served.stderr and "listening" not in served.stderr
    # warnings about a file are logged only when it is served: this one is refused (config check lists both)
    assert "routes.1.use 'chat': provider 'openai' has no model 'gpt4o'" not in served.stderr
    if log_format == "json":
        import json

        records = [json.loads(line) for line in served.stderr.splitlines()]
        assert records[-1]["level"] == "CRITICAL" and problem in records[-1]["message"]
    checked = check(file)
    assert checked.returncode == 1 and problem in " ".join(checked.stderr.split())


def test_serve_starts_with_a_warning_when_the_provider_without_a_key_has_no_such_model(start_daemon):
    daemon = start_daemon(MISSING_MODEL.replace("local/extrat", "local/extract"), plugins=())
    assert ("WARNING router.core: routes.1.use 'chat': provider 'openai' has no model 'gpt4o' (it has: gpt-4o, "
            in daemon.logs())
    assert f"({daemon.config_path}, line 8); did you mean 'gpt-4o'?: routing skips it" in daemon.logs()
    assert "only a warning" in daemon.logs() and daemon.proc.poll() is None


def test_config_check_masks_the_keys_a_broken_plugin_quotes(tmp_path):
    """A plugin's error may quote its settings: config check (whose output often lands in a CI log)
    masks the configured keys in what it prints, like the daemon's log."""
    from conftest import make_dist_info

    site = tmp_path / "site"
    make_dist_info(site, "mmrouter-leaky", "leaky", "mmrouter_leaky")
    (site / "mmrouter_leaky.py").write_text(
        "import router\n\n\n"
        "@router.hookimpl\n"
        "def register_providers(register, settings):\n"
        "    raise RuntimeError(f\"cannot log in with {settings['api_key']}\")\n")
    path = tmp_path / "leaky.yaml"
    path.write_text("providers:\n  leaky: {api_key: sk-leaky-0123456789}\nroutes:\n  - {name: all, use: local/extract}\n")
    result = subprocess.run([str(MMROUTER), "config", "check", str(path)], capture_output=True, text=True, timeout=60,
                            env={"PATH": "/usr/bin:/bin", "COLUMNS": "200", "NO_COLOR": "1", "PYTHONPATH": str(site)})
    assert result.returncode == 1
    assert "providers.leaky: register_providers failed: RuntimeError: cannot log in with ***" in result.stderr
    assert "sk-leaky" not in result.stdout + result.stderr


OLLAMA_AS_OPENAI = """
providers:
  openai:
    base_url: http://127.0.0.1:9/v1
    builtin_models: false
    models: [{name: llama3.2-vision, inputs: [text, image], context_tokens: 131072}]
routes:
  - name: private
    match: {tags: [private]}
    use: openai/llama3.2-vision
extend_default_routes: true
"""


def test_embedded_rules_naming_models_a_provider_lacks_are_warned_of_not_refused(start_daemon, tmp_path):
    """An Ollama served as ``openai`` (builtin_models: false) with the embedded rules appended: their
    openai/gpt-4o targets are skipped by routing, which the file cannot change, so config check warns
    (naming the embedded rule) and serve starts, as before; the file's own typos are still refused."""
    path = tmp_path / "ollama.yaml"
    path.write_text(OLLAMA_AS_OPENAI)
    result = check(path)
    assert result.returncode == 0, result.stderr
    assert ("embedded rule 'cross-modal' (routes.7.use): provider 'openai' has no model 'gpt-4o' "
            "(it has: llama3.2-vision): routing skips it") in result.stderr
    daemon = start_daemon(OLLAMA_AS_OPENAI, plugins=())
    route = daemon.stub.ExplainRoute(pb.ExplainRouteRequest(request=text_request("hi")), timeout=30).route
    assert (route.rule, route.provider) == ("general", "local")
    assert "embedded rule 'general' (routes.8.use): provider 'openai' has no model 'gpt-4o'" in daemon.logs()
    typo = tmp_path / "typo.yaml"
    typo.write_text(OLLAMA_AS_OPENAI.replace("use: openai/llama3.2-vision", "use: openai/llama3.2-visio"))
    assert check(typo).returncode == 1


@pytest.mark.parametrize("text", ["routes: &r [*r]\n", "a: &a [*a]\n", "providers: {x: &p {k: *p}}\n",
                                  "routes: " + "[" * 5000 + "]" * 5000 + "\n"])
def test_a_recursive_alias_or_deep_nesting_is_a_config_error(text: str) -> None:
    """An anchor used inside itself made every later step recurse without end: config check, serve and
    a reload (SIGHUP, whose handler takes ConfigError only) failed with a RecursionError traceback."""
    with pytest.raises(ConfigError, match=r"t\.yaml: (a YAML alias refers to a value that contains it|values nested)"):
        parse_config(text, "t.yaml")


def test_an_alias_used_twice_side_by_side_is_no_cycle() -> None:
    config = parse_config("providers:\n  a: &key {api_key: k}\n  b: *key\n", "t.yaml")
    assert config.providers["a"] == config.providers["b"]


@pytest.mark.parametrize("text", [
    "providers:\n  openai: {api_key: sk-proj-SECRETSECRETSECRET123, timeout: 5\n  anthropic: {api_key: sk-ant-ANOTHERSECRET}\n",
    'server:\n  auth_token: "tok-SECRETTOKEN123"\t\n',
])
def test_a_yaml_syntax_error_says_where_without_quoting_the_file(text: str) -> None:
    """PyYAML's message quotes the lines around the fault: config check, serve and a reload's log line
    printed API keys and the auth token."""
    with pytest.raises(ConfigError) as info:
        parse_config(text, "router.yaml")
    message = info.value.message
    assert message.startswith("router.yaml: not valid YAML:") and "line " in message
    assert "SECRET" not in message


def test_aliases_of_aliases_that_write_out_to_too_many_values_are_refused() -> None:
    """A 'billion laughs' file: 500 bytes of nested anchors that write out to 10**8 values held config
    check and serve for minutes and a GB."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    with pytest.raises(ConfigError, match="over 100000 values once its YAML aliases are written out"):
        parse_config("\n".join(lines) + "\n", "t.yaml")


# -- server settings gRPC must take, files that route nothing, typos under server and rules ---------


@pytest.mark.parametrize("setting, problem", [
    ("max_message_bytes: 1048576", "server.max_message_bytes: must be at least 2097152 (2 MiB): clients upload "
                                   "media in 1 MiB chunks (mmrouter ask does), and a chunk with its framing must "
                                   "fit in one message"),
    ("max_message_bytes: 2147483648", "server.max_message_bytes: must be at most 2147483647 (2**31-1, the largest "
                                      "gRPC takes)"),
    ("keepalive_seconds: 3000000", "server.keepalive_seconds: must be at most 2147483.647 (gRPC takes it in "
                                   "milliseconds, at most 2**31-1, about 24 days)"),
], ids=["message-below-an-upload-chunk", "message-over-a-c-int", "keepalive-ms-over-a-c-int"])
def test_server_settings_grpc_cannot_take_are_refused_by_config_check_and_serve(tmp_path, setting, problem):
    """1 MiB messages failed every upload over about 1 MiB (RESOURCE_EXHAUSTED 1048580 vs. 1048576); a
    2 GiB message limit or 3,000,000 s of keepalive passed config check and crashed serve with an
    OverflowError traceback (gRPC takes a C int, keepalive in milliseconds)."""
    file = tmp_path / "router.yaml"
    file.write_text(f"server:\n  {setting}\n  address: 127.0.0.1:0\n  data_dir: '{tmp_path / 'data'}'\n"
                    "  inline_limit_bytes: 1000\ndefault: local/extract\n")
    checked = check(file)
    assert checked.returncode == 1 and "OK" not in checked.stdout, checked.stdout + checked.stderr
    assert f"{problem} ({file}, line 2)" in " ".join(checked.stderr.split())
    served = serve_exit(file)
    output = " ".join(served.stderr.split())
    assert served.returncode == 2 and "Traceback" not in output and "listening" not in output, output
    assert problem in output


def test_config_check_warns_that_a_file_without_routes_or_default_refuses_every_request(tmp_path):
    """An empty file, or one with only a server section, passed without a word; the daemon then refused
    every request."""
    empty, server_only, routed = tmp_path / "empty.yaml", tmp_path / "server.yaml", tmp_path / "routed.yaml"
    empty.write_text("")
    server_only.write_text("server:\n  log_level: info\n")
    routed.write_text("routes:\n  - {name: all, use: local/extract}\n")
    for file in (empty, server_only):
        result = check(file)
        assert result.returncode == 0 and "OK — 0 rule(s), default (none)" in result.stdout, result.stderr
        assert result.stderr.splitlines() == ["no routes and no default: every request will be refused (add a "
                                              "`default:` target or rules)"], result.stderr
    assert "no routes" not in check(routed).stderr


@pytest.mark.parametrize("text, key, meant", [
    ("server:\n  adress: 127.0.0.1:1\n", "server.adress", "address"),
    ("server:\n  tls: {cert_file: a.pem, key_file: b.pem, client_ca: c.pem}\n", "server.tls.client_ca", "client_ca_file"),
    ("routes:\n  - {name: a, use: local/extract, fallbak: [openai/gpt-4o]}\n", "routes.0.fallbak", "fallback"),
    ("routes:\n  - {name: a, use: local/extract, match: {input: [text]}}\n", "routes.0.match.input", "inputs"),
    ("rotues: []\n", "rotues", "routes"),
])
def test_config_check_suggests_the_key_meant_by_a_typo_under_server_and_rules(tmp_path, text, key, meant):
    file = tmp_path / "typo.yaml"
    file.write_text(text)
    result = check(file)
    assert result.returncode == 1, result.stdout
    line = next(line for line in result.stderr.splitlines() if f"{key}: " in line)
    assert line.strip().startswith(f"{key}: Extra inputs are not permitted ({file}, line "), line
    assert line.endswith(f"; did you mean '{meant}'?"), line
    far = tmp_path / "far.yaml"
    far.write_text("server:\n  zzz: 1\n")
    assert "did you mean" not in check(far).stderr


# -- provider sections the plugins refuse, plugins broken for reasons outside the file ---------------


TYPO_IN_SECTION = "providers:\n  local: {worker: 2}\ndefault: local/extract\n"


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_serve_refuses_a_provider_section_its_plugin_refuses_as_config_check_does(tmp_path, log_format):
    """``providers.local.worker`` (for ``workers``) failed config check, but serve started and listed local
    broken, so every request to it failed. Config check says it once (it was also a log line)."""
    file = tmp_path / "router.yaml"
    file.write_text(TYPO_IN_SECTION + f"server: {{log_format: {log_format}, data_dir: '{tmp_path / 'data'}', "
                                      "address: '127.0.0.1:0'}\n")
    problem = "providers.local.worker: Extra inputs are not permitted"
    checked = check(file)
    assert checked.returncode == 1 and "OK" not in checked.stdout, checked.stderr
    assert checked.stderr.count("providers.local.worker") == 1 and problem in checked.stderr, checked.stderr
    assert "is broken" not in checked.stderr
    served = serve_exit(file, env={"GRPC_VERBOSITY": "NONE"})
    assert served.returncode == 2, served.stderr
    assert problem in served.stderr and "listening" not in served.stderr and "Traceback" not in served.stderr
    # with its file, line and the setting meant, as config check says it
    assert f"{problem} ({file}, line 2); did you mean 'workers'?" in served.stderr, served.stderr
    if log_format == "json":
        import json

        records = [json.loads(line) for line in served.stderr.splitlines()]
        assert records[-1]["level"] == "CRITICAL" and problem in records[-1]["message"], served.stderr


def check_with_plugins(path: Path, *sites: Path) -> subprocess.CompletedProcess:
    """``config check`` with test-only plugins installed (their site directories on PYTHONPATH)."""
    testkit = Path(__file__).parent / "testkit"
    return subprocess.run([str(MMROUTER), "config", "check", str(path)], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "COLUMNS": "300", "NO_COLOR": "1",
                               "PYTHONPATH": ":".join(map(str, [*sites, testkit]))})


def test_a_plugin_broken_for_reasons_outside_the_file_is_a_warning_unless_the_file_uses_it(tmp_path, plugin_sites):
    """A third-party plugin that fails to import, or whose register hook raises, failed the check of a
    valid file, under a made-up key ``providers.<name>``, and twice (a log line too). It is a warning,
    once; an error where the file uses that provider (its section, or a target)."""
    sites = (plugin_sites["broken_import"], plugin_sites["broken_register"])
    valid = tmp_path / "valid.yaml"
    valid.write_text("routes:\n  - {name: all, use: local/extract}\noverrides: {allow: true}\n")
    result = check_with_plugins(valid, *sites)
    assert result.returncode == 0 and "OK — 1 rule(s)" in result.stdout, result.stderr
    assert result.stderr.splitlines() == [
        "plugin 'broken_import' is broken (this file does not use provider 'broken_import', so a warning only; the "
        "daemon lists it broken): failed to import mmrouter-broken-import: ImportError: this plugin needs a library "
        "that is not installed (on purpose)",
        "plugin 'broken_register' is broken (this file does not use provider 'broken_register', so a warning only; "
        "the daemon lists it broken): register_providers failed: RuntimeError: cannot start: on purpose",
    ], result.stderr

    using = tmp_path / "using.yaml"
    using.write_text("providers:\n  broken_import: {}\nroutes:\n  - {name: all, use: local/extract}\n"
                     "bridges:\n  audio: [broken_register/x]\noverrides: {allow: true}\n")
    result = check_with_plugins(using, *sites)
    assert result.returncode == 1 and "OK" not in result.stdout, result.stderr
    assert result.stderr.splitlines() == [
        "providers.broken_import: failed to import mmrouter-broken-import: ImportError: this plugin needs a library "
        f"that is not installed (on purpose) ({using}, line 2)",
        "bridges.audio.0: provider 'broken_register' is broken: register_providers failed: RuntimeError: cannot "
        f"start: on purpose ({using}, line 6)",
    ], result.stderr


def test_an_unset_variable_in_a_provider_section_leaves_the_provider_unconfigured_naming_it(start_daemon, tmp_path):
    """``api_key: "${MY_OPENAI_KEY}"`` with MY_OPENAI_KEY unset used OPENAI_API_KEY from the environment
    (another account); without it the reason named OPENAI_API_KEY. Now the provider is not configured,
    for that variable; ``${OPENAI_API_KEY}`` itself still reads the plugin's own variables."""
    from test_cli import Cli, ok, table_rows

    key = "sk-other-account-0123456789"
    config = ("providers:\n  openai: {api_key: \"${MY_OPENAI_KEY}\"}\n  anthropic: {api_key: \"${ANTHROPIC_API_KEY}\"}\n"
              "default: local/extract\n")
    daemon = start_daemon(config, env={"OPENAI_API_KEY": key, "ANTHROPIC_API_KEY": "sk-ant-own-0123456789"},
                          plugins=())
    result = ok(Cli("providers", "--address", daemon.address, env={"COLUMNS": "1000"}).result())
    rows = table_rows(result.stdout)
    assert rows["openai"][2:5:2] == ["not_configured", "providers.openai.api_key: ${MY_OPENAI_KEY} is not set"]
    assert rows["anthropic"][2] == "ready"
    assert key not in result.stdout + daemon.logs()

    file = tmp_path / "router.yaml"
    file.write_text(config)
    checked = check(file)
    assert checked.returncode == 0 and "OK" in checked.stdout, checked.stderr
    assert ("providers.openai.api_key: ${MY_OPENAI_KEY} is not set: provider 'openai' is not configured here "
            "(set it where the daemon runs)") in checked.stderr
    assert "anthropic" not in checked.stderr  # no key here either, but it was not named by another variable
