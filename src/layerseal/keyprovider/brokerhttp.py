"""The few broker calls the keyprovider makes, over the standard library's ``http.client``.

``layerseal.kbs.client`` is built on httpx, whose import alone takes ~100 ms (it pulls
in click and rich for its CLI); ocicrypt starts the keyprovider once per layer, so this
module speaks the same endpoints with ``http.client`` (~20 ms).  What the answers mean
(batch endpoint absent, selected hash, resource paths) is read by ``kbs.kbsforms``,
shared with ``kbs.client``, so both treat a Trustee KBS alike.  Error statuses map to
the same layerseal errors as ``kbs.client``.  One keep-alive connection per thread; a
request that fails on a reused connection before any answer is retried once.
"""

from __future__ import annotations

import base64
import http.client
import json
import threading
from typing import Any
from urllib.parse import urlsplit

from layerseal.errors import BadInputError, TransportError
from layerseal.kbs.problems import error_for

SESSION_COOKIE = "kbs-session-id"
PROTOCOL_VERSION = "0.4.0"


def _one_line(text: str, limit: int = 500) -> str:
    return " ".join(text.split())[:limit]


class BrokerHttp:
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
        #: None until the first batch request tells whether the KBS has the endpoint
        self.batch: bool | None = None

    def _connect(self) -> http.client.HTTPConnection:
        if self._https:
            import ssl

            try:
                context = ssl.create_default_context(cafile=self._cacert)
            except (OSError, ssl.SSLError) as exc:
                raise BadInputError(f"broker CA bundle {self._cacert}: expected a readable PEM file") from exc
            return http.client.HTTPSConnection(self._host, self._port, timeout=self._timeout, context=context)
        return http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)

    def send(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        """Send; return (status, headers, body) whatever the status."""
        data = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        sent = {"Accept": "application/json", **(headers or {})}
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
            return response.status, response.headers, payload
        raise AssertionError("unreachable")  # pragma: no cover

    def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[http.client.HTTPMessage, bytes]:
        """Send; return (headers, body) of a 2xx answer, raise the mapped error otherwise."""
        status, answer_headers, payload = self.send(method, path, body, headers)
        if status >= 400:
            raise error_for(method, path, status, payload)
        return answer_headers, payload

    def json(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
        _, payload = self.request(method, path, body, headers)
        try:
            return json.loads(payload)
        except ValueError as exc:
            raise TransportError(f"broker {method} {path}: expected JSON, seen {payload[:60]!r}") from exc

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # ---------------------------------------------------------------- publisher side

    def create_layer_key(
        self, token: str, repository: str, layer_digest: str, optsdata: bytes, tenant: str | None
    ) -> bytes:
        """``POST /api/v1/keys``: the broker creates the layer's KEK; returns the key packet JSON."""
        body: dict[str, Any] = {
            "repository": repository,
            "layer_digest": layer_digest,
            "optsdata": base64.b64encode(optsdata).decode(),
        }
        if tenant is not None:
            body["tenant"] = tenant
        doc = self.json("POST", "/api/v1/keys", body, {"Authorization": f"Bearer {token}"})
        packet = doc.get("packet") if isinstance(doc, dict) else None
        if not isinstance(packet, str):
            raise TransportError("broker POST /api/v1/keys: expected a 'packet' field, seen none")
        return base64.b64decode(packet)

    # ---------------------------------------------------------------- enclave side (RCAR)

    def auth(self, tee: str) -> tuple[str, str, str]:
        """RCAR step 1: returns (nonce, session id, report-data hash algorithm)."""
        from layerseal.kbs.kbsforms import selected_hash_algorithm

        headers, payload = self.request(
            "POST", "/kbs/v0/auth", {"version": PROTOCOL_VERSION, "tee": tee, "extra-params": ""}
        )
        session = None
        for cookie in headers.get_all("Set-Cookie") or []:
            name, _, rest = cookie.partition("=")
            if name.strip() == SESSION_COOKIE:
                session = rest.split(";", 1)[0].strip().strip('"')
        try:
            challenge = json.loads(payload)
        except ValueError:
            challenge = None
        nonce = challenge.get("nonce") if isinstance(challenge, dict) else None
        if not isinstance(nonce, str) or not session:
            raise TransportError(
                f"broker /kbs/v0/auth: expected a nonce and a {SESSION_COOKIE} cookie, seen neither"
            )
        return nonce, session, selected_hash_algorithm(challenge)

    def attest(self, session: str, body: dict[str, Any]) -> str:
        """RCAR step 2: returns the attestation token."""
        doc = self.json("POST", "/kbs/v0/attest", body, {"Cookie": f"{SESSION_COOKIE}={session}"})
        token = doc.get("token") if isinstance(doc, dict) else None
        if not isinstance(token, str):
            raise TransportError("broker /kbs/v0/attest: expected a token, seen none")
        return token

    def release(self, token: str, paths: list[str]) -> Any:
        """``POST /kbs/v0/resources``: the KEKs of *paths* as a JWE to the token's tee-pubkey;
        None when the KBS has no batch endpoint (a Trustee KBS), remembered for this URL."""
        from layerseal.kbs.kbsforms import BATCH_PATH, batch_absent

        auth = {"Authorization": f"Bearer {token}"}
        status, _, payload = self.send("POST", BATCH_PATH, {"resources": paths}, auth)
        if self.batch is None and batch_absent(status, payload):
            self.batch = False
            return None
        if status >= 400:
            raise error_for("POST", BATCH_PATH, status, payload)
        self.batch = True
        return self._parse(payload, "POST", BATCH_PATH)

    def resource(self, token: str, resource_path: str) -> Any:
        """``GET /kbs/v0/resource/<repo>/<type>/<tag>``: one resource as a JWE (any KBS)."""
        from layerseal.kbs.kbsforms import RESOURCE_PREFIX

        return self.json("GET", RESOURCE_PREFIX + resource_path, None, {"Authorization": f"Bearer {token}"})

    @staticmethod
    def _parse(payload: bytes, method: str, path: str) -> Any:
        try:
            return json.loads(payload)
        except ValueError as exc:
            raise TransportError(f"broker {method} {path}: expected JSON, seen {payload[:60]!r}") from exc
