"""A provider plugin that lives in tests only: scripted by the request's text.

Text commands in the last user message:
- ``FAIL:<status>`` raises the ProviderError an HTTP status maps to (429 carries retry_after 7);
  ``FAIL:<status>@<model>`` fails only on that model; ``FAIL:503@echo,400@docs`` each model its own way.
- ``LEAK`` raises an error whose message carries the configured api_key (a careless plugin);
  ``LEAK@<model>`` only on that model.
- ``PARTIAL:<status>[@<model>]`` sends some text, then fails as ``FAIL`` does (a stream broken mid-answer).
- ``CRASH`` raises a plain RuntimeError (a buggy plugin).
- ``GIVEUP[:<status>][@<model>]`` waits until 50 ms before the call's deadline, then fails as a plugin
  whose own timeout was cut to the deadline does (503, "did not answer in time"), or with ``status``.
- ``ENDLESS`` streams text that never ends (a broken or hostile upstream).
- ``CUT`` answers only ``max_output_tokens`` * 4 characters, with finish reason LENGTH;
- ``SLOW:<seconds>`` sleeps; it writes ``started-<request id>`` into ``settings['marker_dir']``
  when it begins and ``cancelled-<request id>`` when cancelled, so tests can prove
  cancellation reached the provider.
Anything else is echoed back in small deltas, with counts of the media received.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

import router
from router import (
    FEATURE_DIARIZATION,
    FEATURE_STREAMING,
    OUTPUT_TEXT,
    OUTPUT_TRANSCRIPT,
    Modality,
    ModelInfo,
    Price,
)

ALL = frozenset(Modality)


class ScriptedProvider(router.Provider):
    """Echoes, fails, crashes or sleeps as the request's text says."""

    def __init__(self, name: str, settings: dict) -> None:
        self.name = name
        self.settings = settings
        self.models = [
            ModelInfo("echo", frozenset({Modality.TEXT, Modality.IMAGE}), price=Price(1.0, 2.0)),
            ModelInfo("docs", frozenset({Modality.TEXT, Modality.IMAGE, Modality.DOCUMENT}), price=Price(3.0, 15.0)),
            ModelInfo("omni", ALL, price=Price(1.0, 4.0), context_tokens=1_000_000),
            ModelInfo("small", frozenset({Modality.TEXT}), context_tokens=60, price=Price(0.1, 0.1),
                      default_max_output_tokens=8),
            ModelInfo("ears", frozenset({Modality.AUDIO, Modality.VIDEO}), outputs=frozenset({OUTPUT_TRANSCRIPT}),
                      features=frozenset({FEATURE_STREAMING}), price=Price(per_audio_hour=0.36)),
            ModelInfo("diarizer", frozenset({Modality.AUDIO, Modality.VIDEO}),
                      outputs=frozenset({OUTPUT_TRANSCRIPT}), features=frozenset({FEATURE_DIARIZATION}),
                      price=Price(per_audio_hour=0.9)),
        ]

    def prepare(self) -> None:
        """Blocks ``settings['prepare_seconds']`` (a slow SDK import), after writing ``preparing`` (the name of
        the thread it runs in) into ``settings['marker_dir']``."""
        seconds = float(self.settings.get("prepare_seconds", 0))
        if seconds:
            if self.settings.get("marker_dir"):
                Path(self.settings["marker_dir"], "preparing").write_text(threading.current_thread().name)
            time.sleep(seconds)

    def unconfigured_reason(self) -> str | None:
        if self.settings.get("api_key") in (None, ""):
            return f"{self.name.upper()}_API_KEY is not set"
        return None

    async def generate(self, request, model, ctx):
        text = request.messages[-1].text.strip()
        if text.startswith("FAIL:"):
            for directive in text[len("FAIL:"):].split(","):  # FAIL:503@echo,400@docs: each model its own
                status, _, only_model = directive.partition("@")
                if only_model in ("", model.name):
                    raise router.provider_error_from_status(self.name, int(status), f"scripted failure {status}",
                                                            retry_after=7 if status == "429" else None)
        if text.startswith("PARTIAL:"):  # text first, then the failure: a stream that breaks mid-answer
            status, _, only_model = text[len("PARTIAL:"):].partition("@")
            if only_model in ("", model.name):
                yield router.TextDelta(f"{self.name}/{model.name} began ")
                raise router.provider_error_from_status(self.name, int(status), f"scripted failure {status} mid-answer")
        if text == "LEAK" or text == f"LEAK@{model.name}":
            raise RuntimeError(f"upstream refused key {self.settings.get('api_key')}")
        if text.startswith("GIVEUP"):
            status, _, only_model = text[len("GIVEUP"):].removeprefix(":").partition("@")
            if only_model in ("", model.name):
                if ctx.deadline is not None:
                    await asyncio.sleep(max(0.0, ctx.deadline - time.monotonic() - 0.05))
                raise router.provider_error_from_status(self.name, int(status or 503), "the API did not answer in time")
        if text == "CRASH":
            raise RuntimeError("scripted crash")
        if text == "SURROGATE":  # text protobuf cannot send: a lone surrogate (as pypdf reads from odd PDFs)
            yield router.TextDelta("bad \ud83d text")
            yield router.UsageReport(router.Usage(input_tokens=1, output_tokens=1), router.FinishReason.STOP)
            return
        if text == "ENDLESS":  # a broken upstream that never stops: 64 KiB deltas, forever
            while True:
                yield router.TextDelta("z" * 65536)
                await asyncio.sleep(0)
        if text.startswith("SLOW:"):
            marker_dir = self.settings.get("marker_dir")
            if marker_dir:
                Path(marker_dir, f"started-{ctx.request_id}").write_text(text)
            try:
                await asyncio.sleep(float(text.split(":", 1)[1]))
            except asyncio.CancelledError:
                if marker_dir:
                    Path(marker_dir, f"cancelled-{ctx.request_id}").write_text(text)
                raise
        if OUTPUT_TRANSCRIPT in model.outputs and OUTPUT_TEXT not in model.outputs:
            media = request.media()[0]
            diarized = FEATURE_DIARIZATION in model.features
            utterances = [
                router.Utterance("hello there", 0.0, 1.0, "A" if diarized else "", 0.9),
                router.Utterance(f"{len(media.read_bytes())} bytes heard", 1.0, 2.0, "B" if diarized else "", 0.8),
            ]
            plain = " ".join(u.text for u in utterances)
            text_out = router.Transcript.speaker_text(utterances) if diarized else plain
            yield router.TranscriptReady(router.Transcript(text_out, utterances, duration_seconds=2.0))
            yield router.UsageReport(router.Usage(audio_seconds=2.0))
            return
        history = len([m for m in request.messages if m.role is router.Role.USER]) - 1
        counts = {m.value: 0 for m in Modality if m is not Modality.TEXT}
        for media in request.media():
            counts[media.modality.value] += 1
        all_text = " | ".join(p.text for p in request.parts() if p.text)
        reply = (f"{self.name}/{model.name} says: {text} [history={history} "
                 + " ".join(f"{k}={v}" for k, v in counts.items()) + f"] <<{all_text}>>")
        finish = router.FinishReason.STOP
        if "CUT" in text:  # a model that obeys max_output_tokens (4 characters a token) and says it was cut
            reply, finish = reply[:4 * max(1, request.options.max_output_tokens)], router.FinishReason.LENGTH
        step = len(reply) if text.startswith("ONE-DELTA") else 16  # a plugin that sends its text at once
        for i in range(0, len(reply), step):
            yield router.TextDelta(reply[i:i + step])
        yield router.UsageReport(router.Usage(input_tokens=len(all_text) // 4 + 1, output_tokens=len(reply) // 4),
                                 finish)


@router.hookimpl
def register_providers(register, settings):
    register(ScriptedProvider("fake", dict(settings)))


@router.hookimpl
def route_request(request, candidates):
    """Honours ``metadata['pick']`` when it names a usable target."""
    pick = request.metadata.get("pick")
    return pick if pick in candidates else None


def _audit(line: str) -> None:
    path = os.environ.get("MMROUTER_TESTKIT_AUDIT")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


@router.hookimpl
def on_request(request):
    _audit(f"request {request.messages[-1].text}")


@router.hookimpl
def on_response(request, answer):
    _audit(f"response {answer.route.provider}/{answer.route.model} {answer.text[:20]}")
