"""The release path's read pool on the real PostgreSQL: no pre-ping, so a dropped
connection must be retried once, transparently."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from brokerproc import postgres_available, postgres_schema
from sqlalchemy import event

from layerseal.broker.server import open_broker
from layerseal.broker.service import Broker

pytestmark = pytest.mark.integration


@pytest.fixture
def pg_broker(tmp_path: Path) -> Iterator[Broker]:
    if not postgres_available():
        pytest.skip("PostgreSQL at 127.0.0.1:5432 is not reachable")
    with postgres_schema() as url:
        broker = open_broker(url, master_key_file=tmp_path / "master.key", create_master_key=True)
        try:
            yield broker
        finally:
            broker.close()
            broker.store.dispose()


def _backend_pid(broker: Broker) -> int:
    with broker.store._autocommit() as conn:  # the pooled connection the next read will get
        pid: int = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        return pid


def test_read_after_the_server_dropped_the_connection_is_retried(pg_broker: Broker) -> None:
    store = pg_broker.store
    assert store.release_snapshot(["k1"], jti="t1").keys == {}
    pid = _backend_pid(pg_broker)
    assert store._reads is not None and store._reads is not store.engine
    disconnects: list[Any] = []
    event.listen(store._reads, "handle_error", lambda ctx: disconnects.append(ctx.is_disconnect))
    with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=test", autocommit=True) as admin:
        assert admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)
    snap = store.release_snapshot(["k1"], jti="t1")
    assert snap.keys == {} and snap.revoked is False
    assert disconnects == [True]  # the dead connection was hit once, then the read ran again
    assert _backend_pid(pg_broker) != pid


def test_reads_do_not_hold_a_transaction_open(pg_broker: Broker) -> None:
    pg_broker.store.release_snapshot(["k1"], jti="t1")
    pid = _backend_pid(pg_broker)
    with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=test") as admin:
        state = admin.execute("SELECT state FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
    assert state == ("idle",)  # autocommit: not "idle in transaction"
