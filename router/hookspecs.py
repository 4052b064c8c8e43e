"""Every mmrouter hook. Each docstring is that hook's documentation.

A plugin is a module or object with functions marked ``@router.hookimpl``,
named after the hooks below. It is found through an entry point of group
``mmrouter`` in its distribution's ``pyproject.toml``::

    [project.entry-points.mmrouter]
    myprovider = "mmrouter_myprovider"

A plugin without any marked function is listed broken. Hooks are synchronous (a plain ``def``:
an ``async def register_providers`` is never awaited, and its plugin is listed broken); providers'
methods are ``async``. An implementation
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
def register_providers(register: RegisterProvider, settings: Mapping[str, Any], name: str) -> None:
    """Offer providers to the router. Called when the daemon loads its configuration: once for the
    plugin itself, and once more for each extra instance the config asks of it.

    :param register: call ``register(provider)`` once for each :class:`router.Provider` you offer.
        It checks the provider and each of its models (see :attr:`router.Provider.models`) and
        raises :class:`TypeError` for a bad one, which lists your plugin broken with that reason.
        A second provider of a name you registered already is listed broken as ``<name> (from
        <plugin>)``, saying it was registered twice; the first is kept.
    :param settings: the provider's section of the config file, with ``${ENV}`` references
        expanded; empty if absent.
    :param name: the provider name to register under. It is the plugin's entry-point name, whose
        section is ``providers.<plugin name>``; or, for an extra instance, the name of a section
        that says ``plugin: <plugin name>`` (a local vLLM next to OpenAI, a second account). For an
        extra instance register exactly one provider with this name, and read only ``settings``
        (no environment fallbacks such as ``OPENAI_API_KEY``: they belong to the plugin's own
        provider). A plugin that ignores ``name`` offers no extra instances: the router refuses them
        with a reason. A plugin that offers no provider of its own is logged with a warning (fine
        for a plugin of other hooks only).
    """


@hookspec(firstresult=True)
def route_request(request: Request, candidates: list[str]) -> str | None:
    """Choose the target for a request yourself. Stops at the first non-None result.

    Called after validation, before the routing rules.

    :param request: the validated request.
    :param candidates: every usable target as ``"provider/model"``, in registry order.
    :returns: one of ``candidates``, or None to leave the choice to the rules. Anything else (a
        target not in ``candidates``, a model that cannot take this request, a value that is not a
        str) is ignored: the rules decide, the daemon logs a WARNING naming the
        value, and the route the client gets has a note saying so. A hook that raises is logged, and
        the rules decide.
    """


@hookspec
def on_request(request: Request) -> None:
    """Observe a request before it is routed (audit, metrics). Called once per Generate or
    StreamGenerate request, not for ExplainRoute (a dry run, nothing is answered).

    Exceptions are logged and ignored.
    """


@hookspec
def on_response(request: Request, answer: Any) -> None:
    """Observe a finished answer (:class:`router.dispatch.Answer`). Called once per answered request.

    Exceptions are logged and ignored.
    """
