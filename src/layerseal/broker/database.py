"""Engine creation and schema migration for SQLite (default) and PostgreSQL.

URLs: a plain path or ``sqlite:///path`` for SQLite; ``postgresql://...`` is mapped to
the psycopg 3 driver.  SQLite transactions start with ``BEGIN IMMEDIATE`` so writers
queue on the database lock instead of failing on a stale read snapshot; WAL and a busy
timeout let several processes (``serve --workers N``, replicas) share one database file.

Connections (PostgreSQL): each process keeps two pools of at most ``pool_size``
connections (``--db-pool-size``): one for transactions (including the audit writer), one
for the release path's single-statement reads.  So a deployment needs
``replicas x workers x 2 x pool_size`` server connections, or a PgBouncer in transaction
mode in front (supported: no session state is relied upon; psycopg's server-side
prepared statements are turned off for it with ``?prepare_threshold=0`` in the URL).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from layerseal.errors import BadInputError, TransportError

READONLY_OPTION = "layerseal_readonly"
AUTOCOMMIT_OPTION = "layerseal_autocommit"
RELAXED_SYNC_OPTION = "layerseal_relaxed_sync"
NO_PREPARE_OPTION = "layerseal_no_prepare"
_MIGRATIONS = Path(__file__).parent / "migrations"
_PG_MIGRATION_LOCK = 0x6C736B62  # "lskb": serialises replicas migrating one database
DEFAULT_POOL_SIZE = 8


def normalize_url(url: str) -> str:
    """Map user-facing database URLs to SQLAlchemy ones."""
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    if url.startswith(("postgresql+psycopg://", "sqlite://")):
        return url
    if "://" in url:
        raise BadInputError(
            f"database URL: expected sqlite:///PATH, postgresql://... or a path, seen {url[:60]!r}"
        )
    return f"sqlite:///{Path(url).resolve()}"


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def create_db_engine(url: str, *, pool_size: int = DEFAULT_POOL_SIZE) -> Engine:
    """An engine for *url*; SQLite gets WAL, a busy timeout and full fsync on commit."""
    sa_url = normalize_url(url)
    try:
        parsed = make_url(sa_url)
    except ArgumentError as exc:
        raise BadInputError(f"database URL: expected a valid URL, seen {url[:60]!r}") from exc
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:" and not Path(parsed.database).exists():
            # sealed keys and token hashes: owner-only, like the master key (SQLite copies
            # the mode to its -wal and -shm files)
            os.close(os.open(parsed.database, os.O_WRONLY | os.O_CREAT, 0o600))
        engine = create_engine(sa_url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            # FULL: an acknowledged key survives power loss too, not only a killed process.
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            # read-only snapshots need no write lock; WAL readers never block writers
            options = conn.get_execution_options()
            if options.get(AUTOCOMMIT_OPTION):
                return  # each statement is its own transaction (single-statement reads)
            if options.get(READONLY_OPTION):
                conn.exec_driver_sql("BEGIN")
                return
            # relaxed commits (audit rows, by operator choice) survive a killed process but
            # may be lost on power failure; the next FULL commit makes them durable too
            relaxed = options.get(RELAXED_SYNC_OPTION)
            conn.exec_driver_sql("PRAGMA synchronous=NORMAL" if relaxed else "PRAGMA synchronous=FULL")
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    no_prepare = _no_prepare(parsed)
    engine = create_engine(
        parsed.difference_update_query(["prepare_threshold"]),
        pool_size=pool_size,
        max_overflow=0,
        pool_pre_ping=True,
    )
    if no_prepare:
        _disable_prepared_statements(engine)
        engine = engine.execution_options(**{NO_PREPARE_OPTION: True})
    return engine


def _no_prepare(parsed: Any) -> bool:
    """``?prepare_threshold=0`` (for PgBouncer in transaction mode): no prepared statements."""
    value = parsed.query.get("prepare_threshold")
    if value is None:
        return False
    if value not in ("0", "none"):
        raise BadInputError(f"database URL prepare_threshold: expected 0 or none, seen {str(value)[:20]!r}")
    return True


def _disable_prepared_statements(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.prepare_threshold = None


def autocommit_engine(engine: Engine) -> Engine:
    """An engine for single-statement reads on the release path.

    SQLite: *engine* itself (its reads skip BEGIN through :data:`AUTOCOMMIT_OPTION`).
    PostgreSQL: a second pool whose connections stay in autocommit, with neither a
    pre-ping nor a reset on return: a checkout then costs no round trip of its own
    (170 us per read instead of 350, measured).  A dropped connection is the caller's
    to retry.
    """
    if is_sqlite(engine):
        return engine
    size = engine.pool.size() if hasattr(engine.pool, "size") else DEFAULT_POOL_SIZE
    reads = create_engine(
        engine.url,
        isolation_level="AUTOCOMMIT",
        pool_reset_on_return=None,
        pool_size=size,
        max_overflow=0,
    )
    if engine.get_execution_options().get(NO_PREPARE_OPTION):
        _disable_prepared_statements(reads)
    return reads


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision (safe when several replicas start at once)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    try:
        with engine.connect() as conn:
            if engine.dialect.name == "postgresql":
                # a transaction-level lock: released by the commit below, and correct behind
                # PgBouncer in transaction mode (a session lock could outlive its client there)
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
            conn.commit()
    except SQLAlchemyError as exc:
        raise TransportError(f"database {engine.url.render_as_string()}: migration failed ({exc})") from exc
