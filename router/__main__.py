"""Run the daemon CLI: ``python -m router``."""

from .cli import app

app()
