"""mmrouter: a gRPC daemon that routes multimodal requests to AI providers.

The public plugin API lives here. A provider plugin::

    import router

    class EchoProvider(router.Provider):
        name = "echo"
        models = [router.ModelInfo("echo-1", inputs=frozenset({router.Modality.TEXT}))]

        async def generate(self, request, model, ctx):
            text = request.messages[-1].text
            if not text:  # a message of media only: never yield an empty TextDelta
                raise router.ProviderUnsupportedInput(self.name, "echo-1 echoes text only")
            yield router.TextDelta(text)
            yield router.UsageReport(router.Usage(input_tokens=1, output_tokens=1),
                                     router.FinishReason.STOP)

    @router.hookimpl
    def register_providers(register, settings):
        register(EchoProvider())

and in its ``pyproject.toml``::

    [project.entry-points.mmrouter]
    echo = "mmrouter_echo"

To be usable more than once (``providers.<name>: {plugin: echo, ...}``), take the hook's ``name``
argument too, name the provider with it, and read only ``settings`` for names other than your
own (see :func:`router.hookspecs.register_providers`).

Errors are ``Provider*`` classes made with the provider's name, then the message:
``raise router.ProviderUnavailable(self.name, "upstream answered 503")``; the full signature is
``(provider_name, message, *, retry_after=None)`` (``retry_after``: seconds, for a rate limit).

A provider that changes the request on its way (scales an image down, leaves an option out) tells the
client so with ``yield router.RouteNote("messages[0].parts[1] was scaled down to 1568x1176 px ...")``,
before or between its other events: the answer's route notes get it as ``<provider>/<model>: <text>``,
once, even when the call then fails and a fallback answers (see :class:`router.RouteNote`).

``generate`` and ``register_providers`` run on the daemon's event loop: never block there
(``time.sleep``, ``requests`` or another synchronous client: use an async client or
``await asyncio.to_thread(...)``). ``register_providers`` runs at start-up and again, for every
plugin, on each reload (SIGHUP) that changes the providers: keep it fast, with no network I/O.

Run ``router.testing.ProviderContract`` against it to check it conforms.
"""

import os as _os
import signal as _signal
import sys as _sys

if _sys.argv[1:2] == ["serve"] and (_sys.argv[0] == "-m" or _os.path.basename(_sys.argv[0]) == "mmrouter"):
    # `mmrouter serve` imports this package first, then the command's modules (about 0.5 s): a SIGHUP then (its
    # default action ends the process) or a SIGINT (a traceback) waits; serve acts on them once it can (see
    # router.cli.serve)
    _signal.pthread_sigmask(_signal.SIG_BLOCK, {_signal.SIGINT, _signal.SIGHUP})

import importlib as _importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time each name is imported when first used
    import pluggy

    from .errors import (
        ProviderAuthError,
        ProviderBadRequest,
        ProviderError,
        ProviderInputTooLarge,
        ProviderModelNotFound,
        ProviderNotConfigured,
        ProviderQuotaExhausted,
        ProviderRateLimited,
        ProviderTimeout,
        ProviderUnavailable,
        ProviderUnsupportedInput,
        provider_error_from_status,
    )
    from .provider import Provider
    from .settings import ModelSpec, ProviderSettings, with_configured_models
    from .types import (
        FEATURE_DIARIZATION,
        FEATURE_EXTRACTION_ONLY,
        FEATURE_STREAMING,
        MAX_ROUTE_NOTE_CHARS,
        OUTPUT_TEXT,
        OUTPUT_TRANSCRIPT,
        CallContext,
        FinishReason,
        Media,
        Message,
        Modality,
        ModelInfo,
        Options,
        Part,
        Price,
        ProviderEvent,
        Request,
        Role,
        RouteNote,
        Task,
        TextDelta,
        Transcript,
        TranscriptReady,
        Usage,
        UsageReport,
        Utterance,
        Word,
    )

    #: Marks a hook implementation in a plugin.
    hookimpl: pluggy.HookimplMarker

__all__ = [
    "FEATURE_DIARIZATION",
    "FEATURE_EXTRACTION_ONLY",
    "FEATURE_STREAMING",
    "MAX_ROUTE_NOTE_CHARS",
    "OUTPUT_TEXT",
    "OUTPUT_TRANSCRIPT",
    "CallContext",
    "FinishReason",
    "Media",
    "Message",
    "Modality",
    "ModelInfo",
    "ModelSpec",
    "Options",
    "Part",
    "Price",
    "Provider",
    "ProviderAuthError",
    "ProviderBadRequest",
    "ProviderError",
    "ProviderEvent",
    "ProviderInputTooLarge",
    "ProviderModelNotFound",
    "ProviderNotConfigured",
    "ProviderQuotaExhausted",
    "ProviderRateLimited",
    "ProviderSettings",
    "ProviderTimeout",
    "ProviderUnavailable",
    "ProviderUnsupportedInput",
    "Request",
    "Role",
    "RouteNote",
    "Task",
    "TextDelta",
    "Transcript",
    "TranscriptReady",
    "Usage",
    "UsageReport",
    "Utterance",
    "Word",
    "hookimpl",
    "provider_error_from_status",
    "with_configured_models",
]

#: The submodule each name of the plugin API comes from (``hookimpl`` is made here: see :func:`__getattr__`).
#: They are imported when first used, not with the package: ``mmrouter ask`` and ``--version`` import
#: ``router.cli``, hence this package first, and need none of them (pydantic and pluggy cost ~0.3 s a start).
_SUBMODULE_OF = {name: module for module, names in {
    "errors": ("ProviderAuthError", "ProviderBadRequest", "ProviderError", "ProviderInputTooLarge",
               "ProviderModelNotFound", "ProviderNotConfigured", "ProviderQuotaExhausted", "ProviderRateLimited",
               "ProviderTimeout", "ProviderUnavailable", "ProviderUnsupportedInput", "provider_error_from_status"),
    "provider": ("Provider",),
    "settings": ("ModelSpec", "ProviderSettings", "with_configured_models"),
    "types": ("FEATURE_DIARIZATION", "FEATURE_EXTRACTION_ONLY", "FEATURE_STREAMING", "MAX_ROUTE_NOTE_CHARS",
              "OUTPUT_TEXT", "OUTPUT_TRANSCRIPT", "CallContext", "FinishReason", "Media", "Message", "Modality",
              "ModelInfo", "Options", "Part", "Price", "ProviderEvent", "Request", "Role", "RouteNote", "Task",
              "TextDelta", "Transcript", "TranscriptReady", "Usage", "UsageReport", "Utterance", "Word"),
}.items() for name in names}
#: The submodules ``import router`` made attributes of the package when it imported its names eagerly.
_EAGER_SUBMODULES = frozenset(_SUBMODULE_OF.values())


def __getattr__(name: str) -> object:
    """A name of the plugin API (``router.Provider``, ``from router import ModelInfo``), imported from its
    submodule on first use and kept here; ``router.errors`` and the other submodules the package imported
    before its names were lazy are imported on first use too."""
    if name == "hookimpl":
        import pluggy

        value: object = pluggy.HookimplMarker("mmrouter")
    elif name in _SUBMODULE_OF:
        value = getattr(_importlib.import_module(f".{_SUBMODULE_OF[name]}", __name__), name)
    elif name in _EAGER_SUBMODULES:
        value = _importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The module's names, with the plugin API's not imported yet."""
    return sorted(set(globals()) | set(__all__))
