"""Environment variables of ``layerseal broker`` commands: their names, defaults and the
``--help`` epilogs that list them (one place, so help and README cannot drift apart)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

DB_ENV = "LAYERSEAL_BROKER_DB"
MASTER_KEY_FILE_ENV = "LAYERSEAL_MASTER_KEY_FILE"
URL_ENV = "LAYERSEAL_BROKER_URL"
TOKEN_ENV = "LAYERSEAL_BROKER_TOKEN"  # noqa: S105 -- a variable name
DEFAULT_DB = "layerseal-broker.db"
DEFAULT_URL = "http://127.0.0.1:8080"

SERVER_ENV = f"""environment:
  {DB_ENV}        --db (default {DEFAULT_DB}; postgresql://USER@HOST/DB for PostgreSQL)
  {MASTER_KEY_FILE_ENV}  --master-key-file (SQLite default: DB.master-key beside the database;
                             PostgreSQL: required, a database URL has no directory)
  LAYERSEAL_MASTER_KEY       the master key itself (base64 of 32 bytes), instead of a file
  LAYERSEAL_PKCS11_MODULE    PKCS#11 library for --master-key pkcs11:... (default: SoftHSM2's)
files:
  the first start writes the bootstrap admin token beside the master key file
  (broker.master-key -> broker.admin-token; broker.db.master-key -> broker.db.admin-token), 0600,
  once per database: other replicas and restarts reuse it"""

CLIENT_ENV = f"""environment:
  {URL_ENV}    --url (default {DEFAULT_URL}: 'broker serve' listens on plain HTTP 127.0.0.1:8080
                          unless --listen/--tls-cert say otherwise)
  {TOKEN_ENV}  the API token, instead of --token-file (the admin token for admin commands)"""


def default_db() -> str:
    return os.environ.get(DB_ENV) or DEFAULT_DB


def default_master_key_file() -> str | None:
    return os.environ.get(MASTER_KEY_FILE_ENV) or None


def admin_token_beside(key_file: Path) -> Path:
    """``X.master-key`` -> ``X.admin-token``; any other name gets ``.admin-token`` appended."""
    stem = key_file.name.removesuffix(".master-key")
    return key_file.with_name(stem + ".admin-token")


def with_epilog(p: argparse.ArgumentParser, text: str) -> None:
    p.epilog = text if not p.epilog else f"{p.epilog}\n{text}"
    p.formatter_class = argparse.RawDescriptionHelpFormatter
