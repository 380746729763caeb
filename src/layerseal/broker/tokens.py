"""Credentials: publisher API tokens (stored as SHA-256) and attestation JWTs (ES256).

API tokens look like ``lsk_<token-id>_<secret>``; the id finds the row, the secret is
compared by SHA-256 in constant time.  Attestation tokens are ES256 JWTs signed with a
key every replica shares (sealed in the database under the master key).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey

from layerseal.errors import BadInputError
from layerseal.kbs.problems import UnauthenticatedError

TOKEN_PREFIX = "lsk_"  # noqa: S105 -- a public prefix, not a secret
SCOPES = ("keys:write", "keys:read", "policy:write", "policy:read", "audit:read", "admin")
ALGORITHM = "ES256"


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class NewApiToken:
    token_id: str
    token: str  # shown once, never stored
    token_hash: str


def new_api_token() -> NewApiToken:
    token_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    token = f"{TOKEN_PREFIX}{token_id}_{secret}"
    return NewApiToken(token_id, token, hash_secret(token))


def split_api_token(token: str) -> str:
    """The token id inside *token*; 401 if it does not look like one of ours."""
    if not token.startswith(TOKEN_PREFIX) or token.count("_") < 2 or len(token) > 200:
        raise UnauthenticatedError("API token: expected 'lsk_<id>_<secret>', seen another credential")
    return token[len(TOKEN_PREFIX) :].split("_", 1)[0]


def token_matches(token: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(token), stored_hash)


def check_scopes(scopes: Any) -> tuple[str, ...]:
    if not isinstance(scopes, list) or not scopes or not all(isinstance(s, str) for s in scopes):
        raise BadInputError(f"scopes: expected a non-empty array of {list(SCOPES)}")
    bad = [s for s in scopes if s not in SCOPES]
    if bad:
        raise BadInputError(f"scopes: expected only {list(SCOPES)}, seen {bad[:5]}")
    return tuple(dict.fromkeys(scopes))


class TokenSigner:
    """Issues and checks attestation JWTs."""

    def __init__(self, key_pem: bytes, issuer: str) -> None:
        self._key = ECKey.import_key(key_pem)
        self.issuer = issuer

    @staticmethod
    def generate_pem() -> bytes:
        pem = ECKey.generate_key("P-256").as_pem(private=True)
        return pem if isinstance(pem, bytes) else str(pem).encode()

    def public_jwk(self) -> dict[str, Any]:
        return dict(self._key.as_dict(private=False))

    @property
    def kid(self) -> str:
        """The RFC 7638 thumbprint of the public key: the ``kid`` of every token and JWKS entry."""
        return str(self._key.thumbprint())

    def jwks(self) -> dict[str, Any]:
        """The JWK Set (RFC 7517) other services verify attestation tokens with."""
        jwk = {k: v for k, v in self.public_jwk().items() if k in ("kty", "crv", "x", "y")}
        return {"keys": [dict(jwk, kid=self.kid, alg=ALGORITHM, use="sig")]}

    def issue(
        self, claims: Mapping[str, Any], ttl: float, now: float | None = None
    ) -> tuple[str, str, float]:
        """A signed token; returns (token, jti, exp)."""
        issued = time.time() if now is None else now
        exp = int(issued + ttl)
        jti = secrets.token_hex(16)
        body = dict(claims, iss=self.issuer, iat=int(issued), exp=exp, jti=jti)
        header = {"alg": ALGORITHM, "typ": "JWT", "kid": self.kid}
        return jwt.encode(header, body, self._key, algorithms=[ALGORITHM]), jti, float(exp)

    def verify(self, token: str, now: float) -> dict[str, Any]:
        if len(token) > 16384:
            raise UnauthenticatedError("attestation token: expected a JWT under 16 KiB, seen a larger one")
        try:
            decoded = jwt.decode(token, self._key, algorithms=[ALGORITHM])
        except (JoseError, ValueError, TypeError) as exc:
            raise UnauthenticatedError(
                "attestation token: expected a JWT signed by this broker, seen one that is not"
            ) from exc
        claims = dict(decoded.claims)
        exp = claims.get("exp")
        if not isinstance(exp, int | float):
            raise UnauthenticatedError("attestation token: expected an 'exp' claim, seen none")
        if exp <= now:
            raise UnauthenticatedError(
                f"attestation token: expected unexpired, seen expired {int(now - exp)} s ago"
            )
        if claims.get("iss") != self.issuer or not isinstance(claims.get("jti"), str):
            raise UnauthenticatedError(f"attestation token: expected issuer {self.issuer!r} and a jti")
        return claims
