"""RouterService's method handlers, built from the proto's descriptor, with forgiving parsing.

The generated ``add_RouterServiceServicer_to_server`` parses requests with ``FromString``; a
message it cannot parse (a string field that is not UTF-8, truncated bytes) then fails inside
gRPC, which answers UNKNOWN with Python's exception text. Here the parser hands such a message
to the servicer as :class:`Unparsable`, which :func:`parsed` turns into INVALID_ARGUMENT with
a BadRequest detail. The handlers are otherwise the generated ones: same names, types and
streaming shapes, read from the descriptor, so they cannot drift from the proto.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError
from mmrouter.v1 import router_pb2 as pb

from .errors import FieldViolation, InvalidRequest

SERVICE = pb.DESCRIPTOR.services_by_name["RouterService"]

_HANDLER_FACTORIES = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}

M = TypeVar("M")


@dataclass(frozen=True)
class Unparsable:
    """A request message that could not be parsed; the servicer refuses it with :func:`parsed`."""

    message_type: str
    problem: str


def _forgiving(message_class: Any) -> Callable[[bytes], Any]:
    parse = message_class.FromString
    name = message_class.DESCRIPTOR.full_name

    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError as exc:
            return Unparsable(name, str(exc))

    return deserialize


#: Why a request cannot be parsed: the parser (upb) says "Wire format was corrupt" for both causes.
UNPARSABLE = ("not a valid protobuf message of this method's request type: its wire format is corrupt or cut "
              "short, or a string field is not UTF-8 (binary data goes in bytes fields)")


def parsed(message: M | Unparsable) -> M:
    """``message``, or InvalidRequest when it could not be parsed."""
    if isinstance(message, Unparsable):
        raise InvalidRequest(
            f"the {message.message_type} message cannot be parsed: {message.problem}",
            violations=[FieldViolation("request", UNPARSABLE)],
        )
    return message



def add_router_service(servicer: object, server: grpc.aio.Server) -> None:
    """Register ``servicer``'s methods for every RPC of RouterService (see the module docstring)."""
    handlers = {}
    for method in SERVICE.methods:
        factory = _HANDLER_FACTORIES[(method.client_streaming, method.server_streaming)]
        handlers[method.name] = factory(
            getattr(servicer, method.name),
            request_deserializer=_forgiving(getattr(pb, method.input_type.name)),
            response_serializer=getattr(pb, method.output_type.name).SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),))
    server.add_registered_method_handlers(SERVICE.full_name, handlers)
