"""The provider base class that plugins subclass."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator

from .types import CallContext, ModelInfo, ProviderEvent, Request


class Provider(abc.ABC):
    """A provider of models: what a plugin hands to ``register``.

    Subclasses set :attr:`name` and :attr:`models` and implement
    :meth:`generate`. One instance serves every call, so make SDK clients and
    HTTP pools once (lazily, on first use, to keep daemon start-up fast) and
    reuse them.
    """

    #: The provider's unique name, used in routing targets (``name/model``).
    name: str = ""
    #: The models it offers, each with a unique non-empty name. They are checked when the plugin
    #: registers the provider, which is listed broken for a bad field: ``inputs`` a non-empty set of
    #: :class:`router.Modality`, ``outputs`` (non-empty) and ``features`` sets of str, the token
    #: counts ints (``context_tokens`` and ``default_max_output_tokens`` > 0, ``max_output_tokens``
    #: >= 0), ``price`` a :class:`router.Price` of finite numbers >= 0, ``input_mime_types``
    #: normalised MIME types or wildcards (``text/*``), ``max_audio_seconds`` a number >= 0.
    models: list[ModelInfo] = []

    def unconfigured_reason(self) -> str | None:
        """Why the provider cannot be used (e.g. ``"OPENAI_API_KEY is not set"``), or None if it can.

        Routing skips providers that return a reason, and shows the reason in
        the decision trace and in ``mmrouter providers``.
        """
        return None

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
        step ``"<purpose> (cancelled)"``); the last carries the finish reason. Raise
        :mod:`router.errors` ``Provider*`` errors for failures (see
        :func:`router.errors.provider_error_from_status`). The router cancels
        the generator when the client's deadline passes or it cancels; honour
        ``ctx.time_remaining()`` for waits you make yourself (polling).

        If the call fails after the provider billed something (a clip transcribed
        before a later one failed, the prompt read by a stream that was cut), yield
        a :class:`UsageReport` of that part before raising: the router keeps it as
        a step ``"<purpose> (failed)"``. A streamed answer that ends without the
        provider's end-of-answer marker was cut short: raise
        :class:`router.errors.ProviderUnavailable` (the router then falls back if
        no text was sent) instead of returning.
        """

    async def aclose(self) -> None:  # noqa: B027 (a no-op default is intended)
        """Release clients and pools; called once at daemon shutdown."""

