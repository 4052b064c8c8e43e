"""RouterService's method handlers, built from the proto's descriptor, with forgiving parsing.

The generated ``add_RouterServiceServicer_to_server`` parses requests with ``FromString``; a
message it cannot parse (a string field that is not UTF-8, truncated bytes) then fails inside
gRPC, which answers UNKNOWN with Python's exception text. Here the parser hands such a message
to the servicer as :class:`Unparsable`, which :func:`parsed` turns into INVALID_ARGUMENT with
a BadRequest detail. The handlers are otherwise the generated ones: same names, types and
streaming shapes, read from the descriptor, so they cannot drift from the proto.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf.descriptor import ServiceDescriptor
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


def _forgiving(message_class: Any, name: str = "") -> Callable[[bytes], Any]:
    """A parser of ``message_class`` that returns :class:`Unparsable` (naming ``name``, by default the
    class's type, which the parser's own text then names too) instead of raising."""
    parse = message_class.FromString
    own = message_class.DESCRIPTOR.full_name
    name = name or own

    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError as exc:
            return Unparsable(name, str(exc).replace(own, name))

    return deserialize


#: Why a request cannot be parsed: the parser (upb) says "Wire format was corrupt" for both causes.
UNPARSABLE = ("not a valid protobuf message of this method's request type: its wire format is corrupt or cut "
              "short, or a string field is not UTF-8 (a JS string cut inside an emoji; bytes go in bytes fields)")


def parsed(message: M | Unparsable) -> M:
    """``message``, or InvalidRequest when it could not be parsed."""
    if isinstance(message, Unparsable):
        raise _unparsable(message)
    return message


def _unparsable(message: Unparsable) -> InvalidRequest:
    """The error for a request that could not be parsed."""
    return InvalidRequest(f"the {message.message_type} message cannot be parsed: {message.problem}",
                          violations=[FieldViolation("request", UNPARSABLE)])



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


#: Ends a call with INVALID_ARGUMENT and the error's details (given by the server, which builds statuses).
Refuse = Callable[[grpc.aio.ServicerContext, InvalidRequest], Awaitable[None]]


def add_guarded_service(servicer: object, server: grpc.aio.Server, service: ServiceDescriptor, messages: Any,
                        refuse: Refuse) -> None:
    """Register ``servicer``, a servicer the router does not own (health, reflection), for every method of
    ``service`` (its descriptor; ``messages`` is the module holding its message classes), with forgiving
    parsing: a request that cannot be parsed is refused by ``refuse`` before the servicer sees it. Their
    generated handlers parse with ``FromString``, so such a request was UNKNOWN with Python's exception
    text, and an ERROR with a traceback in the log, for anyone (these services need no token)."""
    handlers = {}
    for method in service.methods:
        kind = (method.client_streaming, method.server_streaming)
        behaviour = getattr(servicer, method.name)
        guarded = _guard_stream(behaviour, refuse) if method.client_streaming else _guard_one(behaviour, refuse)
        handlers[method.name] = _HANDLER_FACTORIES[kind](
            guarded,
            request_deserializer=_forgiving(getattr(messages, method.input_type.name), method.input_type.full_name),
            response_serializer=getattr(messages, method.output_type.name).SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))


def _guard_one(behaviour: Callable[..., Any], refuse: Refuse) -> Callable[..., Any]:
    """``behaviour`` of a method taking one request (answered once, or by ``context.write``)."""

    async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, Unparsable):
            await refuse(context, _unparsable(request))
            return None
        return await behaviour(request, context)

    return guarded


def _guard_stream(behaviour: Callable[..., Any], refuse: Refuse) -> Callable[..., Any]:
    """``behaviour`` of a method taking a stream of requests and answering with a stream (an async
    generator, as reflection's)."""

    async def guarded(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async def checked() -> AsyncIterator[Any]:
            async for request in requests:
                if isinstance(request, Unparsable):
                    await refuse(context, _unparsable(request))
                    return
                yield request

        async for response in behaviour(checked(), context):
            yield response

    return guarded
