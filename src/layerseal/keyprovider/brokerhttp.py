"""The keyprovider's KBS transport, on the standard library's ``http.client``.

``layerseal.kbs.client`` is built on httpx, whose import alone takes ~100 ms (it pulls
in click and rich for its CLI); ocicrypt starts the keyprovider once per layer, so this
transport carries the bytes with ``http.client`` (~20 ms).  Everything the requests and
answers mean is :mod:`layerseal.kbs.rcarclient`'s, the same client logic as the engine's,
so both treat a Trustee KBS alike.  One keep-alive connection per thread; a request that
fails on a reused connection before any answer is retried once.
"""

from __future__ import annotations

import http.client
import json
import threading
from urllib.parse import urlencode, urlsplit

from layerseal.errors import BadInputError, TransportError
from layerseal.kbs.rcarclient import KbsClient, Reply, Request


def _one_line(text: str, limit: int = 500) -> str:
    return " ".join(text.split())[:limit]


class StdlibTransport:
    """Requests to one broker base URL; safe to share between threads."""

    def __init__(self, url: str, *, cacert: str | None = None, timeout: float = 30.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BadInputError(f"broker URL: expected http(s)://HOST[:PORT], seen {url[:80]!r}")
        self.url = url.rstrip("/")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self._cacert = cacert
        self._timeout = timeout
        self._local = threading.local()

    def _connect(self) -> http.client.HTTPConnection:
        if self._https:
            import ssl

            try:
                context = ssl.create_default_context(cafile=self._cacert)
            except (OSError, ssl.SSLError) as exc:
                raise BadInputError(f"broker CA bundle {self._cacert}: expected a readable PEM file") from exc
            return http.client.HTTPSConnection(self._host, self._port, timeout=self._timeout, context=context)
        return http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)

    def send(self, request: Request) -> Reply:
        """Send; the answer whatever its status."""
        method, path, body = request.method, request.path, request.body
        if request.params:
            path = f"{path}?{urlencode(request.params)}"
        data = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        sent = {"Accept": "application/json", **request.headers}
        if data is not None:
            sent["Content-Type"] = "application/json"
        for attempt in range(2):
            conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
            reused = conn is not None
            if conn is None:
                conn = self._connect()
                self._local.conn = conn
            try:
                conn.request(method, self._prefix + path, body=data, headers=sent)
                response = conn.getresponse()
                payload = response.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                conn.close()
                self._local.conn = None
                if reused and attempt == 0:
                    continue  # the broker closed an idle keep-alive connection
                raise TransportError(
                    f"broker {method} {self.url}{path}: expected a response, seen {type(exc).__name__}"
                ) from exc
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                self._local.conn = None
                raise TransportError(
                    f"broker {method} {self.url}{path}: expected a response, seen {type(exc).__name__}: "
                    f"{_one_line(str(exc), 200)}"
                ) from exc
            if response.will_close:
                conn.close()
                self._local.conn = None
            return Reply(response.status, payload, tuple(response.headers.get_all("Set-Cookie") or ()))
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


class BrokerHttp(KbsClient):
    """The KBS client of one broker URL over :class:`StdlibTransport`; safe to share between threads."""

    def __init__(self, url: str, *, cacert: str | None = None, timeout: float = 30.0) -> None:
        self._stdlib = StdlibTransport(url, cacert=cacert, timeout=timeout)
        super().__init__(self._stdlib)
        self.url = self._stdlib.url

    def close(self) -> None:
        self._stdlib.close()
