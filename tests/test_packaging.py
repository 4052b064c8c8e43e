"""What the distributions ship and declare, for those who install them from wheels (a company index, a
container image) rather than from this tree."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
PLUGINS = sorted(p.parent for p in (ROOT / "plugins").glob("*/pyproject.toml"))


def test_the_router_wheel_ships_its_types_licence_and_duration_reader(tmp_path) -> None:
    """Without py.typed, type checkers ignored the plugin API (``class Echo(Provider)`` was ``Any``) and
    the shipped router_pb2.pyi; without the licence text the declared Apache-2.0 could not be honoured;
    without PyAV a cloud-only install measured no audio or video length, so ``audio_seconds`` rules (the
    embedded long-audio one) never matched; without pypdf[crypto] an AES-encrypted PDF could not be opened."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(tmp_path), str(ROOT)], check=True, timeout=300)
    (wheel,) = tmp_path.glob("mmrouter_daemon-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = next(archive.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
        licence = next(archive.read(n) for n in names if n.endswith(".dist-info/licenses/LICENSE"))
    assert {"router/py.typed", "mmrouter/py.typed", "mmrouter/v1/router_pb2.pyi"} <= names
    assert licence == (ROOT / "LICENSE").read_bytes() and b"Apache License" in licence
    required = {requirement.name: requirement for requirement in (
        Requirement(line.split(":", 1)[1].strip())
        for line in metadata.splitlines() if line.startswith("Requires-Dist:") and "extra ==" not in line)}
    assert "av" in required
    # without cryptography an AES-encrypted PDF (today's tools' default) was neither counted nor refused if locked
    assert "crypto" in required["pypdf"].extras


def test_every_plugin_bounds_the_router_it_was_written_for_and_ships_the_licence() -> None:
    """The plugins use the router's API (router.sdk_http, router.errors): "mmrouter" with no bound let a
    future router break an installed plugin with no resolver error; and "mmrouter" on PyPI is another
    project, which a resolver installed in its place (the distribution is mmrouter-daemon)."""
    assert {p.name for p in PLUGINS} >= {"openai", "anthropic", "gemini", "assemblyai", "local"}
    for plugin in PLUGINS:
        project = tomllib.loads((plugin / "pyproject.toml").read_text())["project"]
        (router,) = [Requirement(d) for d in project["dependencies"] if Requirement(d).name == "mmrouter-daemon"]
        version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
        assert router.specifier.contains(version), plugin.name
        assert any(s.operator == "<" for s in router.specifier), f"{plugin.name}: {router} has no upper bound"
        assert (plugin / "LICENSE").read_bytes() == (ROOT / "LICENSE").read_bytes(), plugin.name
