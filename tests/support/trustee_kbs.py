"""A minimal KBS written from kbs-types 0.18 and Trustee's KBS (2026-08), not from layerseal.

Routes as Trustee's ``api_server`` serves them: ``POST /kbs/v0/auth`` (``Request`` ->
``Challenge``, cookie ``kbs-session-id``), ``POST /kbs/v0/attest`` (``Attestation`` with
``tee-evidence {primary_evidence, additional_evidence}``; the ``sample`` TEE's report data
must be SHA-384 of the canonical runtime data) -> ``{"token"}``, ``GET
/kbs/v0/resource/<repo>/<type>/<tag>`` (cookie or bearer token) -> kbs-types ``Response``
JWE, written the way Trustee's ``jwe`` module writes it (ProtectedHeader ``alg, enc,
other_fields`` sorted, AAD = base64url of that JSON).  Every other plugin path is a 404
``PluginNotFound``; errors are ``ErrorInformation {type, detail}`` with 401 or 404.
"""

from __future__ import annotations

import base64
import hashlib
import http.cookies
import json
import os
import secrets
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography.hazmat.primitives import hashes, keywrap
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.concatkdf import ConcatKDFHash

from support.loopback import LoopbackServer

ERROR_TYPE_PREFIX = "https://github.com/confidential-containers/kbs/errors"


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64u_dec(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def canonical(obj: Any) -> bytes:
    # serde_json_canonicalizer on ASCII strings and objects: sorted keys, no spaces
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def trustee_jwe(tee_pubkey: dict[str, Any], payload: bytes) -> dict[str, str]:
    """kbs::jwe::jwe for RSA-OAEP-256 and ECDH-ES+A256KW on P-256/P-521."""
    cek = os.urandom(32)
    if tee_pubkey["kty"] == "RSA":
        n, e = (int.from_bytes(b64u_dec(tee_pubkey[k]), "big") for k in ("n", "e"))
        key = rsa.RSAPublicNumbers(e, n).public_key()
        oaep = padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None)
        encrypted_key = key.encrypt(cek, oaep)
        header: dict[str, Any] = {"alg": "RSA-OAEP-256", "enc": "A256GCM"}
    else:
        curve = {"P-256": ec.SECP256R1(), "P-521": ec.SECP521R1()}[tee_pubkey["crv"]]
        x, y = (int.from_bytes(b64u_dec(tee_pubkey[k]), "big") for k in ("x", "y"))
        peer = ec.EllipticCurvePublicNumbers(x, y, curve).public_key()
        eph = ec.generate_private_key(curve)
        z = eph.exchange(ec.ECDH(), peer)
        alg = "ECDH-ES+A256KW"
        other = len(alg).to_bytes(4, "big") + alg.encode() + bytes(8) + (256).to_bytes(4, "big")
        kek = ConcatKDFHash(hashes.SHA256(), 32, other).derive(z)
        encrypted_key = keywrap.aes_key_wrap(kek, cek)
        size = (curve.key_size + 7) // 8
        nums = eph.public_key().public_numbers()
        epk = {
            "crv": tee_pubkey["crv"],
            "kty": "EC",
            "x": b64u(nums.x.to_bytes(size, "big")),
            "y": b64u(nums.y.to_bytes(size, "big")),
        }
        header = {"alg": alg, "enc": "A256GCM", "epk": epk}
    protected = b64u(json.dumps(header, separators=(",", ":")).encode())
    iv = os.urandom(12)
    sealed = AESGCM(cek).encrypt(iv, payload, protected.encode())
    return {
        "protected": protected,
        "encrypted_key": b64u(encrypted_key),
        "iv": b64u(iv),
        "ciphertext": b64u(sealed[:-16]),
        "tag": b64u(sealed[-16:]),
    }


@dataclass
class KbsState:
    resources: dict[str, bytes] = field(default_factory=dict)
    selected_hash: str | None = None  # put into the challenge's extra-params when set
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    tokens: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    _raw: bytes = b""

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _reply(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, kind: str, detail: str) -> None:
        self._reply(status, {"type": f"{ERROR_TYPE_PREFIX}/{kind}", "detail": detail})

    def _body(self) -> Any:
        return json.loads(self._raw or b"null")

    def _session(self) -> dict[str, Any] | None:
        jar = http.cookies.SimpleCookie(self.headers.get("Cookie", ""))
        morsel = jar.get("kbs-session-id")
        return self.server.state.sessions.get(morsel.value) if morsel else None

    def _route(self, method: str) -> None:
        state = self.server.state
        state.requests.append((method, self.path))
        # read every body, answered or not, so the kept-alive connection stays in step
        self._raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        parts = self.path.split("?")[0].split("/")
        if parts[:3] != ["", "kbs", "v0"] or len(parts) < 4:
            return self._error(404, "InvalidRequestPath", f"Invalid request path {self.path}")
        plugin, rest = parts[3], parts[4:]
        if plugin == "auth" and method == "POST":
            return self._auth(self._body())
        if plugin == "attest" and method == "POST":
            return self._attest(self._body())
        if plugin == "resource" and method == "GET":
            return self._resource("/".join(rest))
        return self._error(404, "PluginNotFound", f"Plugin {plugin} not found")

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def _auth(self, request: Any) -> None:
        if request.get("version") != "0.4.0" or "extra-params" not in request:
            return self._error(401, "RcarAuthFailed", "KBS Client Protocol Version Mismatch")
        sid = secrets.token_hex(16)
        nonce = base64.b64encode(os.urandom(32)).decode()
        self.server.state.sessions[sid] = {"tee": request["tee"], "nonce": nonce, "token": None}
        extra: Any = ""
        if self.server.state.selected_hash:
            extra = {"selected-hash-algorithm": self.server.state.selected_hash}
        self._reply(
            200,
            {"nonce": nonce, "extra-params": extra},
            {"Set-Cookie": f"kbs-session-id={sid}; Path=/kbs/v0"},
        )

    def _attest(self, attestation: Any) -> None:
        session = self._session()
        if session is None:
            return self._error(401, "RcarAttestFailed", "session not found")
        runtime = attestation["runtime-data"]
        if runtime["nonce"] != session["nonce"]:
            return self._error(401, "RcarAttestFailed", "nonce mismatch")
        evidence = attestation["tee-evidence"]
        if session["tee"] != "sample":
            return self._error(401, "RcarAttestFailed", "only the sample TEE here")
        algorithm = self.server.state.selected_hash or "sha384"
        expected = hashlib.new(
            algorithm,
            canonical(
                {
                    "tee-pubkey": runtime["tee-pubkey"],
                    "nonce": runtime["nonce"],
                    "additional-evidence": evidence["additional_evidence"],
                }
            ),
        ).digest()
        seen = base64.b64decode(evidence["primary_evidence"]["report_data"])
        if seen[: len(expected)] != expected or any(seen[len(expected) :]):
            return self._error(401, "RcarAttestFailed", "report data mismatch")
        # an EAR-shaped token; opaque to the client
        claims = {
            "eat_profile": "tag:github.com,2023:veraison/ear",
            "submods": {"cpu0": {"ear.status": "affirming"}},
        }
        token = (
            ".".join(b64u(json.dumps(x).encode()) for x in ({"alg": "ES256", "typ": "JWT"}, claims))
            + "."
            + b64u(os.urandom(64))
        )
        self.server.state.tokens[token] = {"tee-pubkey": runtime["tee-pubkey"]}
        session["token"] = token
        self._reply(200, {"token": token})

    def _resource(self, path: str) -> None:
        auth = self.headers.get("Authorization", "")
        grant = self.server.state.tokens.get(auth.removeprefix("Bearer ")) if auth else None
        if grant is None:
            session = self._session()
            grant = self.server.state.tokens.get(session["token"]) if session and session["token"] else None
        if grant is None:
            return self._error(401, "TokenNotFound", "Attestation Token not found")
        if path not in self.server.state.resources:
            return self._error(404, "PluginInternalError", "Plugin internal error")
        self._reply(200, trustee_jwe(grant["tee-pubkey"], self.server.state.resources[path]))


class _Server(ThreadingHTTPServer):
    state: KbsState


class TrusteeLikeKbs(LoopbackServer):
    def __init__(self, state: KbsState) -> None:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.state = state
        self.state = state
        super().__init__()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"
