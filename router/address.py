"""Daemon addresses and gRPC's limits: what the ``mmrouter`` client commands need of the configuration,
without its schema (pydantic, yaml), which they do not import (see :mod:`router.config`)."""

from __future__ import annotations

import ipaddress
import re

DEFAULT_ADDRESS = "127.0.0.1:50051"
#: The largest value gRPC takes for its integer settings (a C int): message sizes in bytes,
#: keepalive in milliseconds, streams per connection.
GRPC_INT_MAX = 2**31 - 1
#: The size of the chunks ``mmrouter ask`` (and the README's clients) upload media in.
UPLOAD_CHUNK_BYTES = 1024 * 1024

#: ``host:port`` or ``[ipv6]:port``.
_HOST_PORT = re.compile(r"^(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^\s:\[\]/]+)):(?P<port>[0-9]+)$")
#: Prefixes of addresses gRPC takes as a unix socket path (or abstract name).
UNIX_PREFIXES = ("unix:", "unix-abstract:")


def parse_address(address: str) -> tuple[str, int] | None:
    """The host (without brackets) and port of a listening address, or None for a unix socket
    (``unix:/path``, ``unix-abstract:name``); ValueError saying how to write it when it is neither."""
    if address.startswith(UNIX_PREFIXES):
        if not address.partition(":")[2]:
            raise ValueError(f"{address!r} names no socket: write e.g. unix:/run/mmrouter/sock")
        return None
    match = _HOST_PORT.match(address)
    if match is None:
        raise ValueError(f"{address!r} is not host:port: write e.g. 127.0.0.1:50051, [::1]:50051 "
                         "or unix:/run/mmrouter/sock")
    port = int(match["port"])
    if port > 65535:  # gRPC would silently listen on the port modulo 65536
        raise ValueError(f"port {port} is over 65535 in {address!r}")
    if match["v6"] is None:
        return match["host"], port
    try:
        ipaddress.IPv6Address(match["v6"])
    except ValueError:
        raise ValueError(f"[{match['v6']}] is not an IPv6 address in {address!r}") from None
    return match["v6"], port
