"""A copyable mmrouter client in Python: the stubs of the ``mmrouter.v1`` package, no CLI.

    python client.py 127.0.0.1:50051 receipt.png

It asks about an image sent inline, uploads the same image and asks about it by its media id,
holds a two-turn conversation in a session (asks its last turn again by its turn id, as a retry does,
then resets it), streams an answer, and reads the details of a refused request. Set MMROUTER_TOKEN for a daemon with ``server.auth_token``.
"""

from __future__ import annotations

import mimetypes
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from mmrouter.v1 import router_pb2 as pb
from mmrouter.v1 import router_pb2_grpc

#: The size of an upload's messages: the daemon asks for 1 MiB chunks.
CHUNK = 1024 * 1024


def user(*parts: pb.Part) -> pb.Message:
    """A user message of text and media parts."""
    return pb.Message(role=pb.ROLE_USER, parts=list(parts))


def ask(stub: router_pb2_grpc.RouterServiceStub, request: pb.MultimodalRequest, metadata) -> pb.Answer:
    """One answer, in one response (Generate)."""
    return stub.Generate(pb.GenerateRequest(request=request), metadata=metadata, timeout=120).answer


def upload(stub: router_pb2_grpc.RouterServiceStub, data: bytes, mime_type: str, metadata) -> str:
    """Store ``data`` in the daemon with UploadMedia (for files too large to send inline); its media id."""
    def messages() -> Iterator[pb.UploadMediaRequest]:
        yield pb.UploadMediaRequest(metadata=pb.UploadMetadata(
            modality=pb.MODALITY_IMAGE, mime_type=mime_type, size_bytes=len(data)))  # first: what follows
        for start in range(0, len(data), CHUNK):
            yield pb.UploadMediaRequest(chunk=data[start:start + CHUNK])

    return stub.UploadMedia(messages(), metadata=metadata, timeout=120).media_id


def print_error(exc: grpc.RpcError) -> None:
    """Print a failed call: its status code and message, and the google.rpc.Status details the daemon
    adds: ErrorInfo (a stable reason to branch on), RetryInfo (when to retry), BadRequest (what is wrong)."""
    print(f"error: {exc.code().name}: {exc.details()}")
    status = rpc_status.from_call(exc)  # None when the call carries no details (gRPC's own errors)
    for detail in status.details if status is not None else []:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            print(f"  reason: {info.reason} (request id {info.metadata.get('request_id', '?')})")
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            print(f"  retry after {retry.retry_delay.ToTimedelta().total_seconds():.1f} s")
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            for violation in bad.field_violations:
                print(f"  field {violation.field}: {violation.description}")


def main(address: str, image_path: str) -> None:
    token = os.environ.get("MMROUTER_TOKEN", "").strip()
    metadata = [("authorization", f"Bearer {token}")] if token else []
    image = Path(image_path).read_bytes()
    mime_type = mimetypes.guess_type(image_path)[0] or "image/png"
    question = pb.Part(text="What does this say?")

    with grpc.insecure_channel(address) as channel:  # TLS: grpc.secure_channel, see the README
        stub = router_pb2_grpc.RouterServiceStub(channel)

        # 1. An image question, the image's bytes inline (up to the daemon's inline_limit_bytes, 8 MiB).
        inline = pb.Media(modality=pb.MODALITY_IMAGE, mime_type=mime_type, data=image, filename=Path(image_path).name)
        answer = ask(stub, pb.MultimodalRequest(messages=[user(pb.Part(media=inline), question)]), metadata)
        route = answer.route
        print(f"inline: {answer.text}\n  route: rule {route.rule} -> {route.provider}/{route.model}, "
              f"${answer.usage.cost_usd:.6f}")

        # 2. The same image uploaded once, then named by its media id (in as many requests as you like).
        media_id = upload(stub, image, mime_type, metadata)
        by_id = pb.Media(modality=pb.MODALITY_IMAGE, mime_type=mime_type, media_id=media_id)
        answer = ask(stub, pb.MultimodalRequest(messages=[user(pb.Part(media=by_id), question)]), metadata)
        print(f"uploaded {media_id[:12]}…: {answer.text}")

        # 3. A conversation: each request sends only its new turn; the daemon keeps the earlier ones.
        # Each turn gets an id of its own (turn_id): a turn sent again under its id, as after a dropped
        # connection or a deadline that passed as the answer left, gets the answer the daemon kept,
        # with no second provider call and no second turn in the conversation.
        session = f"example-{uuid.uuid4()}"  # the key to the conversation: keep it secret
        for turn in ("My name is Ada.", "What is my name?"):
            request = pb.MultimodalRequest(messages=[user(pb.Part(text=turn))], session_id=session,
                                           turn_id=uuid.uuid4().hex)
            print(f"session: {ask(stub, request, metadata).text}")
        again = ask(stub, request, metadata)  # the last turn again, under the same turn id (a retry)
        print(f"session, asked again: {again.text}\n  {again.route.notes[-1]}")
        removed = stub.ResetSession(pb.ResetSessionRequest(session_id=session), metadata=metadata).turns_removed
        print(f"session reset: {removed} stored message(s) removed")

        # 4. A streamed answer: the route first, then text as it comes, then the whole answer.
        request = pb.MultimodalRequest(messages=[user(pb.Part(text="Tell me about multimodal routing."))])
        print("stream: ", end="")
        for event in stub.StreamGenerate(pb.StreamGenerateRequest(request=request), metadata=metadata, timeout=120):
            kind = event.WhichOneof("event")
            if kind == "text_delta":
                print(event.text_delta.text, end="|", flush=True)  # "|" shows where each piece ends
            elif kind == "done":
                print(f"\n  done: {event.done.answer.route.provider}/{event.done.answer.route.model}")

        # 5. A refused request (a temperature over 2) and the details of its error.
        request = pb.MultimodalRequest(messages=[user(pb.Part(text="Hi"))], options=pb.Options(temperature=5))
        try:
            ask(stub, request, metadata)
        except grpc.RpcError as exc:
            print_error(exc)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python client.py HOST:PORT IMAGE_FILE")
    try:
        main(sys.argv[1], sys.argv[2])
    except grpc.RpcError as exc:  # e.g. the daemon is not running (UNAVAILABLE), or a token is needed
        print_error(exc)
        sys.exit(1)
