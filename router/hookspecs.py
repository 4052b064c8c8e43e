"""Every mmrouter hook. Each docstring is that hook's documentation.

A plugin is a module or object with functions marked ``@router.hookimpl``,
named after the hooks below. It is found through an entry point of group
``mmrouter`` in its distribution's ``pyproject.toml``::

    [project.entry-points.mmrouter]
    myprovider = "mmrouter_myprovider"

Hooks are synchronous; providers' methods are ``async``. An implementation
may take fewer arguments than the spec names (pluggy's opt-in arguments), so
arguments are only ever added, never renamed or removed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from .provider import Provider
    from .types import Request

hookspec = pluggy.HookspecMarker("mmrouter")

#: The callable passed to :func:`register_providers`.
RegisterProvider = Callable[["Provider"], None]


@hookspec
def register_providers(register: RegisterProvider, settings: Mapping[str, Any]) -> None:
    """Offer providers to the router. Called once when the daemon loads its configuration.

    :param register: call ``register(provider)`` once for each :class:`router.Provider` you offer.
    :param settings: this plugin's section of the config file (``providers.<plugin name>``),
        with ``${ENV}`` references expanded; empty if absent.
    """


@hookspec(firstresult=True)
def route_request(request: Request, candidates: list[str]) -> str | None:
    """Choose the target for a request yourself. Stops at the first non-None result.

    Called after validation, before the routing rules.

    :param request: the validated request.
    :param candidates: every usable target as ``"provider/model"``, in registry order.
    :returns: one of ``candidates``, or None to leave the choice to the rules.
    """


@hookspec
def on_request(request: Request) -> None:
    """Observe a request before it is routed (audit, metrics). Called once per request.

    Exceptions are logged and ignored.
    """


@hookspec
def on_response(request: Request, answer: Any) -> None:
    """Observe a finished answer (:class:`router.dispatch.Answer`). Called once per answered request.

    Exceptions are logged and ignored.
    """
