"""The memory a burst of calls freed is given back to the system once no call is under way (router/memory.py).

After a burst of calls with large media the daemon's resident memory stayed at its peak however long it idled
(glibc keeps freed pages). The daemon runs for real (tests/conftest.py) with the scripted provider of
tests/testkit, its log at DEBUG, where each trim says the resident memory before and after.
"""

from __future__ import annotations

import io
import os
import re
from concurrent.futures import ThreadPoolExecutor

from grpc_helpers import wait_for
from mmrouter.v1 import router_pb2 as pb

from router.memory import TRIM_SECONDS, malloc_trim, resident_mib

CONFIG = """\
providers:
  fake: {api_key: k}
routes:
  - name: general
    use: fake/echo
server:
  log_level: debug
  inline_limit_bytes: 8388608
"""

TRIMMED = re.compile(r"gave freed memory back to the system: resident (\d+) -> (\d+) MiB")


def test_this_platform_can_trim_and_read_its_resident_memory() -> None:
    """glibc Linux, as CI: the daemon's trim is not silently a no-op here."""
    trim = malloc_trim()
    assert trim is not None
    trim()
    assert resident_mib() > 0


def noise_png() -> bytes:
    """A real PNG of about 6 MB (2500x2500 random grey pixels, stored uncompressed): the daemon reads an image's
    header and checks its chunks, so random bytes after a PNG signature would be refused."""
    from PIL import Image

    out = io.BytesIO()
    Image.frombytes("L", (2500, 2500), os.urandom(2500 * 2500)).save(out, format="PNG", compress_level=0)
    return out.getvalue()


def test_memory_freed_by_a_burst_is_given_back_once_no_call_is_under_way(start_daemon) -> None:
    daemon = start_daemon(CONFIG)
    image = pb.Media(modality=pb.MODALITY_IMAGE, mime_type="image/png", data=noise_png())
    request = pb.GenerateRequest(request=pb.MultimodalRequest(messages=[pb.Message(
        role=pb.ROLE_USER, parts=[pb.Part(text="what is it?"), pb.Part(media=image)])]))
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: daemon.stub.Generate(request, timeout=60).answer, range(16)))
    assert all(a.text.startswith("fake/echo says") for a in answers)

    trimmed = wait_for(lambda: TRIMMED.search(daemon.logs()), timeout=TRIM_SECONDS * 4)
    assert trimmed, daemon.logs()[-3000:]
    before, after = map(int, trimmed.groups())
    assert after < before, trimmed.group(0)
