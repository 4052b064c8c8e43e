"""Every mmrouter hook. Each docstring is that hook's documentation.

A plugin is a module or object with functions marked ``@router.hookimpl``,
named after the hooks below. It is found through an entry point of group
``mmrouter`` in its distribution's ``pyproject.toml``::

    [project.entry-points.mmrouter]
    myprovider = "mmrouter_myprovider"

The module is imported at every start of the daemon and every ``mmrouter config check``: import
nothing heavy at module level (a provider imports its SDK in :meth:`router.Provider.prepare` and
where its calls use it); an import that takes a second or more is logged as a WARNING naming it.
A plugin without any marked function is listed broken. Hooks are synchronous (a plain ``def``:
an ``async def register_providers`` is never awaited, and its plugin is listed broken); providers'
methods are ``async``. An implementation
may take fewer arguments than the spec names (pluggy's opt-in arguments), so
arguments are only ever added, never renamed or removed.

Every hook, like every provider method, runs on the daemon's event loop, which serves all calls:
never block in one (no ``time.sleep``, no network or other slow I/O, no synchronous HTTP client such
as ``requests``). While a hook runs, the whole daemon waits.
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

    It is called at start-up (and by ``mmrouter config check``), and again on every reload (SIGHUP)
    that changes the ``providers`` or ``plugins`` sections, for every plugin, not only those whose
    section changed; the providers it made before are closed (:meth:`router.Provider.aclose`). It runs
    on the daemon's event loop, with all serving stopped meanwhile: keep it fast. Do no network I/O
    here (no model catalogue fetched, no key checked against the API, no ``time.sleep``): read
    ``settings``, build the provider, and connect lazily on its first call.

    Read the settings with your :class:`router.ProviderSettings` subclass, passing ``environment``
    only for your own provider, so an extra instance reads its section alone::

        @router.hookimpl
        def register_providers(register, settings, name):
            own = name == "acme"  # the entry-point name
            s = AcmeSettings.load(name, settings, environment=own)  # ConfigError: the provider is broken
            register(AcmeProvider(s, name=name))

    and report a missing key with ``s.missing_key(name, "acme")`` in
    :meth:`router.Provider.unconfigured_reason`: ``no API key: set ACME_API_KEY or
    providers.acme.api_key`` for your own provider, ``no API key: set providers.<name>.api_key`` for an
    instance (:meth:`router.ProviderSettings.key_settings` gives that "where" alone).

    :param register: call ``register(provider)`` once for each :class:`router.Provider` you offer.
        It checks the provider and each of its models (see :attr:`router.Provider.models`) and
        raises :class:`TypeError` for a bad one, which lists your plugin broken with that reason.
        A second provider of a name you registered already is listed broken as ``<name> (from
        <plugin>)``, saying it was registered twice; the first is kept.
    :param settings: the provider's section of the config file, with ``${ENV}`` references
        expanded; empty if absent. The daemon masks (as ``***``) in its log, in errors sent to clients
        and in ``mmrouter providers`` the values of the settings it takes for secrets: those whose name
        contains ``key``, ``token`` (not ``tokens``: ``max_output_tokens`` is a count), ``secret``,
        ``passw``, ``passphrase``, ``credential``, ``bearer``, ``cookie``, ``signature``, ``private`` or
        ``auth`` (not ``author`` nor ``authority``), in any case, or the word ``pat`` (``pat``,
        ``github_pat``; not ``path``), whether set in the config file or read from an
        :attr:`router.ProviderSettings.env_fields` variable; the values of
        :attr:`router.ProviderSettings.api_key_env` variables; and the credentials of URLs. Name secret settings accordingly (``client_secret``,
        ``bearer_token``, ``password``); a secret under another name (``pin``) is shown as it is.
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
    """Observe a finished answer. Called once per answered request.

    :param request: the request that was answered.
    :param answer: the answer, an object (not part of the public API: read only these attributes)
        with ``text`` (str, the answer's text; a transcription's text too), ``transcript``
        (:class:`router.Transcript` or None), ``usage`` (:class:`router.Usage`, every step of the call
        summed: tokens, audio seconds, ``cost_usd``), ``finish_reason`` (:class:`router.FinishReason`
        or None) and ``route``, whose ``provider`` and ``model`` (str) name the model that answered,
        ``rule`` (str) the routing rule that chose it and ``notes`` (list of str) the route notes the
        client gets (the router's, and those providers yielded as :class:`router.RouteNote`, each
        after ``<provider>/<model>: ``).

    Exceptions are logged and ignored.
    """
