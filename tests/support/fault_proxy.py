"""An HTTP/1.1 reverse proxy for tests that injects faults between a client and a server.

Faults match a method and a path pattern and fire a bounded number of times:
``status`` answers with an error status (and ``Retry-After``) without asking upstream,
``cut`` sends the headers and the first ``cut_after`` body bytes then drops the
connection, ``cut_request`` passes only the first ``cut_after`` bytes of the request body
upstream (as if the client's connection broke there) and drops the connection unanswered,
``corrupt`` flips one byte of the body, ``inflate`` pads the body with
spaces to ``inflate_to`` bytes (optionally without Content-Length).  Every request
seen is logged in ``requests``.  Listens on 127.0.0.1 only.
"""

from __future__ import annotations

import http.client
import re
import socket
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from support.loopback import LoopbackServer

_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}
)


@dataclass
class Fault:
    kind: str  # status | cut | cut_request | corrupt | inflate
    path: str  # regular expression searched in the request path
    method: str | None = None
    times: int = 1
    status: int = 503
    retry_after: str | None = None
    #: with ``status``: a ``WWW-Authenticate`` challenge to send (a 401 asking to authenticate again)
    www_authenticate: str | None = None
    cut_after: int = 0
    inflate_to: int = 0
    chunked: bool = False
    hits: int = 0


@dataclass(frozen=True)
class SeenRequest:
    method: str
    path: str
    range: str | None
    fault: str | None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _read_body(self) -> bytes | None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else None

    def _handle(self) -> None:
        proxy = self.server.proxy
        body = self._read_body()
        fault = proxy.match(self.command, self.path)
        proxy.log(
            SeenRequest(self.command, self.path, self.headers.get("Range"), fault.kind if fault else None)
        )
        if fault is not None and fault.kind == "status":
            self.send_response(fault.status)
            if fault.retry_after is not None:
                self.send_header("Retry-After", fault.retry_after)
            if fault.www_authenticate is not None:
                self.send_header("WWW-Authenticate", fault.www_authenticate)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        headers = {
            k: v for k, v in self.headers.items() if k.lower() not in _HOP and k.lower() != "content-length"
        }
        if fault is not None and fault.kind == "cut_request":
            body = (body or b"")[: fault.cut_after]
            rng = next((k for k in headers if k.lower() == "content-range"), None)
            if rng is not None:
                start = int(headers[rng].split("-")[0])
                headers[rng] = f"{start}-{start + len(body) - 1}"
            upstream = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=60)
            try:
                upstream.request(self.command, self.path, body=body, headers=headers)
                upstream.getresponse().read()
            finally:
                upstream.close()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        upstream = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=60)
        try:
            upstream.request(self.command, self.path, body=body, headers=headers)
            response = upstream.getresponse()
            data = response.read() if self.command != "HEAD" else b""
            out_headers = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP]
        finally:
            upstream.close()
        ok = response.status in (200, 206)
        if fault is not None and fault.kind == "corrupt" and ok and data:
            middle = len(data) // 2
            data = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]
        if fault is not None and fault.kind == "inflate" and ok:
            data = data + b" " * max(0, fault.inflate_to - len(data))
        chunked = fault is not None and fault.kind == "inflate" and fault.chunked
        self.send_response(response.status)
        for key, value in out_headers:
            if key.lower() == "content-length" and self.command != "HEAD":
                continue
            self.send_header(key, value)
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        elif self.command != "HEAD":
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if fault is not None and fault.kind == "cut" and ok:
            self.wfile.write(data[: fault.cut_after])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if chunked:
            for i in range(0, len(data), 65536):
                piece = data[i : i + 65536]
                self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.wfile.write(data)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _handle


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    proxy: FaultProxy


class FaultProxy(LoopbackServer):
    """``with FaultProxy("127.0.0.1", port) as p: p.host`` -> ``127.0.0.1:PROXYPORT``."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.faults: list[Fault] = []
        self.requests: list[SeenRequest] = []
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.proxy = self
        super().__init__()
        self.host = f"127.0.0.1:{self.port}"

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def match(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.hits >= fault.times or (fault.method and fault.method != method):
                    continue
                if re.search(fault.path, path):
                    fault.hits += 1
                    return fault
        return None

    def log(self, seen: SeenRequest) -> None:
        with self._lock:
            self.requests.append(seen)
