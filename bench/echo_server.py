"""The baseline: a bare grpc.aio RouterService with canned answers and no work behind them.

Generate answers at once; StreamGenerate sends ``options.max_output_tokens`` text deltas (1 when 0)
then Done, the same events shape as the router; UploadMedia is a client-streaming sink that counts
the bytes and drops them. Same message-size options as the daemon.

Run: ``python bench/echo_server.py --address 127.0.0.1:0 --ready-file F`` (writes host:port to F).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from pathlib import Path

import grpc
from mmrouter.v1 import router_pb2 as pb
from mmrouter.v1 import router_pb2_grpc

LIMIT = 64 * 1024 * 1024
FORWARD_HEADERS = {"content-type": "application/json", "authorization": "Bearer sk-bench-not-a-key"}


class Echo(router_pb2_grpc.RouterServiceServicer):
    def __init__(self, forward_to: int | None = None) -> None:
        self.upstream = f"http://127.0.0.1:{forward_to}/v1/chat/completions" if forward_to else None
        self.session = None

    async def Generate(self, request, context):
        if self.upstream is None:
            return pb.GenerateResponse(answer=pb.Answer(text="tok0 "))
        return await self._forward(request)

    async def _forward(self, request):
        """The bare forwarder: one aiohttp POST per call, the answer's JSON read back (no SDK, no routing)."""
        import aiohttp

        if self.session is None:
            self.session = aiohttp.ClientSession()
        text = request.request.messages[0].parts[0].text
        body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": text}]})
        async with self.session.post(self.upstream, data=body, headers=FORWARD_HEADERS) as response:
            answer = json.loads(await response.read())
        return pb.GenerateResponse(answer=pb.Answer(text=answer["choices"][0]["message"]["content"]))

    async def StreamGenerate(self, request, context):
        n = max(1, min(request.request.options.max_output_tokens, 10_000))
        if self.upstream is not None:
            async for message in self._forward_stream(request, n):
                yield message
            return
        for i in range(n):
            yield pb.StreamGenerateResponse(text_delta=pb.TextDelta(text=f"tok{i} "))
        yield pb.StreamGenerateResponse(done=pb.Done(answer=pb.Answer(text="done")))

    async def _forward_stream(self, request, n: int):
        """The bare streaming forwarder: one aiohttp POST with ``"stream": true``, the SSE answer read
        line by line, each event's JSON decoded and its text sent as a delta (no SDK, no routing)."""
        import aiohttp

        if self.session is None:
            self.session = aiohttp.ClientSession()
        text = request.request.messages[0].parts[0].text
        body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": text}], "stream": True,
                           "stream_options": {"include_usage": True}, "max_completion_tokens": n})
        answer = []
        async with self.session.post(self.upstream, data=body, headers=FORWARD_HEADERS) as response:
            async for line in response.content:
                if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                    continue
                for choice in json.loads(line[6:]).get("choices") or ():
                    delta = (choice.get("delta") or {}).get("content")
                    if delta:
                        answer.append(delta)
                        yield pb.StreamGenerateResponse(text_delta=pb.TextDelta(text=delta))
        yield pb.StreamGenerateResponse(done=pb.Done(answer=pb.Answer(text="".join(answer))))

    async def UploadMedia(self, request_iterator, context):
        size = 0
        meta = None
        async for message in request_iterator:
            if message.WhichOneof("payload") == "metadata":
                meta = message.metadata
            else:
                size += len(message.chunk)
        return pb.UploadMediaResponse(media_id="0" * 64, size_bytes=size,
                                      mime_type=meta.mime_type if meta else "", modality=meta.modality if meta else 0)


async def main(address: str, ready_file: Path | None, forward_to: int | None = None) -> None:
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", LIMIT),
                                      ("grpc.max_send_message_length", LIMIT)])
    router_pb2_grpc.add_RouterServiceServicer_to_server(Echo(forward_to), server)
    port = server.add_insecure_port(address)
    await server.start()
    if ready_file is not None:
        ready_file.write_text(f"{address.rsplit(':', 1)[0]}:{port}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default="127.0.0.1:0")
    parser.add_argument("--ready-file", type=Path)
    parser.add_argument("--forward-to", type=int, help="answer Generate by a POST to this local fake upstream port")
    args = parser.parse_args()
    asyncio.run(main(args.address, args.ready_file, args.forward_to))
