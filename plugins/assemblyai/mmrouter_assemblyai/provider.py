"""The AssemblyAI provider: upload, submit with speaker labels, poll until done, map the transcript, delete it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from router import (
    CallContext,
    Media,
    Modality,
    ModelInfo,
    Provider,
    ProviderEvent,
    Request,
    TranscriptReady,
    Usage,
    UsageReport,
)
from router.error_body import httpx_error_hook
from router.errors import ProviderError, ProviderNotConfigured, ProviderUnavailable
from router.polling import PollFailures

from . import errors, transcripts
from .models import MODELS, speech_models
from .settings import PLUGIN, AssemblyAISettings

if TYPE_CHECKING:
    import assemblyai
    import httpx

log = logging.getLogger(__name__)

_MEDIA_KINDS = (Modality.AUDIO, Modality.VIDEO)


#: How long closing the provider (the daemon's stop, a reload) waits for transcript deletes still running
#: (and the creates of cancelled calls, whose transcripts are deleted once made).
DELETE_WAIT_SECONDS = 2.0

#: The sleeps between status polls end this long before the call's deadline, and the poll made then must
#: answer within half of it: so a transcript still running ends the call with the plugin's own
#: PROVIDER_TIMEOUT, which names it and its status, before the router cuts the call at its deadline (its
#: CALL_TIMEOUT, or the client's own DEADLINE_EXCEEDED). Less than router.invoke.DEADLINE_MARGIN_SECONDS
#: (0.25 s): the router then starts no fallback, which would be cut at once.
DEADLINE_HEADROOM_SECONDS = 0.2

#: A status answer of this many bytes or more (a completed transcript of more than about 150 words: some
#: 190 bytes a word) is parsed in a worker thread, one at a time per provider (:meth:`AssemblyAIProvider._parse`);
#: a smaller one (every ``queued`` or ``processing`` answer, a short call's transcript) takes the event loop
#: a few milliseconds at most, and never waits behind a long transcript's parse.
OFF_LOOP_PARSE_BYTES = 32 * 1024
#: A transcript of this many words or more (the same size: about 32 KiB of answer) is converted in a worker
#: thread too (:meth:`AssemblyAIProvider._off_loop`); a shorter one on the event loop, without a thread's hop.
OFF_LOOP_WORDS = OFF_LOOP_PARSE_BYTES // 190

T = TypeVar("T")

#: The names of the background tasks: a transcript's delete, and the create of a cancelled call (by request id).
_DELETE_TASK = "assemblyai-delete-"
_CREATE_TASK = "assemblyai-create-"


class AssemblyAIProvider(Provider):
    """Transcription with speaker diarization through the official ``assemblyai`` SDK's asyncio client.

    One ``assemblyai.AsyncClient`` per provider, built on first use with its own
    ``assemblyai.Settings`` (key, base URL, HTTP timeout, polling interval), so
    providers never share the SDK's global ``aai.settings``.
    """

    name = PLUGIN
    required_modules = ("assemblyai",)  # imported on first use

    def __init__(self, settings: AssemblyAISettings | None = None, *, name: str = PLUGIN) -> None:
        """``name`` other than ``assemblyai`` makes an extra instance (say ``assemblyai-eu``); give it settings
        loaded without the environment: ``AssemblyAISettings.load(name, section, environment=False)``."""
        self.name = name
        self.settings = settings or AssemblyAISettings()
        self.models = list(MODELS)
        self._client: assemblyai.AsyncClient | None = None
        self._transcriber: assemblyai.AsyncTranscriber | None = None
        #: Transcript deletes still running (:meth:`_delete_later`), kept so none is garbage-collected.
        self._deletes: set[asyncio.Task[None]] = set()
        #: Held by the parse of a long status answer (:meth:`_parse`): one at a time.
        self._parsing = asyncio.Semaphore(1)

    def unconfigured_reason(self) -> str | None:
        return self.settings.unconfigured_reason(self.name)

    def _sdk(self) -> tuple[assemblyai.AsyncClient, assemblyai.AsyncTranscriber]:
        """The provider's one SDK client and transcriber, made on first use."""
        if self._client is None or self._transcriber is None:
            import assemblyai as aai
            import httpx  # the SDK's HTTP client

            # Every setting the calls use is given: aai.Settings reads ASSEMBLYAI_<FIELD> for the others
            # (ASSEMBLYAI_API_KEY, ASSEMBLYAI_BASE_URL...), which belong to the plugin's own provider.
            sdk_settings = aai.Settings(
                api_key=self.settings.key,
                base_url=self.settings.base_url,
                http_timeout=self.settings.timeout,
                polling_interval=self.settings.poll_interval,
            )
            self._client = aai.AsyncClient(settings=sdk_settings)
            # Each call's own responses, for Retry-After (the SDK's errors carry only the status); an error
            # answer's body read up to router.error_body.ERROR_BODY_LIMIT, no further.
            http_client = self._client.http_client
            http_client.event_hooks = {**http_client.event_hooks, "response": [
                *http_client.event_hooks["response"], errors.remember_response, httpx_error_hook(httpx)]}
            # Given a client, the transcriber borrows it; aclose() closes the client.
            self._transcriber = aai.AsyncTranscriber(client=self._client)
        return self._client, self._transcriber

    async def generate(
        self, request: Request, model: ModelInfo, ctx: CallContext
    ) -> AsyncIterator[ProviderEvent]:
        """Transcribe the audio and video clips of the newest user message (``request.current_media()``:
        earlier turns were transcribed when they were sent), one after another, and yield for each clip,
        as soon as it is transcribed (before the next is sent), its :class:`TranscriptReady` (its own times
        and speakers: the router merges them into the answer's, :meth:`router.Transcript.merged`) and its
        :class:`UsageReport`.

        AssemblyAI bills a clip once transcribed: its report, yielded then, is kept by the router when a later
        clip fails, or the call is cancelled (by its client, or at its deadline) while a later clip is
        transcribed. The reports are parts, which the router adds up: a whole call's total is their sum."""
        media = [m for m in request.current_media() if m.modality in _MEDIA_KINDS]
        if not media:
            raise errors.bad_request(self.name, "nothing to transcribe: the request has no audio or video")
        for item in media:  # refuse a bad URL or too large a file before any clip is uploaded (and billed)
            transcripts.audio_source(item, self.name)
            transcripts.check_upload_size(item, self.name)
        if (reason := self.unconfigured_reason()) is not None:
            raise ProviderNotConfigured(self.name, reason)
        for item in media:
            try:
                response = await self._transcribe(item, request, model, ctx)
            except ProviderError as error:
                if item.url:  # the SDK's messages (and AssemblyAI's) quote the URL whole
                    errors.hide_media_url(error, item.url)
                raise
            # a long transcript's conversion takes tens of milliseconds: off the event loop (see _parse)
            transcript = await self._off_loop(len(response.words or ()) >= OFF_LOOP_WORDS,
                                              transcripts.to_transcript, response, item)
            yield TranscriptReady(transcript)
            # Priced per audio hour: the router computes the cost from audio_seconds.
            yield UsageReport(Usage(audio_seconds=transcripts.audio_seconds(response, item, transcript.words)))

    async def _transcribe(
        self, media: Media, request: Request, model: ModelInfo, ctx: CallContext
    ) -> assemblyai.types.TranscriptResponse:
        """Upload and submit one media, then poll it to the end; the completed response.

        What the SDK's ``AsyncTranscriber.submit`` does, in two steps (:meth:`_upload`, :meth:`_create`), so
        that a transcript created by a call cancelled during its create is deleted too."""
        import assemblyai as aai

        client, transcriber = self._sdk()
        config = transcripts.transcription_config(
            request.options, speech_models(model, self.settings.speech_models),
            always_diarize=self.settings.speaker_labels,
        )
        audio_url = await self._upload(transcriber, media, ctx)
        create = aai.types.TranscriptRequest(audio_url=audio_url, **config.raw.dict(exclude_none=True))
        submitted = await self._create(client, create, media, ctx)
        log.debug("assemblyai transcript %s submitted (request %s)", submitted.id, ctx.request_id)
        try:
            response = await self._poll(client, submitted, model, ctx)
        finally:  # read, failed or cancelled: AssemblyAI need keep it no longer
            self._delete_later(client, submitted.id, ctx.request_id, media.url)
        if response.status == aai.TranscriptStatus.error:
            raise errors.transcript_failed(self.name, response.id, response.error, self.settings.key)
        return response

    async def _poll(
        self, client: assemblyai.AsyncClient, submitted: assemblyai.types.TranscriptResponse, model: ModelInfo,
        ctx: CallContext,
    ) -> assemblyai.types.TranscriptResponse:
        """Fetch the ``submitted`` transcript until it is completed or failed, sleeping between polls.

        The transcript runs on, and is billed, at AssemblyAI whatever its polls meet, so a poll that fails
        in passing (5xx, 429, no answer: :func:`errors.is_transient`) is retried rather than transcribed
        elsewhere a second time, as :class:`router.polling.PollFailures` says: after the poll interval, or
        the Retry-After of a 429 or 503 when longer, until the call's deadline passes or
        :data:`router.polling.MAX_POLL_FAILURES` polls in a row failed (whatever the deadline); then its
        error is raised. Any other failure (a refused key, a 400, an unknown transcript) is raised at once.

        Sleeps end :data:`DEADLINE_HEADROOM_SECONDS` before the call's deadline, polls half of it before
        (:meth:`_time_left`): a transcript still ``queued`` or ``processing`` then ends the call with
        :func:`errors.poll_timed_out` (PROVIDER_TIMEOUT, naming the transcript and its status) before the
        router cuts it at the deadline.
        Cancelling the call stops the loop at its next await.

        Each poll is the SDK's ``async_api.get_transcript`` in two steps: the request (:meth:`_fetch`, bounded as
        above), then the SDK's parse of the answer (:meth:`_parse`: a long one in a worker thread). A parse still
        running at the deadline is not cut short by the plugin: the router cuts the call then.
        """
        import assemblyai as aai

        transcript_id = submitted.id
        if not transcript_id:
            raise ProviderUnavailable(self.name, "bad answer from the AssemblyAI API: a transcript without an id")
        status = str(getattr(submitted.status, "value", submitted.status) or "queued")
        started = time.monotonic()
        failures = PollFailures(self.settings.poll_interval)
        last_failure = ""  # why the latest retried poll failed
        last_error: ProviderError | None = None  # its error
        while True:
            bound = asyncio.timeout(self._time_left(ctx, DEADLINE_HEADROOM_SECONDS / 2))  # None: no deadline
            try:
                async with bound:
                    answer = await self._fetch(client, transcript_id)
                response = await self._parse(answer)
            except TimeoutError:
                if not bound.expired():  # not the time left's (httpx raises its own timeouts)
                    raise
                if last_error is not None:  # polls failing: AssemblyAI's API is the cause, not a job too long
                    raise errors.with_note(last_error, f"transcript {transcript_id}: status polls failing "
                                                       f"({failures.in_a_row} in a row) when the call's deadline "
                                                       f"passed, after {time.monotonic() - started:.1f}s of "
                                                       "polling") from None
                raise errors.poll_timed_out(self.name, model.name, transcript_id, status,
                                            time.monotonic() - started) from None
            except Exception as exc:
                if not errors.is_mappable(exc):
                    raise
                error = errors.poll_failed(exc, self.name, transcript_id, self.settings.key, self.settings.base_url)
                wait = self._poll_retry_wait(exc, error, transcript_id, failures, last_failure,
                                             self._time_left(ctx, DEADLINE_HEADROOM_SECONDS), started)
                log.warning("%s: status poll of transcript %s failed (%d in a row, request %s): %s; "
                            "polling again in %.2fs", self.name, transcript_id, failures.in_a_row,
                            ctx.request_id, errors.detail(error), wait)
                last_failure, last_error = errors.detail(error), error
                await asyncio.sleep(wait)
                continue
            failures.succeeded()
            last_failure, last_error = "", None
            if response.status in (aai.TranscriptStatus.completed, aai.TranscriptStatus.error):
                return response
            status = str(getattr(response.status, "value", response.status))
            left = self._time_left(ctx, DEADLINE_HEADROOM_SECONDS)
            if left is not None and left <= 0:
                raise errors.poll_timed_out(self.name, model.name, transcript_id, status,
                                            time.monotonic() - started)
            interval = self.settings.poll_interval
            await asyncio.sleep(interval if left is None else min(interval, left))

    @staticmethod
    async def _fetch(client: assemblyai.AsyncClient, transcript_id: str) -> httpx.Response:
        """``GET /v2/transcript/<id>`` on the SDK's HTTP client, refused as the SDK's
        ``async_api.get_transcript`` refuses it (its ``TranscriptError``, with the status), before its parse."""
        from assemblyai.prerecorded.v2._base import _raise_for_status
        from assemblyai.prerecorded.v2.api import ENDPOINT_TRANSCRIPT

        answer = await client.http_client.get(f"{ENDPOINT_TRANSCRIPT}/{transcript_id}")
        _raise_for_status(answer, f"failed to retrieve transcript {transcript_id}")
        return answer

    async def _parse(self, answer: httpx.Response) -> assemblyai.types.TranscriptResponse:
        """The SDK's parse of a status answer (:func:`transcripts.parse_response`): pydantic validates every
        word of a completed transcript, twice (1.5-2 s of CPU for an hour of conversation), which on the event
        loop would stall every other call and the health checks meanwhile. So an answer of
        :data:`OFF_LOOP_PARSE_BYTES` or more is parsed in a worker thread, one at a time (several at once
        would only share the GIL, and starve the event loop's thread of it); a smaller one at once."""
        return await self._off_loop(len(answer.content) >= OFF_LOOP_PARSE_BYTES, transcripts.parse_response, answer)

    async def _off_loop(self, long: bool, work: Callable[..., T], *args: Any) -> T:
        """``work(*args)``: in a worker thread, one at a time per provider, when ``long``; else at once."""
        if not long:
            return work(*args)
        async with self._parsing:
            return await asyncio.to_thread(work, *args)

    @staticmethod
    def _time_left(ctx: CallContext, headroom: float) -> float | None:
        """Seconds left for polling: the call's time left (:meth:`CallContext.time_remaining`: its client's
        deadline, or the daemon's server.max_call_seconds if sooner) less ``headroom``, never negative;
        None without a deadline."""
        remaining = ctx.time_remaining()
        return None if remaining is None else max(0.0, remaining - headroom)

    def _poll_retry_wait(self, exc: Exception, error: ProviderError, transcript_id: str, failures: PollFailures,
                         last_failure: str, left: float | None, started: float) -> float:
        """Seconds to wait before polling ``transcript_id`` again after its poll failed with ``exc`` (mapped
        to ``error``), counted in ``failures``, with ``left`` seconds left for polling (see :meth:`_time_left`);
        or ``error`` raised when the poll is not to be retried.

        When the deadline passes while polls fail, the last poll's error is raised rather than
        :func:`errors.poll_timed_out`: the transcript's status is then unknown, and the cause to report
        is AssemblyAI's failing API (UNAVAILABLE, or RATE_LIMITED with its Retry-After), not a call
        deadline too short for the job.
        """
        if not errors.is_transient(exc):
            if last_failure:
                errors.with_note(error, f"after {failures.in_a_row} failed status poll(s) retried, the last: "
                                        f"{last_failure}")
            raise error from exc
        wait = failures.failed(errors.retry_after(exc), left)
        if wait is not None:
            return wait
        if failures.out_of_time(left):
            raise errors.with_note(
                error, f"transcript {transcript_id}: status polls failing ({failures.in_a_row} in a row) when the "
                       f"call's deadline passed, after {time.monotonic() - started:.1f}s of polling") from exc
        raise errors.with_note(error, f"transcript {transcript_id}: {failures.in_a_row} failed status polls in a "
                                      "row, giving up; it may still complete at AssemblyAI") from exc

    async def _upload(self, transcriber: assemblyai.AsyncTranscriber, media: Media, ctx: CallContext) -> str:
        """The URL AssemblyAI reads ``media`` from: its own http(s) URL, else that of the file uploaded
        (``POST /v2/upload``, streamed by the SDK).

        A call cancelled (a client's cancel, its deadline) during the upload logs a WARNING when
        ``delete_transcripts``: AssemblyAI may hold the file (all of it sent, its answer not read), and has no
        call to delete an upload; its own schedule removes it."""
        source = transcripts.audio_source(media, self.name)
        if media.url:
            return str(source)
        try:
            return await transcriber.upload_file(source)
        except asyncio.CancelledError:
            if self.settings.delete_transcripts:
                log.warning("%s: call given up (cancelled, or past its deadline) while uploading its media "
                            "(request %s): the file may stay at AssemblyAI (no API call deletes an upload) "
                            "until AssemblyAI's retention removes it", self.name, ctx.request_id)
            raise
        except Exception as exc:
            self._raise_mapped(exc)

    async def _create(self, client: assemblyai.AsyncClient, create: assemblyai.types.TranscriptRequest,
                      media: Media, ctx: CallContext) -> assemblyai.types.TranscriptResponse:
        """``POST /v2/transcript``: the transcript created (status ``queued``).

        The create runs in a task of its own, shielded from the call's cancellation: when the call is
        cancelled (a client's cancel, its deadline) while the create is in flight, the cancellation is raised
        at once, and :meth:`_delete_when_created` lets the create end (AssemblyAI carries it out anyway), then
        deletes the transcript it made, as any other transcript of the call would be."""
        task = asyncio.get_running_loop().create_task(self._send_create(client, create, ctx.request_id))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            self._in_background(self._delete_when_created(client, task, ctx.request_id, media.url),
                                _CREATE_TASK + ctx.request_id)
            raise

    async def _send_create(self, client: assemblyai.AsyncClient, create: assemblyai.types.TranscriptRequest,
                           request_id: str) -> assemblyai.types.TranscriptResponse:
        """The create's HTTP request through the SDK, its failure mapped here, in the task that received the
        answer (whose Retry-After :func:`errors.remember_response` kept). A create whose answer never came
        (:func:`errors.answer_lost`) logs a WARNING when ``delete_transcripts``: AssemblyAI may have made a
        transcript whose id is unknown, so it cannot be deleted."""
        from assemblyai.prerecorded.v2 import async_api

        try:
            return await async_api.create_transcript(client.http_client, create)
        except Exception as exc:
            if errors.answer_lost(exc):
                self._warn_transcript_left(request_id, f"no answer to the transcript create ({type(exc).__name__})")
            self._raise_mapped(exc)

    async def _delete_when_created(self, client: assemblyai.AsyncClient,
                                   create: asyncio.Task[assemblyai.types.TranscriptResponse], request_id: str,
                                   media_url: str | None) -> None:
        """Wait for the create of a cancelled call (``create``, at most ``timeout`` seconds more), then delete
        the transcript it made (when ``delete_transcripts``). A create not answered by then is given up with
        a WARNING; one that failed was logged by :meth:`_send_create` if it may have made a transcript."""
        try:
            response = await asyncio.wait_for(create, self.settings.timeout)
        except TimeoutError:
            self._warn_transcript_left(
                request_id, f"no answer to the transcript create within {self.settings.timeout:g}s of the call's "
                            "cancellation")
            return
        except Exception:  # refused, or no answer (then logged by _send_create): nothing to delete
            return
        if self.settings.delete_transcripts and response.id:
            current = asyncio.current_task()
            if current is not None:  # aclose names what it gives up by the task's name
                current.set_name(_DELETE_TASK + response.id)
            log.debug("%s: transcript %s created for a cancelled call (request %s), deleting it", self.name,
                      response.id, request_id)
            await self._delete(client, response.id, request_id, media_url)

    def _warn_transcript_left(self, request_id: str, why: str) -> None:
        """Log (when ``delete_transcripts``) that a transcript of ``request_id`` may stay at AssemblyAI,
        its id unknown."""
        if self.settings.delete_transcripts:
            log.warning("%s: %s (request %s): a transcript may have been left at AssemblyAI, its id unknown, "
                        "so it is not deleted (look for it in the account's transcript list)", self.name, why,
                        request_id)

    def _delete_later(self, client: assemblyai.AsyncClient, transcript_id: str | None, request_id: str,
                      media_url: str | None = None) -> None:
        """Delete ``transcript_id`` at AssemblyAI (when ``delete_transcripts``) in a task of its own, so the
        call's answer, or its error, never waits for the delete; :meth:`aclose` waits for those not done."""
        if not self.settings.delete_transcripts or not transcript_id:
            return
        self._in_background(self._delete(client, transcript_id, request_id, media_url), _DELETE_TASK + transcript_id)

    def _in_background(self, work: Coroutine[Any, Any, None], name: str) -> None:
        """Run ``work`` in a task called ``name``, kept in :attr:`_deletes` until it ends (:meth:`aclose`
        waits for it)."""
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._deletes.add(task)
        task.add_done_callback(self._deletes.discard)

    async def _delete(self, client: assemblyai.AsyncClient, transcript_id: str, request_id: str,
                      media_url: str | None) -> None:
        """``DELETE /v2/transcript/<id>`` through the SDK: AssemblyAI then drops the transcript's text, words,
        speakers and ``audio_url`` (and, its API reference says, the file uploaded for it). Best effort: a failure is logged at WARNING
        (naming the transcript, never the key or a URL's query), as the call was already answered."""
        from assemblyai.prerecorded.v2 import async_api

        try:
            await async_api.delete_transcript(client.http_client, transcript_id)
        except Exception as exc:
            if errors.is_mappable(exc):
                error = errors.map_sdk_error(exc, self.name, self.settings.key, self.settings.base_url)
                reason = errors.detail(errors.hide_media_url(error, media_url) if media_url else error)
            else:
                reason = type(exc).__name__
            log.warning("%s: could not delete transcript %s at AssemblyAI (request %s): %s; it stays in the "
                        "account until deleted there", self.name, transcript_id, request_id, reason)
            return
        log.debug("%s: transcript %s deleted at AssemblyAI (request %s)", self.name, transcript_id, request_id)

    def _raise_mapped(self, exc: Exception) -> NoReturn:
        """Raise the provider error for an SDK failure, or ``exc`` itself if it is none of the SDK's."""
        if errors.is_mappable(exc):
            raise errors.map_sdk_error(exc, self.name, self.settings.key, self.settings.base_url) from exc
        raise exc

    async def aclose(self) -> None:
        """Close the SDK client's connection pool (safe to call more than once), once the transcript deletes
        still running have ended, waiting for them at most :data:`DELETE_WAIT_SECONDS` (the daemon stops
        within 5 s): those left then are cancelled, each named in a WARNING."""
        if self._deletes:
            _, pending = await asyncio.wait(set(self._deletes), timeout=DELETE_WAIT_SECONDS)
            for task in pending:
                task.cancel()
                name = task.get_name()
                if name.startswith(_CREATE_TASK):
                    self._warn_transcript_left(name.removeprefix(_CREATE_TASK),
                                               "closing before the transcript create of a cancelled call answered")
                else:
                    log.warning("%s: closing before transcript %s was deleted at AssemblyAI; it stays in the "
                                "account until deleted there", self.name, name.removeprefix(_DELETE_TASK))
        client, self._client, self._transcriber = self._client, None, None
        if client is not None:
            await client.aclose()
