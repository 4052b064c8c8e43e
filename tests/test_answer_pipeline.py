"""The answer pipeline in-process: what a consumer that stops at Done leaves behind."""

from __future__ import annotations

import gc
import sys
from contextlib import aclosing

import mmrouter_testkit

from router.config import parse_config
from router.core import App
from router.outcome import Done
from router.types import Message, Part, Request, Role

CONFIG = """
providers:
  fake: {api_key: k}
plugins:
  disabled: [openai, anthropic, gemini, assemblyai, local]
routes:
  - name: everything
    use: fake/echo
server:
  data_dir: "%s"
"""


async def test_an_answer_closed_at_done_leaves_no_generator_to_the_garbage_collector(tmp_path) -> None:
    """Generate stops reading at Done; every inner generator must be closed then, not by the GC's
    finalizer (which schedules one extra task per request on the event loop)."""
    app = App(parse_config(CONFIG % tmp_path, "test.yaml"), extra_plugins={"fake": mmrouter_testkit})
    request = Request(messages=[Message(Role.USER, [Part(text="hello")])])
    finalized: list[str] = []
    firstiter, finalizer = sys.get_asyncgen_hooks()

    def counting_finalizer(agen) -> None:  # type: ignore[no-untyped-def]
        finalized.append(agen.__qualname__)
        finalizer(agen)

    sys.set_asyncgen_hooks(firstiter, counting_finalizer)
    try:
        texts = []
        for _ in range(3):
            async with aclosing(app.answer(request, None)) as events:
                async for event in events:
                    if isinstance(event, Done):
                        texts.append(event.answer.text)
                        break
        gc.collect()
    finally:
        sys.set_asyncgen_hooks(firstiter, finalizer)
        await app.aclose()
    assert len(texts) == 3 and all("hello" in t for t in texts)
    assert finalized == [], f"left to the garbage collector: {finalized}"
