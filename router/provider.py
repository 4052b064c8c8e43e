"""The provider base class that plugins subclass."""

from __future__ import annotations

import abc
import importlib
from collections.abc import AsyncIterator

from .types import CallContext, ModelInfo, ProviderEvent, Request

#: How long the router lets a provider's :meth:`Provider.forget_media` run before cancelling it (with a warning).
FORGET_MEDIA_SECONDS = 10.0


class Provider(abc.ABC):
    """A provider of models: what a plugin hands to ``register``.

    Subclasses set :attr:`name` and :attr:`models` and implement
    :meth:`generate`. One instance serves every call, so make SDK clients and
    HTTP pools once (lazily, on first use, to keep daemon start-up fast) and
    reuse them.

    Every method runs on the daemon's one event loop, which serves all calls of all providers: never
    block it. No ``time.sleep`` (``await asyncio.sleep``), no synchronous HTTP client such as
    ``requests`` or a blocking SDK (use an async client, e.g. ``httpx.AsyncClient``, or run the
    blocking call in a thread with ``await asyncio.to_thread(...)``), no long CPU work inline. While
    one ``generate`` blocks, every other call, stream and health check of the daemon waits.

    The constructor runs inside the plugin's ``register_providers`` (see
    :func:`router.hookspecs.register_providers`): at start-up and again on every reload, so keep it
    quick and free of network I/O. The plugin's module is imported at every start and every
    ``mmrouter config check``: import nothing heavy at module level (the SDK belongs in
    :meth:`prepare` and where the calls use it); an import that takes a second or more is logged
    as a WARNING naming the plugin.

    Failures are :mod:`router.errors` ``Provider*`` errors, made with the provider's name first, then
    the message: ``ProviderError(provider_name, message, *, retry_after=None)``; for example
    ``raise router.ProviderUnavailable(self.name, "upstream answered 503")`` or
    ``raise router.ProviderRateLimited(self.name, "slow down", retry_after=2.5)``, or
    :func:`router.provider_error_from_status` for an HTTP status.
    """

    #: The provider's unique name, used in routing targets (``name/model``): no ``/``, no space, no
    #: newline or other character that cannot be printed, at most 256 characters (the same holds for
    #: model names, which may contain ``/``). A provider named otherwise is listed broken.
    name: str = ""
    #: The models it offers, each with a unique non-empty name. They are checked when the plugin
    #: registers the provider, which is listed broken for a bad field: ``inputs`` a non-empty set of
    #: :class:`router.Modality`, ``outputs`` (non-empty, naming :data:`router.OUTPUT_TEXT` or
    #: :data:`router.OUTPUT_TRANSCRIPT`) and ``features`` sets of str, the token counts ints
    #: (``context_tokens`` and ``default_max_output_tokens`` > 0, ``max_output_tokens`` >= 0, and a
    #: ``default_max_output_tokens`` you set not over a ``max_output_tokens`` you set), ``price`` a
    #: :class:`router.Price` of finite numbers >= 0, ``input_mime_types`` normalised MIME types or
    #: wildcards (``text/*``), ``max_audio_seconds`` a number >= 0, ``max_media_bytes``, ``max_document_pages``,
    #: ``pdf_page_tokens`` and ``max_request_bytes`` ints >= 0, ``url_inputs`` None (not declared: any media by URL is planned for it) or a frozenset of
    #: :class:`router.Modality` it takes by URL.
    models: list[ModelInfo] = []
    #: The modules (import names, e.g. ``("openai",)`` or ``("google.genai",)``) the provider imports at
    #: call time, lazily, as its SDK: when one cannot be found (a plugin installed without its
    #: dependencies, a slimmed image), the provider is listed not configured, naming it, instead of
    #: ready with every call failing as INTERNAL ``ModuleNotFoundError``. Checked without importing them.
    required_modules: tuple[str, ...] = ()

    def unconfigured_reason(self) -> str | None:
        """Why the provider cannot be used (e.g. ``"OPENAI_API_KEY is not set"``), or None if it can.

        Routing skips providers that return a reason, and shows the reason in
        the decision trace and in ``mmrouter providers``.
        """
        return None

    def prepare(self) -> None:
        """Import what the provider's calls need, its SDK above all, so that its first call does not.

        The router calls it once per provider instance (and again for the instances a reload makes),
        before that provider's first call, in a thread of its own, while the event loop serves other
        calls: an SDK imported on the event loop (1-4 s) held every call of the daemon. Import
        modules here and nothing else: make no client (an async client belongs to the event loop) and
        do no network I/O. What it raises is logged and the call goes on; a call waits for it at most
        30 s (less when its deadline is near), then fails its attempt as UNAVAILABLE. The default imports
        :attr:`required_modules`; override it to import more (the parts of the SDK a call loads
        lazily) or less (nothing, for a provider whose calls run in threads of its own). Keep the
        imports where the code uses them too (then no-ops): a ``prepare`` that failed leaves them
        to be done there."""
        for module in self.required_modules:
            importlib.import_module(module)

    def model(self, name: str) -> ModelInfo | None:
        """The model called ``name``, or None."""
        return next((m for m in self.models if m.name == name), None)

    @abc.abstractmethod
    def generate(
        self, request: Request, model: ModelInfo, ctx: CallContext
    ) -> AsyncIterator[ProviderEvent]:
        """Answer ``request`` with ``model``, yielding events as they come.

        Implement as an ``async def`` generator. Yield :class:`TextDelta` for
        text (many small ones when streaming; never an empty one: skip chunks
        with no text, such as a stream's first, role-only chunk),
        :class:`TranscriptReady` for a transcript, and a :class:`UsageReport`
        at the end: its token counts ints from 0 to 2**63-1, ``audio_seconds``
        and ``cost_usd`` finite and >= 0, ``finish_reason`` None or a
        :class:`router.FinishReason` (map the provider's own strings). Usage the
        provider reports before the end (a stream's prompt tokens at its start)
        may be yielded then, in a UsageReport of its own: the reports add up, and
        one yielded before the client cancels is billed (the router keeps it as a
        step ``"<purpose> (cancelled)"``); the last carries the finish reason, and
        only the last: reports of parts (a transcription's per clip, a stream's
        prompt tokens) leave ``finish_reason`` None. Raise
        :mod:`router.errors` ``Provider*`` errors for failures (see
        :func:`router.errors.provider_error_from_status`). The router cancels
        the generator when the client's deadline passes or it cancels; honour
        ``ctx.time_remaining()`` for waits you make yourself (polling). To tell the
        client of something you changed on the request's way (an image scaled
        down, an option left out), yield a :class:`RouteNote` before or between
        the other events: the answer's route notes get it as
        ``<provider>/<model>: <text>``, once.

        If the call fails after the provider billed something (a clip transcribed
        before a later one failed, the prompt read by a stream that was cut), yield
        a :class:`UsageReport` of that part before raising: the router keeps it as
        a step ``"<purpose> (failed)"``. A streamed answer that ends without the
        provider's end-of-answer marker was cut short: raise
        :class:`router.errors.ProviderUnavailable` (the router then falls back if
        no text was sent) instead of returning.

        The answer is complete once you yield the UsageReport with a finish reason: the
        router ends the call there (the client gets its answer at once) and does not wait
        for ``generate`` to return, nor reads anything it yields after. It closes the
        generator in the background (``GeneratorExit`` at that ``yield``: your ``finally``
        and ``async with`` blocks run, closing an upstream that holds its connection open),
        for at most ``router.invoke.CLOSE_SECONDS`` (10 s) before cancelling it; what the close
        raises, or a close that takes longer, is logged with the provider and the request
        id, never sent to the client. So yield that report once the end-of-answer marker is
        read, and never yield from an ``except GeneratorExit`` or ``finally`` block.

        ``request.options.max_output_tokens`` is never over the model's
        ``max_output_tokens`` (when set): the router caps it before calling you.

        Errors take the provider's name, then the message:
        ``raise router.ProviderUnavailable(self.name, "the stream was cut short")``
        (``router.ProviderRateLimited(self.name, "...", retry_after=seconds)`` says when to retry);
        one made with another provider's name reaches the client under this provider's.
        Anything else raised fails the call as ``PROVIDER_FAILED``, without the error class's meaning
        (a wrong call such as ``ProviderUnavailable("message")`` raises TypeError, so it fails that way).

        It runs on the daemon's event loop: never block it (no ``time.sleep``, no ``requests`` or
        other synchronous client: use an async client, or ``await asyncio.to_thread(blocking_call)``).

        Cancellation: the router cancels the call (``task.cancel()``) at whatever ``await`` it is in,
        before it connects or mid-stream between two chunks. Let :class:`asyncio.CancelledError`
        through, promptly: never swallow it with a bare ``except:`` or ``except BaseException`` (least
        of all in a retry loop); code that must clean up re-raises it. A provider that swallows it
        keeps its client waiting and its call slot taken past ``server.max_call_seconds``. The
        conformance kit cancels at the first await, after the first event and a moment into the call.

        Timeouts: the router cancels the call at ``ctx.deadline`` whatever your HTTP client does, but
        it shortens none of your own waits. ``ProviderSettings.timeout`` ("shortened to the call's
        deadline") is shortened only if you do it: the base class hands it to nobody. Cut it (and a
        poll's wait) to the time left yourself, so your waits end by the deadline::

            remaining = ctx.time_remaining()  # seconds, or None without a deadline
            timeout = self.settings.timeout if remaining is None else max(0.001, min(self.settings.timeout, remaining))
        """

    async def forget_media(self, sha256s: frozenset[str]) -> None:  # noqa: B027 (a no-op default is intended)
        """Delete and forget what the provider keeps of the media ``sha256s`` (their sha256 hex digests, which are
        their media store ids): copies uploaded to the provider (a files API), and the entries of caches keyed by
        them, so that the same bytes sent again are handled as new. The default keeps nothing, so does nothing.

        Called when a session is reset with ``erase_media`` (``ResetSession``, ``mmrouter reset --erase-media``) or
        media are deleted with ``DeleteMedia`` (``mmrouter delete-media``),
        once the media store deleted its media, with those media (none another session still refers to), on
        every ready provider at once, in a task of its own: the reset's client has its answer without waiting
        for it. Some (or all) of the media may never have been sent to this provider: skip them, never raise
        for them. Media the router derived from them (an image converted or scaled down) are not among them.

        Best effort, with a time bound: the router cancels it after :data:`FORGET_MEDIA_SECONDS` (10 s), or when
        the daemon stops, with a warning, and logs what it raises (secrets masked); none of these ever fails the
        reset, whose store deletions are done already. Forget the cache entries first (before the first ``await``), then delete upstream,
        each deletion bounded by a timeout of your own (shorter than that); log a copy you could not delete
        (naming it, never the key) and forget it all the same: it then expires by itself. Let
        :class:`asyncio.CancelledError` through, as in :meth:`generate`. It may run while calls are under way,
        and on a provider instance that never made a call (a reload made it): make no client for nothing. Copies
        this instance does not remember (uploaded before a restart of the daemon) may be looked up upstream (the
        Gemini plugin lists its project's files and matches their SHA-256), within the same bound."""

    async def aclose(self) -> None:  # noqa: B027 (a no-op default is intended)
        """Release clients and pools. Called at daemon shutdown, and on reloads (SIGHUP): a reload
        that changes the ``providers`` or ``plugins`` sections makes every provider again, and closes
        each instance it replaced once the calls under way on it have ended (and those it made, unused,
        if it is refused). Over the daemon's life several instances of your class are thus made and
        closed, some never used: free only this instance's resources here, never state the module
        shares (a global client, a cache). It may be called more than once: make it idempotent.

        Each ``aclose`` may run 3 s (``router.core.PROVIDER_CLOSE_SECONDS``; the providers close all at once):
        then it is cancelled, and a WARNING names the provider ("closing provider NAME did not end within 3 s:
        cancelled"). Keep it short (no upstream clean-up that may take longer), and let the CancelledError
        through: at shutdown the daemon waits 5 s in all for the closes and the calls it cancelled, then exits
        with status 1 without waiting for one that still runs (an ERROR names it)."""

