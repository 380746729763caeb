"""KBS RCAR attestation: challenges, evidence verification, attestation tokens and sessions.

A challenge is MAC'd into the ``kbs-session-id`` cookie (nothing is stored until its nonce
is used); verified evidence yields a signed attestation token and an attested session, and
a resource request proves its attestation with either.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from layerseal.attest import rcar
from layerseal.attest.claims import Claims, Verifier
from layerseal.attest.verifiers import TeeVerifiers
from layerseal.broker.custody import KeyCustody, record_aad
from layerseal.broker.requests import AttestRequest, AuthRequest, RevokeAttestationRequest
from layerseal.broker.service.common import (
    Attested,
    Context,
    Part,
    Principal,
    claims_digest,
)
from layerseal.broker.store import SessionRow, Store
from layerseal.broker.tokens import TokenSigner
from layerseal.errors import BadInputError, DeniedError, LayersealError
from layerseal.kbs.problems import ForbiddenError, UnauthenticatedError

log = logging.getLogger("layerseal.broker")

_SIGNING_SECRET = "token-signing-key"  # noqa: S105 -- a row name, not a secret
_CHALLENGE_SECRET = "challenge-mac-key"  # noqa: S105 -- a row name, not a secret


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _stored_secret(store: Store, custody: KeyCustody, name: str, make: Callable[[], bytes]) -> bytes:
    """The broker-wide secret *name*, made (and sealed into the store) by the first broker."""
    aad = record_aad("secret", name)
    return custody.unseal(store.get_or_create_secret(name, lambda: custody.seal(make(), aad)), aad)


def open_token_signer(store: Store, custody: KeyCustody, issuer: str) -> TokenSigner:
    """The signer of attestation tokens, its key shared by every broker of the database."""
    return TokenSigner(_stored_secret(store, custody, _SIGNING_SECRET, TokenSigner.generate_pem), issuer)


@dataclass(frozen=True)
class Challenge:
    """An RCAR challenge: the TEE kind asked for, the ``kbs-session-id`` cookie value that
    carries it (MAC'd by this broker), its nonce (base64) and expiry."""

    tee: str
    session_id: str
    nonce: str
    expires_at: float


class Attestation(Part):
    """The RCAR handshake and what it proves to later resource requests."""

    def __init__(self, ctx: Context, *, signer: TokenSigner, verifiers: TeeVerifiers) -> None:
        super().__init__(ctx)
        self.signer = signer
        self.verifiers = verifiers
        self._challenge_key = _stored_secret(
            ctx.store, ctx.custody, _CHALLENGE_SECRET, lambda: os.urandom(32)
        )
        # verified token -> (claims, claims digest); revocation is still read per request
        self._tokens: OrderedDict[str, tuple[dict[str, Any], str]] = OrderedDict()
        self._lock = threading.Lock()
        self._attest_count = 0

    def auth(self, client: str, request: AuthRequest) -> Challenge:
        """Step 1: a single-use nonce, bound with the TEE kind and expiry into the session cookie."""
        tee = request.tee
        self._check_tee_allowed(tee)
        # nothing is stored until the nonce is used: the challenge is MAC'd into the cookie,
        # so unauthenticated clients cannot fill the session table (stateless challenges)
        expires = int(self.clock() + self.config.session_ttl)
        nonce = os.urandom(32)
        token = f"{tee}.{expires}.{_b64url(nonce)}"
        token += "." + _b64url(self._challenge_mac(token))
        return Challenge(tee, token, base64.b64encode(nonce).decode(), float(expires))

    def _challenge_mac(self, text: str) -> bytes:
        return hmac.new(self._challenge_key, text.encode(), hashlib.sha256).digest()[:20]

    def open_challenge(self, cookie: str, now: float) -> Challenge:
        """The challenge a ``kbs-session-id`` cookie carries, if this broker made it and it is live."""
        parts = cookie.split(".") if len(cookie) <= 200 else []
        if len(parts) != 4 or not parts[1].isdigit():
            raise UnauthenticatedError(
                "attest: expected a kbs-session-id from /kbs/v0/auth, seen another value"
            )
        mac = self._challenge_mac(".".join(parts[:3]))
        if not hmac.compare_digest(_b64url(mac), parts[3]):
            raise UnauthenticatedError(
                "attest: expected a kbs-session-id made by this broker, seen a forged one"
            )
        expires = float(parts[1])
        if expires <= now:
            raise UnauthenticatedError(
                f"attest: expected a live session, seen one expired {int(now - expires)} s ago"
            )
        nonce = base64.b64encode(base64.urlsafe_b64decode(parts[2] + "=" * (-len(parts[2]) % 4))).decode()
        return Challenge(parts[0], cookie, nonce, expires)

    @staticmethod
    def session_key(cookie: str) -> str:
        """The session row of a ``kbs-session-id`` cookie (rows exist once a nonce is used)."""
        return hashlib.sha256(cookie.encode("utf-8", "surrogatepass")).hexdigest()

    def _check_tee_allowed(self, tee: str) -> None:
        if tee == "sample" and not self.config.allow_sample_tee:
            raise ForbiddenError(
                "KBS request tee: expected a TEE with signed evidence, seen 'sample' (unsigned; "
                "allowed only on a development broker started with --allow-sample-tee)"
            )

    def attest(
        self, session_id: str | None, parse: Callable[[], AttestRequest], client: str = ""
    ) -> tuple[str, float, Attested]:
        """Step 2: verify evidence bound to the nonce and tee-pubkey; returns (JWT, exp, result).

        *parse* yields the request once the cookie is known to be there (a request without
        one is refused as unauthenticated whatever its body).
        """
        if not session_id:
            raise UnauthenticatedError(
                "attest: expected cookie 'kbs-session-id' from /kbs/v0/auth, seen none"
            )
        request = parse()
        now = self.clock()
        session = self.open_challenge(session_id, now)
        self._check_tee_allowed(session.tee)
        session_id = self.session_key(session_id)
        self._attest_count += 1
        if self._attest_count % 256 == 0:
            self.store.purge_expired(now)
        # the row is the nonce's "used" mark: a second attempt with it finds the row
        if not self.store.claim_session(
            session_id, client[:64], session.tee, session.nonce, session.expires_at
        ):
            raise UnauthenticatedError("attest: expected a fresh nonce, seen one already used (nonce used)")
        evidence_digest = hashlib.sha256(request.evidence).hexdigest()
        try:
            claims = self._verify(session, request)
        except LayersealError as exc:
            self.store.finish_session(session_id, "failed", evidence_digest=evidence_digest)
            self.audit.record(
                "attest", "deny", actor=f"client:{client}", evidence_digest=evidence_digest, reason=str(exc)
            )
            raise
        tree = claims.as_tree()
        platform = claims.details.get("platform")
        self.store.record_claims(
            evidence_digest,
            claims.tee,
            platform[:80] if isinstance(platform, str) else None,
            json.dumps(tree),
        )
        tee_pubkey = request.tee_pubkey
        token, jti, exp = self.signer.issue(
            {"sid": session_id, "tee-pubkey": tee_pubkey, "tcb": tree, "evidence_digest": evidence_digest},
            self.config.token_ttl,
            now,
        )
        # the session may never outlive its token (Trustee #560)
        self.store.finish_session(
            session_id,
            "attested",
            token_jti=jti,
            claims=json.dumps(tree),
            tee_pubkey=json.dumps(tee_pubkey),
            evidence_digest=evidence_digest,
            expires_at=min(session.expires_at, exp),
        )
        self.audit.record(
            "attest",
            "ok",
            actor=f"client:{client}",
            evidence_digest=evidence_digest,
            measurement=claims.measurement,
            reason=f"tee {claims.tee} svn {claims.svn} debug {claims.debug}",
        )
        return token, exp, Attested(tree, tee_pubkey, jti, evidence_digest, f"session:{session_id[:8]}")

    def _verify(self, session: Challenge, request: AttestRequest) -> Claims:
        if not secrets.compare_digest(request.nonce.encode(), session.nonce.encode()):
            raise DeniedError("attestation nonce: expected the nonce of this session, seen another")
        return rcar.verify(
            session.tee,
            request.evidence,
            nonce=request.nonce,
            tee_pubkey=request.tee_pubkey,
            additional_evidence=request.additional_evidence,
            init_data=request.init_data,
            verifier_for=lambda tee: _Guarded(
                self.verifiers.verifier_for(
                    tee, [p.certificate for p in self.store.list_platforms("sim")] if tee == "sim" else []
                )
            ),
        )

    def verify_token(self, authorization: str, now: float) -> tuple[dict[str, Any], str]:
        """The claims of a valid bearer token and their digest (revocation not checked here)."""
        if not authorization.startswith("Bearer "):
            raise UnauthenticatedError("resource: expected 'Authorization: Bearer <attestation token>'")
        token = authorization[7:].strip()
        # a verified token is a pure function of its bytes and our key; only exp changes its meaning
        with self._lock:
            hit = self._tokens.get(token)
        if hit is None:
            claims = self.signer.verify(token, now)
            if not isinstance(claims.get("tcb"), dict) or not isinstance(claims.get("tee-pubkey"), dict):
                raise UnauthenticatedError("attestation token: expected 'tcb' and 'tee-pubkey' claims")
            hit = (claims, claims_digest(claims["tcb"]))
            with self._lock:
                self._tokens[token] = hit
                if len(self._tokens) > 4096:
                    self._tokens.popitem(last=False)
        elif float(hit[0]["exp"]) <= now:
            raise UnauthenticatedError(
                f"attestation token: expected unexpired, seen expired {int(now - float(hit[0]['exp']))} s ago"
            )
        return hit

    @staticmethod
    def from_token(claims: Mapping[str, Any], revoked: bool, digest: str = "") -> Attested:
        jti = str(claims["jti"])
        if revoked:
            raise UnauthenticatedError(f"attestation token {jti[:8]}: expected unrevoked, seen revoked")
        return Attested(
            claims["tcb"],
            claims["tee-pubkey"],
            jti,
            str(claims.get("evidence_digest", "")),
            f"token:{jti[:8]}",
            digest,
        )

    @staticmethod
    def from_session(session: SessionRow | None, session_id: str, now: float) -> Attested:
        if session is None or session.expires_at <= now:
            raise UnauthenticatedError(
                "resource: expected a live session, seen an unknown or expired kbs-session-id"
            )
        if session.state != "attested" or session.claims is None or session.tee_pubkey is None:
            raise UnauthenticatedError(
                f"resource: expected an attested session, seen state {session.state!r}"
            )
        return Attested(
            json.loads(session.claims),
            json.loads(session.tee_pubkey),
            session.token_jti or "",
            session.evidence_digest or "",
            f"session:{session_id[:8]}",
        )

    def resolve(self, session_id: str | None, authorization: str | None) -> Attested:
        """The attestation a resource request rides on: bearer token first, else the cookie."""
        now = self.clock()
        if authorization:
            claims, digest = self.verify_token(authorization, now)
            return self.from_token(claims, self.store.is_revoked(str(claims["jti"])), digest)
        if not session_id:
            raise UnauthenticatedError(
                "resource: expected an attested kbs-session-id cookie or a bearer token, seen neither"
            )
        key = self.session_key(session_id)
        return self.from_session(self.store.get_session(key), key, now)

    def revoke(self, principal: Principal, request: RevokeAttestationRequest) -> str:
        principal.require("admin")
        exp = self.clock() + self.config.token_ttl
        jti = request.jti
        if request.token:
            claims = self.signer.verify(request.token, self.clock())
            jti, exp = str(claims["jti"]), float(claims["exp"])
        if not jti or not isinstance(jti, str) or len(jti) > 64:
            raise BadInputError("revoke attestation: expected 'token' or 'jti'")
        self.store.revoke_jti(jti, exp)
        self.audit.record("token-revoke", "ok", actor=principal.actor, reason=f"attestation token {jti[:8]}")
        return jti


@dataclass(frozen=True)
class _Guarded:
    """A verifier whose unanticipated exceptions refuse the evidence (see :func:`_verified`)."""

    inner: Verifier

    @property
    def tee(self) -> str:
        return self.inner.tee

    def verify(self, evidence: bytes, expected_report_data: bytes) -> Claims:
        return _verified(self.inner, self.inner.tee, evidence, expected_report_data)


def _verified(verifier: Verifier, tee: str, evidence: bytes, expected: bytes) -> Claims:
    """The verifier's claims; an exception no check anticipated refuses the evidence too.

    Verifiers are pure functions of the evidence, so evidence one fails on is malformed:
    the fault is logged for us, the client and the audit log get a refusal naming the TEE.
    """
    try:
        return verifier.verify(evidence, expected)
    except LayersealError:
        raise
    except Exception as exc:
        log.error("verifier failed", exc_info=exc, extra={"fields": {"tee": tee}})
        raise BadInputError(
            f"{tee} evidence: expected evidence the verifier can check, "
            f"seen evidence it failed on ({type(exc).__name__})"
        ) from exc
