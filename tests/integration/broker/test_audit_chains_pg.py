"""Audit chains on PostgreSQL: a writer holding its chain's lock never stalls another replica."""

from __future__ import annotations

from pathlib import Path

import pytest
from brokerproc import postgres_available, postgres_schema

from layerseal.broker.server import audit_verify, open_broker

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not postgres_available(), reason="PostgreSQL at 127.0.0.1:5432 is not reachable"),
]


def test_an_open_audit_transaction_of_one_replica_does_not_block_another(tmp_path: Path) -> None:
    import psycopg

    key = tmp_path / "master.key"
    with postgres_schema() as url:
        first = open_broker(url, master_key_file=key, create_master_key=True)
        # the second replica gives up on any lock it waits for more than 2 s
        second = open_broker(
            url.replace("search_path%3D", "lock_timeout%3D2000%20-csearch_path%3D"), master_key_file=key
        )
        try:
            first.audit.record("token-revoke", "ok", actor="first", reason="claims chain 1")
            second.audit.record("token-revoke", "ok", actor="second", reason="claims its own chain")
            schema = url.rsplit("%3D", 1)[1]
            with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=test") as blocker:
                blocker.execute(f'SET search_path TO "{schema}"')
                # an audit transaction of the first replica in flight: its head row locked
                blocker.execute("SELECT seq FROM audit_head WHERE id = 1 FOR UPDATE").fetchone()
                for i in range(5):
                    second.audit.record(
                        "token-revoke", "ok", actor="second", reason=f"while chain 1 is locked {i}"
                    )
                blocker.rollback()
            first.audit.record("token-revoke", "ok", actor="first", reason="after")
        finally:
            for b in (first, second):
                b.close()
                b.store.dispose()
        heads = {
            h.chain: h.seq for h in open_broker(url, master_key_file=key, migrate=False).store.audit_heads()
        }
        assert heads == {1: 2, 2: 6}
        report = audit_verify(url, master_key_file=key)
        assert report.ok and report.chains == 2 and report.rows == 8, report.problems
