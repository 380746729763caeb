"""HTTP clients of the key broker (httpx): the publisher side and the enclave side.

``PublisherClient`` manages keys, policies, reference values and tokens with an API
token.  ``EnclaveClient`` runs RCAR with an attester and an enclave key pair and fetches
many layer KEKs in one JWE.  Error responses (RFC 7807) become layerseal errors whose
message carries the HTTP status and the broker's detail.

``EnclaveClient`` also works against a Trustee KBS: a kid outside layerseal's scheme
(``kbs:///<repo>/<type>/<tag>``) is fetched with the plain ``GET /kbs/v0/resource/...``,
and when the batch endpoint is absent (a 404/405 that is not a layerseal problem
document, e.g. Trustee's ``PluginNotFound``) every key is fetched that way from then
on.  The challenge's ``selected-hash-algorithm`` (kbs-types) picks the report-data hash.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Any, Self, TypedDict, Unpack

import httpx
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from layerseal.attest.binding import report_data
from layerseal.attest.claims import Attester
from layerseal.crypto.jwe import decrypt_from_jwk
from layerseal.crypto.keys import PrivateKey, public_key_to_jwk
from layerseal.errors import TransportError
from layerseal.kbs.kbsforms import resource_path_of
from layerseal.kbs.packets import KeyPacket, unwrap_key_packet
from layerseal.kbs.rcarclient import KbsClient, Opener, Reply, Request, attestation_body
from layerseal.netcause import classify_network_error
from layerseal.wire.b64 import b64decode

__all__ = [
    "ConnectionOptions",
    "EnclaveClient",
    "HttpxTransport",
    "PublisherClient",
    "resource_path_of",
    "tee_pubkey_jwk",
    "unwrap_key_packet",
]


class HttpxTransport:
    """The KBS transport on httpx (engine, builder, CLI); sessions travel explicitly, never
    in a cookie jar, so replicas behind a load balancer can be mixed."""

    def __init__(
        self, url: str, *, transport: httpx.BaseTransport | None, timeout: float, verify: bool | str
    ) -> None:
        self.base = url.rstrip("/")
        self._client = httpx.Client(base_url=self.base, transport=transport, timeout=timeout, verify=verify)

    def send(self, request: Request) -> Reply:
        method, path = request.method, request.path
        try:
            response = self._client.request(
                method,
                path,
                json=request.body,
                headers=dict(request.headers),
                params=dict(request.params) if request.params else None,
            )
        except httpx.HTTPError as exc:
            failure = classify_network_error(
                exc,
                httpx.URL(self.base).netloc.decode(),
                plain_http_fix="this looks like plain HTTP: use an http:// broker URL",
                untrusted_fix="pass the CA that signed it (--kbs-cacert, or --ca for broker commands)",
            )
            raise TransportError(
                f"broker {method} {self.base}{path}: expected a response, seen {failure.message()}"
            ) from exc
        finally:
            self._client.cookies.clear()
        return Reply(response.status_code, response.content, tuple(response.headers.get_list("set-cookie")))

    def close(self) -> None:
        self._client.close()


class ConnectionOptions(TypedDict, total=False):
    """How a client reaches the broker (keyword arguments of both clients)."""

    transport: httpx.BaseTransport | None  # tests: an ASGI or mock transport
    timeout: float
    verify: bool | str  # a CA bundle path, or False


class _BrokerConnection:
    """What both clients share: the KBS client logic over one httpx connection, closed with them."""

    def __init__(
        self,
        url: str,
        *,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 30.0,
        verify: bool | str = True,
    ) -> None:
        self._http = HttpxTransport(url, transport=transport, timeout=timeout, verify=verify)
        self._kbs = KbsClient(self._http)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()


class PublisherClient(_BrokerConnection):
    """The publisher/admin API, authenticated with an API token ``lsk_...``."""

    def __init__(self, url: str, token: str, **connection: Unpack[ConnectionOptions]) -> None:
        super().__init__(url, **connection)
        self._token = token
        self._headers = {"Authorization": f"Bearer {token}"}

    def _call(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> Any:
        clean = {k: v for k, v in (params or {}).items() if v is not None}
        return self._kbs.json(Request(method, path, body, self._headers, clean or None))

    # keys
    def create_layer_key_detailed(
        self, repository: str, layer_digest: str, optsdata: bytes, *, tenant: str | None = None
    ) -> dict[str, Any]:
        """The full answer: ``{"key": {...}, "kid": ..., "packet": b64}``."""
        return self._kbs.create_layer_key(self._token, repository, layer_digest, optsdata, tenant)

    def create_layer_key(
        self, repository: str, layer_digest: str, optsdata: bytes, *, tenant: str | None = None
    ) -> bytes:
        """Create the KEK for a new layer; returns the CoCo key packet JSON bytes."""
        result = self.create_layer_key_detailed(repository, layer_digest, optsdata, tenant=tenant)
        return b64decode(result["packet"], "broker POST /api/v1/keys packet")

    def list_keys(self, repository: str | None = None, *, tenant: str | None = None) -> list[dict[str, Any]]:
        keys: list[dict[str, Any]] = self._call(
            "GET", "/api/v1/keys", params={"repository": repository, "tenant": tenant}
        )["keys"]
        return keys

    def get_key(self, key_id: str) -> dict[str, Any]:
        key: dict[str, Any] = self._call("GET", f"/api/v1/keys/{key_id}")["key"]
        return key

    def rotate_key(
        self,
        key_id: str,
        *,
        optsdata: bytes | None = None,
        packet: bytes | None = None,
        retire_previous: bool = False,
    ) -> bytes:
        """A new KEK version; give the optsdata or the current packet (re-wrapped by the broker)."""
        body: dict[str, Any] = {"retire_previous": retire_previous}
        if optsdata is not None:
            body["optsdata"] = base64.b64encode(optsdata).decode()
        if packet is not None:
            body["packet"] = base64.b64encode(packet).decode()
        return b64decode(
            self._call("POST", f"/api/v1/keys/{key_id}/rotate", body)["packet"], "broker rotate packet"
        )

    def retire_key_version(self, key_id: str, version: int) -> dict[str, Any]:
        key: dict[str, Any] = self._call("POST", f"/api/v1/keys/{key_id}/versions/{version}/retire", {})[
            "key"
        ]
        return key

    def revoke_key_version(self, key_id: str, version: int) -> dict[str, Any]:
        key: dict[str, Any] = self._call("POST", f"/api/v1/keys/{key_id}/versions/{version}/revoke", {})[
            "key"
        ]
        return key

    def revoke_key(self, key_id: str) -> dict[str, Any]:
        key: dict[str, Any] = self._call("POST", f"/api/v1/keys/{key_id}/revoke", {})["key"]
        return key

    def mark_unused(self, key_id: str, unused: bool = True) -> dict[str, Any]:
        key: dict[str, Any] = self._call("POST", f"/api/v1/keys/{key_id}/unused", {"unused": unused})["key"]
        return key

    def delete_key(self, key_id: str) -> None:
        self._call("DELETE", f"/api/v1/keys/{key_id}")

    # policies and reference values
    def set_policy(
        self,
        policy: Mapping[str, Any],
        *,
        scope: str = "tenant",
        target: str | None = None,
        tenant: str | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"policy": dict(policy), "scope": scope}
        if target is not None:
            body["target"] = target
        if tenant is not None:
            body["tenant"] = tenant
        result: dict[str, Any] = self._call("PUT", "/api/v1/policies", body)
        return result

    def dry_run_policy(
        self,
        policy: Mapping[str, Any],
        *,
        tenant: str | None = None,
        audit_entry: int | None = None,
        claims: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Evaluate *policy* (not stored) against a recorded audit entry's claims or *claims*."""
        body: dict[str, Any] = {"policy": dict(policy)}
        if tenant is not None:
            body["tenant"] = tenant
        if audit_entry is not None:
            body["audit_entry"] = audit_entry
        if claims is not None:
            body["claims"] = dict(claims)
        result: dict[str, Any] = self._call("POST", "/api/v1/policies/dry-run", body)
        return result

    def list_policies(self, *, tenant: str | None = None) -> list[dict[str, Any]]:
        policies: list[dict[str, Any]] = self._call("GET", "/api/v1/policies", params={"tenant": tenant})[
            "policies"
        ]
        return policies

    def delete_policy(
        self, *, scope: str = "tenant", target: str | None = None, tenant: str | None = None
    ) -> None:
        self._call("DELETE", "/api/v1/policies", params={"scope": scope, "target": target, "tenant": tenant})

    def add_refvalues(self, name: str, values: Sequence[str], *, tenant: str | None = None) -> int:
        body: dict[str, Any] = {"name": name, "values": list(values)}
        if tenant is not None:
            body["tenant"] = tenant
        return int(self._call("POST", "/api/v1/refvalues", body)["changed"])

    def remove_refvalues(self, name: str, values: Sequence[str], *, tenant: str | None = None) -> int:
        body: dict[str, Any] = {"name": name, "values": list(values)}
        if tenant is not None:
            body["tenant"] = tenant
        return int(self._call("POST", "/api/v1/refvalues/remove", body)["changed"])

    def list_refvalues(self, *, tenant: str | None = None) -> dict[str, dict[str, list[str]]]:
        refs: dict[str, dict[str, list[str]]] = self._call(
            "GET", "/api/v1/refvalues", params={"tenant": tenant}
        )["refvalues"]
        return refs

    # admin
    def register_platform(self, certificate_pem: bytes, *, description: str = "", tee: str = "sim") -> str:
        body = {"tee": tee, "certificate": certificate_pem.decode(), "description": description}
        return str(self._call("POST", "/api/v1/platforms", body)["fingerprint"])

    def list_platforms(self) -> list[dict[str, Any]]:
        platforms: list[dict[str, Any]] = self._call("GET", "/api/v1/platforms")["platforms"]
        return platforms

    def create_token(
        self,
        tenant: str,
        scopes: Sequence[str],
        *,
        description: str = "",
        expires_at: float | None = None,
    ) -> tuple[str, str]:
        """A new API token; returns (token_id, token). The token is shown only now."""
        body: dict[str, Any] = {"tenant": tenant, "scopes": list(scopes), "description": description}
        if expires_at is not None:
            body["expires_at"] = expires_at
        r = self._call("POST", "/api/v1/tokens", body)
        return str(r["token_id"]), str(r["token"])

    def list_tokens(self) -> list[dict[str, Any]]:
        tokens: list[dict[str, Any]] = self._call("GET", "/api/v1/tokens")["tokens"]
        return tokens

    def revoke_token(self, token_id: str) -> None:
        self._call("POST", f"/api/v1/tokens/{token_id}/revoke", {})

    def revoke_attestation_token(self, *, token: str | None = None, jti: str | None = None) -> str:
        return str(
            self._call("POST", "/api/v1/attestation-tokens/revoke", {"token": token, "jti": jti})["revoked"]
        )

    def audit(self, *, tenant: str | None = None, after: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = self._call(
            "GET", "/api/v1/audit", params={"tenant": tenant, "after": after, "limit": limit}
        )["entries"]
        return entries


def tee_pubkey_jwk(private_key: PrivateKey) -> dict[str, str]:
    """The KBS ``tee-pubkey`` of an enclave key: its public JWK plus the JWE ``alg`` to use."""
    jwk = public_key_to_jwk(private_key.public_key())
    jwk["alg"] = "RSA-OAEP-256" if isinstance(private_key, RSAPrivateKey) else "ECDH-ES+A256KW"
    return jwk


class EnclaveClient(_BrokerConnection):
    """RCAR from inside an enclave: attest once, then fetch layer KEKs in batches."""

    def __init__(
        self, url: str, attester: Attester, private_key: PrivateKey, **connection: Unpack[ConnectionOptions]
    ) -> None:
        super().__init__(url, **connection)
        self.attester = attester
        self.private_key = private_key
        self.tee_pubkey = tee_pubkey_jwk(private_key)
        self.token: str | None = None
        self.session_id: str | None = None
        self.hash_algorithm = "sha384"

    @property
    def batch(self) -> bool | None:
        """None until the first batch request tells whether the KBS has the endpoint."""
        return self._kbs.batch

    def challenge(self) -> str:
        """RCAR step 1: a fresh session; returns the nonce."""
        challenge = self._kbs.challenge(self.attester.tee)
        self.session_id = challenge.session
        self.hash_algorithm = challenge.hash_algorithm
        return challenge.nonce

    def attestation_body(self, nonce: str) -> dict[str, Any]:
        """RCAR step 2 request body: evidence over SHA-384(JCS(nonce, tee-pubkey))."""
        evidence = self.attester.evidence(report_data(nonce, self.tee_pubkey, "", self.hash_algorithm))
        return attestation_body(nonce, self.tee_pubkey, evidence)

    def attest(self) -> str:
        """Run RCAR steps 1-2; returns (and keeps) the attestation token."""
        nonce = self.challenge()
        assert self.session_id is not None  # challenge() checked it
        self.token = self._kbs.attest(self.session_id, self.attestation_body(nonce))
        return self.token

    def _open(self, jwe_doc: dict[str, Any]) -> bytes:
        return decrypt_from_jwk(jwe_doc, self.private_key)

    def _credentials(self, refused: str | None) -> tuple[str, Opener]:
        if self.token is None or self.token == refused:
            self.attest()  # first use, or expired or revoked: attest again
        assert self.token is not None
        return self.token, self._open

    def get_keys(self, resource_paths: Sequence[str]) -> dict[str, bytes]:
        """KEKs of many layers, keyed by the paths (or kids) given: layerseal keys in one
        batch, other resources (or all, on a KBS without the batch endpoint) one by one."""
        return self._kbs.keks(self._credentials, resource_paths)

    def get_resource(self, resource_path: str) -> bytes:
        """One resource through the plain KBS ``GET /kbs/v0/resource/<repo>/<type>/<tag>``."""
        return self._kbs.resource(self._credentials, resource_path)

    def unwrap(self, packet_json: bytes) -> bytes:
        """Fetch the KEK a key packet names and return the packet's optsdata."""
        kid = KeyPacket.parse(packet_json).kid  # a bad packet fails before any attestation
        return unwrap_key_packet(packet_json, self.get_keys([kid])[kid])
