"""``broker master-key rotate``: a new master key, every sealed record resealed under it.

Crash-safe by construction: there are only two writes, each atomic.

1. The key file is replaced (temporary file, fsync, rename) by ``NEW`` followed by the
   old key(s) on later lines.  Later lines are *retired*: they open what was sealed
   under them and never seal.  A broker started from this file opens every record.
2. One database transaction reseals every key version and sealed secret not yet under
   ``NEW``.

A kill before 1 changes nothing; between 1 and 2, or during 2 (rolled back), every record
is under a key the file holds; running the command again finishes the job.  Brokers still
running with the old key keep sealing under it, which the retired line keeps openable.
Once every broker has been restarted, ``--drop-retired`` reseals anything still under a
retired key and removes those lines.
"""

from __future__ import annotations

import base64
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.exc import SQLAlchemyError

from layerseal.broker import database
from layerseal.broker import schema as S
from layerseal.broker.custody import MasterKeyCustody, master_key_id, record_aad, sealed_key_id
from layerseal.broker.masterkey import KEY_SIZE, key_file_lines, read_master_key_file
from layerseal.errors import BadInputError, TransportError


@dataclass(frozen=True)
class RekeyReport:
    new_key_id: str
    resealed: int
    retired: int  # keys left on the file's later lines


def _write_key_file(path: Path, keys: list[bytes]) -> None:
    """Replace *path* atomically (mode 0600) with *keys*, one base64 line each."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write("".join(base64.b64encode(k).decode() + "\n" for k in keys))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def reseal_all(db_url: str, custody: MasterKeyCustody) -> int:
    """Reseal, in one transaction, every record not sealed under *custody*'s current key."""
    engine = database.create_db_engine(db_url, pool_size=1)
    kv, sec = S.key_versions, S.secrets
    postgres = engine.dialect.name == "postgresql"
    n = 0
    try:
        with engine.begin() as conn:
            q_keys = select(kv.c.key_id, kv.c.version, kv.c.sealed_kek)
            q_secrets = select(sec.c.name, sec.c.sealed)
            if postgres:
                q_keys, q_secrets = q_keys.with_for_update(), q_secrets.with_for_update()
            for row in conn.execute(q_keys).all():
                sealed = bytes(row.sealed_kek)
                if sealed_key_id(sealed) == custody.key_id:
                    continue
                aad = record_aad("kek", row.key_id, row.version)
                conn.execute(
                    update(kv)
                    .where(kv.c.key_id == row.key_id, kv.c.version == row.version)
                    .values(sealed_kek=custody.seal(custody.unseal(sealed, aad), aad))
                )
                n += 1
            for srow in conn.execute(q_secrets).all():
                sealed = bytes(srow.sealed)
                if sealed_key_id(sealed) == custody.key_id:
                    continue
                aad = record_aad("secret", srow.name)
                conn.execute(
                    update(sec)
                    .where(sec.c.name == srow.name)
                    .values(sealed=custody.seal(custody.unseal(sealed, aad), aad))
                )
                n += 1
    except SQLAlchemyError as exc:
        raise TransportError(f"database {engine.url.render_as_string()}: reseal failed ({exc})") from exc
    finally:
        engine.dispose()
    return n


def rotate_master_key(db_url: str, key_file: Path, *, drop_retired: bool = False) -> RekeyReport:
    """Rotate the master key in *key_file* (see the module docstring for the steps)."""
    if os.environ.get("LAYERSEAL_MASTER_KEY"):
        raise BadInputError(
            "master key rotation: expected the key in a file, seen $LAYERSEAL_MASTER_KEY set "
            "(rotate the file, then update the variable)"
        )
    read_master_key_file(key_file)  # existence and mode 0600
    keys = key_file_lines(key_file, f"master key file {key_file}")
    if drop_retired:
        current, retired = keys[0], keys[1:]
    else:
        current, retired = secrets.token_bytes(KEY_SIZE), keys
        _write_key_file(key_file, [current, *retired])
    custody = MasterKeyCustody(current, retired=retired)
    n = reseal_all(db_url, custody)
    if drop_retired and retired:
        _write_key_file(key_file, [current])
        retired = []
    return RekeyReport(master_key_id(current).hex(), n, len(retired))
