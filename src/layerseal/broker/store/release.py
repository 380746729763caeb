"""The release path's read: keys, versions, the token's revocation and the key tenants'
policy generations in one statement (one snapshot, no transaction held open), and the
tenants' rules from this replica's cache, re-read only when their generation moved."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, bindparam, func, select
from sqlalchemy.exc import DBAPIError

from layerseal.broker import schema as S
from layerseal.broker.store.base import StoreBase
from layerseal.broker.store.keys import KEY_COLUMNS, VERSION_COLUMNS, KeyRow, assemble
from layerseal.broker.store.rules import TenantRules
from layerseal.broker.store.sessions import SessionRow

_MAX_CACHED_TENANTS = 4096


@dataclass(frozen=True)
class ReleaseSnapshot:
    revoked: bool
    session: SessionRow | None
    keys: dict[str, KeyRow]
    rules: dict[str, TenantRules]  # by tenant, for every tenant owning a found key


# Hot-path statements are built once; SQLAlchemy then only binds parameters.
_Q_REVOKED = select(S.revoked_tokens.c.jti).where(S.revoked_tokens.c.jti == bindparam("jti"))
_Q_SESSION = select(S.sessions).where(S.sessions.c.session_id == bindparam("sid"))
_Q_POLICIES = select(S.policies.c.scope, S.policies.c.target, S.policies.c.document).where(
    S.policies.c.tenant == bindparam("tenant")
)
_Q_REFVALUES = select(S.refvalues.c.name, S.refvalues.c.value).where(
    S.refvalues.c.tenant == bindparam("tenant")
)
_GENERATION = (
    select(S.policy_generations.c.generation)
    .where(S.policy_generations.c.tenant == S.layer_keys.c.tenant)
    .scalar_subquery()
)
_JTI_REVOKED = (
    select(func.count()).select_from(S.revoked_tokens).where(S.revoked_tokens.c.jti == bindparam("jti"))
).scalar_subquery()
# one row per (key, version): everything a release reads, in one statement (one snapshot);
# the key's columns, then its version's (key id first), then the generation and revocation
_KEY_END = len(KEY_COLUMNS)
_VERSION_END = _KEY_END + len(VERSION_COLUMNS) + 1
_Q_RELEASE = (
    select(
        *KEY_COLUMNS,
        *VERSION_COLUMNS,
        S.key_versions.c.sealed_kek,
        _GENERATION.label("generation"),
        _JTI_REVOKED.label("jti_revoked"),
    )
    .select_from(S.layer_keys.outerjoin(S.key_versions, S.key_versions.c.key_id == S.layer_keys.c.key_id))
    .where(S.layer_keys.c.key_id.in_(bindparam("ids", expanding=True)))
)


class ReleaseReads(StoreBase):
    """The one read a release decision is made on."""

    def release_snapshot(
        self,
        key_ids: Sequence[str],
        *,
        jti: str | None = None,
        session_id: str | None = None,
    ) -> ReleaseSnapshot:
        """Everything a release decision reads: keys and versions, the token's revocation and
        the key tenants' generations come from one statement; rules from the cache or fresh."""
        for attempt in (1, 2):
            try:
                return self._release_snapshot(key_ids, jti, session_id)
            except DBAPIError as exc:
                # the read pool pings nothing: a connection the server dropped (restart,
                # failover) fails once, is discarded by the pool, and the read runs again
                if attempt == 2 or not exc.connection_invalidated:
                    raise
        raise AssertionError("unreachable")

    def _release_snapshot(
        self, key_ids: Sequence[str], jti: str | None, session_id: str | None
    ) -> ReleaseSnapshot:
        ids = sorted(set(key_ids))
        with self._autocommit() as conn:
            rows = conn.execute(_Q_RELEASE, {"ids": ids, "jti": jti or ""}).all() if ids else []
            if rows:
                revoked = jti is not None and int(rows[0].jti_revoked) > 0
            else:
                revoked = jti is not None and conn.execute(_Q_REVOKED, {"jti": jti}).first() is not None
            session = None
            if session_id is not None:
                r = conn.execute(_Q_SESSION, {"sid": session_id}).first()
                session = None if r is None else SessionRow(*r)
            # a key without versions comes once, with NULL version columns (outer join)
            heads = {r[0]: r for r in rows}
            keys = assemble(
                heads.values(), (r[_KEY_END:_VERSION_END] for r in rows if r[_KEY_END] is not None)
            )
            generations = {r.tenant: int(r.generation or 0) for r in heads.values()}
            rules = {t: self._tenant_rules(conn, t, g) for t, g in generations.items()}
        return ReleaseSnapshot(revoked, session, keys, rules)

    def _tenant_rules(self, conn: Connection, tenant: str, generation: int) -> TenantRules:
        cached = self._rules.get(tenant)
        if cached is not None and cached.generation == generation:
            return cached
        # read after the generation, so the content is at least as new as the tag: a newer
        # content only makes the next request re-read once more
        policies = {(r.scope, r.target): r.document for r in conn.execute(_Q_POLICIES, {"tenant": tenant})}
        refs: dict[str, list[str]] = {}
        for r in conn.execute(_Q_REFVALUES, {"tenant": tenant}):
            refs.setdefault(r.name, []).append(r.value)
        for values in refs.values():
            values.sort()
        fresh = TenantRules(generation, policies, refs)
        if len(self._rules) >= _MAX_CACHED_TENANTS:
            self._rules.clear()
        self._rules[tenant] = fresh
        return fresh
