"""Migration 0007 (``api_token_meta.expires_at`` dropped) on SQLite and PostgreSQL, and a
backup taken at 0006 restoring into the newest schema."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from brokerproc import postgres_available, postgres_schema
from sqlalchemy import Engine, inspect, text

from layerseal.broker import backup, database
from layerseal.broker.custody import MasterKeyCustody
from layerseal.broker.store import Store
from layerseal.errors import IntegrityError

pytestmark = pytest.mark.integration

_MIGRATIONS = Path(database.__file__).parent / "migrations"
_CFG = Config()
_CFG.set_main_option("script_location", str(_MIGRATIONS))
HEAD = ScriptDirectory.from_config(_CFG).get_current_head()

# token id -> (api_tokens.expires_at, api_token_meta.expires_at, last_used_at) at 0006
TOKENS: dict[str, tuple[float | None, float | None, float | None]] = {
    "t-none": (None, None, 5.0),
    "t-meta-only": (None, 100.0, None),
    "t-token-earlier": (150.0, 200.0, 7.0),
    "t-meta-earlier": (300.0, 100.0, 8.0),
}
# the expiry a 0006 broker enforced: the earlier of the two
EFFECTIVE = {"t-none": None, "t-meta-only": 100.0, "t-token-earlier": 150.0, "t-meta-earlier": 100.0}


@pytest.fixture(params=["sqlite", "postgresql"])
def db_urls(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """Two empty databases of one kind: a source and a restore target."""
    if request.param == "sqlite":
        yield str(tmp_path / "a.db"), str(tmp_path / "b.db")
        return
    if not postgres_available():
        pytest.skip("PostgreSQL at 127.0.0.1:5432 is not reachable")
    with postgres_schema() as a, postgres_schema() as b:
        yield a, b


def alembic_to(engine: Engine, revision: str, *, down: bool = False) -> None:
    with engine.connect() as conn:
        cfg = Config()
        cfg.set_main_option("script_location", str(_MIGRATIONS))
        cfg.attributes["connection"] = conn
        (command.downgrade if down else command.upgrade)(cfg, revision)
        conn.commit()


def revision_of(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def database_at_0006(url: str) -> Engine:
    engine = database.create_db_engine(url, pool_size=1)
    alembic_to(engine, "0006")
    with engine.begin() as conn:
        for token_id, (token_expiry, meta_expiry, last_used) in TOKENS.items():
            conn.execute(
                text(
                    "INSERT INTO api_tokens (token_id, tenant, scopes, token_hash, description, "
                    "created_at, revoked_at, expires_at) VALUES (:id, 'acme', 'publish', :h, '', 1.0, "
                    "NULL, :e)"
                ),
                {"id": token_id, "h": hashlib.sha256(token_id.encode()).hexdigest(), "e": token_expiry},
            )
            conn.execute(
                text("INSERT INTO api_token_meta (token_id, expires_at, last_used_at) VALUES (:id, :e, :u)"),
                {"id": token_id, "e": meta_expiry, "u": last_used},
            )
    return engine


def meta_columns(engine: Engine) -> dict[str, bool]:
    with engine.connect() as conn:
        return {c["name"]: c["nullable"] for c in inspect(conn).get_columns("api_token_meta")}


def token_expiries(engine: Engine) -> dict[str, float | None]:
    with engine.connect() as conn:
        return {r[0]: r[1] for r in conn.execute(text("SELECT token_id, expires_at FROM api_tokens"))}


def last_uses(engine: Engine) -> dict[str, float | None]:
    with engine.connect() as conn:
        return {r[0]: r[1] for r in conn.execute(text("SELECT token_id, last_used_at FROM api_token_meta"))}


def test_0007_drops_the_meta_expiry_keeping_rows_and_the_enforced_expiry(db_urls: tuple[str, str]) -> None:
    engine = database_at_0006(db_urls[0])
    try:
        assert "expires_at" in meta_columns(engine)
        alembic_to(engine, "head")
        assert revision_of(engine) == HEAD
        assert meta_columns(engine) == {"token_id": False, "last_used_at": True}
        assert last_uses(engine) == {t: u for t, (_, _, u) in TOKENS.items()}
        # a meta expiry earlier than the token's own (or its only one) moved into api_tokens
        assert token_expiries(engine) == EFFECTIVE
        store = Store(engine)
        try:  # the store at head reads the migrated table
            assert store.token_last_uses() == {t: u for t, (_, _, u) in TOKENS.items()}
        finally:
            store.dispose()

        alembic_to(engine, "0006", down=True)
        assert revision_of(engine) == "0006"
        assert meta_columns(engine) == {"token_id": False, "expires_at": True, "last_used_at": True}
        assert last_uses(engine) == {t: u for t, (_, _, u) in TOKENS.items()}
        assert token_expiries(engine) == EFFECTIVE  # 0006 brokers check api_tokens.expires_at too
        alembic_to(engine, "head")
        assert revision_of(engine) == HEAD and "expires_at" not in meta_columns(engine)
    finally:
        engine.dispose()


def take_backup(url: str, tmp_path: Path) -> tuple[Path, MasterKeyCustody]:
    key = secrets.token_bytes(32)
    key_file = tmp_path / "master.key"
    key_file.write_text(base64.b64encode(key).decode() + "\n")
    out = tmp_path / "at-0006.backup"
    custody = MasterKeyCustody(key)
    report = backup.backup(url, out, custody, key_file=key_file)
    assert report.revision == "0006"
    return out, custody


def backup_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in gzip.decompress(path.read_bytes()).splitlines()]


def test_a_backup_taken_at_0006_restores_into_the_newest_schema(
    db_urls: tuple[str, str], tmp_path: Path
) -> None:
    source = database_at_0006(db_urls[0])
    try:
        out, _ = take_backup(db_urls[0], tmp_path)
    finally:
        source.dispose()
    meta_rows = [obj["r"] for obj in backup_lines(out) if obj.get("t") == "api_token_meta"]
    assert len(meta_rows) == len(TOKENS) and all("expires_at" in r for r in meta_rows)

    report = backup.restore(db_urls[1], out, key_file=tmp_path / "restored.key", custody=None)
    assert report.revision == "0006" and report.rows["api_token_meta"] == len(TOKENS)
    target = database.create_db_engine(db_urls[1], pool_size=1)
    try:
        assert revision_of(target) == HEAD
        assert meta_columns(target) == {"token_id": False, "last_used_at": True}
        assert last_uses(target) == {t: u for t, (_, _, u) in TOKENS.items()}
        # nothing the 0006 database enforced is lost: its meta expiries are api_tokens' now
        assert token_expiries(target) == EFFECTIVE
    finally:
        target.dispose()


def rewrite(path: Path, out: Path, edit: Any) -> None:
    """*path*'s lines passed through *edit*, with a trailer that matches them again."""
    lines = backup_lines(path)
    body = [edit(obj) for obj in lines[:-1]]
    data = [json.dumps(obj, separators=(",", ":"), sort_keys=True).encode() + b"\n" for obj in body]
    trailer = {**lines[-1], "sha256": hashlib.sha256(b"".join(data)).hexdigest()}
    out.write_bytes(gzip.compress(b"".join(data) + json.dumps(trailer).encode() + b"\n"))


def test_a_column_the_backups_revision_does_not_have_is_refused(
    db_urls: tuple[str, str], tmp_path: Path
) -> None:
    """A backup claiming the newest revision yet carrying the dropped column is refused,
    naming table and column, and leaves the target without data."""
    source = database_at_0006(db_urls[0])
    try:
        out, _ = take_backup(db_urls[0], tmp_path)
    finally:
        source.dispose()

    def claim_head(obj: dict[str, Any]) -> dict[str, Any]:
        return {**obj, "revision": HEAD} if "revision" in obj else obj

    relabelled = tmp_path / "relabelled.backup"
    rewrite(out, relabelled, claim_head)
    with pytest.raises(IntegrityError, match=r"backup row of api_token_meta: .* seen 'expires_at'"):
        backup.restore(db_urls[1], relabelled, key_file=tmp_path / "restored.key", custody=None)
    target = database.create_db_engine(db_urls[1], pool_size=1)
    try:
        with target.connect() as conn:
            present = set(inspect(conn).get_table_names())
            rows = (
                conn.execute(text("SELECT count(*) FROM api_tokens")).scalar()
                if "api_tokens" in present
                else 0
            )
        assert rows == 0
    finally:
        target.dispose()
