"""The ``local`` provider: offline extraction, never a made-up answer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import aclosing, contextmanager
from typing import Any

from router import (
    FEATURE_EXTRACTION_ONLY,
    OUTPUT_TEXT,
    OUTPUT_TRANSCRIPT,
    CallContext,
    Media,
    Modality,
    ModelInfo,
    Price,
    Provider,
    ProviderBadRequest,
    ProviderError,
    ProviderEvent,
    ProviderInputTooLarge,
    ProviderUnsupportedInput,
    Request,
    Task,
    TextDelta,
    Transcript,
    TranscriptReady,
    Usage,
    UsageReport,
)
from router.errors import public_url

from .asr import LANGUAGES, check_language
from .audio import MAX_AUDIO_SECONDS, AudioTooLong, DecodeError, NoAudioTrack
from .extract import Extractor, Section, UnreadableMedia, audio_sections, label
from .heard import HeardInCall
from .memory import OutOfMemory, activity, memory_cause
from .models import EXTRACT_MIME_TYPES
from .pdf import PdfError
from .pool import WorkerPool
from .settings import LocalSettings

#: The first line of every non-transcription answer, for the person who reads it: a bridge's text, which
#: goes into another model's prompt (framed by the router as the media's text), has none.
HEADER = "[Extracted by local provider — no language model was used]"
#: Local cannot tell why it was used (a provider is told nothing of the route, of other providers' failures
#: or of the config's keys and disabled plugins), so this names the reasons without advising any (advice to set
#: a cloud key was wrong under a policy disabling cloud plugins, and during an outage with keys set).
NOT_ANSWERED = (
    "The question was not answered: the local provider only extracts text from media. "
    "No language model answered it: the route says why the local provider was used (a rule or the "
    "default that names it, no language model usable, those tried failed, or the input is longer than "
    "their contexts): read its notes and trace."
)
#: What follows the header of a turn without media in a session whose earlier turns have some: true whatever
#: answered those turns (a language model, or local, whose extraction the session does not keep as the reply).
NO_NEW_MEDIA = ("[No new media to extract]\nThis turn has no media, and the local provider does not extract "
                "the media of the session's earlier turns again.")
#: The same when the client chose the provider itself; ``{hint}`` is the hint that named it.
NOT_ANSWERED_CHOSEN = (
    "The question was not answered: the client asked for the local provider ({hint}), which only "
    "extracts text from media, so no language model was asked. Leave the choice to the router's rules, "
    "or name a provider with a language model, to have the question answered."
)
#: The Python modules the provider needs at call time.
REQUIRED_MODULES = ("av", "pocketsphinx", "rapidocr_onnxruntime", "pypdf", "PIL", "numpy")

EXTRACT_MODEL = ModelInfo(
    name="extract",
    inputs=frozenset(Modality),
    outputs=frozenset({OUTPUT_TEXT, OUTPUT_TRANSCRIPT}),
    features=frozenset({FEATURE_EXTRACTION_ONLY}),
    context_tokens=1_000_000,
    price=Price(),
    input_mime_types=EXTRACT_MIME_TYPES,
    url_inputs=frozenset(),  # offline: media given by URL are refused (_check_local), so routing passes it over
    languages=frozenset(LANGUAGES),  # its speech model is en-US (check_language): routing passes it over for others
)


class LocalProvider(Provider):
    """Extracts text from PDFs, images (OCR), audio (speech to text) and video, offline.

    Settings (``providers.local``): ``workers`` (threads for CPU work, default 2),
    ``ocr_frame_interval_seconds`` (video frame sampling, default 2) and ``max_audio_seconds`` (the
    longest audio transcribed, default an hour, which its model declares: routing skips it for longer media).
    """

    name = "local"
    required_modules = REQUIRED_MODULES
    models = [EXTRACT_MODEL]

    def __init__(self, workers: int = 2, frame_interval: float = 2.0,
                 max_audio_seconds: float = MAX_AUDIO_SECONDS) -> None:
        self.pool = WorkerPool(workers)
        self.extractor = Extractor(frame_interval, max_audio_seconds)
        self.heard = HeardInCall()

    @classmethod
    def from_settings(cls, settings: LocalSettings | Mapping[str, Any] | None) -> LocalProvider:
        """Build from the ``providers.local`` config section (raises ``ConfigError`` on bad values)."""
        if not isinstance(settings, LocalSettings):
            settings = LocalSettings.load(cls.name, settings)
        return cls(workers=settings.workers, frame_interval=settings.ocr_frame_interval_seconds,
                   max_audio_seconds=settings.max_audio_seconds)

    def prepare(self) -> None:
        """Nothing: each kind of media imports what it needs (OCR, speech, PDF: about 100 MB together) in
        the provider's worker threads, where its work runs, when it first comes."""

    async def generate(
        self, request: Request, model: ModelInfo, ctx: CallContext
    ) -> AsyncIterator[ProviderEvent]:
        """Transcribe (the newest message's audio and video), or extract the text of this turn's media.

        In a session, earlier turns' media are not extracted again (an hour of speech is not decoded again
        on every follow-up question): a turn without media says so (:data:`NO_NEW_MEDIA`). A clip
        transcribed earlier in the same call (as a bridge, before the route fell back to this provider) is
        not decoded again: its transcript is taken (:class:`mmrouter_local.heard.HeardInCall`), and its
        seconds are not counted again in the usage. A bridge's text (``request.bridging``: for the prompt of
        a model) is the sections alone, without :data:`HEADER`, which is for the person reading an answer.

        Each section is a text delta of its own, sent as soon as it is read: a PDF's or a multi-page TIFF's
        pages one by one (a stream shows the first page of a scan while the next ones are OCRed)."""
        if request.effective_task is Task.TRANSCRIBE:
            check_language(request.options.language, self.name)
            async for event in self._transcribe(request.current_media(), ctx):
                yield event
            return
        media = request.turn_media()
        for item in media:
            self._check_local(item)
        if any(m.modality in (Modality.AUDIO, Modality.VIDEO) for m in media):  # speech to read
            check_language(request.options.language, self.name)
        audio_seconds = 0.0
        question = "\n".join(p.text for p in request.parts() if p.text and p.text.strip())
        intro = "" if request.bridging else HEADER + ("\n" + self._not_answered(request) if question else "")
        if not media and len(request.media()) > 0:
            intro += "\n\n" + NO_NEW_MEDIA
        elif not media:
            intro += "\n\n[No media to extract]\nThe request has only text, which is left as it is."
        if not media:
            yield TextDelta(intro)
        # The intro waits for the first section: a failure before any text (audio over max_audio_seconds, an
        # encrypted PDF, a corrupt file) lets the route's fallback answer a stream too. A document's or an
        # image's pages are sent as they are read (a scan's OCR takes seconds a page); a failure after some
        # were sent ends the answer with the error (no fallback follows text already sent).
        pending, sent = intro, False
        for index, item in enumerate(media):
            name = label(item, index)
            if item.modality in (Modality.DOCUMENT, Modality.IMAGE):
                sections = self._pages(item, name)
            else:
                found, transcript, decoded = await self._extract(item, name, ctx)
                if transcript is not None:
                    audio_seconds += transcript.duration_seconds if decoded else 0.0
                    yield TranscriptReady(transcript)  # the structured transcript too, with times
                sections = _each(found)
            async with aclosing(sections):  # a call left mid-document stops reading its pages at once
                async for section in sections:
                    separator = "\n\n" if sent or pending else ""  # between the sections, and after the intro
                    yield TextDelta(pending + separator + section.render())
                    pending, sent = "", True
        yield UsageReport(Usage(audio_seconds=round(audio_seconds, 2)))

    def _not_answered(self, request: Request) -> str:
        """Why the question got no answer. A request whose hints name this provider (or its model, without
        a provider) was routed here by the client's own choice: an override has no fallbacks, and a bridge
        is sent its media without hints, so only the override reaches here with them. Otherwise this
        provider cannot tell a rule's choice from a fallback: the route says which it was."""
        hints = request.hints
        if hints.provider == self.name:
            return NOT_ANSWERED_CHOSEN.format(hint=f"hints.provider={self.name}")
        if not hints.provider and hints.model in {m.name for m in self.models}:
            return NOT_ANSWERED_CHOSEN.format(hint=f"hints.model={hints.model}")
        return NOT_ANSWERED

    def _check_local(self, media: Media) -> None:
        """Refuse media given by URL: the provider works offline. The refusal is of the form the media
        comes in, :class:`ProviderUnsupportedInput` (retryable): the route's next target or bridge, such
        as a cloud provider that fetches URLs, is tried."""
        if media.data is None and media.path is None:
            raise ProviderUnsupportedInput(
                self.name, f"media {public_url(media.url or '')} is given by URL; the local provider works "
                "offline and cannot fetch it: upload it with UploadMedia instead")

    async def _transcribe(self, media: list[Media], ctx: CallContext) -> AsyncIterator[ProviderEvent]:
        """Transcribe every audio and video of ``media`` in order, each recording's transcript (its own times)
        yielded as soon as it is made, as the cloud transcribers do: the router merges them into the answer's
        (:meth:`Transcript.merged`) and makes the answer's text of it. Silence gives no text: an empty answer,
        as a cloud transcriber's (the router's route notes say no speech was found), not words the speaker did
        not say."""
        speech = [m for m in media if m.modality in (Modality.AUDIO, Modality.VIDEO)]
        if not speech:
            raise ProviderBadRequest(self.name, "transcribe needs audio or video input")
        for item in speech:
            self._check_local(item)
        audio_seconds = 0.0
        for index, item in enumerate(speech):
            heard = self.heard.get(ctx, item)
            if heard is None:
                heard = await self._run(label(item, index), self.extractor.transcribe, item)
                self.heard.put(ctx, item, heard)
                audio_seconds += heard.duration_seconds
            yield TranscriptReady(heard)
        yield UsageReport(Usage(audio_seconds=round(audio_seconds, 2)))

    async def _pages(self, media: Media, name: str) -> AsyncIterator[Section]:
        """The sections of a document or an image, each as soon as its page is read: one pool job reads them
        all in turn, and stops at its next page once the iteration is closed (see :meth:`WorkerPool.stream`).
        Failures are those of :meth:`_run`."""
        read = self.extractor.iter_document if media.modality is Modality.DOCUMENT else self.extractor.iter_image
        with self._failures(name):
            async with aclosing(self.pool.stream(read, media, name)) as sections:
                async for section in sections:
                    yield section

    async def _extract(self, media: Media, name: str,
                       ctx: CallContext) -> tuple[list[Section], Transcript | None, bool]:
        """The sections for one audio or video, its transcript, and whether that transcript was decoded now
        (False: made earlier in this call, see :class:`mmrouter_local.heard.HeardInCall`)."""
        ex = self.extractor
        heard = self.heard.get(ctx, media)
        if media.modality is Modality.AUDIO:
            if heard is not None:
                return audio_sections(heard, name), heard, False
            transcript, sections = await self._run(name, ex.audio, media, name)
            self.heard.put(ctx, media, transcript)
            return sections, transcript, True
        if media.modality is Modality.VIDEO:
            # Sound and pictures run as two jobs: with two workers they overlap.
            sound = (asyncio.ensure_future(self._run(name, ex.audio, media, name, "Video")) if heard is None
                     else _done((heard, audio_sections(heard, name, "Video"))))
            pictures = asyncio.ensure_future(self._run(name, ex.video_frames, media, name))
            try:
                (transcript, speech), frames = await asyncio.gather(sound, pictures)
            except BaseException:  # one failed (or the call was cancelled): the other must not run on for nothing
                for job in (sound, pictures):
                    job.cancel()
                await asyncio.gather(sound, pictures, return_exceptions=True)
                raise
            if transcript is not None and heard is None:
                self.heard.put(ctx, media, transcript)
            return speech + frames, transcript, heard is None
        raise ProviderBadRequest(self.name, f"{name}: unsupported modality {media.modality.value}")

    async def _run(self, name: str, fn: Any, *args: Any) -> Any:
        """Run blocking extraction of media ``name`` on the pool; unreadable input is INVALID_ARGUMENT, audio
        too long to transcribe INPUT_TOO_LARGE (a fallback, such as a cloud transcriber, may take it).

        A lack of memory or address space anywhere in the failure's chain (a library that cannot be mapped,
        a thread that cannot start, a decoder's EAGAIN or ENOMEM, a ``MemoryError``), even one wrapped as
        unreadable input, is :class:`mmrouter_local.memory.OutOfMemory`: retryable UNAVAILABLE, not the
        file's fault nor the plugin's bug."""
        with self._failures(name):
            return await self.pool.run(fn, *args)

    @contextmanager
    def _failures(self, name: str) -> Iterator[None]:
        """Raise a failure of the extraction of media ``name`` in the block as the provider error it stands
        for (see :meth:`_run`)."""
        try:
            yield
        except ProviderError:
            raise
        except AudioTooLong as e:
            raise ProviderInputTooLarge(self.name, f"cannot transcribe {name}: {e}") from e
        except NoAudioTrack as e:  # a video without sound asked for its transcript (or "audio" without any)
            raise ProviderBadRequest(self.name, f"cannot transcribe {name}: {e}") from e
        except Exception as e:
            cause = memory_cause(e)
            if cause is not None:
                raise OutOfMemory(activity(cause, name), cause) from e
            if isinstance(e, (DecodeError, PdfError, UnreadableMedia)):
                raise ProviderBadRequest(self.name, f"cannot read {name}: {e}") from e
            raise

    async def aclose(self) -> None:
        self.pool.close()
        await asyncio.to_thread(self.extractor.asr.close)  # its decoder's process (a reload makes another)


async def _each(sections: list[Section]) -> AsyncIterator[Section]:
    """``sections`` one by one, as :meth:`LocalProvider._pages` gives a document's."""
    for section in sections:
        yield section


def _done(result: Any) -> asyncio.Future:
    """A future already holding ``result``."""
    future: asyncio.Future = asyncio.get_running_loop().create_future()
    future.set_result(result)
    return future
