"""Stored credentials: API tokens and their last use, the deployment's bootstrap admin token,
and the sealed secrets (such as the audit key) the first replica creates and the others read."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import Insert, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from layerseal.broker import schema as S
from layerseal.broker.database import READONLY_OPTION
from layerseal.broker.store.base import StoreBase


@dataclass(frozen=True)
class ApiTokenRow:
    token_id: str
    tenant: str
    scopes: tuple[str, ...]
    token_hash: str
    description: str
    created_at: float
    revoked_at: float | None
    expires_at: float | None = None


def _token_insert(row: ApiTokenRow) -> Insert:
    # a new token is never revoked; scopes are stored space-separated
    return insert(S.api_tokens).values(asdict(row) | {"scopes": " ".join(row.scopes), "revoked_at": None})


def _token_row(r: Any, token_hash: str) -> ApiTokenRow:
    scopes = tuple(r.scopes.split())
    return ApiTokenRow(
        r.token_id, r.tenant, scopes, token_hash, r.description, r.created_at, r.revoked_at, r.expires_at
    )


class CredentialStore(StoreBase):
    """API tokens, the bootstrap record and sealed secrets."""

    def insert_api_token(self, row: ApiTokenRow) -> None:
        with self.engine.begin() as conn:
            conn.execute(_token_insert(row))

    def get_api_token(self, token_id: str) -> ApiTokenRow | None:
        with self.engine.begin() as conn:
            r = conn.execute(select(S.api_tokens).where(S.api_tokens.c.token_id == token_id)).first()
        return None if r is None else _token_row(r, r.token_hash)

    def list_api_tokens(self, tenant: str | None) -> list[ApiTokenRow]:
        """Every token (of *tenant*), oldest first, without the token hashes."""
        q = select(S.api_tokens).order_by(S.api_tokens.c.created_at)
        if tenant is not None:
            q = q.where(S.api_tokens.c.tenant == tenant)
        with self.engine.begin() as conn:
            rows = conn.execute(q).all()
        return [_token_row(r, "") for r in rows]

    def revoke_api_token(self, token_id: str) -> bool:
        with self.engine.begin() as conn:
            res = conn.execute(
                update(S.api_tokens)
                .where(S.api_tokens.c.token_id == token_id, S.api_tokens.c.revoked_at.is_(None))
                .values(revoked_at=self.clock())
            )
        return res.rowcount == 1

    def count_admin_tokens(self) -> int:
        with self.engine.begin() as conn:
            n = conn.execute(
                select(func.count()).select_from(S.api_tokens).where(S.api_tokens.c.tenant == "*")
            ).scalar_one()
        return int(n)

    def token_last_uses(self) -> dict[str, float | None]:
        """When each token that has been used last authenticated (see ``note_token_use``)."""
        t = S.api_token_meta
        with self.engine.begin() as conn:
            rows = conn.execute(select(t.c.token_id, t.c.last_used_at)).all()
        return {str(r.token_id): r.last_used_at for r in rows}

    def note_token_use(self, token_id: str, now: float, resolution: float) -> None:
        """Record that *token_id* authenticated at *now*, unless it was recorded less than
        *resolution* seconds before: a busy token does not turn every read into a write."""
        t = S.api_token_meta
        # the read takes no write lock (SQLite writers start with BEGIN IMMEDIATE)
        with self.engine.connect() as conn:
            conn = conn.execution_options(**{READONLY_OPTION: True})
            with conn.begin():
                last = conn.execute(select(t.c.last_used_at).where(t.c.token_id == token_id)).scalar()
        if last is not None and now - last < resolution:
            return
        with self.engine.begin() as conn:
            done = conn.execute(update(t).where(t.c.token_id == token_id).values(last_used_at=now))
            if done.rowcount == 0:
                try:
                    with conn.begin_nested():
                        conn.execute(insert(t).values(token_id=token_id, last_used_at=now))
                except IntegrityError:
                    pass  # another request of the same token inserted it first: its time will do

    # ------------------------------------------------------------------ bootstrap

    def bootstrap_admin_token(self, row: ApiTokenRow) -> bool:
        """Store *row* as the deployment's bootstrap admin token, unless one exists already.

        The bootstrap record and the token commit together, so of several replicas starting
        at once exactly one token is stored and no loser leaves a credential behind.
        """
        record = insert(S.bootstrap).values(name="admin-token", value=row.token_id, created_at=row.created_at)
        return self._insert_new(record, _token_insert(row))

    def bootstrap_value(self, name: str) -> str | None:
        with self.engine.begin() as conn:
            r = conn.execute(select(S.bootstrap.c.value).where(S.bootstrap.c.name == name)).first()
        return None if r is None else str(r.value)

    # ------------------------------------------------------------------ secrets

    def get_or_create_secret(self, name: str, make: Callable[[], bytes]) -> bytes:
        """The sealed secret *name*; the first replica to ask creates it, the others read it."""
        found = self.get_secret(name)
        if found is not None:
            return found
        # a replica losing the race to create it reads the winner's secret below
        self._insert_new(insert(S.secrets).values(name=name, sealed=make(), created_at=self.clock()))
        with self.engine.begin() as conn:
            return bytes(
                conn.execute(select(S.secrets.c.sealed).where(S.secrets.c.name == name)).scalar_one()
            )

    def get_secret(self, name: str) -> bytes | None:
        """The sealed secret *name*, or None (never creates it)."""
        with self.engine.begin() as conn:
            r = conn.execute(select(S.secrets.c.sealed).where(S.secrets.c.name == name)).first()
        return None if r is None else bytes(r.sealed)
