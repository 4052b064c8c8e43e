"""The installed mmrouter's version."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as installed


def version() -> str:
    """The installed mmrouter's version, from its distribution's metadata ("unknown" in a source tree that
    was never installed)."""
    try:
        return installed("mmrouter")
    except PackageNotFoundError:
        return "unknown"
