#!/usr/bin/env python
"""CPU per call of each chat plugin, on each of its SDK's transports, against the tests' fakes.

    .venv/bin/python bench/plugin_cpu.py [--plugins openai,anthropic,gemini] [--chunks 4,54] [--calls 400]

Each fake (``tests/fakes/``: the provider's HTTP wire format) runs in its own process on the client
core; the plugin (``<Provider>.generate``, the real SDK) runs in this process pinned to the server core,
``--concurrency`` calls at a time after a warm-up. An answer is ``--chunks`` text deltas. The
variants of one plugin (OpenAI's and Anthropic's ``http_client``, Gemini's ``streaming``) are measured
back to back, ``--rounds`` times (the least is printed). Prints CPU ms per call and
the per-chunk slope between the smallest and largest answer; not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import run  # noqa: E402  (importing it pins this process to the client core; main() moves it)

FAKE = """
import sys, time
sys.path.insert(0, {root!r})
from tests.fakes.{module} import {cls}
with {cls}({args}) as fake:
    fake.{chunks_attr} = [f"tok{{i}} " for i in range({chunks})]
    print(fake.url, flush=True)
    time.sleep(3600)
"""


@dataclasses.dataclass(frozen=True)
class Plugin:
    module: str  # of the fake, in tests/fakes/
    fake_class: str
    fake_args: str
    chunks_attr: str
    model: str
    variants: tuple[str, ...]  # extra settings measured one by one, as "key: value" ("" for none)
    key: str

    def provider(self, url: str, variant: str):  # type: ignore[no-untyped-def]
        import yaml

        settings = {"api_key": self.key, "base_url": url, "timeout": 30} | (yaml.safe_load(f"{{{variant}}}") or {})
        if self.module == "openai":
            from mmrouter_openai import OpenAIProvider

            return OpenAIProvider(settings | {"base_url": f"{url}/v1"})
        if self.module == "anthropic":
            from mmrouter_anthropic import AnthropicProvider

            return AnthropicProvider(settings)
        from mmrouter_gemini import GeminiProvider

        return GeminiProvider.from_settings(settings)


GEMINI_KEY = "AIza-bench-0123456789"
PLUGINS = {
    "openai": Plugin("openai", "FakeOpenAI", "", "reply_chunks", "gpt-4o", ("http_client: aiohttp", "http_client: httpx"),
                     "sk-test-openai-0123456789abcdef"),
    "anthropic": Plugin("anthropic", "FakeAnthropic", "", "chunks", "claude-sonnet-4-6",
                        ("http_client: aiohttp", "http_client: httpx"),
                        "sk-ant-test-0123456789abcdef"),
    "gemini": Plugin("gemini", "FakeGemini", f"api_key={GEMINI_KEY!r}", "reply_chunks", "gemini-2.5-flash",
                     ("streaming: true", "streaming: false"),
                     GEMINI_KEY),
}


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure(plugin: Plugin, url: str, variant: str, calls: int, concurrency: int) -> float:
    """CPU ms per call of ``calls`` streamed calls, ``concurrency`` at a time, after a warm-up."""
    from router import CallContext, Message, Part, Request, Role

    provider = plugin.provider(url, variant)
    model = provider.model(plugin.model)
    assert model is not None
    request = Request([Message(Role.USER, [Part(text="Say something short.")])])

    async def one() -> None:
        async for _event in provider.generate(request, model, CallContext(request_id="bench")):
            pass

    try:
        for _ in range(20):
            await one()
        each = max(1, calls // concurrency)
        started = _cpu()

        async def worker() -> None:
            for _ in range(each):
                await one()

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return (_cpu() - started) * 1000 / (each * concurrency)
    finally:
        await provider.aclose()


def start_fake(plugin: Plugin, chunks: int) -> tuple[subprocess.Popen, str]:
    code = FAKE.format(root=str(ROOT), module=plugin.module, cls=plugin.fake_class, args=plugin.fake_args,
                       chunks_attr=plugin.chunks_attr, chunks=chunks)
    fake = subprocess.Popen(["taskset", "-c", str(run.CLIENT_CORE), sys.executable, "-c", code],
                            stdout=subprocess.PIPE, text=True)
    url = (fake.stdout.readline() if fake.stdout else "").strip()
    if not url:
        fake.kill()
        raise SystemExit(f"the fake {plugin.module} API did not start")
    return fake, url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plugins", default="openai,anthropic,gemini")
    parser.add_argument("--chunks", default="4,54", help="text deltas per answer, comma-separated")
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=1)
    opt = parser.parse_args()
    sizes = [int(c) for c in opt.chunks.split(",")]
    print(f"CPU ms per call, {opt.concurrency} at a time, the plugin pinned to core {run.SERVER_CORE}")
    for name in opt.plugins.split(","):
        plugin = PLUGINS[name]
        figures: dict[tuple[str, int], list[float]] = {}
        for chunks in sizes:
            fake, url = start_fake(plugin, chunks)
            try:
                os.sched_setaffinity(0, {run.SERVER_CORE})
                for _round in range(opt.rounds):
                    for variant in plugin.variants:
                        ms = asyncio.run(measure(plugin, url, variant, opt.calls, opt.concurrency))
                        figures.setdefault((variant, chunks), []).append(ms)
            finally:
                fake.kill()
        for variant in plugin.variants:
            cells = "  ".join(f"{c:3} deltas {min(figures[(variant, c)]):6.2f}" for c in sizes)
            slope = ""
            if len(sizes) > 1:
                low, high = min(sizes), max(sizes)
                per = (min(figures[(variant, high)]) - min(figures[(variant, low)])) / (high - low) * 1000
                slope = f"  ({per:.0f} us per delta)"
            label = f"{name} {variant}"
            print(f"  {label:30} {cells}{slope}", flush=True)


if __name__ == "__main__":
    main()
