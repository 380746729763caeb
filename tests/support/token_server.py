"""A docker token-auth server for tests (the ``auth: token:`` scheme of distribution).

``GET /token?service=S&scope=repository:NAME:pull,push`` with optional basic auth
returns ``{"token": JWT, "expires_in": N}``.  JWTs are RS256, signed by a self-signed
certificate sent in the ``x5c`` header; put :attr:`cert_pem` in the registry's
``rootcertbundle``.  ``grants`` maps a user (``""`` = anonymous) to the actions it
may get; every issued token is recorded in ``issued``.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from support.certs import make_signing_cert
from support.loopback import LoopbackServer


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _reply(self, status: int, body: bytes, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        ts = self.server.token_server
        url = urllib.parse.urlsplit(self.path)
        if url.path != "/token":
            self._reply(404, b"{}")
            return
        query = urllib.parse.parse_qs(url.query)
        user = ""
        header = self.headers.get("Authorization", "")
        if header.startswith("Basic "):
            name, _, password = base64.b64decode(header[6:]).decode().partition(":")
            if ts.users.get(name) != password:
                self._reply(
                    401, b'{"details":"bad credentials"}', {"WWW-Authenticate": 'Basic realm="token"'}
                )
                return
            user = name
        if user not in ts.grants:
            self._reply(
                401, b'{"details":"authentication required"}', {"WWW-Authenticate": 'Basic realm="token"'}
            )
            return
        scopes = [s for value in query.get("scope", []) for s in value.split(" ") if s]
        token = ts.issue(user, query.get("service", [""])[0], scopes)
        self._reply(200, json.dumps({"token": token, "expires_in": ts.expires_in}).encode())


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    token_server: TokenServer


class TokenServer(LoopbackServer):
    def __init__(
        self,
        *,
        issuer: str = "layerseal-test-issuer",
        users: dict[str, str] | None = None,
        grants: dict[str, tuple[str, ...]] | None = None,
        expires_in: int = 300,
    ) -> None:
        self.issuer = issuer
        self.users = users or {}
        self.grants = grants if grants is not None else {u: ("pull", "push", "delete") for u in self.users}
        self.expires_in = expires_in
        self.issued: list[tuple[str, tuple[str, ...]]] = []
        self._lock = threading.Lock()
        self._key, self._cert = make_signing_cert()
        self.cert_pem = self._cert.public_bytes(serialization.Encoding.PEM)
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.token_server = self
        super().__init__()
        self.realm = f"http://127.0.0.1:{self.port}/token"

    def issue(self, user: str, service: str, scopes: list[str]) -> str:
        allowed = set(self.grants.get(user, ()))
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            granted = [a for a in actions.split(",") if a in allowed]
            access.append({"type": kind, "name": name, "actions": granted})
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": user,
            "aud": service,
            "exp": now + self.expires_in,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        der = self._cert.public_bytes(serialization.Encoding.DER)
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(der).decode()]}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        with self._lock:
            self.issued.append((user, tuple(scopes)))
        return f"{signing_input}.{_b64url(signature)}"
