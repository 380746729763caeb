"""RCAR sessions and what attestation leaves behind: challenge nonces (each consumed by a
guarded UPDATE, so exactly one replica wins), revoked attestation tokens, and the claims
each verified piece of evidence produced."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Insert, delete, func, insert, select, update

from layerseal.broker import schema as S
from layerseal.broker.store.base import StoreBase


@dataclass(frozen=True)
class SessionRow:
    """A ``sessions`` row, its fields in the table's column order."""

    session_id: str
    client: str
    tee: str
    nonce: str
    state: str
    created_at: float
    expires_at: float
    token_jti: str | None
    claims: str | None
    tee_pubkey: str | None
    evidence_digest: str | None


class SessionStore(StoreBase):
    """The ``sessions``, ``revoked_tokens`` and ``attested_claims`` tables."""

    def count_pending_sessions(self, now: float, client: str | None = None) -> int:
        q = (
            select(func.count())
            .select_from(S.sessions)
            .where(S.sessions.c.state == "pending", S.sessions.c.expires_at > now)
        )
        if client is not None:
            q = q.where(S.sessions.c.client == client)
        with self.engine.begin() as conn:
            return int(conn.execute(q).scalar_one())

    def _session_insert(
        self, session_id: str, client: str, tee: str, nonce: str, expires_at: float, state: str
    ) -> Insert:
        challenge = {"session_id": session_id, "client": client, "tee": tee, "nonce": nonce}
        return insert(S.sessions).values(
            **challenge, state=state, created_at=self.clock(), expires_at=expires_at
        )

    def insert_session(
        self, session_id: str, client: str, tee: str, nonce: str, expires_at: float, *, state: str = "pending"
    ) -> None:
        with self.engine.begin() as conn:
            conn.execute(self._session_insert(session_id, client, tee, nonce, expires_at, state))

    def claim_session(self, session_id: str, client: str, tee: str, nonce: str, expires_at: float) -> bool:
        """Record a challenge's nonce as used (state 'verifying'); False if it was already."""
        return self._insert_new(self._session_insert(session_id, client, tee, nonce, expires_at, "verifying"))

    def purge_expired(self, now: float) -> int:
        with self.engine.begin() as conn:
            res = conn.execute(delete(S.sessions).where(S.sessions.c.expires_at < now))
            conn.execute(delete(S.revoked_tokens).where(S.revoked_tokens.c.expires_at < now))
        return int(res.rowcount)

    def get_session(self, session_id: str) -> SessionRow | None:
        with self.engine.begin() as conn:
            r = conn.execute(select(S.sessions).where(S.sessions.c.session_id == session_id)).first()
        return None if r is None else SessionRow(*r)

    def consume_nonce(self, session_id: str, now: float) -> bool:
        """Move a pending, unexpired session to 'verifying'; True for exactly one caller."""
        with self.engine.begin() as conn:
            res = conn.execute(
                update(S.sessions)
                .where(
                    S.sessions.c.session_id == session_id,
                    S.sessions.c.state == "pending",
                    S.sessions.c.expires_at > now,
                )
                .values(state="verifying")
            )
        return res.rowcount == 1

    def finish_session(self, session_id: str, state: str, **values: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(S.sessions).where(S.sessions.c.session_id == session_id).values(state=state, **values)
            )

    # ------------------------------------------------------------------ attestation tokens and claims

    def revoke_jti(self, jti: str, expires_at: float) -> None:
        # a token revoked twice stays revoked: the second insert changes nothing
        self._insert_new(
            insert(S.revoked_tokens).values(jti=jti, expires_at=expires_at),
            update(S.sessions).where(S.sessions.c.token_jti == jti).values(state="revoked"),
        )

    def is_revoked(self, jti: str) -> bool:
        with self.engine.begin() as conn:
            r = conn.execute(select(S.revoked_tokens.c.jti).where(S.revoked_tokens.c.jti == jti)).first()
        return r is not None

    def record_claims(self, evidence_digest: str, tee: str, platform: str | None, claims: str) -> None:
        """Keep the claims a verified attestation produced (once per evidence digest)."""
        # the same evidence verified twice gave the same claims: the first record stands
        self._insert_new(
            insert(S.attested_claims).values(
                evidence_digest=evidence_digest,
                tee=tee,
                platform=platform,
                claims=claims,
                created_at=self.clock(),
            )
        )
