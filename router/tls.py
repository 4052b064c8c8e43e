"""The daemon's TLS certificate, replaceable while it serves.

gRPC asks :meth:`ServerCertificates.fetch` before every TLS handshake (on one of its own
threads); it answers None ("keep what you have") until :meth:`ServerCertificates.reload`
has read new files, then hands the new certificate over once. Connections already open
keep the certificate they were made with.
"""

from __future__ import annotations

import contextlib
import logging
import shlex
import threading

import grpc

from .config import TlsSettings, tls_problem
from .errors import ConfigError

log = logging.getLogger(__name__)


def warn_if_key_open(tls: TlsSettings) -> None:
    """Warn when the TLS private key can be read by its group or other local users: with it, they can
    pass for the daemon."""
    with contextlib.suppress(OSError):
        mode = tls.key_file.stat().st_mode & 0o777
        if mode & 0o077:
            log.warning("other local users may read the TLS private key %s (%04o): run chmod 600 %s",
                        tls.key_file, mode, shlex.quote(str(tls.key_file)))


def _configuration(tls: TlsSettings) -> grpc.ServerCertificateConfiguration:
    client_ca = tls.client_ca_file.read_bytes() if tls.client_ca_file else None
    return grpc.ssl_server_certificate_configuration([(tls.key_file.read_bytes(), tls.cert_file.read_bytes())],
                                                     root_certificates=client_ca)


class ServerCertificates:
    """The server certificate (and client CA) of a TLS daemon; :meth:`reload` swaps them (SIGHUP)."""

    def __init__(self, tls: TlsSettings) -> None:
        self.requires_client_certificates = tls.client_ca_file is not None
        self._initial = _configuration(tls)
        self._pending: grpc.ServerCertificateConfiguration | None = None
        self._lock = threading.Lock()

    def credentials(self) -> grpc.ServerCredentials:
        """Server credentials that take up a reloaded certificate at the next handshake."""
        return grpc.dynamic_ssl_server_credentials(self._initial, self.fetch,
                                                   require_client_authentication=self.requires_client_certificates)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC's callback before each handshake: the reloaded certificate once, else None (no change)."""
        with self._lock:
            pending, self._pending = self._pending, None
        return pending

    def reload(self, tls: TlsSettings) -> None:
        """Serve ``tls``'s files from the next handshake on; raises ConfigError (nothing changes) when
        they are unusable or would switch client certificates on or off, which needs a restart."""
        if (tls.client_ca_file is not None) != self.requires_client_certificates:
            raise ConfigError("server.tls.client_ca_file: turning client certificates on or off needs a restart")
        problem = tls_problem(tls.cert_file, tls.key_file, tls.client_ca_file)  # the files may have changed again
        if problem:
            raise ConfigError(f"server.tls: {problem}")
        try:
            configuration = _configuration(tls)
        except OSError as exc:
            raise ConfigError(f"server.tls: cannot read {exc.filename}: {exc.strerror}") from None
        with self._lock:
            self._pending = configuration
