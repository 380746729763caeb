"""What every part of the store shares: the engines, the clock, the per-replica rules cache,
the audit lock figures, and the few helpers all table groups use (autocommit reads,
insert-once transactions, policy generation bumps)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, Executable
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.exc import IntegrityError

from layerseal.broker import schema as S
from layerseal.broker.database import AUTOCOMMIT_OPTION, autocommit_engine

if TYPE_CHECKING:
    from layerseal.broker.store.rules import TenantRules


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


class StoreBase:
    """The state of one replica's store; each table group is a subclass (see ``Store``)."""

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

    def _insert_new(self, *statements: Executable) -> bool:
        """Run *statements* in one transaction; False, with nothing written, when one of them
        hits a key that exists already (another writer or replica was first)."""
        try:
            with self.engine.begin() as conn:
                for statement in statements:
                    conn.execute(statement)
        except IntegrityError:
            return False
        return True

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
