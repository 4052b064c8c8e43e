"""The ``mmrouter`` command starts without importing what only the daemon and ``config check`` need.

Every invocation, ``mmrouter --version`` and ``mmrouter ask`` too, imports ``router.cli`` and so the
``router`` package first: it imported the whole plugin API (pluggy, the pydantic settings models, the
provider base class), about 0.3 s of CPU a command, for a client that needs none of it. The package now
imports its names on first use (PEP 562), and the CLI imports the daemon's and the checker's modules
(plugins, settings, configuration warnings) in the commands that use them. The plugin API is unchanged:
``from router import Provider`` and ``@router.hookimpl`` work as before.

Each test runs a fresh interpreter: what the test process itself imported must not count.
"""

from __future__ import annotations

import json
import subprocess
import sys

from test_cli import run_cli
from test_cli_stdin import NOWHERE

#: What a client command never needs: the plugin machinery and the daemon's settings models.
DAEMON_ONLY = ("pluggy", "router.settings", "router.provider", "router.plugins", "router.hookspecs",
               "router.config_warnings", "router.server", "router.sessions", "router.config", "yaml")
# (pydantic is not among them: typer itself imports it to run a command)
#: The client's exit code for a daemon that was not reached (see ``mmrouter ask --help``).
EXIT_UNREACHED = 3


def python(code: str, *args: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter with ``args`` (its ``sys.argv[1:]``) and wait for it."""
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60,
                          check=False)


def loaded_after(statement: str, *args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run ``statement`` in a fresh interpreter with ``args``, and which of :data:`DAEMON_ONLY` were
    imported by its end (read at exit: a command ends with ``SystemExit``)."""
    code = (f"import atexit, json, sys\n"
            f"atexit.register(lambda: print('LOADED=' + json.dumps([m for m in {DAEMON_ONLY!r} if m in sys.modules]),"
            f" file=sys.stderr))\n"
            f"{statement}\n")
    result = python(code, *args)
    line = next((x for x in result.stderr.splitlines() if x.startswith("LOADED=")), None)
    assert line is not None, result.stderr
    return result, json.loads(line.removeprefix("LOADED="))


def test_importing_the_cli_imports_none_of_the_daemons_modules() -> None:
    result, loaded = loaded_after("import router.cli")
    assert result.returncode == 0, result.stderr
    assert loaded == []


def test_asking_an_unreached_daemon_imports_none_of_the_daemons_modules() -> None:
    """The whole ``ask`` command, up to its failure to reach the daemon: as a script looping over
    ``mmrouter ask`` runs it."""
    result, loaded = loaded_after("from router.cli import app\napp(prog_name='mmrouter')",
                                  "ask", "hi", "--address", NOWHERE)
    assert result.returncode == EXIT_UNREACHED, result.stderr
    assert loaded == []


def test_version_and_ask_help_still_work() -> None:
    version = run_cli("--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith("mmrouter ")
    helped = run_cli("ask", "--help")
    assert helped.returncode == 0, helped.stderr
    assert "--address" in helped.stdout and "Exit codes" in helped.stdout


def test_the_plugin_api_is_imported_on_first_use_as_before() -> None:
    """``from router import ...``, ``router.<name>``, ``import *``, ``dir`` and the submodules the package
    used to import, in a fresh interpreter: the same objects as their modules'."""
    code = """
import router
import pluggy
from router import Modality, ModelInfo, Provider, ProviderError, ProviderSettings, TextDelta, hookimpl
import router.errors, router.provider, router.settings, router.types

assert Provider is router.provider.Provider and router.Provider is Provider
assert ModelInfo is router.types.ModelInfo and Modality.TEXT is router.types.Modality.TEXT
assert ProviderError is router.errors.ProviderError and ProviderSettings is router.settings.ProviderSettings
assert TextDelta is router.types.TextDelta
assert isinstance(hookimpl, pluggy.HookimplMarker) and hookimpl.project_name == "mmrouter"
assert router.hookimpl is hookimpl  # made once: every plugin marks its hooks with the same marker
assert set(router.__all__) <= set(dir(router))
names = {}
exec("from router import *", names)
assert set(router.__all__) <= set(names)
try:
    router.NoSuchName
except AttributeError as exc:
    assert "NoSuchName" in str(exc)
else:
    raise AssertionError("router.NoSuchName did not raise AttributeError")
print("ok")
"""
    result = python(code)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_the_submodules_the_package_imported_are_still_its_attributes() -> None:
    """``import router`` then ``router.errors.ProviderError``, as code written when the package imported
    its submodules eagerly does."""
    result = python("import router\nprint(router.errors.ProviderError.__name__, router.types.Modality.TEXT.name)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ProviderError", "TEXT"]
