"""Run ``mmrouter serve`` with candidate router/ changes monkeypatched in, to measure them first.

    .venv/bin/python bench/run.py --whatif default_tcp_reads

Patches (comma-separated in MMROUTER_WHATIF; bench/run.py --whatif sets it):

- ``default_tcp_reads``: gRPC's default TCP read sizes instead of ``router.server.TCP_READ_OPTIONS``.
- ``no_record``: skip ``SessionStore.record`` entirely (upper bound of what recording statistics costs).
- ``raw_http``: the OpenAI plugin's chat call made with a bare aiohttp session instead of the SDK
  (what the router costs without the SDK's request path; not an option the daemon offers).
- ``raw_http_whole``: as ``raw_http``, but the answer's body is read whole before it is parsed (not a
  stream any more: what reading the body line by line costs).
- ``canned_chat``: the OpenAI plugin answers at once with the requested number of text deltas, no HTTP
  call at all (what the router's own layers and gRPC cost; compare with the echo server).
- ``gc_off``: the cyclic garbage collector disabled (an upper bound of what it costs).
- ``gc_stats``: the garbage collector's collections per generation and their seconds, printed at exit (in the
  daemon's log: ``--keep``).

Never used by the daemon itself; only by the benchmark.
"""

from __future__ import annotations

import os

patches = {p.strip() for p in os.environ.get("MMROUTER_WHATIF", "").split(",") if p.strip()}

if "default_tcp_reads" in patches:
    import router.server as server

    server.TCP_READ_OPTIONS = []

if "no_record" in patches:
    import router.sessions as sessions

    sessions.SessionStore.record = lambda self, answer: None

if "raw_http" in patches or "raw_http_whole" in patches:
    import json

    import mmrouter_openai.chat as chat

    from router import TextDelta, Usage, UsageReport

    _sessions: dict = {}

    def _post(client, params):  # type: ignore[no-untyped-def]
        import aiohttp

        session = _sessions.get("s")
        if session is None:
            session = _sessions["s"] = aiohttp.ClientSession()
        headers = {"authorization": f"Bearer {client.api_key}", "content-type": "application/json"}
        return session.post(f"{client.base_url}chat/completions", data=json.dumps(params), headers=headers)

    def _events(line: bytes, usage: list):  # type: ignore[no-untyped-def]
        if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
            return
        chunk = json.loads(line[6:])
        if chunk.get("usage"):
            usage[0] = Usage(chunk["usage"]["prompt_tokens"], chunk["usage"]["completion_tokens"])
        for choice in chunk.get("choices") or ():
            text = (choice.get("delta") or {}).get("content")
            if text:
                yield TextDelta(text)

    async def _raw_stream_chat(client, params, timeout, with_media=True, deadline=None):  # type: ignore[no-untyped-def]
        usage = [Usage()]
        async with _post(client, params) as r:
            async for line in r.content:
                for event in _events(line, usage):
                    yield event
        yield UsageReport(usage[0])

    async def _raw_whole_stream_chat(client, params, timeout, with_media=True, deadline=None):  # type: ignore[no-untyped-def]
        usage = [Usage()]
        async with _post(client, params) as r:
            body = await r.read()
        for line in body.split(b"\n"):
            for event in _events(line, usage):
                yield event
        yield UsageReport(usage[0])

    chat.stream_chat = _raw_whole_stream_chat if "raw_http_whole" in patches else _raw_stream_chat

if "canned_chat" in patches:
    import mmrouter_openai.chat as chat

    from router import TextDelta, Usage, UsageReport

    async def _canned_stream_chat(client, params, timeout, with_media=True, deadline=None):  # type: ignore[no-untyped-def]
        for i in range(max(1, params.get("max_completion_tokens", 1))):
            yield TextDelta(f"tok{i} ")
        yield UsageReport(Usage(12, 1))

    chat.stream_chat = _canned_stream_chat

if "gc_off" in patches:  # upper bound of what the cyclic garbage collector costs
    import gc

    gc.disable()

if "gc_stats" in patches:  # what the cyclic garbage collector does: collections and their time, per generation
    import atexit
    import gc
    import sys
    import time

    _gc = {"started": 0.0, "n": [0, 0, 0], "s": [0.0, 0.0, 0.0], "collected": [0, 0, 0]}

    def _timed(phase, info):  # type: ignore[no-untyped-def]
        if phase == "start":
            _gc["started"] = time.perf_counter()
        else:
            g = info["generation"]
            _gc["n"][g] += 1
            _gc["s"][g] += time.perf_counter() - _gc["started"]
            _gc["collected"][g] += info["collected"]

    gc.callbacks.append(_timed)
    atexit.register(lambda: print(f"GC STATS: collections {_gc['n']}, seconds {[round(x, 3) for x in _gc['s']]}, "
                                  f"collected {_gc['collected']}, objects {len(gc.get_objects())}",
                                  file=sys.stderr, flush=True))

from router.cli import app  # noqa: E402

app()
