"""The console's read model: read-only queries over the broker's tables.

Everything here only reads (the claims record is written by the broker when an
attestation verifies).  Filters are applied in SQL so a page of the timeline costs one
indexed range scan however long the history is; the few summaries that need every
release row (last release per key, activity buckets) read only the columns they use.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, and_, func, or_, select
from sqlalchemy.sql.elements import ColumnElement

from layerseal.broker import audit
from layerseal.broker import schema as S
from layerseal.broker.store.auditing import naming_any

A = S.audit_log
C = S.attested_claims
# The timeline's position of a row: the global row id where the log has several chains
# (one per writer), else the chain's sequence number, which is then global too.
POSITION = A.c.id if "id" in A.c else A.c.seq
MAX_PAGE = 10000


@dataclass(frozen=True)
class AuditFilter:
    """What the timeline shows; every field is optional (None = no restriction)."""

    tenant: str | None = None
    key_ids: tuple[str, ...] | None = None  # rows naming any of these keys
    platform: str | None = None  # a platform fingerprint or a TEE kind
    outcome: str | None = None  # "ok" or "deny"
    action: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    before: int | None = None  # page cursor: rows older than this position


@dataclass(frozen=True)
class AuditRecord:
    position: int
    content: dict[str, Any]
    prev_hash: str
    row_hash: str
    claims: dict[str, Any] | None


def _conditions(f: AuditFilter) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = []
    if f.tenant is not None:
        where.append(A.c.tenant == f.tenant)
    if f.key_ids is not None:
        # the admin search's filter, so both name exactly the same rows (no key: nothing to
        # show); it takes a repository's thousands of keys as one VALUES list, so no cap
        where.append(naming_any(f.key_ids))
    if f.platform is not None:
        matching = select(C.c.evidence_digest).where(or_(C.c.platform == f.platform, C.c.tee == f.platform))
        where.append(A.c.evidence_digest.in_(matching))
    if f.outcome is not None:
        where.append(A.c.decision == f.outcome)
    if f.action is not None:
        where.append(A.c.action == f.action)
    if f.since_ms is not None:
        where.append(A.c.at_ms >= f.since_ms)
    if f.until_ms is not None:
        where.append(A.c.at_ms < f.until_ms)
    if f.before is not None:
        where.append(POSITION < f.before)  # noqa: SIM300 -- a column on the left builds SQL
    return where


def search_audit(engine: Engine, f: AuditFilter, limit: int) -> list[AuditRecord]:
    """The newest *limit* rows matching *f* (newest first), with their recorded claims."""
    q = select(A, POSITION.label("position_")).order_by(POSITION.desc()).limit(max(1, min(limit, MAX_PAGE)))
    where = _conditions(f)
    if where:
        q = q.where(and_(*where))
    with engine.connect() as conn:
        rows = conn.execute(q).all()
        digests = sorted({r.evidence_digest for r in rows if r.evidence_digest})
        claims = _claims(conn, digests)
    out = []
    for r in rows:
        content = {k: getattr(r, k) for k in audit.CONTENT_FIELDS}
        out.append(
            AuditRecord(
                int(r.position_), content, r.prev_hash, r.row_hash, claims.get(r.evidence_digest or "")
            )
        )
    return out


def get_audit(engine: Engine, position: int) -> AuditRecord | None:
    with engine.connect() as conn:
        q = select(A).where(POSITION == position)  # noqa: SIM300
        r = conn.execute(q).first()
        if r is None:
            return None
        claims = _claims(conn, [r.evidence_digest] if r.evidence_digest else [])
    content = {k: getattr(r, k) for k in audit.CONTENT_FIELDS}
    return AuditRecord(position, content, r.prev_hash, r.row_hash, claims.get(r.evidence_digest or ""))


def _claims(conn: Any, digests: Sequence[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for i in range(0, len(digests), 500):
        q = select(C.c.evidence_digest, C.c.claims).where(C.c.evidence_digest.in_(digests[i : i + 500]))
        for r in conn.execute(q):
            out[r.evidence_digest] = json.loads(r.claims)
    return out


@dataclass(frozen=True)
class KeyUse:
    releases: int
    last_release_ms: int | None
    denials: int
    last_denial_ms: int | None


def key_use(engine: Engine, tenant: str | None) -> dict[str, KeyUse]:
    """Per key id: how often its versions were released and denied, and when last."""
    q = select(A.c["keys"], A.c.decision, A.c.at_ms).where(A.c.action == "release")
    if tenant is not None:
        q = q.where(A.c.tenant == tenant)
    acc: dict[str, list[int]] = {}  # key id -> [releases, last release, denials, last denial]
    with engine.connect() as conn:
        for keys_text, decision, at_ms in conn.execution_options(yield_per=2000).execute(q):
            for path in _key_paths(keys_text):
                # "tenant/key.1" (released) or "tenant/layer-key/key.1" (the denied request)
                key_id = path.rsplit("/", 1)[-1].split(".", 1)[0]
                slot = acc.setdefault(key_id, [0, 0, 0, 0])
                i = 0 if decision == "ok" else 2
                slot[i] += 1
                slot[i + 1] = max(slot[i + 1], int(at_ms))
    return {k: KeyUse(v[0], v[1] or None, v[2], v[3] or None) for k, v in acc.items()}


def _key_paths(text: str) -> Iterable[str]:
    try:
        paths = json.loads(text)
    except ValueError:
        return ()
    return [p for p in paths if isinstance(p, str)] if isinstance(paths, list) else ()


def release_times(
    engine: Engine, tenant: str | None, since_ms: int | None, until_ms: int | None
) -> list[tuple[int, str]]:
    """(at_ms, decision) of every release decision in the window, oldest first."""
    q = select(A.c.at_ms, A.c.decision).where(A.c.action == "release").order_by(A.c.at_ms)
    if tenant is not None:
        q = q.where(A.c.tenant == tenant)
    if since_ms is not None:
        q = q.where(A.c.at_ms >= since_ms)
    if until_ms is not None:
        q = q.where(A.c.at_ms < until_ms)
    with engine.connect() as conn:
        return [(int(a), str(d)) for a, d in conn.execution_options(yield_per=5000).execute(q)]


@dataclass(frozen=True)
class PlatformUse:
    platform: str
    tee: str
    attestations: int
    last_ms: int


def platform_use(engine: Engine) -> list[PlatformUse]:
    """Verified attestations per platform (or per TEE kind where evidence names no platform)."""
    q = select(
        C.c.platform, C.c.tee, func.count().label("n"), func.max(C.c.created_at).label("last")
    ).group_by(C.c.platform, C.c.tee)
    with engine.connect() as conn:
        rows = conn.execute(q).all()
    return [PlatformUse(r.platform or "", r.tee, int(r.n), int(float(r.last) * 1000)) for r in rows]
