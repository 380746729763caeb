"""``layerseal broker migrate|backup|restore|master-key rotate``: operating a broker's
database and master key.  Registered by ``cli.broker``."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from layerseal.cli._subcommands import command_group
from layerseal.errors import BadInputError


def key_file_of(args: argparse.Namespace) -> Path | None:
    from layerseal.broker.server import default_master_key_file

    if args.master_key_file:
        return Path(args.master_key_file)
    return default_master_key_file(args.db)


def _custody(args: argparse.Namespace) -> Any:
    from layerseal.broker.masterkey import ENV_VAR, open_custody

    key_file = key_file_of(args)
    if key_file is None and args.master_key is None and not os.environ.get(ENV_VAR):
        raise BadInputError(
            f"--master-key-file: expected the broker's master key file for {args.db.split('@')[-1]} "
            f"(a database URL has no directory beside which to find it), seen none; or ${ENV_VAR}"
        )
    return open_custody(key_file, args.master_key)


def _migrate(args: argparse.Namespace) -> int:
    from alembic.runtime.migration import MigrationContext

    from layerseal.broker import database

    engine = database.create_db_engine(args.db, pool_size=1)
    try:
        with engine.connect() as conn:
            before = MigrationContext.configure(conn).get_current_revision()
        database.migrate(engine)
        with engine.connect() as conn:
            after = MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
    if before == after:
        print(f"database schema at revision {after}: up to date")
    else:
        print(f"database schema migrated from revision {before or 'none'} to {after}")
    return 0


def _backup(args: argparse.Namespace) -> int:
    from layerseal.broker.backup import backup

    report = backup(
        args.db,
        Path(args.out),
        _custody(args),
        key_file=key_file_of(args),
        include_master_key=not args.without_master_key,
    )
    total = sum(report.rows.values())
    print(
        f"backup {report.path}: schema {report.revision}, {total} rows in {len(report.rows)} tables, "
        f"master key {report.master_key}"
    )
    if report.master_key == "included":
        print("the file holds the master key: keep it as safe as the key itself (mode 0600)")
    return 0


def _restore(args: argparse.Namespace) -> int:
    from layerseal.broker.backup import backup_master_key, restore
    from layerseal.broker.masterkey import open_custody

    key_file = key_file_of(args)
    custody = None
    if backup_master_key(Path(args.backup)) is None:
        custody = open_custody(key_file, args.master_key)
    report = restore(args.db, Path(args.backup), key_file=key_file, custody=custody)
    total = sum(report.rows.values())
    where = f", master key written to {key_file}" if report.master_key == "included" else ""
    print(f"restored {total} rows (schema {report.revision}) into {args.db.split('@')[-1]}{where}")
    return 0


def _rotate_master_key(args: argparse.Namespace) -> int:
    from layerseal.broker.rekey import rotate_master_key

    key_file = key_file_of(args)
    if key_file is None:
        raise BadInputError("--master-key-file: expected the key file to rotate, seen none")
    report = rotate_master_key(args.db, key_file, drop_retired=args.drop_retired)
    if args.drop_retired:
        print(f"retired master keys dropped; {report.resealed} record(s) resealed under {report.new_key_id}")
    else:
        print(
            f"master key rotated: {report.resealed} sealed record(s) now under key {report.new_key_id}; "
            f"{report.retired} retired key(s) stay in {key_file} to open what running brokers still seal: "
            "restart every broker, then run 'broker master-key rotate --drop-retired'"
        )
    return 0


def _db_args(p: argparse.ArgumentParser, *, key: bool = True) -> None:
    from layerseal.cli import _broker_env as broker_env

    db = os.environ.get(broker_env.DB_ENV)
    p.add_argument(
        "--db",
        required=db is None,
        default=db,
        help="SQLite path/URL or postgresql://... ($LAYERSEAL_BROKER_DB)",
    )
    broker_env.with_epilog(p, broker_env.SERVER_ENV)
    if key:
        p.add_argument(
            "--master-key-file",
            default=broker_env.default_master_key_file(),
            help="master key file (default: beside a SQLite database; required for PostgreSQL "
            "unless $LAYERSEAL_MASTER_KEY or --master-key)",
        )
        p.add_argument("--master-key", help="master key in a PKCS#11 token (pkcs11: URI, as for serve)")


def register_ops(sub: Any) -> None:
    """Add migrate, backup, restore and master-key to ``broker``."""
    p = sub.add_parser(
        "migrate", help="bring the database schema to this version (serve also does it at start)"
    )
    _db_args(p, key=False)
    p.set_defaults(func=_migrate)

    p = sub.add_parser(
        "backup",
        help="consistent backup of the database and master key, safe while brokers serve",
    )
    _db_args(p)
    p.add_argument("--out", required=True, help="backup file to create (mode 0600)")
    p.add_argument(
        "--without-master-key", action="store_true", help="leave the master key out (keep it apart yourself)"
    )
    p.set_defaults(func=_backup)

    p = sub.add_parser(
        "restore",
        help="restore a backup into an empty database (SQLite or PostgreSQL)",
    )
    _db_args(p)
    p.add_argument("backup", help="file written by 'broker backup'")
    p.set_defaults(func=_restore)

    actions = command_group(sub, "master-key", "master key operations")
    p = actions.add_parser(
        "rotate",
        help="new master key; every sealed key and secret resealed in one transaction (crash-safe)",
    )
    _db_args(p, key=False)
    p.add_argument(
        "--master-key-file",
        default=os.environ.get("LAYERSEAL_MASTER_KEY_FILE") or None,
        help="the key file to rotate (default: beside a SQLite database; $LAYERSEAL_MASTER_KEY_FILE)",
    )
    p.add_argument(
        "--drop-retired",
        action="store_true",
        help="after every broker restarted: reseal what is left under retired keys, drop them from the file",
    )
    p.set_defaults(func=_rotate_master_key)
