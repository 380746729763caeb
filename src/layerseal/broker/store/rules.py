"""What releases are judged by: tenants' policies and reference values (every change bumps
the tenant's generation, see ``release``) and the registered attestation platforms."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import delete, insert, select, update

from layerseal.broker import schema as S
from layerseal.broker.store.base import StoreBase


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


class RuleStore(StoreBase):
    """The ``policies``, ``refvalues`` and ``platforms`` tables."""

    def put_policy(self, tenant: str, scope: str, target: str, document: str) -> None:
        now = self.clock()
        t = S.policies
        with self.engine.begin() as conn:
            res = conn.execute(
                update(t)
                .where(t.c.tenant == tenant, t.c.scope == scope, t.c.target == target)
                .values(document=document, updated_at=now)
            )
            if res.rowcount == 0:
                row = PolicyRow(tenant, scope, target, document, now)
                conn.execute(insert(t).values(asdict(row)))
            self._bump_generation(conn, tenant)

    def delete_policy(self, tenant: str, scope: str, target: str) -> bool:
        t = S.policies
        with self.engine.begin() as conn:
            res = conn.execute(
                delete(t).where(t.c.tenant == tenant, t.c.scope == scope, t.c.target == target)
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
        t = S.refvalues
        with self.engine.begin() as conn:
            existing = {
                r.value for r in conn.execute(select(t.c.value).where(t.c.tenant == tenant, t.c.name == name))
            }
            new = [v for v in dict.fromkeys(values) if v not in existing]
            for value in new:
                conn.execute(insert(t).values(tenant=tenant, name=name, value=value, created_at=now))
            self._bump_generation(conn, tenant)
        return len(new)

    def remove_refvalues(self, tenant: str, name: str, values: Sequence[str]) -> int:
        t = S.refvalues
        with self.engine.begin() as conn:
            res = conn.execute(delete(t).where(t.c.tenant == tenant, t.c.name == name, t.c.value.in_(values)))
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

    # ------------------------------------------------------------------ platforms

    def put_platform(self, row: PlatformRow) -> bool:
        """Register a platform; False if its fingerprint is registered already."""
        return self._insert_new(insert(S.platforms).values(asdict(row)))

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
