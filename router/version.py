"""The installed mmrouter's version."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as installed

#: The distribution mmrouter is installed as ("mmrouter" on PyPI is another project).
DISTRIBUTION = "mmrouter-daemon"


def version() -> str:
    """The installed mmrouter's version, from its distribution's (:data:`DISTRIBUTION`) metadata ("unknown" in a source tree that
    was never installed)."""
    try:
        return installed(DISTRIBUTION)
    except PackageNotFoundError:
        return "unknown"
