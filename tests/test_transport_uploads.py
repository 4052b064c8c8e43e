"""UploadMedia cut short by its client: nothing is stored, nothing is left behind."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
from mmrouter.v1 import router_pb2 as pb
from mmrouter.v1 import router_pb2_grpc

from router.config import parse_config
from router.core import App
from router.server import start_server

PDF = b"%PDF-1.4\n1 0 obj << /Type /Page >> endobj\n%%EOF\n"


async def _until(condition: Callable[[], bool], what: str) -> None:
    """Wait (up to 20 s) for ``condition()`` to hold."""
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.01)

    try:
        await asyncio.wait_for(poll(), 20)
    except TimeoutError:
        raise AssertionError(what) from None


def _holds(folder: Path, size: int) -> Callable[[], bool]:
    """Whether a file in ``folder`` holds ``size`` bytes or more, as a condition for :func:`_until`."""
    return lambda: any(p.stat().st_size >= size for p in folder.iterdir())


async def _held_upload(chunk: bytes, held: asyncio.Event) -> AsyncIterator[pb.UploadMediaRequest]:
    """The messages of an upload without size_bytes: the metadata, ``chunk``, then nothing until ``held``
    is set (more to come, as far as the daemon knows)."""
    yield pb.UploadMediaRequest(metadata=pb.UploadMetadata(modality=pb.MODALITY_DOCUMENT, mime_type="application/pdf"))
    yield pb.UploadMediaRequest(chunk=chunk)
    await held.wait()


async def test_an_upload_cancelled_mid_stream_without_its_size_is_not_stored(tmp_path, monkeypatch) -> None:
    """grpc.aio ends a cancelled call's request stream as if its client had finished it, and cancels
    the servicer's task only a moment later: an upload without size_bytes was then stored cut short,
    under the hash of the bytes received, an orphan whose id nobody has. Here the store's disk work
    runs on the event loop (as when the fsync is done before the cancellation lands): the upload goes
    straight from the end of its stream to the commit, and must still not be stored."""

    async def on_the_loop(function, /, *args, **kwargs):  # type: ignore[no-untyped-def]
        return function(*args, **kwargs)

    monkeypatch.setattr(asyncio, "to_thread", on_the_loop)
    app = App(parse_config(f"server: {{data_dir: '{tmp_path}'}}\ndefault: local/extract\n", "t.yaml"))
    server, port, _ = await start_server(app, "127.0.0.1:0")
    media, temp = tmp_path / "media", tmp_path / "media" / "tmp"

    def stored() -> list[Path]:
        return [p for p in media.glob("*/*") if p.parent != temp]

    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = router_pb2_grpc.RouterServiceStub(channel)
            for _ in range(3):
                chunk = PDF + os.urandom(256 * 1024)  # its own bytes: a stored one would have its own id
                held = asyncio.Event()
                call = stub.UploadMedia(_held_upload(chunk, held))
                await _until(_holds(temp, len(chunk)), "the upload never wrote its first chunk")
                call.cancel()
                await _until(lambda: not list(temp.iterdir()), "the cancelled upload's temp file stayed")
                assert await call.code() == grpc.StatusCode.CANCELLED
                held.set()
                assert stored() == [], "a cancelled upload was stored"

            async def whole():  # type: ignore[no-untyped-def]
                yield pb.UploadMediaRequest(metadata=pb.UploadMetadata(modality=pb.MODALITY_DOCUMENT,
                                                                       mime_type="application/pdf"))
                yield pb.UploadMediaRequest(chunk=PDF)

            assert (await stub.UploadMedia(whole(), timeout=20)).size_bytes == len(PDF)  # ended by its client: kept
            assert len(stored()) == 2  # its bytes and its record
    finally:
        await server.stop(0)
        await app.aclose()
