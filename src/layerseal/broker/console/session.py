"""Console sign-in sessions: the API token sealed into a cookie the browser cannot read.

The cookie holds ``AES-256-GCM(session key, {token, exp, csrf})``: the browser never
holds the API token in readable form, any replica can open the cookie (the session key is
a broker secret sealed under the master key's custody, like the JWT signing key), and
every request still authenticates the token with the broker, so revoking or expiring
the token ends its console sessions at once.  The cookie is HttpOnly, SameSite=Strict,
scoped to ``/console``, ``Secure`` (and ``__Host-`` named) when served over TLS, and
lives at most :data:`SESSION_TTL`.

CSRF: SameSite=Strict already keeps the cookie off cross-site requests; every POST also
carries a token that must match (the session's, or before sign-in a random value in a
separate cookie), and a ``Sec-Fetch-Site``/``Origin`` naming another site is refused.
"""

from __future__ import annotations

import base64
import hmac
import json
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from layerseal.broker.custody import KeyCustody, record_aad
from layerseal.broker.store import Store
from layerseal.errors import BadInputError
from layerseal.wire.b64 import b64url_decode

SESSION_TTL = 8 * 3600
_SECRET_NAME = "console-session-key"  # noqa: S105 -- a row name, not a secret
_AAD = b"layerseal console session v1"


@dataclass(frozen=True)
class Session:
    token: str
    expires_at: float
    csrf: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class SessionSealer:
    """Seals and opens console session cookies."""

    def __init__(self, key: bytes, clock: Callable[[], float] = time.time) -> None:
        self._aead = AESGCM(key)
        self._clock = clock

    @classmethod
    def for_store(cls, store: Store, custody: KeyCustody) -> SessionSealer:
        aad = record_aad("secret", _SECRET_NAME)
        sealed = store.get_or_create_secret(_SECRET_NAME, lambda: custody.seal(os.urandom(32), aad))
        return cls(custody.unseal(sealed, aad))

    def _now(self) -> float:
        return self._clock()

    def seal(self, token: str) -> tuple[str, Session]:
        session = Session(token, self._now() + SESSION_TTL, secrets.token_urlsafe(24))
        body = json.dumps({"t": token, "e": session.expires_at, "c": session.csrf}).encode()
        nonce = os.urandom(12)
        return _b64(nonce + self._aead.encrypt(nonce, body, _AAD)), session

    def open(self, cookie: str | None) -> Session | None:
        """The live session in *cookie*; None for a missing, forged, altered or expired one."""
        if not cookie or len(cookie) > 4096:
            return None
        try:
            raw = b64url_decode(cookie, "console session cookie")
            body = json.loads(self._aead.decrypt(raw[:12], raw[12:], _AAD))
            session = Session(str(body["t"]), float(body["e"]), str(body["c"]))
        except (InvalidTag, ValueError, KeyError, TypeError, BadInputError):
            return None
        return session if session.expires_at > self._now() else None


def same_token(a: str | None, b: str | None) -> bool:
    return bool(a) and bool(b) and hmac.compare_digest(str(a).encode(), str(b).encode())
