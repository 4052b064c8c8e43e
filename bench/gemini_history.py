#!/usr/bin/env python
"""Event-loop time of sending a long conversation to Gemini: the SDK's own request path against the plugin's.

    .venv/bin/python bench/gemini_history.py                      # 500 and 5,000 turns, best of 3
    .venv/bin/python bench/gemini_history.py --turns 100,2000,20000 --repeat 5 --port 42043

A fake Gemini API (``tests/fakes/gemini.py``) runs in a process of its own on ``--port``; this process
sends it one streamed call of a conversation of N turns (a turn: a short question and a short answer,
then a last question) and reads the answer (3 chunks), two ways, with the same google-genai client:

- ``sdk``: what the plugin did before: typed contents (``types.Content`` / ``types.Part.from_text``) and
  config, sent by ``client.aio.models.generate_content_stream``, which validates the request again as
  pydantic models and converts it to JSON field by field;
- ``plugin``: ``GeminiProvider.generate``: the JSON built by ``mmrouter_gemini.convert.prepare``, sent by
  the SDK's API client (``mmrouter_gemini/rest.py``).

Printed per way and size, the least of ``--repeat`` calls: ``cpu`` (``time.thread_time`` of this thread,
the event loop's, over the whole call), ``stall`` (the longest the loop did not run a 1 ms ticker: what
every other call of the daemon would have waited) and both per turn. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from router import CallContext, Message, Options, Part, Request, Role, Task  # noqa: E402

KEY = "AIza-bench-history-0123456789"
MODEL = "gemini-2.5-flash"

FAKE = """
import sys, time
from http.server import ThreadingHTTPServer
sys.path.insert(0, {root!r})
from tests.fakes.gemini import FakeGemini
fake = FakeGemini(api_key={key!r})
handler = fake._server.RequestHandlerClass
fake._server.server_close()
fake._server = ThreadingHTTPServer(("127.0.0.1", {port}), handler)  # on the port asked for, not any
fake._server.daemon_threads = True
fake.requests = type("NoRecord", (list,), {{"append": lambda self, item: None}})()  # keep no body
with fake:
    print(fake.url, flush=True)
    time.sleep(3600)
"""


def conversation(turns: int) -> Request:
    """``turns`` question/answer pairs, then a last question."""
    messages = []
    for i in range(turns):
        messages += [Message(Role.USER, [Part(text=f"question {i}?")]),
                     Message(Role.ASSISTANT, [Part(text=f"answer {i}.")])]
    messages.append(Message(Role.USER, [Part(text="And the last one?")]))
    return Request(messages=messages, options=Options(task=Task.CHAT, max_output_tokens=256, temperature=0.5))


async def measured(call: Callable[[], Awaitable[None]]) -> tuple[float, float]:
    """(CPU seconds of this thread, longest event-loop stall in seconds) of ``call()``."""
    stall = 0.0
    done = False

    async def ticker() -> None:
        nonlocal stall
        last = time.perf_counter()
        while not done:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            stall = max(stall, now - last - 0.001)
            last = now

    tick = asyncio.create_task(ticker())
    await asyncio.sleep(0.01)
    cpu = time.thread_time()
    await call()
    cpu = time.thread_time() - cpu
    done = True
    await tick
    return cpu, stall


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--turns", default="500,5000", help="conversation sizes, comma-separated")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--port", type=int, default=42043, help="the fake API's TCP port")
    args = parser.parse_args()

    from google.genai import types
    from mmrouter_gemini import GeminiProvider

    fake = subprocess.Popen([sys.executable, "-c", FAKE.format(root=str(ROOT), key=KEY, port=args.port)],
                            stdout=subprocess.PIPE, text=True)
    try:
        url = fake.stdout.readline().strip() if fake.stdout else ""
        if not url:
            raise SystemExit(f"the fake did not start on port {args.port}")
        provider = GeminiProvider.from_settings({"api_key": KEY, "base_url": url, "timeout": 120})
        model = provider.model(MODEL)
        client = provider.client()

        async def plugin(request: Request) -> None:
            async for _ in provider.generate(request, model, CallContext(request_id="bench")):
                pass

        async def sdk(request: Request) -> None:
            contents = [types.Content(role="model" if m.role is Role.ASSISTANT else "user",
                                      parts=[types.Part.from_text(text=m.text)]) for m in request.messages]
            config = types.GenerateContentConfig(
                max_output_tokens=request.options.max_output_tokens, temperature=request.options.temperature,
                automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
                http_options=types.HttpOptions(timeout=120_000))
            stream = await client.aio.models.generate_content_stream(model=MODEL, contents=contents, config=config)
            async for _ in stream:
                pass

        await plugin(conversation(1))  # imports, the client, the connection
        await sdk(conversation(1))
        print(f"{'turns':>7} {'way':>7} {'cpu ms':>9} {'stall ms':>9} {'cpu µs/turn':>12} {'stall µs/turn':>14}")
        for turns in (int(t) for t in args.turns.split(",")):
            request = conversation(turns)
            for name, way in (("sdk", sdk), ("plugin", plugin)):
                runs = [await measured(lambda way=way, request=request: way(request)) for _ in range(args.repeat)]
                cpu, stall = min(r[0] for r in runs), min(r[1] for r in runs)
                print(f"{turns:>7} {name:>7} {cpu * 1e3:>9.1f} {stall * 1e3:>9.1f} {cpu / turns * 1e6:>12.1f} "
                      f"{stall / turns * 1e6:>14.1f}", flush=True)
        await provider.aclose()
    finally:
        fake.terminate()
        fake.wait()


if __name__ == "__main__":
    asyncio.run(main())
