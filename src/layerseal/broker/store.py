"""The broker's storage: one repository class over SQLAlchemy Core.

Everything a request needs lives here (sessions, nonces, revoked tokens, keys, policies,
audit chain), so any replica can serve any request.  Each method is one transaction.
Races between replicas are settled by the database: nonces are consumed with a guarded
UPDATE, a chain is appended under a row lock on its own head record (a batch of rows per
transaction, see ``groupcommit``), the bootstrap admin token is claimed by a primary key.
The release path reads keys, versions, token revocation and the tenant's policy
generation in one statement; policies and reference values are kept per replica and
re-read only when that generation moves.

Audit rows go to one chain per writing process (see ``audit``): each writer holds a lease
on its chain and locks only that chain's head row, so replicas never wait on each other.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, delete, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import IntegrityError as SAIntegrityError

from layerseal.broker import audit
from layerseal.broker import schema as S
from layerseal.broker.database import AUTOCOMMIT_OPTION, RELAXED_SYNC_OPTION, autocommit_engine

log = logging.getLogger("layerseal.broker.audit")


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


@dataclass(frozen=True)
class KeyVersionRow:
    version: int
    status: str
    created_at: float
    changed_at: float
    sealed_kek: bytes


@dataclass(frozen=True)
class KeyRow:
    key_id: str
    tenant: str
    repository: str
    layer_digest: str
    created_at: float
    unused_at: float | None
    revoked_at: float | None
    versions: tuple[KeyVersionRow, ...]


@dataclass(frozen=True)
class SessionRow:
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


@dataclass(frozen=True)
class PolicyRow:
    tenant: str
    scope: str
    target: str
    document: str
    updated_at: float


@dataclass(frozen=True)
class PlatformRow:
    fingerprint: str
    tee: str
    certificate: bytes
    description: str
    created_at: float


@dataclass
class TenantRules:
    """A tenant's policies and reference values, at least as new as ``generation``."""

    generation: int
    policies: dict[tuple[str, str], str]  # (scope, target) -> policy document
    refvalues: dict[str, list[str]]
    # values the broker derives from these rules (policy decisions); dropped with them
    memo: dict[Any, Any] = field(default_factory=dict)


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
# one row per (key, version): everything a release reads, in one statement (one snapshot)
_Q_RELEASE = (
    select(
        S.layer_keys.c.key_id,
        S.layer_keys.c.tenant,
        S.layer_keys.c.repository,
        S.layer_keys.c.layer_digest,
        S.layer_keys.c.created_at,
        S.layer_keys.c.unused_at,
        S.layer_keys.c.revoked_at,
        S.key_versions.c.version,
        S.key_versions.c.status,
        S.key_versions.c.created_at,
        S.key_versions.c.changed_at,
        S.key_versions.c.sealed_kek,
        _GENERATION.label("generation"),
        _JTI_REVOKED.label("jti_revoked"),
    )
    .select_from(S.layer_keys.outerjoin(S.key_versions, S.key_versions.c.key_id == S.layer_keys.c.key_id))
    .where(S.layer_keys.c.key_id.in_(bindparam("ids", expanding=True)))
)
_Q_HEAD = (
    select(
        S.audit_head.c.seq,
        S.audit_head.c.row_hash,
        S.audit_head.c.mac,
        S.audit_head.c.owner,
        S.audit_head.c.lease_until,
    )
    .where(S.audit_head.c.id == bindparam("chain"))
    .with_for_update()
)
_I_AUDIT = insert(S.audit_log)
_U_HEAD = update(S.audit_head).where(S.audit_head.c.id == bindparam("chain"))


class AuditStats:
    """How long audit transactions waited for and then held their chain head's row lock
    (from the locking read to the commit's return), for the load benchmark."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.writes = 0
        self.rows = 0
        self.wait_seconds = 0.0
        self.hold_seconds = 0.0

    def record(self, wait: float, hold: float, rows: int) -> None:
        with self._lock:
            self.writes += 1
            self.rows += rows
            self.wait_seconds += wait
            self.hold_seconds += hold


class Store:
    """All database access of the broker."""

    def __init__(
        self, engine: Engine, clock: Callable[[], float] = time.time, *, relaxed_audit_sync: bool = False
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.relaxed_audit_sync = relaxed_audit_sync
        self._rules: dict[str, TenantRules] = {}
        self._reads: Engine | None = None
        self.audit_stats = AuditStats()

    def dispose(self) -> None:
        """Close the pooled connections of both engines."""
        if self._reads is not None and self._reads is not self.engine:
            self._reads.dispose()
        self.engine.dispose()

    @contextmanager
    def _autocommit(self) -> Iterator[Connection]:
        """Statements without BEGIN/COMMIT: for reads whose single statement is their snapshot."""
        if self._reads is None:
            self._reads = autocommit_engine(self.engine)
        with self._reads.connect() as conn:
            if self._reads.dialect.name == "sqlite":
                conn.execution_options(**{AUTOCOMMIT_OPTION: True})
            yield conn

    def _bump_generation(self, conn: Connection, tenant: str) -> None:
        """Invalidate every replica's cached rules of *tenant* (same transaction as the change)."""
        table = S.policy_generations
        postgres = self.engine.dialect.name == "postgresql"
        ins = (pg_dialect.insert if postgres else sqlite_dialect.insert)(table)
        conn.execute(
            ins.values(tenant=tenant, generation=1).on_conflict_do_update(
                index_elements=[table.c.tenant], set_={"generation": table.c.generation + 1}
            )
        )

    # ------------------------------------------------------------------ API tokens

    @staticmethod
    def _api_token_insert(row: ApiTokenRow) -> Any:
        return insert(S.api_tokens).values(
            token_id=row.token_id,
            tenant=row.tenant,
            scopes=" ".join(row.scopes),
            token_hash=row.token_hash,
            description=row.description,
            created_at=row.created_at,
            revoked_at=None,
            expires_at=row.expires_at,
        )

    def insert_api_token(self, row: ApiTokenRow) -> None:
        with self.engine.begin() as conn:
            conn.execute(self._api_token_insert(row))

    def get_api_token(self, token_id: str) -> ApiTokenRow | None:
        with self.engine.begin() as conn:
            r = conn.execute(select(S.api_tokens).where(S.api_tokens.c.token_id == token_id)).first()
        if r is None:
            return None
        return ApiTokenRow(
            r.token_id,
            r.tenant,
            tuple(r.scopes.split()),
            r.token_hash,
            r.description,
            r.created_at,
            r.revoked_at,
            r.expires_at,
        )

    def list_api_tokens(self, tenant: str | None) -> list[ApiTokenRow]:
        q = select(S.api_tokens).order_by(S.api_tokens.c.created_at)
        if tenant is not None:
            q = q.where(S.api_tokens.c.tenant == tenant)
        with self.engine.begin() as conn:
            rows = conn.execute(q).all()
        return [
            ApiTokenRow(
                r.token_id,
                r.tenant,
                tuple(r.scopes.split()),
                "",
                r.description,
                r.created_at,
                r.revoked_at,
                r.expires_at,
            )
            for r in rows
        ]

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

    # ------------------------------------------------------------------ keys

    def insert_key(
        self, key_id: str, tenant: str, repository: str, layer_digest: str, sealed_kek: bytes
    ) -> None:
        now = self.clock()
        with self.engine.begin() as conn:
            conn.execute(
                insert(S.layer_keys).values(
                    key_id=key_id,
                    tenant=tenant,
                    repository=repository,
                    layer_digest=layer_digest,
                    created_at=now,
                    unused_at=None,
                    revoked_at=None,
                )
            )
            conn.execute(
                insert(S.key_versions).values(
                    key_id=key_id,
                    version=1,
                    status="active",
                    sealed_kek=sealed_kek,
                    created_at=now,
                    changed_at=now,
                )
            )

    def next_version(self, key_id: str) -> int:
        with self.engine.begin() as conn:
            n = conn.execute(
                select(func.max(S.key_versions.c.version)).where(S.key_versions.c.key_id == key_id)
            ).scalar()
        return int(n or 0) + 1

    def insert_version(self, key_id: str, version: int, sealed_kek: bytes) -> bool:
        """Add a version; False if another writer took that version number first."""
        now = self.clock()
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    insert(S.key_versions).values(
                        key_id=key_id,
                        version=version,
                        status="active",
                        sealed_kek=sealed_kek,
                        created_at=now,
                        changed_at=now,
                    )
                )
        except SAIntegrityError:
            return False
        return True

    def set_version_status(self, key_id: str, version: int | None, status: str) -> int:
        q = update(S.key_versions).where(S.key_versions.c.key_id == key_id)
        if version is not None:
            q = q.where(S.key_versions.c.version == version)
        if status != "revoked":
            q = q.where(S.key_versions.c.status != "revoked")  # revocation is final
        with self.engine.begin() as conn:
            res = conn.execute(q.values(status=status, changed_at=self.clock()))
        return int(res.rowcount)

    def set_key_flags(self, key_id: str, **values: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(S.layer_keys).where(S.layer_keys.c.key_id == key_id).values(**values))

    def delete_key(self, key_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(S.key_versions).where(S.key_versions.c.key_id == key_id))
            conn.execute(delete(S.layer_keys).where(S.layer_keys.c.key_id == key_id))

    def get_keys(self, key_ids: Sequence[str], *, with_secrets: bool = False) -> dict[str, KeyRow]:
        if not key_ids:
            return {}
        with self.engine.begin() as conn:
            krows = conn.execute(select(S.layer_keys).where(S.layer_keys.c.key_id.in_(set(key_ids)))).all()
            vrows = conn.execute(
                select(S.key_versions)
                .where(S.key_versions.c.key_id.in_(set(key_ids)))
                .order_by(S.key_versions.c.key_id, S.key_versions.c.version)
            ).all()
        return self._assemble(krows, vrows, with_secrets)

    def list_keys(self, tenant: str | None, repository: str | None) -> list[KeyRow]:
        q = select(S.layer_keys).order_by(S.layer_keys.c.created_at)
        if tenant is not None:
            q = q.where(S.layer_keys.c.tenant == tenant)
        if repository is not None:
            q = q.where(S.layer_keys.c.repository == repository)
        with self.engine.begin() as conn:
            krows = conn.execute(q.limit(10000)).all()
            ids = [r.key_id for r in krows]
            vrows: list[Any] = []
            for i in range(0, len(ids), 500):
                vrows.extend(
                    conn.execute(
                        select(
                            S.key_versions.c.key_id,
                            S.key_versions.c.version,
                            S.key_versions.c.status,
                            S.key_versions.c.created_at,
                            S.key_versions.c.changed_at,
                        ).where(S.key_versions.c.key_id.in_(ids[i : i + 500]))
                    ).all()
                )
        keys = self._assemble(krows, vrows, False)
        return [keys[i] for i in ids]

    @staticmethod
    def _assemble(krows: Iterable[Any], vrows: Iterable[Any], with_secrets: bool) -> dict[str, KeyRow]:
        versions: dict[str, list[KeyVersionRow]] = {}
        for v in vrows:
            sealed = bytes(v.sealed_kek) if with_secrets else b""
            versions.setdefault(v.key_id, []).append(
                KeyVersionRow(v.version, v.status, v.created_at, v.changed_at, sealed)
            )
        out = {}
        for k in krows:
            vs = tuple(sorted(versions.get(k.key_id, []), key=lambda x: x.version))
            out[k.key_id] = KeyRow(
                k.key_id, k.tenant, k.repository, k.layer_digest, k.created_at, k.unused_at, k.revoked_at, vs
            )
        return out

    # ------------------------------------------------------------------ policies, refvalues, platforms

    def put_policy(self, tenant: str, scope: str, target: str, document: str) -> None:
        now = self.clock()
        with self.engine.begin() as conn:
            res = conn.execute(
                update(S.policies)
                .where(
                    S.policies.c.tenant == tenant, S.policies.c.scope == scope, S.policies.c.target == target
                )
                .values(document=document, updated_at=now)
            )
            if res.rowcount == 0:
                conn.execute(
                    insert(S.policies).values(
                        tenant=tenant, scope=scope, target=target, document=document, updated_at=now
                    )
                )
            self._bump_generation(conn, tenant)

    def delete_policy(self, tenant: str, scope: str, target: str) -> bool:
        with self.engine.begin() as conn:
            res = conn.execute(
                delete(S.policies).where(
                    S.policies.c.tenant == tenant, S.policies.c.scope == scope, S.policies.c.target == target
                )
            )
            self._bump_generation(conn, tenant)
        return res.rowcount > 0

    def list_policies(self, tenant: str | None) -> list[PolicyRow]:
        q = select(S.policies).order_by(S.policies.c.tenant, S.policies.c.scope, S.policies.c.target)
        if tenant is not None:
            q = q.where(S.policies.c.tenant == tenant)
        with self.engine.begin() as conn:
            return [PolicyRow(r.tenant, r.scope, r.target, r.document, r.updated_at) for r in conn.execute(q)]

    def add_refvalues(self, tenant: str, name: str, values: Sequence[str]) -> int:
        now = self.clock()
        added = 0
        with self.engine.begin() as conn:
            existing = {
                r.value
                for r in conn.execute(
                    select(S.refvalues.c.value).where(
                        S.refvalues.c.tenant == tenant, S.refvalues.c.name == name
                    )
                )
            }
            for value in dict.fromkeys(values):
                if value not in existing:
                    conn.execute(
                        insert(S.refvalues).values(tenant=tenant, name=name, value=value, created_at=now)
                    )
                    added += 1
            self._bump_generation(conn, tenant)
        return added

    def remove_refvalues(self, tenant: str, name: str, values: Sequence[str]) -> int:
        with self.engine.begin() as conn:
            res = conn.execute(
                delete(S.refvalues).where(
                    S.refvalues.c.tenant == tenant,
                    S.refvalues.c.name == name,
                    S.refvalues.c.value.in_(values),
                )
            )
            self._bump_generation(conn, tenant)
        return int(res.rowcount)

    def list_refvalues(self, tenant: str | None) -> dict[str, dict[str, list[str]]]:
        q = select(S.refvalues).order_by(S.refvalues.c.tenant, S.refvalues.c.name, S.refvalues.c.value)
        if tenant is not None:
            q = q.where(S.refvalues.c.tenant == tenant)
        out: dict[str, dict[str, list[str]]] = {}
        with self.engine.begin() as conn:
            for r in conn.execute(q):
                out.setdefault(r.tenant, {}).setdefault(r.name, []).append(r.value)
        return out

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
            keys: dict[str, KeyRow] = {}
            versions: dict[str, list[KeyVersionRow]] = {}
            generations: dict[str, int] = {}
            for r in rows:
                key_id = r[0]
                if key_id not in keys:
                    keys[key_id] = KeyRow(key_id, r[1], r[2], r[3], r[4], r[5], r[6], ())
                    versions[key_id] = []
                    generations[r[1]] = int(r[12] or 0)
                if r[7] is not None:
                    versions[key_id].append(KeyVersionRow(r[7], r[8], r[9], r[10], bytes(r[11])))
            for key_id, vs in versions.items():
                vs.sort(key=lambda v: v.version)
                k = keys[key_id]
                keys[key_id] = KeyRow(
                    k.key_id,
                    k.tenant,
                    k.repository,
                    k.layer_digest,
                    k.created_at,
                    k.unused_at,
                    k.revoked_at,
                    tuple(vs),
                )
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
        if len(self._rules) >= 4096:
            self._rules.clear()
        self._rules[tenant] = fresh
        return fresh

    def put_platform(self, row: PlatformRow) -> bool:
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    insert(S.platforms).values(
                        fingerprint=row.fingerprint,
                        tee=row.tee,
                        certificate=row.certificate,
                        description=row.description,
                        created_at=row.created_at,
                    )
                )
        except SAIntegrityError:
            return False
        return True

    def delete_platform(self, fingerprint: str) -> bool:
        with self.engine.begin() as conn:
            res = conn.execute(delete(S.platforms).where(S.platforms.c.fingerprint == fingerprint))
        return res.rowcount > 0

    def list_platforms(self, tee: str | None = None) -> list[PlatformRow]:
        q = select(S.platforms).order_by(S.platforms.c.created_at)
        if tee is not None:
            q = q.where(S.platforms.c.tee == tee)
        with self.engine.begin() as conn:
            return [
                PlatformRow(r.fingerprint, r.tee, bytes(r.certificate), r.description, r.created_at)
                for r in conn.execute(q)
            ]

    # ------------------------------------------------------------------ sessions and tokens

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

    def insert_session(
        self, session_id: str, client: str, tee: str, nonce: str, expires_at: float, *, state: str = "pending"
    ) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                insert(S.sessions).values(
                    session_id=session_id,
                    client=client,
                    tee=tee,
                    nonce=nonce,
                    state=state,
                    created_at=self.clock(),
                    expires_at=expires_at,
                )
            )

    def claim_session(self, session_id: str, client: str, tee: str, nonce: str, expires_at: float) -> bool:
        """Record a challenge's nonce as used (state 'verifying'); False if it was already."""
        try:
            self.insert_session(session_id, client, tee, nonce, expires_at, state="verifying")
        except SAIntegrityError:
            return False
        return True

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

    def revoke_jti(self, jti: str, expires_at: float) -> None:
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(S.revoked_tokens).values(jti=jti, expires_at=expires_at))
                conn.execute(update(S.sessions).where(S.sessions.c.token_jti == jti).values(state="revoked"))
        except SAIntegrityError:
            pass  # already revoked

    def is_revoked(self, jti: str) -> bool:
        with self.engine.begin() as conn:
            r = conn.execute(select(S.revoked_tokens.c.jti).where(S.revoked_tokens.c.jti == jti)).first()
        return r is not None

    # ------------------------------------------------------------------ attested claims

    def record_claims(self, evidence_digest: str, tee: str, platform: str | None, claims: str) -> None:
        """Keep the claims a verified attestation produced (once per evidence digest)."""
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    insert(S.attested_claims).values(
                        evidence_digest=evidence_digest,
                        tee=tee,
                        platform=platform,
                        claims=claims,
                        created_at=self.clock(),
                    )
                )
        except SAIntegrityError:
            pass  # the same evidence verified twice: same claims

    # ------------------------------------------------------------------ secrets

    def get_or_create_secret(self, name: str, make: Callable[[], bytes]) -> bytes:
        """The sealed secret *name*; the first replica to ask creates it, the others read it."""
        with self.engine.begin() as conn:
            r = conn.execute(select(S.secrets.c.sealed).where(S.secrets.c.name == name)).first()
        if r is not None:
            return bytes(r.sealed)
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(S.secrets).values(name=name, sealed=make(), created_at=self.clock()))
        except SAIntegrityError:
            pass  # another replica won the race; use its secret
        with self.engine.begin() as conn:
            return bytes(
                conn.execute(select(S.secrets.c.sealed).where(S.secrets.c.name == name)).scalar_one()
            )

    def get_secret(self, name: str) -> bytes | None:
        """The sealed secret *name*, or None (never creates it)."""
        with self.engine.begin() as conn:
            r = conn.execute(select(S.secrets.c.sealed).where(S.secrets.c.name == name)).first()
        return None if r is None else bytes(r.sealed)

    # ------------------------------------------------------------------ bootstrap

    def bootstrap_admin_token(self, row: ApiTokenRow) -> bool:
        """Store *row* as the deployment's bootstrap admin token, unless one exists already.

        The bootstrap record and the token commit together, so of several replicas starting
        at once exactly one token is stored and no loser leaves a credential behind.
        """
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    insert(S.bootstrap).values(
                        name="admin-token", value=row.token_id, created_at=row.created_at
                    )
                )
                conn.execute(self._api_token_insert(row))
        except SAIntegrityError:
            return False
        return True

    def bootstrap_value(self, name: str) -> str | None:
        with self.engine.begin() as conn:
            r = conn.execute(select(S.bootstrap.c.value).where(S.bootstrap.c.name == name)).first()
        return None if r is None else str(r.value)

    # ------------------------------------------------------------------ audit

    def claim_audit_chain(self, owner: str, keys: audit.AuditKeys, lease: float) -> int:
        """Take a chain nobody holds a lease on (whose head MAC is intact), or start one."""
        table = S.audit_head
        postgres = self.engine.dialect.name == "postgresql"
        for attempt in range(10):
            now = self.clock()
            try:
                with self.engine.begin() as conn:
                    q = (
                        select(table.c.id, table.c.seq, table.c.row_hash, table.c.mac)
                        .where(or_(table.c.lease_until.is_(None), table.c.lease_until < now))
                        .order_by(table.c.id)
                    )
                    if postgres:
                        q = q.with_for_update(skip_locked=True)
                    for r in conn.execute(q).all():
                        if keys.head_ok(audit.Head(r.id, r.seq, r.row_hash, r.mac)):
                            conn.execute(
                                update(table)
                                .where(table.c.id == r.id)
                                .values(owner=owner, lease_until=now + lease)
                            )
                            return int(r.id)
                    new = int(conn.execute(select(func.coalesce(func.max(table.c.id), 0))).scalar_one()) + 1
                    first = audit.genesis(new)
                    conn.execute(
                        insert(table).values(
                            id=new,
                            seq=0,
                            row_hash=first,
                            mac=keys.head_mac(new, 0, first),
                            owner=owner,
                            lease_until=now + lease,
                        )
                    )
                    return new
            except (SAIntegrityError, OperationalError):
                if attempt == 9:
                    raise
        raise AssertionError("unreachable")

    def release_audit_chain(self, chain: int, owner: str) -> None:
        """End this writer's lease so the next process can continue the chain at once."""
        with self.engine.begin() as conn:
            conn.execute(
                update(S.audit_head)
                .where(S.audit_head.c.id == chain, S.audit_head.c.owner == owner)
                .values(owner=None, lease_until=None)
            )

    def adopt_audit_heads(self, keys: audit.AuditKeys) -> int:
        """MAC the heads written before heads had MACs (a database from before the audit key)."""
        table = S.audit_head
        with self.engine.begin() as conn:
            rows = conn.execute(
                select(table.c.id, table.c.seq, table.c.row_hash).where(table.c.mac.is_(None))
            ).all()
            for r in rows:
                conn.execute(
                    update(table)
                    .where(table.c.id == r.id, table.c.mac.is_(None), table.c.seq == r.seq)
                    .values(mac=keys.head_mac(r.id, r.seq, r.row_hash))
                )
        return len(rows)

    def append_audit_batch(
        self,
        entries: Sequence[Mapping[str, Any]],
        *,
        chain: int,
        owner: str,
        keys: audit.AuditKeys,
        lease: float,
    ) -> list[int] | str:
        """Append rows to *chain* in one transaction (one commit); returns their seqs.

        Returns a reason instead (nothing written) when the chain must not be extended: its
        head's MAC does not verify ("tampered": appending would bless a cut) or another
        writer holds a live lease on it ("taken").
        """
        for attempt in range(5):
            try:
                with self.engine.connect() as conn:
                    if self.relaxed_audit_sync:
                        conn.execution_options(**{RELAXED_SYNC_OPTION: True})
                    conn.begin()
                    started = time.perf_counter()
                    head = conn.execute(_Q_HEAD, {"chain": chain}).first()
                    locked = time.perf_counter()
                    now = self.clock()
                    if head is None or not keys.head_ok(audit.Head(chain, head.seq, head.row_hash, head.mac)):
                        conn.rollback()
                        return "tampered"
                    if head.owner != owner and head.lease_until is not None and head.lease_until > now:
                        conn.rollback()
                        return "taken"
                    seq, prev = int(head.seq), str(head.row_hash)
                    rows, seqs = [], []
                    for entry in entries:
                        seq += 1
                        content = dict(entry, seq=seq)
                        row_hash = audit.chain_hash(prev, content)
                        values = {k: content[k] for k in audit.CONTENT_FIELDS}
                        rows.append(dict(values, chain=chain, prev_hash=prev, row_hash=row_hash))
                        seqs.append(seq)
                        prev = row_hash
                    conn.execute(_I_AUDIT, rows)
                    conn.execute(
                        _U_HEAD,
                        [
                            {
                                "chain": chain,
                                "seq": seq,
                                "row_hash": prev,
                                "mac": keys.head_mac(chain, seq, prev),
                                "owner": owner,
                                "lease_until": now + lease,
                            }
                        ],
                    )
                    conn.commit()
                    self.audit_stats.record(locked - started, time.perf_counter() - locked, len(rows))
                return seqs
            except (SAIntegrityError, OperationalError):
                if attempt == 4:
                    raise
        raise AssertionError("unreachable")

    def iter_audit(
        self, *, tenant: str | None = None, after: int = 0, limit: int | None = None
    ) -> Iterator[audit.AuditRow]:
        """Rows in insertion order (``after`` is a row ``id``), for reading the log."""
        q = select(S.audit_log).where(S.audit_log.c.id > after).order_by(S.audit_log.c.id)
        if tenant is not None:
            q = q.where(S.audit_log.c.tenant == tenant)
        if limit is not None:
            q = q.limit(limit)
        return self._audit_rows(q)

    def iter_audit_chains(self) -> Iterator[audit.AuditRow]:
        """Every row ordered by (chain, seq), for verification."""
        return self._audit_rows(select(S.audit_log).order_by(S.audit_log.c.chain, S.audit_log.c.seq))

    def _audit_rows(self, q: Any) -> Iterator[audit.AuditRow]:
        with self.engine.connect() as conn:
            for r in conn.execution_options(yield_per=1000).execute(q):
                content = {k: getattr(r, k) for k in audit.CONTENT_FIELDS}
                yield audit.AuditRow(content, r.prev_hash, r.row_hash, int(r.chain), int(r.id))

    def audit_heads(self) -> list[audit.Head]:
        """Every chain's head, read in one statement (one snapshot, no locks)."""
        t = S.audit_head
        with self.engine.begin() as conn:
            rows = conn.execute(select(t.c.id, t.c.seq, t.c.row_hash, t.c.mac).order_by(t.c.id)).all()
        return [audit.Head(int(r.id), int(r.seq), str(r.row_hash), r.mac) for r in rows]

    def last_checkpoint(self) -> tuple[int, str] | None:
        t = S.audit_checkpoints
        with self.engine.begin() as conn:
            r = conn.execute(select(t.c.number, t.c.body).order_by(t.c.number.desc()).limit(1)).first()
        return None if r is None else (int(r.number), str(r.body))

    def insert_checkpoint(self, number: int, at_ms: int, body: str) -> bool:
        """Store checkpoint *number*; False if another replica stored that number first."""
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(S.audit_checkpoints).values(number=number, at_ms=at_ms, body=body))
        except SAIntegrityError:
            return False
        return True

    def iter_checkpoints(self) -> Iterator[tuple[int, str]]:
        t = S.audit_checkpoints
        with self.engine.connect() as conn:
            for r in conn.execution_options(yield_per=100).execute(
                select(t.c.number, t.c.body).order_by(t.c.number)
            ):
                yield int(r.number), str(r.body)


def keys_json(paths: Iterable[str]) -> str:
    return json.dumps(sorted(paths), separators=(",", ":"))
