"""Bootstrap that is safe when replicas start together: one master key file, one admin token."""

from __future__ import annotations

import threading
from pathlib import Path

from layerseal.broker.bootstrap import ensure_admin_token
from layerseal.broker.masterkey import load_master_key
from layerseal.broker.server import open_broker
from layerseal.broker.service import ADMIN_TENANT
from layerseal.broker.store import ApiTokenRow
from layerseal.broker.tokens import hash_secret, new_api_token


def _race(path: Path, n: int) -> tuple[list[bytes], list[BaseException]]:
    barrier = threading.Barrier(n)
    keys: list[bytes] = []
    errors: list[BaseException] = []

    def start() -> None:
        barrier.wait()
        try:
            keys.append(load_master_key(path, create=True, environ={}))
        except BaseException as exc:  # an empty or half-written file read is a failure too
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return keys, errors


def test_master_key_created_once_by_racing_starters(tmp_path: Path) -> None:
    for round_no in range(20):
        path = tmp_path / f"r{round_no}" / "master.key"
        keys, errors = _race(path, 8)
        assert not errors, errors[0]
        assert len(set(keys)) == 1 and len(keys) == 8
        assert [p.name for p in path.parent.iterdir()] == ["master.key"]  # no temporary left


def test_replicas_with_their_own_token_files_store_one_admin_token(tmp_path: Path) -> None:
    db = str(tmp_path / "b.db")
    first = open_broker(db, create_master_key=True)
    second = open_broker(db)
    try:
        ensure_admin_token(first, tmp_path / "a.token")
        ensure_admin_token(second, tmp_path / "b.token")  # another machine, another path
        assert ensure_admin_token(second, None) is None
        admins = [t for t in first.store.list_api_tokens(None) if t.tenant == ADMIN_TENANT]
        assert len(admins) == 1
        assert (tmp_path / "a.token").read_text().startswith(f"lsk_{admins[0].token_id}_")
        assert not (tmp_path / "b.token").exists()  # no file for a token it does not hold
    finally:
        for b in (first, second):
            b.close()
            b.store.dispose()


def test_a_start_killed_between_commit_and_link_is_completed_by_the_next(tmp_path: Path) -> None:
    broker = open_broker(str(tmp_path / "b.db"), create_master_key=True)
    try:
        new = new_api_token()
        target = tmp_path / "admin.token"
        pending = tmp_path / "admin.token.pending-0123456789ab"
        pending.write_text(new.token + "\n")
        pending.chmod(0o600)
        row = ApiTokenRow(
            new.token_id, ADMIN_TENANT, ("admin",), hash_secret(new.token), "bootstrap", 0.0, None
        )
        assert broker.store.bootstrap_admin_token(row)  # ...and the process died here
        ensure_admin_token(broker, target)
        assert target.read_text().strip() == new.token
        assert not pending.exists()
        assert len([t for t in broker.store.list_api_tokens(None) if t.tenant == ADMIN_TENANT]) == 1
    finally:
        broker.close()
        broker.store.dispose()
