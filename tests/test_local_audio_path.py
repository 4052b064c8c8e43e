"""The ``local`` provider's speech path under load and failure: a long transcription does not hold up other
extractions, a killed decoder is a retryable error, silence and non-English requests are said so.

Speech comes from espeak-ng (see tests/fakes/local.py) and is decoded by the real pocketsphinx decoder.
"""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
from media_factory import mp4, pdf, repeated_wav, wav_of
from mmrouter_local import LocalProvider

from router import Media, Message, Modality, Options, Part, Request, Role, Task, TextDelta, TranscriptReady
from router.errors import ProviderUnavailable, ProviderUnsupportedInput
from router.testing import collect
from tests.fakes import local as media

needs_espeak = pytest.mark.skipif(media.ESPEAK is None, reason="espeak-ng is not installed (apt-get install espeak-ng)")

PANGRAM = "the quick brown fox jumps over the lazy dog"
CALL = "please call me tomorrow morning at nine"
#: The longest any step below is waited for: a broken fix fails the test instead of hanging it.
BOUND = 120.0


def ask(*items: Media, task: Task = Task.AUTO, language: str = "") -> Request:
    parts = [Part(text="what does it say?")] if task is not Task.TRANSCRIBE else []
    return Request([Message(Role.USER, [*parts, *(Part(media=m) for m in items)])],
                   Options(task=task, language=language))


def text_of(events: list) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def audio(data: bytes, name: str = "") -> Media:
    return Media(Modality.AUDIO, "audio/wav", data=data, filename=name)


async def start_long_transcription(provider: LocalProvider) -> asyncio.Future:
    """A call transcribing about 80 s of speech, returned once its decoding is under way."""
    long = repeated_wav(media.speech_wav(PANGRAM), 20)
    asr = provider.extractor.asr
    before = asr.pieces_decoded
    call = asyncio.ensure_future(collect(provider, ask(audio(long, "long.wav"), task=Task.TRANSCRIBE),
                                         provider.models[0]))
    for _ in range(int(BOUND / 0.01)):
        if asr.pieces_decoded > before or call.done():
            break
        await asyncio.sleep(0.01)
    assert asr.pieces_decoded > before and not call.done()
    return call


async def stop(call: asyncio.Future) -> None:
    call.cancel()
    await asyncio.gather(call, return_exceptions=True)


@needs_espeak
async def test_other_extractions_run_while_a_long_transcription_holds_the_decoder_and_another_waits() -> None:
    """A transcription held the decoder's lock on a worker thread, and a second audio job waited for it on
    the other worker: a PDF's text layer, an image and a video without sound waited until the long
    transcription ended (an hour for an hour of speech). The second audio job now waits without a worker,
    and a video without sound does not wait for the decoder at all."""
    provider = LocalProvider(workers=2, frame_interval=1.0)
    long_call = second = None
    try:
        long_call = await start_long_transcription(provider)
        second = asyncio.ensure_future(collect(provider, ask(audio(media.speech_wav(CALL)), task=Task.TRANSCRIBE),
                                               provider.models[0], timeout=2 * BOUND))  # it waits for the long one
        await asyncio.sleep(0.3)  # the second audio job gets to its wait for the decoder
        assert not second.done()

        pdf = Media(Modality.DOCUMENT, "application/pdf", data=media.pdf([["Minutes of the zebra meeting"]]),
                    filename="minutes.pdf")
        silent_video = Media(Modality.VIDEO, "video/mp4", data=mp4(), filename="silent.mp4")
        others = asyncio.ensure_future(asyncio.gather(collect(provider, ask(pdf), provider.models[0]),
                                                      collect(provider, ask(silent_video), provider.models[0])))
        done, _ = await asyncio.wait({others, long_call}, timeout=BOUND, return_when=asyncio.FIRST_COMPLETED)
        assert others in done and not long_call.done() and not second.done()
        pdf_events, video_events = others.result()
        assert "Minutes of the zebra meeting" in text_of(pdf_events)
        assert "[Video silent.mp4: no audio track]" in text_of(video_events)

        await stop(long_call)  # the queued transcription then gets the decoder
        (transcript,) = [e.transcript for e in await asyncio.wait_for(second, BOUND)
                         if isinstance(e, TranscriptReady)]
        assert media.word_error_rate(CALL, transcript.text) <= 0.3, transcript.text
    finally:
        for call in (long_call, second):
            if call is not None:
                await stop(call)
        await provider.aclose()


@needs_espeak
async def test_a_killed_speech_decoder_fails_the_call_as_retryable_unavailable() -> None:
    """The decoder's process killed (out of memory, an operator) failed the call as INTERNAL
    PROVIDER_FAILED naming an internal exception; it is UNAVAILABLE, saying to retry, and the retry works."""
    provider = LocalProvider(workers=2)
    try:
        call = await start_long_transcription(provider)
        pid = provider.extractor.asr.decoder_pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(ProviderUnavailable, match=r"local speech decoder stopped.*retry") as caught:
            await asyncio.wait_for(call, BOUND)
        assert caught.value.retryable and caught.value.code.name == "UNAVAILABLE"

        events = await asyncio.wait_for(collect(provider, ask(audio(media.speech_wav(CALL)), task=Task.TRANSCRIBE),
                                                provider.models[0]), BOUND)
        (transcript,) = [e.transcript for e in events if isinstance(e, TranscriptReady)]
        assert media.word_error_rate(CALL, transcript.text) <= 0.3, transcript.text
        assert provider.extractor.asr.decoder_pid != pid
    finally:
        await provider.aclose()


async def test_silence_is_said_to_have_no_speech() -> None:
    """An audio section of silence said "(no text found)", like an image without text; it says what was
    looked for, as a video's frames say "(no on-screen text found)". The transcript itself stays empty."""
    provider = LocalProvider(workers=1)
    try:
        events = await collect(provider, ask(audio(wav_of(b"\x00\x00" * 16000 * 3), "quiet.wav")), provider.models[0])
    finally:
        await provider.aclose()
    assert "[Audio quiet.wav: transcript, 3.0s]\n(no speech found)" in text_of(events)
    (transcript,) = [e.transcript for e in events if isinstance(e, TranscriptReady)]
    assert transcript.text == "" and not transcript.utterances


@pytest.mark.parametrize("language", ["", "en", "en-US", "EN-gb", "en_AU", "eng", "eng-US"])
def test_english_or_no_language_may_be_transcribed(language: str) -> None:
    from mmrouter_local.asr import check_language

    check_language(language)


@pytest.mark.parametrize("language", ["de", "fr-FR", "es", "zh-Hant-TW"])
def test_another_language_is_refused_so_a_fallback_may_take_it(language: str) -> None:
    """The en-US model turned German speech asked for as "de" into confident English words."""
    from mmrouter_local.asr import check_language

    with pytest.raises(ProviderUnsupportedInput, match="transcribes English only") as caught:
        check_language(language)
    assert caught.value.retryable and language in caught.value.message


async def test_a_transcription_of_silence_answers_an_empty_text() -> None:
    """Transcribing silence answers an empty text, as Whisper does (the router's route note says no speech
    was found: test_voice_s21.py); only an extraction's section says "(no speech found)", which an app showing
    the text showed as said. The transcript stays empty."""
    provider = LocalProvider(workers=1)
    try:
        events = await collect(provider, ask(audio(wav_of(b"\x00\x00" * 16000 * 3), "quiet.wav"), task=Task.TRANSCRIBE),
                               provider.models[0])
    finally:
        await provider.aclose()
    assert text_of(events) == ""
    (transcript,) = [e.transcript for e in events if isinstance(e, TranscriptReady)]
    assert transcript.text == ""


@pytest.mark.parametrize("task", [Task.TRANSCRIBE, Task.AUTO])
async def test_speech_asked_for_in_another_language_is_refused_before_any_decoding(task: Task) -> None:
    """German speech sent with language "de" came back as confident English words ("oh so the the the
    encore"), with nothing to say the language was not used. It is refused, so a fallback may take it."""
    provider = LocalProvider(workers=1)
    try:
        with pytest.raises(ProviderUnsupportedInput, match="transcribes English only") as caught:
            await collect(provider, ask(audio(wav_of(b"\x00\x00" * 16000)), task=task, language="de"),
                          provider.models[0])
        assert caught.value.provider == "local" and caught.value.retryable
        assert provider.extractor.asr.decoder_pid is None  # nothing was decoded
        # a PDF is read whatever the spoken language asked for
        events = await collect(provider, ask(Media(Modality.DOCUMENT, "application/pdf", data=pdf(["Report"])),
                                             language="de"), provider.models[0])
        assert "Report" in text_of(events)
    finally:
        await provider.aclose()
