"""The KBS client logic written once, behind a small transport (no I/O here).

RCAR (challenge, attest), the batch release with the fall back to one ``GET
/kbs/v0/resource/...`` per key on a KBS without the batch endpoint (a Trustee KBS),
renewing a refused attestation token once, the publisher's key creation, and the reading
of every answer.  Two transports carry the bytes: httpx for the engine and the builder
(:mod:`layerseal.kbs.client`) and ``http.client`` for the keyprovider, which ocicrypt starts
once per layer and so must not import httpx (:mod:`layerseal.keyprovider.brokerhttp`).

Only the errors, the constants and :mod:`layerseal.wire.jsonload` (which the keyprovider's
protocol imports anyway) are imported at the top: the keyprovider's start-up pays for the
rest when a request needs it.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from layerseal.errors import BadInputError, TransportError
from layerseal.kbs.constants import (
    ATTEST_PATH,
    AUTH_PATH,
    BATCH_PATH,
    KEYS_PATH,
    PROTOCOL_VERSION,
    RESOURCE_PREFIX,
    SESSION_COOKIE,
)
from layerseal.wire.jsonload import loads, object_or_none

#: opens a JWE the KBS sealed to the enclave key of one attestation token
Opener = Callable[[dict[str, Any]], bytes]
#: ``credentials(refused)``: a usable attestation token (never *refused*, which the KBS
#: just turned down) and the opener of the enclave key it is bound to
Credentials = Callable[[str | None], tuple[str, Opener]]


@dataclass(frozen=True)
class Reply:
    """One HTTP answer, whatever its status."""

    status: int
    body: bytes
    set_cookies: tuple[str, ...] = ()


@dataclass(frozen=True)
class Request:
    """One HTTP request to a KBS, relative to its base URL; *body* is sent as JSON."""

    method: str
    path: str
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    params: Mapping[str, Any] | None = None


class Transport(Protocol):
    """Sends one request to a KBS base URL; raises ``TransportError`` only when no answer came."""

    def send(self, request: Request) -> Reply: ...


@dataclass(frozen=True)
class Challenge:
    """RCAR step 1's answer."""

    nonce: str
    session: str
    hash_algorithm: str


def session_cookie(set_cookies: Sequence[str]) -> str | None:
    """The ``kbs-session-id`` value among ``Set-Cookie`` header values."""
    session = None
    for cookie in set_cookies:
        name, _, rest = cookie.partition("=")
        if name.strip() == SESSION_COOKIE:
            session = rest.split(";", 1)[0].strip().strip('"')
    return session or None


def attestation_body(nonce: str, tee_pubkey: Mapping[str, Any], evidence: Any) -> dict[str, Any]:
    """RCAR step 2's request: the evidence must bind ``report_data(nonce, tee_pubkey)``."""
    return {
        "runtime-data": {"nonce": nonce, "tee-pubkey": dict(tee_pubkey)},
        "tee-evidence": {"primary_evidence": evidence, "additional_evidence": ""},
    }


def _json(reply: Reply, method: str, path: str) -> Any:
    try:
        return loads(reply.body, f"broker {method} {path}")
    except BadInputError as exc:  # a broker's answer that is no JSON: the exchange failed
        raise TransportError(f"{exc}; seen {reply.body[:60]!r}") from exc


def _jwe(reply: Reply, method: str, path: str) -> dict[str, Any]:
    doc = _json(reply, method, path)
    if not isinstance(doc, dict):
        raise TransportError(f"broker {method} {path}: expected a JWE object, seen another value")
    return doc


class KbsClient:
    """The KBS protocol over one transport; remembers whether the KBS has the batch endpoint."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        #: None until the first batch request tells whether the KBS has the endpoint
        self.batch: bool | None = None

    def request(self, request: Request) -> Reply:
        """A 2xx answer; any other status raises the layerseal error it maps to."""
        reply = self.transport.send(request)
        if reply.status >= 400:
            from layerseal.kbs.problems import error_for

            raise error_for(request.method, request.path, reply.status, reply.body)
        return reply

    def json(self, request: Request) -> Any:
        """The JSON of a 2xx answer (None for 204)."""
        reply = self.request(request)
        return None if reply.status == 204 else _json(reply, request.method, request.path)

    # ---------------------------------------------------------------- publisher side

    def create_layer_key(
        self, token: str, repository: str, layer_digest: str, optsdata: bytes, tenant: str | None = None
    ) -> dict[str, Any]:
        """``POST /api/v1/keys``: the broker creates the layer's KEK; the whole answer
        ``{"key": {...}, "kid": ..., "packet": b64}`` (its packet checked to be there)."""
        body: dict[str, Any] = {
            "repository": repository,
            "layer_digest": layer_digest,
            "optsdata": base64.b64encode(optsdata).decode(),
        }
        if tenant is not None:
            body["tenant"] = tenant
        doc = self.json(Request("POST", KEYS_PATH, body, {"Authorization": f"Bearer {token}"}))
        if not isinstance(doc, dict) or not isinstance(doc.get("packet"), str):
            raise TransportError(f"broker POST {KEYS_PATH}: expected a 'packet' field, seen none")
        return doc

    # ---------------------------------------------------------------- enclave side (RCAR)

    def challenge(self, tee: str) -> Challenge:
        """RCAR step 1: a fresh session's nonce, id and report-data hash algorithm."""
        from layerseal.kbs.kbsforms import selected_hash_algorithm

        reply = self.request(
            Request("POST", AUTH_PATH, {"version": PROTOCOL_VERSION, "tee": tee, "extra-params": ""})
        )
        session = session_cookie(reply.set_cookies)
        challenge = object_or_none(reply.body)
        nonce = challenge.get("nonce") if challenge is not None else None
        if not isinstance(nonce, str) or not session:
            raise TransportError(
                f"broker {AUTH_PATH}: expected a nonce and a {SESSION_COOKIE} cookie, seen neither"
            )
        return Challenge(nonce, session, selected_hash_algorithm(challenge))

    def attest(self, session: str, body: Mapping[str, Any]) -> str:
        """RCAR step 2: the attestation token."""
        doc = self.json(Request("POST", ATTEST_PATH, dict(body), {"Cookie": f"{SESSION_COOKIE}={session}"}))
        token = doc.get("token") if isinstance(doc, dict) else None
        if not isinstance(token, str):
            raise TransportError(f"broker {ATTEST_PATH}: expected a token, seen none")
        return token

    def _authorized(
        self, credentials: Credentials, method: str, path: str, body: Any = None
    ) -> tuple[Reply, Opener]:
        """A request with an attestation token; one the KBS refuses (401: expired, revoked,
        broker key rotated) is named to *credentials*, which attests anew, once."""
        refused: str | None = None
        for attempt in range(2):
            token, opener = credentials(refused)
            reply = self.transport.send(Request(method, path, body, {"Authorization": f"Bearer {token}"}))
            if reply.status != 401 or attempt:
                return reply, opener
            refused = token
        raise AssertionError("unreachable")  # pragma: no cover

    def _batch(self, credentials: Credentials, paths: list[str]) -> dict[str, bytes] | None:
        """KEKs of layerseal keys in one request; None when the KBS has no batch endpoint."""
        from layerseal.kbs.kbsforms import batch_absent, released_keks

        reply, opener = self._authorized(credentials, "POST", BATCH_PATH, {"resources": paths})
        if self.batch is None and batch_absent(reply.status, reply.body):
            self.batch = False
            return None
        if reply.status >= 400:
            from layerseal.kbs.problems import error_for

            raise error_for("POST", BATCH_PATH, reply.status, reply.body)
        self.batch = True
        return released_keks(opener(_jwe(reply, "POST", BATCH_PATH)), paths)

    def resource(self, credentials: Credentials, resource_path: str) -> bytes:
        """One resource through the plain ``GET /kbs/v0/resource/<repo>/<type>/<tag>`` (any KBS)."""
        from layerseal.kbs.kbsforms import resource_path_of

        path = RESOURCE_PREFIX + resource_path_of(resource_path)
        reply, opener = self._authorized(credentials, "GET", path)
        if reply.status >= 400:
            from layerseal.kbs.problems import error_for

            raise error_for("GET", path, reply.status, reply.body)
        return opener(_jwe(reply, "GET", path))

    def keks(self, credentials: Credentials, resource_paths: Sequence[str]) -> dict[str, bytes]:
        """KEKs keyed by the paths (or kids) given: layerseal keys in one batch, other
        resources (or all, on a KBS without the batch endpoint) one by one."""
        from layerseal.kbs.kbsforms import is_layer_key, resource_path_of

        parsed = {p: resource_path_of(p) for p in resource_paths}
        keks: dict[str, bytes] = {}
        ours = sorted({v for v in parsed.values() if is_layer_key(v)})
        if ours and self.batch is not False:
            keks.update(self._batch(credentials, ours) or {})
        for path in sorted(set(parsed.values()) - keks.keys()):
            keks[path] = self.resource(credentials, path)
        return {given: keks[norm] for given, norm in parsed.items()}
