"""``config check`` and reloads name the line and the rule of a target's misspelled model or provider, as
they do for other mistakes; a text YAML 1.1 reads as a boolean, number, null or date (``country: NO``) is
refused saying what YAML read and how to quote it."""

from __future__ import annotations

import json

import pytest
from test_config import yaml
from test_config_gitops_s23 import run_check
from test_reload import SECOND, reload, route_of

#: A target naming a model its provider lacks (line 8), and one naming no installed provider (line 6).
TYPOS = yaml("""
    providers:
      local: {}
    routes:
      - name: pictures
        match: {inputs_any: [image]}
        use: lcoal/extract
      - name: support-screens
        use: local/extrat
    default: local/extract
    overrides: {allow: false}
""")


def test_config_check_names_the_line_and_rule_of_a_misspelled_model_and_provider(tmp_path):
    """``routes.1.use: provider 'local' has no model 'extrat'`` had no line (``"line": null`` in --json), and
    ``routes.1`` is a 0-based index: in a file of thousands of rules, a search by hand."""
    file = tmp_path / "router.yaml"
    file.write_text(TYPOS)
    checked = run_check(file)
    output = " ".join(checked.stderr.split())
    assert checked.returncode == 1, output
    assert (f"routes.1.use 'support-screens': provider 'local' has no model 'extrat' (it has: extract) ({file}, "
            "line 8); did you mean 'extract'?") in output
    assert (f"routes.0.use 'pictures': no provider 'lcoal' here: no installed plugin offers it (a warning only: it "
            f"may be installed where the daemon runs) ({file}, line 6); did you mean 'local'?") in output

    report = json.loads(run_check(file, "--json").stdout)
    found = {problem["key"]: (problem["severity"], problem["line"]) for problem in report["problems"]}
    assert found["routes.1.use"] == ("error", 8)
    assert found["routes.0.use"] == ("warning", 6)


def test_a_reload_refused_for_a_misspelled_model_says_its_line_and_rule(start_daemon):
    """The daemon logs the refusal (and an unknown provider's warning) in the words of ``config check``."""
    daemon = start_daemon(SECOND)
    reload(daemon, SECOND.replace("use: fake/omni", "use: fake/omnii"), "reload refused")
    assert (f"routes.1.use 'to-omni': provider 'fake' has no model 'omnii' (it has: echo, docs, omni, small, ears, "
            f"diarizer) ({daemon.config_path}, line 9); did you mean 'omni'?") in daemon.logs()
    assert route_of(daemon) == ("to-omni", "fake/omni")  # the running rules stay

    reload(daemon, SECOND.replace("use: fake/small", "use: fkae/small"), "a provider 'fkae'")
    assert (f"routes.0.use 'tagged': no installed plugin offers a provider 'fkae' ({daemon.config_path}, line 7); "
            "did you mean 'fake'?") in daemon.logs()


#: Texts YAML 1.1 reads as another type, each in a rule of its own (the rule's line is ``5 + 3 * index``).
UNQUOTED = [
    ("country: NO", 'YAML reads NO as the boolean false, not as text: quote it, country: "NO"'),
    ("api: 1.10", 'YAML reads 1.10 as the number 1.1, not as text: quote it, api: "1.10"'),
    ("beta: yes", 'YAML reads yes as the boolean true, not as text: quote it, beta: "yes"'),
    ("team: null", 'YAML reads null as no value (null), not as text: quote it, team: "null"'),
    ("since: 2024-01-01", 'YAML reads 2024-01-01 as the date 2024-01-01, not as text: quote it, since: "2024-01-01"'),
]


def test_an_unquoted_text_yaml_reads_as_another_type_is_refused_saying_what_it_read_and_how_to_quote_it(tmp_path):
    """``metadata: {country: NO}`` was refused as "Input should be a valid string": to the operator NO is a string."""
    rules = "".join(f"  - name: rule-{i}\n    match: {{metadata: {{{pair}}}}}\n    use: local/extract\n"
                    for i, (pair, _) in enumerate(UNQUOTED))
    file = tmp_path / "router.yaml"
    file.write_text(f"providers:\n  local: {{}}\nroutes:\n{rules}  - name: tagged\n    match: {{tags: [on, ok]}}\n"
                    "    use: local/extract\ndefault: local/extract\noverrides: {allow: false}\n")
    checked = run_check(file)
    assert checked.returncode == 1, checked.stderr
    output = " ".join(checked.stderr.split())
    for i, (pair, message) in enumerate(UNQUOTED):
        assert f"routes.{i}.match.metadata.{pair.split(':')[0]}: {message} ({file}, line {5 + 3 * i})" in output
    assert (f"routes.5.match.tags.0: YAML reads on as the boolean true, not as text: quote it, \"on\" ({file}, "
            "line 20)") in output
    assert "valid string" not in output

    report = json.loads(run_check(file, "--json").stdout)
    lines = {problem["key"]: problem["line"] for problem in report["problems"]}
    assert lines == {**{f"routes.{i}.match.metadata.{pair.split(':')[0]}": 5 + 3 * i
                        for i, (pair, _) in enumerate(UNQUOTED)}, "routes.5.match.tags.0": 20}


@pytest.mark.parametrize("written, message", [
    ('name: "NO"', None),  # quoted: the text
    ("name: [a, b]", "routes.0.name: Input should be a valid string"),  # no scalar: pydantic's words
    ("name: a\n    match: {images: {max: x}}", "routes.0.match.images.max: Input should be a valid number"),
])
def test_quoted_texts_pass_and_other_type_errors_keep_their_words(tmp_path, written, message):
    file = tmp_path / "router.yaml"
    file.write_text(f"providers:\n  local: {{}}\nroutes:\n  - {written}\n    use: local/extract\n"
                    "default: local/extract\noverrides: {allow: false}\n")
    checked = run_check(file)
    if message is None:
        assert checked.returncode == 0, checked.stderr
    else:
        assert checked.returncode == 1 and f"{message}" in " ".join(checked.stderr.split()), checked.stderr
        assert f"({file}, line" in checked.stderr and "YAML reads" not in checked.stderr
