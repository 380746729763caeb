"""The HTTP client of one registry: TLS trust, pool limits, timeouts and wide socket reads.

Blob bodies are megabytes: httpcore reads 64 KiB at a time, and at that size more CPU
goes to the HTTP parser than to hashing (measured: 10 x 50 MB pull 1.65 s -> 1.2 s with
1 MiB reads).  The read size is set for this client's connections only, by a network
backend whose streams read at least :data:`READ_SIZE` bytes; no other HTTP client of
the process is touched.
"""

from __future__ import annotations

import ssl
import typing

import httpcore
import httpx

from layerseal.errors import BadInputError
from layerseal.registry.options import RegistryOptions

#: bytes asked of the socket per read on a registry connection
READ_SIZE = 1024 * 1024


class WideReadStream(httpcore.NetworkStream):
    """A connection whose reads ask the socket for at least *size* bytes."""

    def __init__(self, inner: httpcore.NetworkStream, size: int) -> None:
        self._inner = inner
        self._size = size

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max(max_bytes, self._size), timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, timeout)

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        return WideReadStream(self._inner.start_tls(ssl_context, server_hostname, timeout), self._size)

    def get_extra_info(self, info: str) -> typing.Any:
        return self._inner.get_extra_info(info)


class WideReadBackend(httpcore.NetworkBackend):
    """httpcore's synchronous sockets, wrapped in :class:`WideReadStream`."""

    def __init__(self, size: int = READ_SIZE) -> None:
        self._inner = httpcore.SyncBackend()
        self.size = size

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return WideReadStream(stream, self.size)

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        return WideReadStream(self._inner.connect_unix_socket(path, timeout, socket_options), self.size)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class WideReadTransport(httpx.HTTPTransport):
    """httpx's transport over a connection pool on :class:`WideReadBackend`.

    httpx builds its pool without a way to choose the network backend, so the pool is
    built again here with the same settings; everything else (exception mapping,
    response streams) stays httpx's.
    """

    def __init__(self, verify: ssl.SSLContext | bool, limits: httpx.Limits, size: int = READ_SIZE) -> None:
        super().__init__(verify=verify, limits=limits)
        self._pool.close()
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(verify=verify),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=WideReadBackend(size),
        )


def tls_verify(options: RegistryOptions) -> ssl.SSLContext | bool:
    """What to trust: the system CAs, a CA bundle (``--cert-dir``), or nothing (``--tls-verify=false``)."""
    if not options.tls_verify:
        return False
    if options.ca_file is None:
        return True
    try:
        return ssl.create_default_context(cafile=options.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise BadInputError(
            f"CA file {options.ca_file!r}: expected a readable PEM bundle, seen {type(exc).__name__}"
        ) from exc


def open_http(options: RegistryOptions) -> httpx.Client:
    """The pooled client for one registry; ``options.transport`` (tests) replaces the network."""
    verify = tls_verify(options)
    limits = httpx.Limits(
        max_connections=options.max_connections, max_keepalive_connections=options.max_connections
    )
    transport = options.transport or WideReadTransport(verify, limits)
    return httpx.Client(
        verify=verify,
        transport=transport,
        limits=limits,
        timeout=httpx.Timeout(options.timeout, connect=min(options.timeout, options.connect_timeout)),
        headers={"User-Agent": options.user_agent},
    )
