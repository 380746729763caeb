"""The bootstrap admin token, created exactly once however many replicas start together.

The database decides: the ``bootstrap`` row and the token are inserted in one transaction,
so of replicas racing on a fresh deployment exactly one stores a token.  The winner's
secret is written to a private pending file *before* that transaction and linked into
place after it, so a token is never stored whose secret nobody holds: a crash between
the two leaves the pending file, which the next start links into place.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import stat
import time
from pathlib import Path

from sqlalchemy.exc import IntegrityError as SAIntegrityError

from layerseal.broker.masterkey import write_private_file_once
from layerseal.broker.service import ADMIN_TENANT, Broker
from layerseal.broker.store import ApiTokenRow
from layerseal.broker.tokens import hash_secret, new_api_token, split_api_token
from layerseal.errors import BadInputError, DeniedError

log = logging.getLogger("layerseal.broker")

BOOTSTRAP_NAME = "admin-token"
_STALE_PENDING = 600.0  # seconds after which an unregistered pending file is an aborted start


def ensure_admin_token(broker: Broker, admin_token_file: Path | None) -> str | None:
    """Make sure an admin can log in; returns a new token to print once, if one was made.

    With a token file: use the token in it (registering it if new) or, if the file does
    not exist and the deployment has no bootstrap token yet, create one and write it there
    with mode 0600.  Without: create and return a token only if the deployment has none.
    """
    if admin_token_file is None:
        new = new_api_token()
        if not _store_bootstrap(broker, new.token_id, new.token):
            return None
        _audit_bootstrap(broker, new.token_id)
        return new.token
    _recover_pending(broker, admin_token_file)
    if admin_token_file.exists():
        _register_file_token(broker, admin_token_file)
        return None
    existing = broker.store.bootstrap_value(BOOTSTRAP_NAME)
    if existing is not None:
        log.warning(
            "admin token: the deployment already has its bootstrap admin token (id %s) and "
            "%s does not exist; not creating another (use an existing admin token)",
            existing,
            admin_token_file,
        )
        return None
    new = new_api_token()
    pending = admin_token_file.with_name(f"{admin_token_file.name}.pending-{secrets.token_hex(6)}")
    if not write_private_file_once(pending, new.token + "\n"):
        raise BadInputError(f"admin token pending file {pending}: expected none, seen one")
    try:
        won = _store_bootstrap(broker, new.token_id, new.token)
        if won:
            _link_into_place(pending, admin_token_file)
        # else another replica won; if it shares this path, its file appears there
    finally:
        pending.unlink(missing_ok=True)
    if won:
        _audit_bootstrap(broker, new.token_id)
    return None


def _store_bootstrap(broker: Broker, token_id: str, token: str) -> bool:
    row = ApiTokenRow(
        token_id, ADMIN_TENANT, ("admin",), hash_secret(token), "bootstrap", broker.clock(), None
    )
    return broker.store.bootstrap_admin_token(row)


def _audit_bootstrap(broker: Broker, token_id: str) -> None:
    broker.audit.record("token-create", "ok", actor="bootstrap", reason=f"token {token_id} scopes admin")


def _link_into_place(pending: Path, target: Path) -> None:
    try:
        os.link(pending, target)
    except FileExistsError:
        if target.read_text().strip() != pending.read_text().strip():
            raise BadInputError(
                f"admin token file {target}: expected the bootstrap token just stored, seen another "
                "(written by hand meanwhile?)"
            ) from None
    except FileNotFoundError:
        pass  # a replica starting meanwhile recovered the pending file and linked it already


def _recover_pending(broker: Broker, target: Path) -> None:
    """Link a pending token whose bootstrap committed (the writer crashed before linking)."""
    if not target.parent.is_dir():
        return
    bootstrap_id = None
    for pending in target.parent.glob(f"{target.name}.pending-*"):
        try:
            token = pending.read_text().strip()
            age = time.time() - pending.stat().st_mtime
        except FileNotFoundError:
            continue  # its writer finished meanwhile
        if bootstrap_id is None:
            bootstrap_id = broker.store.bootstrap_value(BOOTSTRAP_NAME) or ""
        try:
            registered = split_api_token(token) == bootstrap_id
        except Exception:
            registered = False
        if registered:
            if not target.exists():
                _link_into_place(pending, target)
            pending.unlink(missing_ok=True)
        elif age > _STALE_PENDING:
            pending.unlink(missing_ok=True)  # its transaction never committed


def _register_file_token(broker: Broker, path: Path) -> None:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise DeniedError(f"admin token file {path}: expected mode 0600, seen {oct(mode & 0o777)}")
    token = path.read_text().strip()
    token_id = split_api_token(token)
    store = broker.store
    if store.get_api_token(token_id) is None:
        row = ApiTokenRow(
            token_id, ADMIN_TENANT, ("admin",), hash_secret(token), "bootstrap", broker.clock(), None
        )
        # a token the operator put there: the bootstrap token if there is none yet, else another admin
        if not store.bootstrap_admin_token(row):
            # (or a replica sharing this file registered it at the same moment)
            with contextlib.suppress(SAIntegrityError):
                store.insert_api_token(row)
    row_now = store.get_api_token(token_id)
    if row_now is None or row_now.tenant != ADMIN_TENANT or row_now.token_hash != hash_secret(token):
        raise BadInputError(f"admin token file {path}: expected an admin token, seen another")
