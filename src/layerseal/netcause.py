"""Why a network connection failed, named for people: the cause, the fix, and whether
trying again can help (a refused or reset connection may; an unknown name, a TLS
mismatch or an untrusted certificate never will).

Pure: inspects exception chains (httpx wraps the ``OSError``/``ssl.SSLError`` it met).
"""

from __future__ import annotations

import errno
import socket
import ssl
from dataclasses import dataclass


@dataclass(frozen=True)
class NetworkFailure:
    """Why a connection failed, what to do about it, and whether trying again can help."""

    cause: str
    fix: str
    retriable: bool

    def message(self) -> str:
        return f"{self.cause}" + (f": {self.fix}" if self.fix else "")


# OpenSSL's reasons when the peer answered a TLS hello with something that is not TLS
_NOT_TLS_REASONS = ("WRONG_VERSION_NUMBER", "HTTP_REQUEST", "PACKET_LENGTH_TOO_LONG", "RECORD_LAYER_FAILURE")


def _root_cause(exc: BaseException) -> BaseException:
    seen = 0
    while seen < 10:
        nxt = exc.__cause__ or exc.__context__
        if nxt is None or isinstance(exc, OSError):
            return exc
        exc, seen = nxt, seen + 1
    return exc


def classify_network_error(
    exc: BaseException,
    host: str,
    tls_flag: str = "--tls-verify",
    *,
    plain_http_fix: str | None = None,
    untrusted_fix: str | None = None,
) -> NetworkFailure:
    """Name the cause of a failed connection to *host* and the fix; *tls_flag* is the
    command's flag for a registry's TLS checks (``--src-tls-verify``...), the two fixes
    replace the registry wording for other peers (the key broker)."""
    root = _root_cause(exc)
    name = type(exc).__name__
    if isinstance(root, ssl.SSLCertVerificationError):
        detail = root.verify_message or str(root)
        return NetworkFailure(
            f"certificate of {host} not trusted ({detail})",
            untrusted_fix
            or f"add its CA with {tls_flag.replace('-tls-verify', '-cert-dir')} DIR, or use {tls_flag}=false",
            retriable=False,
        )
    if isinstance(root, ssl.SSLError):
        reason = getattr(root, "reason", None) or ""
        if reason in _NOT_TLS_REASONS:
            return NetworkFailure(
                f"{host} did not answer with TLS ({reason})",
                plain_http_fix or f"this looks like plain HTTP: use {tls_flag}=false",
                retriable=False,
            )
        return NetworkFailure(f"TLS handshake with {host} failed ({reason or root})", "", retriable=False)
    if isinstance(root, socket.gaierror):
        temporary = root.errno == socket.EAI_AGAIN
        hostname = host if host.startswith("[") else host.rsplit(":", 1)[0]
        return NetworkFailure(
            f"name {hostname} not resolved ({root.strerror})",
            "check the registry host name and DNS" if not temporary else "the DNS server did not answer",
            retriable=temporary,
        )
    if isinstance(root, ConnectionRefusedError):
        return NetworkFailure(
            f"connection to {host} refused", "check the host and port, and that the registry is running", True
        )
    if isinstance(root, OSError) and root.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return NetworkFailure(
            f"{host} unreachable ({root.strerror})", "check the address and the network route", False
        )
    if name == "ConnectTimeout":
        return NetworkFailure(
            f"no connection to {host} within the connect timeout",
            "the host is unreachable or a firewall drops the connection",
            retriable=False,
        )
    if isinstance(root, ConnectionResetError) or name == "RemoteProtocolError":
        return NetworkFailure(f"{host} closed the connection ({root})", "", retriable=True)
    if name in ("ReadTimeout", "WriteTimeout", "PoolTimeout"):
        return NetworkFailure(f"{host} did not answer in time ({name})", "", retriable=True)
    return NetworkFailure(f"{name}: {root}", "", retriable=True)
