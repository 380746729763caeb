"""``broker backup`` / ``broker restore``: the whole database and the master key, in one file.

A backup is gzip'd JSON lines: a header (format, schema revision, the master key or where
it lives), one line per row of every table, and a trailer with row counts and the SHA-256
of every line before it.  Rows are read in one read-only snapshot (PostgreSQL: REPEATABLE
READ; SQLite in WAL mode: one read transaction), so a backup taken while brokers serve is
consistent and never blocks them.  The same format serves both databases, so a SQLite
deployment can be restored into PostgreSQL and back.

Restore goes into an empty database only: the schema is created at the backup's revision,
every row inserted in one transaction, then migrated to the newest revision.  Rows are read
and written with the tables as the database has them at that revision (reflected; for
reading, from a scratch in-memory database migrated to it), not as ``schema.py`` has them
now, so a backup of any revision restores whatever later migrations added, moved or
dropped: its rows go through those migrations exactly like a database upgraded in place.
Before anything is written the master key is checked to open the backup's sealed secrets,
and every line is checked to be a JSON object and every binary column base64
(:mod:`layerseal.wire`): a bad one is refused as bad input naming its line, table and field.
The file holds the master key unless ``--without-master-key``: it is written 0600 and is
exactly as sensitive as the key file.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.util import CommandError
from sqlalchemy import (
    Connection,
    Engine,
    LargeBinary,
    MetaData,
    Table,
    create_engine,
    delete,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.exc import SQLAlchemyError

from layerseal.broker import database
from layerseal.broker import schema as S
from layerseal.broker.custody import KeyCustody, MasterKeyCustody, record_aad
from layerseal.broker.masterkey import decode_master_key, write_private_file_once
from layerseal.errors import BadInputError, IntegrityError, NotFoundError, TransportError
from layerseal.wire.b64 import b64decode
from layerseal.wire.jsonload import loads_object

FORMAT = "layerseal-broker-backup"
VERSION = 1
_MIGRATIONS = Path(database.__file__).parent / "migrations"
_PARENTS = {"layer_keys"}  # key_versions.key_id references it
_SEEDED = {"audit_head", "policy_generations"}  # tables migrations may seed with rows
_PROBE_SECRET = "token-signing-key"  # noqa: S105 -- a row name: every broker database has it


@dataclass(frozen=True)
class BackupReport:
    path: Path
    revision: str
    rows: dict[str, int]
    master_key: str  # "included", "not included", "in a PKCS#11 token"


def _alembic(conn: Connection) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    cfg.attributes["connection"] = conn
    return cfg


def _revision(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def _tables_at_revision(conn: Connection) -> list[Table]:
    """Every table as the database has it (its revision's columns), parents before the
    tables whose foreign keys name them (kept as a fixed rule: the order of a backup's lines
    does not depend on what reflection finds)."""
    meta = MetaData()
    meta.reflect(conn, only=lambda name, _meta: name != "alembic_version")
    return sorted(meta.tables.values(), key=lambda t: (t.name not in _PARENTS, t.name))


def _tables_of(path: Path, revision: object) -> dict[str, Table]:
    """The tables of *revision*, from a scratch in-memory database migrated to it: a backup's
    rows are decoded with them before anything touches the target database."""
    scratch = create_engine("sqlite://")
    try:
        with scratch.begin() as conn:
            command.upgrade(_alembic(conn), str(revision))
            return {t.name: t for t in _tables_at_revision(conn)}
    except CommandError as exc:
        raise BadInputError(
            f"backup {path}: expected a schema revision this broker knows, seen {str(revision)[:40]!r}"
        ) from exc
    finally:
        scratch.dispose()


def _encode(table: Any, row: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for col in table.columns:
        value = getattr(row, col.name)
        if isinstance(col.type, LargeBinary) and value is not None:
            value = base64.b64encode(bytes(value)).decode()
        out[col.name] = value
    return out


def _decode(table: Any, row: dict[str, Any], where: str) -> dict[str, Any]:
    """A row's columns for insertion; *where* names its line in the backup."""
    out: dict[str, Any] = {}
    for name, value in row.items():
        if name not in table.columns:
            raise IntegrityError(
                f"backup row of {table.name}: expected the columns it has at the backup's revision, "
                f"seen {name!r}"
            )
        binary = isinstance(table.columns[name].type, LargeBinary) and value is not None
        out[name] = b64decode(value, f"{where}: table {table.name} field {name!r}") if binary else value
    return out


@contextmanager
def _snapshot(engine: Engine) -> Iterator[Connection]:
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                conn.execute(text("SET TRANSACTION READ ONLY"))
                yield conn
        else:
            conn = conn.execution_options(**{database.READONLY_OPTION: True})
            with conn.begin():
                yield conn


class _Writer:
    """Lines into a gzip stream, hashed as written."""

    def __init__(self, fh: IO[bytes]) -> None:
        self._gz = gzip.GzipFile(fileobj=fh, mode="wb", mtime=0)
        self.digest = hashlib.sha256()

    def line(self, obj: Any) -> None:
        data = json.dumps(obj, separators=(",", ":"), sort_keys=True).encode() + b"\n"
        self.digest.update(data)
        self._gz.write(data)

    def close(self) -> None:
        self._gz.close()


def _master_key_entry(
    custody: KeyCustody | None, key_file: Path | None, include: bool
) -> tuple[dict[str, Any], str]:
    if custody is not None and not isinstance(custody, MasterKeyCustody):
        return {"kind": "pkcs11", "description": repr(custody)}, "in a PKCS#11 token"
    if not include:
        return {"kind": "external"}, "not included"
    raw = key_file.read_text().strip() if key_file is not None and key_file.is_file() else None
    if raw is None:
        env = os.environ.get("LAYERSEAL_MASTER_KEY")
        if env is None:
            raise NotFoundError(
                "master key: expected --master-key-file or $LAYERSEAL_MASTER_KEY, seen neither"
            )
        raw = env.strip()
    return {"kind": "file", "key": raw}, "included"


def backup(
    db_url: str,
    out: Path,
    custody: KeyCustody,
    *,
    key_file: Path | None,
    include_master_key: bool = True,
) -> BackupReport:
    """Write a consistent backup of *db_url* to *out* (created 0600, complete or not at all)."""
    if out.exists():
        raise BadInputError(f"--out {out}: expected a new file, seen an existing one")
    entry, key_note = _master_key_entry(custody, key_file, include_master_key)
    engine = database.create_db_engine(db_url, pool_size=1)
    tmp = out.with_name(f".{out.name}.{secrets.token_hex(6)}.tmp")
    rows: dict[str, int] = {}
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            writer = _Writer(fh)
            with _snapshot(engine) as conn:
                revision = _revision(conn)
                if revision is None:
                    raise NotFoundError(f"database {db_url}: expected a broker database, seen no schema")
                tables = _tables_at_revision(conn)
                # the key must open this database: a backup restored with the wrong key is useless
                sealed = conn.execute(
                    select(S.secrets.c.sealed).where(S.secrets.c.name == _PROBE_SECRET)
                ).scalar()
                if sealed is not None:
                    custody.unseal(bytes(sealed), record_aad("secret", _PROBE_SECRET))
                writer.line(
                    {
                        "format": FORMAT,
                        "version": VERSION,
                        "revision": revision,
                        "created_at": time.time(),
                        "source": engine.dialect.name,
                        "tables": [t.name for t in tables],
                        "master_key": entry,
                    }
                )
                for table in tables:
                    n = 0
                    for row in conn.execution_options(yield_per=1000).execute(select(table)):
                        writer.line({"t": table.name, "r": _encode(table, row)})
                        n += 1
                    rows[table.name] = n
            writer.line({"end": True, "rows": rows, "sha256": writer.digest.hexdigest()})
            writer.close()
            fh.flush()
            os.fsync(fh.fileno())
        os.rename(tmp, out)
    except SQLAlchemyError as exc:
        raise TransportError(f"database {engine.url.render_as_string()}: backup failed ({exc})") from exc
    finally:
        tmp.unlink(missing_ok=True)
        engine.dispose()
    return BackupReport(out, revision, rows, key_note)


_Row = tuple[str, dict[str, Any], str]  # table name, columns as written, the line naming it


def _row(obj: dict[str, Any], where: str) -> _Row:
    name, columns = obj.get("t"), obj.get("r")
    if not isinstance(name, str) or not isinstance(columns, dict):
        shown = {k: type(v).__name__ for k, v in list(obj.items())[:4]}
        raise BadInputError(f"{where}: expected a row {{t: table, r: {{column: value}}}}, seen {shown}")
    return name, columns, where


def _decoded(path: Path, revision: object, rows: list[_Row]) -> list[tuple[str, dict[str, Any]]]:
    """Every row's decoded columns under its revision's tables, so nothing is written before
    every row decodes."""
    tables = _tables_of(path, revision)
    out = []
    for name, columns, where in rows:
        table = tables.get(name)
        if table is None:
            raise IntegrityError(f"backup {path}: expected the tables of revision {revision}, seen {name!r}")
        out.append((name, _decode(table, columns, where)))
    return out


def _read(path: Path) -> tuple[dict[str, Any], list[_Row], dict[str, int]]:
    """A backup's header, its rows (table, columns as written, line) and the trailer's row counts."""
    if not path.is_file():
        raise NotFoundError(f"backup {path}: expected a file, seen none")
    digest = hashlib.sha256()
    header: dict[str, Any] | None = None
    rows: list[_Row] = []
    trailer: dict[str, Any] | None = None
    try:
        with gzip.open(path, "rb") as fh:
            for number, raw in enumerate(fh, 1):
                if trailer is not None:
                    raise IntegrityError(f"backup {path}: expected nothing after the trailer, seen more")
                # a line that is no JSON object is refused here, naming it (BadInputError)
                obj = loads_object(raw, f"backup {path} line {number}")
                if header is None:
                    header = obj
                    if obj.get("format") != FORMAT or obj.get("version") != VERSION:
                        raise BadInputError(
                            f"backup {path}: expected {FORMAT} version {VERSION}, "
                            f"seen {obj.get('format')!r} {obj.get('version')!r}"
                        )
                elif obj.get("end"):
                    trailer = obj
                    continue
                else:
                    rows.append(_row(obj, f"backup {path} line {number}"))
                digest.update(raw)
    except (OSError, EOFError, ValueError, KeyError, TypeError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise IntegrityError(f"backup {path}: expected a complete backup, seen damaged data ({exc})") from exc
    if header is None or trailer is None:
        raise IntegrityError(f"backup {path}: expected a header and a trailer, seen a truncated file")
    if trailer.get("sha256") != digest.hexdigest():
        raise IntegrityError(
            f"backup {path}: expected sha256 {trailer.get('sha256')}, seen {digest.hexdigest()}"
        )
    return header, rows, dict(trailer.get("rows", {}))


def _master_key(path: Path, header: dict[str, Any]) -> tuple[str, list[bytes]] | None:
    """The master key file a backup's header holds, as written, and its keys decoded: the
    sealing key first, then the keys ``master-key rotate`` retired but did not drop yet
    (None if the key is kept elsewhere)."""
    entry = header.get("master_key", {})
    if entry.get("kind") != "file":
        return None
    written = str(entry.get("key") or "").strip()
    what = f"backup {path}: header field 'master_key.key'"
    lines = [line.strip() for line in written.splitlines() if line.strip()] or [""]
    return written, [decode_master_key(line, what) for line in lines]


def backup_master_key(path: Path) -> bytes | None:
    """The master key a backup holds (None if it was kept elsewhere)."""
    header, _, _ = _read(path)
    held = _master_key(path, header)
    return None if held is None else held[1][0]


def restore(db_url: str, path: Path, *, key_file: Path | None, custody: KeyCustody | None) -> BackupReport:
    """Restore *path* into the empty database *db_url*; write the backup's master key to
    *key_file* when it holds one (an existing different key file is refused)."""
    header, raw_rows, counts = _read(path)
    held = _master_key(path, header)
    rows = _decoded(path, header.get("revision"), raw_rows)
    key_line: str | None = None
    if held is not None:
        key_line, keys = held
        custody = MasterKeyCustody(keys[0], retired=keys[1:])
        if key_file is None:
            raise BadInputError(
                "restore: expected --master-key-file (where to write the backup's master key), seen none"
            )
        if key_file.exists() and key_file.read_text().strip() != key_line:
            raise BadInputError(
                f"--master-key-file {key_file}: expected none or the backup's key, seen another key"
            )
    elif custody is None:
        kind = header.get("master_key", {}).get("kind")
        raise BadInputError(
            f"backup {path}: holds no master key ({kind}): expected --master-key-file or "
            "--master-key naming the key it was made with"
        )
    probe = next((r for t, r in rows if t == "secrets" and r.get("name") == _PROBE_SECRET), None)
    if probe is not None:
        custody.unseal(bytes(probe.get("sealed") or b""), record_aad("secret", _PROBE_SECRET))
    engine = database.create_db_engine(db_url, pool_size=1)
    try:
        with engine.connect() as conn:
            if engine.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": 0x6C736B62})
            current = _revision(conn)
            if current is not None:
                non_empty = [
                    t.name
                    for t in _tables_at_revision(conn)
                    if t.name not in _SEEDED
                    and conn.execute(select(func.count()).select_from(t)).scalar_one()
                ]
                if current != header["revision"] or non_empty:
                    raise BadInputError(
                        f"database {db_url}: expected an empty database to restore into, seen schema "
                        f"{current} with data in {non_empty or 'none'}"
                    )
            command.upgrade(_alembic(conn), str(header["revision"]))
            at_revision = {t.name: t for t in _tables_at_revision(conn)}
            for name in sorted(_SEEDED & set(at_revision) & set(header["tables"])):
                conn.execute(delete(at_revision[name]))  # rows migrations seed; the backup has their state
            for name, values in rows:
                conn.execute(insert(at_revision[name]).values(**values))
            if engine.dialect.name == "postgresql":
                conn.execute(
                    text(
                        "SELECT setval(pg_get_serial_sequence('audit_log', 'id'), "
                        "COALESCE((SELECT max(id) FROM audit_log), 0) + 1, false)"
                    )
                )
            command.upgrade(_alembic(conn), "head")
            conn.commit()
    except SQLAlchemyError as exc:
        raise TransportError(f"database {engine.url.render_as_string()}: restore failed ({exc})") from exc
    finally:
        engine.dispose()
    if key_line is not None and key_file is not None and not key_file.exists():
        write_private_file_once(key_file, key_line + "\n")
    return BackupReport(path, str(header["revision"]), counts, "included" if key_line else "kept elsewhere")
