"""The broker's request bodies: wire JSON in, validated request objects out (pure).

The one place that reads what a client sent.  ``from_json`` takes the decoded JSON object
and raises ``BadInputError`` naming the field, as ``<what>: expected ..., seen ...``.
Where the broker must first know who asks (a caller without the right learns only that),
the service parses the body itself, after its checks, but always with these functions;
the HTTP app parses the rest.  Each body is read once.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from layerseal.attest.verifiers import SUPPORTED_TEES
from layerseal.attest.x509util import load_certificate
from layerseal.broker import policy
from layerseal.broker.tokens import check_scopes
from layerseal.crypto.keys import public_key_from_jwk
from layerseal.errors import BadInputError
from layerseal.image.digest import Digest
from layerseal.image.encryption import PrivateOptions
from layerseal.kbs import packets
from layerseal.kbs.constants import PROTOCOL_VERSION
from layerseal.wire.b64 import b64decode

ADMIN_TENANT = "*"
MAX_TOKEN_LIFETIME = 10 * 365 * 86400.0
_REPO_RE = re.compile(
    r"^[a-z0-9]+(?:[._-][a-z0-9]+)*(?::[0-9]+)?(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$"
)
_REF_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

R = TypeVar("R")


def coerce(parse: Callable[[Mapping[str, Any]], R], body: Mapping[str, Any] | R) -> R:
    """*body* as a request object: parsed with *parse* if it is still JSON (tools, tests)."""
    return parse(body) if isinstance(body, Mapping) else body


def check_repository(repo: Any) -> str:
    if not isinstance(repo, str) or len(repo) > 255 or not _REPO_RE.match(repo):
        raise BadInputError(
            f"repository: expected an OCI repository name like 'registry:5000/app', seen {str(repo)[:80]!r}"
        )
    return repo


def _b64_field(value: Any, what: str, *, max_len: int = 1 << 16) -> bytes:
    if isinstance(value, str) and len(value) > max_len:
        raise BadInputError(f"{what}: expected at most {max_len} characters, seen {len(value)}")
    return b64decode(value, what)


def check_optsdata(optsdata: bytes, what: str) -> bytes:
    """*optsdata* once it is the JSON of a layer's private options."""
    PrivateOptions.from_json_bytes(optsdata, f"{what}: optsdata")
    return optsdata


def policy_target(scope: Any, target: Any) -> tuple[str, str]:
    """(scope, target) of a policy: the tenant's, a repository's or a key's."""
    if scope == "tenant":
        if target not in (None, ""):
            raise BadInputError("policy target: expected none for scope 'tenant'")
        return "tenant", ""
    if scope == "repository":
        return "repository", check_repository(target)
    if scope == "key":
        if not isinstance(target, str) or not packets.KEY_ID_RE.match(target):
            raise BadInputError(
                f"policy target: expected a key id for scope 'key', seen {str(target)[:40]!r}"
            )
        return "key", target
    raise BadInputError(f"policy scope: expected tenant, repository or key, seen {str(scope)[:20]!r}")


def parse_expires_in(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 1 <= value <= MAX_TOKEN_LIFETIME:
        raise BadInputError(
            f"token request: field 'expires_in': expected 1..{int(MAX_TOKEN_LIFETIME)} seconds, "
            f"seen {str(value)[:20]!r}"
        )
    return float(value)


def batch_resources(body: Mapping[str, Any]) -> list[Any]:
    """The paths of a batch release, still unparsed (see :func:`parse_paths`)."""
    resources = body.get("resources")
    if not isinstance(resources, list):
        raise BadInputError("batch request: field 'resources': expected an array of resource paths")
    return resources


def parse_paths(resources: Any, max_batch: int) -> list[packets.ResourcePath]:
    """The resource paths a release asks for: one to *max_batch* of them."""
    if not isinstance(resources, list | tuple) or not resources:
        raise BadInputError("resources: expected at least one resource path, seen none")
    if len(resources) > max_batch:
        raise BadInputError(f"resources: expected at most {max_batch} paths, seen {len(resources)}")
    return [packets.ResourcePath.parse(r) for r in resources]


def unused_flag(body: Mapping[str, Any]) -> bool:
    unused = body.get("unused", True)
    if not isinstance(unused, bool):
        raise BadInputError("mark unused: field 'unused': expected true or false")
    return unused


# ------------------------------------------------------------------ KBS RCAR


@dataclass(frozen=True)
class AuthRequest:
    """``POST /kbs/v0/auth``: the protocol version and the TEE kind the client will attest with."""

    tee: str

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> AuthRequest:
        version = body.get("version")
        if not isinstance(version, str) or not version.startswith("0."):
            raise BadInputError(
                f"KBS request version: expected '{PROTOCOL_VERSION}', seen {str(version)[:20]!r}"
            )
        tee = body.get("tee")
        if tee not in SUPPORTED_TEES:
            raise BadInputError(
                f"KBS request tee: expected one of {list(SUPPORTED_TEES)}, seen {str(tee)[:30]!r}"
            )
        return cls(str(tee))


@dataclass(frozen=True)
class AttestRequest:
    """``POST /kbs/v0/attest``: the evidence and what it must bind (nonce, tee-pubkey)."""

    evidence: bytes
    additional_evidence: str
    init_data: Any
    nonce: str
    tee_pubkey: dict[str, Any]

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> AttestRequest:
        runtime = body.get("runtime-data")
        if not isinstance(runtime, dict):
            raise BadInputError(
                "attestation: field 'runtime-data': expected an object with 'nonce' and 'tee-pubkey'"
            )
        nonce = runtime.get("nonce")
        tee_pubkey = runtime.get("tee-pubkey")
        if not isinstance(nonce, str) or not isinstance(tee_pubkey, dict):
            raise BadInputError(
                "attestation runtime-data: expected 'nonce' (string) and 'tee-pubkey' (JWK object)"
            )
        public_key_from_jwk(tee_pubkey, "attestation tee-pubkey")
        evidence_field = body.get("tee-evidence")
        additional = ""
        if isinstance(evidence_field, dict) and "primary_evidence" in evidence_field:
            primary = evidence_field["primary_evidence"]
            additional_value = evidence_field.get("additional_evidence", "")
            if not isinstance(additional_value, str):
                raise BadInputError("attestation tee-evidence.additional_evidence: expected a string")
            additional = additional_value
        else:
            primary = evidence_field
        if isinstance(primary, str):
            # a lone surrogate passes as invalid UTF-8, for the verifier to refuse and audit
            evidence = primary.encode("utf-8", "surrogatepass")
        elif isinstance(primary, dict):
            evidence = json.dumps(primary, separators=(",", ":")).encode()
        else:
            raise BadInputError("attestation: field 'tee-evidence': expected an object or string")
        return cls(evidence, additional, body.get("init-data"), nonce, tee_pubkey)


@dataclass(frozen=True)
class RevokeAttestationRequest:
    """``POST /api/v1/attestation-tokens/revoke``: a token, or the id of one."""

    token: str | None
    jti: str | None

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> RevokeAttestationRequest:
        token, jti = body.get("token"), body.get("jti")
        if token is not None and not isinstance(token, str):
            raise BadInputError("revoke: field 'token': expected a string")
        if jti is not None and not isinstance(jti, str):
            raise BadInputError("revoke: field 'jti': expected a string")
        return cls(token, jti)


# ------------------------------------------------------------------ publisher API


@dataclass(frozen=True)
class CreateKeyRequest:
    """``POST /api/v1/keys``: a new layer's repository, digest and private options (the
    tenant is the caller's business, see ``Principal.tenant_for``)."""

    repository: str
    layer_digest: str
    optsdata: bytes

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> CreateKeyRequest:
        what = "create key request"
        repository = check_repository(body.get("repository"))
        digest = body.get("layer_digest")
        if digest is None:
            raise BadInputError(f"{what}: field 'layer_digest' is missing (expected a string)")
        if not isinstance(digest, str) or len(digest) > 1024:
            raise BadInputError(f"{what}: field 'layer_digest': expected a string of at most 1024 characters")
        layer_digest = str(Digest.parse(digest))
        optsdata = check_optsdata(_b64_field(body.get("optsdata"), f"{what}: field 'optsdata'"), what)
        return cls(repository, layer_digest, optsdata)


@dataclass(frozen=True)
class RotateKeyRequest:
    """``POST /api/v1/keys/{key_id}/rotate``: the optsdata in the clear, or a packet to re-wrap."""

    optsdata: bytes | None
    packet: packets.KeyPacket | None
    packet_json: bytes
    retire_previous: bool

    WHAT = "rotate key request"

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> RotateKeyRequest:
        what = cls.WHAT
        retire = body.get("retire_previous") is True
        if body.get("optsdata") is not None:
            optsdata = check_optsdata(_b64_field(body.get("optsdata"), f"{what}: field 'optsdata'"), what)
            return cls(optsdata, None, b"", retire)
        if body.get("packet") is not None:
            packet_json = _b64_field(body.get("packet"), f"{what}: field 'packet'")
            return cls(None, packets.KeyPacket.parse(packet_json), packet_json, retire)
        raise BadInputError(f"{what}: expected field 'optsdata' or 'packet', seen neither")


@dataclass(frozen=True)
class PolicyRequest:
    """``PUT /api/v1/policies``: a policy document for the tenant, a repository or a key."""

    scope: str
    target: str
    policy: policy.Policy

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> PolicyRequest:
        scope, target = policy_target(body.get("scope", "tenant"), body.get("target"))
        return cls(scope, target, policy.Policy.parse(body.get("policy")))


@dataclass(frozen=True)
class RefValuesRequest:
    """``POST /api/v1/refvalues[/remove]``: values to add to (or remove from) a named list."""

    name: str
    values: list[str]

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> RefValuesRequest:
        name = body.get("name")
        if not isinstance(name, str) or not _REF_NAME_RE.match(name):
            raise BadInputError(
                f"reference values name: expected [A-Za-z0-9_.-]{{1,64}}, seen {str(name)[:40]!r}"
            )
        values = body.get("values")
        if not isinstance(values, list) or not values or len(values) > 1000:
            raise BadInputError("reference values: expected 'values', an array of 1-1000 strings")
        if not all(isinstance(v, str) and 0 < len(v) <= 255 for v in values):
            raise BadInputError("reference values: expected strings of 1-255 characters")
        return cls(name, values)


@dataclass(frozen=True)
class PlatformRequest:
    """``POST /api/v1/platforms``: a (sim) platform certificate to trust; :meth:`certificate`
    reads it once the caller is known to be an admin."""

    tee: Any
    pem: str
    description: str

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> PlatformRequest:
        cert, tee = body.get("certificate"), body.get("tee", "sim")
        if not isinstance(cert, str) or len(cert) > 65536:
            raise BadInputError("platform: field 'certificate': expected a PEM string")
        return cls(tee, cert, str(body.get("description", ""))[:200])

    def certificate(self) -> tuple[str, bytes]:
        """(TEE kind, DER certificate)."""
        if self.tee != "sim":
            raise BadInputError(
                "platform tee: expected 'sim' (only sim has platform certificates), "
                f"seen {str(self.tee)[:20]!r}"
            )
        return "sim", load_certificate(self.pem.encode())


@dataclass(frozen=True)
class TokenRequest:
    """``POST /api/v1/tokens``: an API token's tenant, scopes and lifetime (or end).

    Parsed in two steps: the shape here, the grant itself (:meth:`expiry`, :meth:`grant`)
    once the caller is known to be an admin (anyone else learns only that).
    """

    tenant: str
    scopes: Any
    description: str
    expires_in: float | None
    expires_at: Any

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> TokenRequest:
        tenant = body.get("tenant")
        if not isinstance(tenant, str):
            raise BadInputError("token request: field 'tenant': expected a string")
        # a lifetime (expires_in, seconds) or a moment (expires_at, epoch seconds), not both
        expires_in = parse_expires_in(body.get("expires_in"))
        expires_at = body.get("expires_at")
        if expires_in is not None and expires_at is not None:
            raise BadInputError("token request: expected expires_in or expires_at, seen both")
        return cls(tenant, body.get("scopes"), str(body.get("description", ""))[:200], expires_in, expires_at)

    def expiry(self, now: float) -> float | None:
        """When the token stops working (None: when revoked), checked to lie ahead of *now*."""
        if self.expires_in is not None:
            return now + self.expires_in
        expires_at = self.expires_at
        if expires_at is None:
            return None
        if isinstance(expires_at, bool) or not isinstance(expires_at, int | float):
            raise BadInputError("token request: field 'expires_at': expected epoch seconds (a number)")
        if not now < float(expires_at) < now + 10 * 366 * 86400:
            shown = (
                time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires_at))
                if abs(expires_at) < 1e11
                else expires_at
            )
            raise BadInputError(
                f"token request: field 'expires_at': expected a time in the next 10 years, seen {shown}"
            )
        return float(expires_at)

    def grant(self) -> tuple[str, ...]:
        """The scopes, checked against the tenant (only the admin tenant holds 'admin')."""
        tenant = self.tenant
        if tenant != ADMIN_TENANT:
            packets.check_tenant(tenant)
        scopes = check_scopes(self.scopes)
        if "admin" in scopes and tenant != ADMIN_TENANT:
            raise BadInputError(
                f"scopes: 'admin' is only for tenant {ADMIN_TENANT!r}, seen tenant {tenant!r}"
            )
        return scopes
