"""A TCP server that answers every connection with the same raw bytes, or never reads: for replies no
HTTP framework would send (not HTTP at all, a header too long) and for servers that stopped reading."""

from __future__ import annotations

import socket
import threading


class RawServer:
    """A TCP server on a free loopback port that answers each connection with ``reply`` (bytes, after
    reading the request's first bytes), or, with ``reply=None``, accepts and never reads. With
    ``then_close`` it closes each connection once its reply is sent (a body cut before its end)."""

    def __init__(self, reply: bytes | None, then_close: bool = False) -> None:
        self.reply = reply
        self.then_close = then_close
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)
            if self.reply is not None:
                conn.recv(65536)
                conn.sendall(self.reply)
                if self.then_close:
                    conn.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()
