"""The audit log's tables: one hash chain per writing process (see ``broker.audit``), each
writer holding a lease on its chain and locking only that chain's head row, so replicas
never wait on each other; rows are appended a batch per transaction (see ``groupcommit``).
Also reading and searching the rows, the chain heads and the signed checkpoints."""

from __future__ import annotations

import json
import time
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from typing import Any

from sqlalchemy import String, bindparam, column, exists, false, func, insert, or_, select, update, values
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.sql.elements import ColumnElement

from layerseal.broker import audit
from layerseal.broker import schema as S
from layerseal.broker.database import RELAXED_SYNC_OPTION
from layerseal.broker.store.base import StoreBase

A = S.audit_log
H = S.audit_head
_HEAD_COLUMNS = ("seq", "row_hash", "mac", "owner", "lease_until")
_Q_HEAD = select(*H.c[_HEAD_COLUMNS]).where(H.c.id == bindparam("chain")).with_for_update()
_I_AUDIT = insert(A)
_U_HEAD = update(H).where(H.c.id == bindparam("chain"))


def keys_json(paths: Iterable[str]) -> str:
    """An audit row's ``keys``: the key paths it names ("tenant/kid" or "tenant/kid.version")."""
    return json.dumps(sorted(paths), separators=(",", ":"))


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def naming_any(key_ids: Collection[str]) -> ColumnElement[bool]:
    """Rows whose ``keys`` name one of *key_ids* exactly (``k1`` never matches ``k10``): some
    path's part after the tenant's "/", up to its version's ".", is the id (in ``keys_json``'s
    text: "/" id "." or "/" id '"').  The admin search and the console both filter with it."""
    # such a part never holds these characters: an id with one can name no row
    ids = sorted(k for k in set(key_ids) if k and not set(k) & set('./"\\'))
    if not ids:
        return false()
    patterns = [f"%/{_like_escape(k)}{end}%" for k in ids for end in (".", '"')]
    wanted = values(column("pattern", String), name="wanted").data([(p,) for p in patterns]).cte()
    return exists(select(1).select_from(wanted).where(A.c["keys"].like(wanted.c.pattern, escape="\\")))


def _head_values(
    keys: audit.AuditKeys, chain: int, seq: int, row_hash: str, owner: str, until: float
) -> dict[str, Any]:
    """A chain head's columns after a write: its last row, MACed, and the writer's lease."""
    mac = keys.head_mac(chain, seq, row_hash)
    return {"seq": seq, "row_hash": row_hash, "mac": mac, "owner": owner, "lease_until": until}


class AuditStore(StoreBase):
    """The ``audit_log``, ``audit_head`` and ``audit_checkpoints`` tables."""

    def claim_audit_chain(self, owner: str, keys: audit.AuditKeys, lease: float) -> int:
        """Take a chain nobody holds a lease on (whose head MAC is intact), or start one."""
        postgres = self.engine.dialect.name == "postgresql"
        for attempt in range(10):
            now = self.clock()
            try:
                with self.engine.begin() as conn:
                    q = (
                        select(H.c.id, H.c.seq, H.c.row_hash, H.c.mac)
                        .where(or_(H.c.lease_until.is_(None), H.c.lease_until < now))
                        .order_by(H.c.id)
                    )
                    if postgres:
                        q = q.with_for_update(skip_locked=True)
                    for r in conn.execute(q).all():
                        if keys.head_ok(audit.Head(r.id, r.seq, r.row_hash, r.mac)):
                            held = {"owner": owner, "lease_until": now + lease}
                            conn.execute(update(H).where(H.c.id == r.id).values(held))
                            return int(r.id)
                    new = int(conn.execute(select(func.coalesce(func.max(H.c.id), 0))).scalar_one()) + 1
                    head = _head_values(keys, new, 0, audit.genesis(new), owner, now + lease)
                    conn.execute(insert(H).values(**head, id=new))
                    return new
            except (IntegrityError, OperationalError):
                if attempt == 9:
                    raise
        raise AssertionError("unreachable")

    def release_audit_chain(self, chain: int, owner: str) -> None:
        """End this writer's lease so the next process can continue the chain at once."""
        with self.engine.begin() as conn:
            conn.execute(
                update(H).where(H.c.id == chain, H.c.owner == owner).values(owner=None, lease_until=None)
            )

    def adopt_audit_heads(self, keys: audit.AuditKeys) -> int:
        """MAC the heads written before heads had MACs (a database from before the audit key)."""
        with self.engine.begin() as conn:
            rows = conn.execute(select(H.c.id, H.c.seq, H.c.row_hash).where(H.c.mac.is_(None))).all()
            for r in rows:
                conn.execute(
                    update(H)
                    .where(H.c.id == r.id, H.c.mac.is_(None), H.c.seq == r.seq)
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
                        stored = {k: content[k] for k in audit.CONTENT_FIELDS}
                        rows.append(dict(stored, chain=chain, prev_hash=prev, row_hash=row_hash))
                        seqs.append(seq)
                        prev = row_hash
                    conn.execute(_I_AUDIT, rows)
                    head_after = _head_values(keys, chain, seq, prev, owner, now + lease)
                    conn.execute(_U_HEAD, [dict(head_after, chain=chain)])
                    conn.commit()
                    self.audit_stats.record(locked - started, time.perf_counter() - locked, len(rows))
                return seqs
            except (IntegrityError, OperationalError):
                if attempt == 4:
                    raise
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ reading

    def iter_audit(
        self,
        *,
        tenant: str | None = None,
        after: int = 0,
        limit: int | None = None,
        decision: str | None = None,
        action: str | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
        key_ids: Collection[str] | None = None,
    ) -> Iterator[audit.AuditRow]:
        """Rows in insertion order (``after`` is a row ``id``), for reading the log; each
        filter given narrows it (times in epoch ms, ``since_ms`` included, ``until_ms`` not;
        ``key_ids``: rows naming any of these keys)."""
        equal = {A.c.tenant: tenant, A.c.decision: decision, A.c.action: action}
        where = [col == value for col, value in equal.items() if value is not None]
        if since_ms is not None:
            where.append(A.c.at_ms >= since_ms)
        if until_ms is not None:
            where.append(A.c.at_ms < until_ms)
        if key_ids is not None:
            where.append(naming_any(key_ids))
        q = select(A).where(A.c.id > after, *where).order_by(A.c.id)
        if limit is not None:
            q = q.limit(limit)
        return self._audit_rows(q)

    def iter_audit_chains(self) -> Iterator[audit.AuditRow]:
        """Every row ordered by (chain, seq), for verification."""
        return self._audit_rows(select(A).order_by(A.c.chain, A.c.seq))

    def _audit_rows(self, q: Any) -> Iterator[audit.AuditRow]:
        with self.engine.connect() as conn:
            for r in conn.execution_options(yield_per=1000).execute(q):
                content = {k: getattr(r, k) for k in audit.CONTENT_FIELDS}
                yield audit.AuditRow(content, r.prev_hash, r.row_hash, int(r.chain), int(r.id))

    def audit_heads(self) -> list[audit.Head]:
        """Every chain's head, read in one statement (one snapshot, no locks)."""
        with self.engine.begin() as conn:
            rows = conn.execute(select(H.c.id, H.c.seq, H.c.row_hash, H.c.mac).order_by(H.c.id)).all()
        return [audit.Head(int(r.id), int(r.seq), str(r.row_hash), r.mac) for r in rows]

    # ------------------------------------------------------------------ checkpoints

    def last_checkpoint(self) -> tuple[int, str] | None:
        t = S.audit_checkpoints
        with self.engine.begin() as conn:
            r = conn.execute(select(t.c.number, t.c.body).order_by(t.c.number.desc()).limit(1)).first()
        return None if r is None else (int(r.number), str(r.body))

    def insert_checkpoint(self, number: int, at_ms: int, body: str) -> bool:
        """Store checkpoint *number*; False if another replica stored that number first."""
        return self._insert_new(insert(S.audit_checkpoints).values(number=number, at_ms=at_ms, body=body))

    def iter_checkpoints(self) -> Iterator[tuple[int, str]]:
        t = S.audit_checkpoints
        with self.engine.connect() as conn:
            for r in conn.execution_options(yield_per=100).execute(
                select(t.c.number, t.c.body).order_by(t.c.number)
            ):
                yield int(r.number), str(r.body)
