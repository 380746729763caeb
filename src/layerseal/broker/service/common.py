"""What every part of the broker service shares: its settings, who asks (``Principal``),
what an attestation proves (``Attested``), the clock and the audit trail.

Each part (tokens, keys, policy admin, attestation, release) is handed these explicitly
by the ``Broker`` that composes them; nothing here is module-level state.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from layerseal.broker.custody import KeyCustody
from layerseal.broker.groupcommit import AuditCommitter
from layerseal.broker.requests import ADMIN_TENANT
from layerseal.broker.store import Store, keys_json
from layerseal.errors import BadInputError
from layerseal.kbs import packets
from layerseal.kbs.problems import ForbiddenError

Listener = Callable[[str, str, int], None]  # (action, decision, keys) for metrics


def utc(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


@dataclass(frozen=True)
class BrokerConfig:
    """Tunables; defaults follow KBS (5 minute sessions and tokens)."""

    session_ttl: float = 300.0
    token_ttl: float = 300.0
    max_batch: int = 256
    issuer: str = "layerseal-broker"
    # 'sample' evidence is unsigned: anyone can claim any measurement with it
    allow_sample_tee: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.token_ttl <= 86400 or not 1 <= self.session_ttl <= 86400:
            raise BadInputError("broker TTLs: expected 1..86400 seconds")
        if self.max_batch < 1:
            raise BadInputError("broker limits: expected positive values")


class Clock:
    """The broker's time source, shared by its parts (tests move it forward)."""

    def __init__(self, now: Callable[[], float] = time.time) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now()


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated publisher or admin: its token, tenant and scopes."""

    token_id: str
    tenant: str
    scopes: tuple[str, ...]

    def require(self, scope: str, tenant: str | None = None) -> None:
        if not self.is_admin and scope not in self.scopes:
            raise ForbiddenError(
                f"API token {self.token_id}: expected scope {scope!r}, seen {list(self.scopes)}"
            )
        if tenant is not None and not self.is_admin and tenant != self.tenant:
            raise ForbiddenError(
                f"API token {self.token_id}: expected tenant {tenant!r}, seen {self.tenant!r}"
            )

    @property
    def is_admin(self) -> bool:
        return "admin" in self.scopes

    @property
    def actor(self) -> str:
        """How audit rows name it."""
        return f"token:{self.token_id}"

    def tenant_for(self, requested: Any) -> str:
        """The tenant a request acts on: the token's own, or the one an admin names."""
        if requested is None:
            if self.tenant == ADMIN_TENANT:
                raise BadInputError("tenant: expected a 'tenant' field (admin tokens span all tenants)")
            return self.tenant
        tenant = packets.check_tenant(requested)
        if not self.is_admin and tenant != self.tenant:
            raise ForbiddenError(
                f"API token {self.token_id}: expected tenant {self.tenant!r}, seen {tenant!r}"
            )
        return tenant

    def reading(self, tenant: Any, scope: str) -> str | None:
        """The tenant a listing reads (None: all, for an admin naming none), checked for *scope*."""
        chosen = None if tenant is None and self.is_admin else self.tenant_for(tenant)
        self.require(scope, chosen)
        return chosen


def actor_of(principal: Principal | None) -> str:
    return "bootstrap" if principal is None else principal.actor


def claims_digest(claims: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(claims, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Attested:
    """What a valid session or token proves: verified claims and the key to wrap to."""

    claims: Mapping[str, Any]
    tee_pubkey: Mapping[str, Any]
    jti: str
    evidence_digest: str
    subject: str
    claims_digest: str = ""  # sha256 of the sorted claims JSON (decision cache key); "" = compute

    def digest(self) -> str:
        return self.claims_digest or claims_digest(self.claims)


class AuditTrail:
    """The broker's audit log: rows built, committed through the group committer (a call
    returns only once its row is durable), told to listeners, and read back."""

    def __init__(self, store: Store, committer: AuditCommitter, clock: Clock) -> None:
        self.store = store
        self.committer = committer
        self.clock = clock
        self.listeners: list[Listener] = []

    def entry(
        self,
        action: str,
        decision: str,
        *,
        tenant: str | None = None,
        keys: Sequence[str] = (),
        actor: str = "",
        evidence_digest: str | None = None,
        measurement: str | None = None,
        reason: str = "",
    ) -> dict[str, Any]:
        return {
            "at_ms": int(self.clock() * 1000),
            "actor": actor[:200],
            "action": action,
            "decision": decision,
            "tenant": tenant,
            "keys": keys_json(keys),
            "evidence_digest": evidence_digest,
            "measurement": measurement,
            "reason": reason[:2000],
        }

    def notify(self, entry: Mapping[str, Any], n_keys: int) -> None:
        for listener in self.listeners:
            listener(entry["action"], entry["decision"], n_keys)

    def commit(self, entry: Mapping[str, Any], n_keys: int) -> None:
        self.committer.append(entry)
        self.notify(entry, n_keys)

    async def commit_async(self, entry: Mapping[str, Any], n_keys: int) -> None:
        """``commit`` that yields the loop meanwhile, so concurrent requests share a commit."""
        await self.committer.append_async(entry)
        self.notify(entry, n_keys)

    def record(self, action: str, decision: str, **fields: Any) -> None:
        """Append a row (fields as for :meth:`entry`) and wait until it is committed."""
        self.commit(self.entry(action, decision, **fields), len(fields.get("keys", ())))


@dataclass(frozen=True)
class Context:
    """The state the parts of one broker share, handed to each explicitly."""

    store: Store
    custody: KeyCustody
    config: BrokerConfig
    clock: Clock
    audit: AuditTrail


class Part:
    """A part of the broker service, over its broker's shared state."""

    def __init__(self, ctx: Context) -> None:
        self.store = ctx.store
        self.custody = ctx.custody
        self.config = ctx.config
        self.clock = ctx.clock
        self.audit = ctx.audit
