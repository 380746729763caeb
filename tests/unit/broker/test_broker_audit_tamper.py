"""The keyed audit log: truncation and rewriting are caught, with and without a checkpoint file.

An attacker here has full write access to the database but not the master key: rows are
deleted or recomputed with the public chain function, and the head record moved to match.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
from pathlib import Path

import pytest
from brokerenv import Env

from layerseal.broker.audit import chain_hash, genesis
from layerseal.broker.server import audit_verify, open_broker
from layerseal.cli import broker as broker_cli
from layerseal.errors import BadInputError

ROW_COLUMNS = ("seq", "at_ms", "actor", "action", "decision", "tenant", "keys", "evidence_digest")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="layerseal")
    broker_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def _rows(db: Path, chain: int = 1) -> list[dict[str, object]]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return [
            dict(r) for r in conn.execute("SELECT * FROM audit_log WHERE chain = ? ORDER BY seq", (chain,))
        ]


def _checkpoint(db: Path, out: Path) -> None:
    assert main(["broker", "audit", "checkpoint", "--db", str(db), "--out", str(out)]) == 0


def _verify(db: Path, *checkpoints: Path) -> int:
    argv = ["broker", "audit", "verify", "--db", str(db)]
    for cp in checkpoints:
        argv += ["--checkpoint", str(cp)]
    return main(argv)


@pytest.fixture
def db(env: Env) -> Path:
    for _ in range(4):
        env.create_key()
    return env.tmp / "broker.db"


def test_intact_log_verifies_with_and_without_a_checkpoint(env: Env, db: Path) -> None:
    cp = env.tmp / "cp.json"
    _checkpoint(db, cp)
    doc = json.loads(cp.read_text())
    assert doc["payload"]["chains"] and doc["signature"]
    assert _verify(db) == 0
    assert _verify(db, cp) == 0
    env.create_key()  # the log grows past the checkpoint: still consistent with it
    assert _verify(db, cp) == 0
    assert audit_verify(str(db), checkpoints=[cp]).ok


def test_truncation_with_the_head_moved_is_detected(env: Env, db: Path) -> None:
    cp = env.tmp / "cp.json"
    _checkpoint(db, cp)
    rows = _rows(db)
    keep = rows[-3]
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM audit_log WHERE chain = 1 AND seq > ?", (keep["seq"],))
        conn.execute(
            "UPDATE audit_head SET seq = ?, row_hash = ? WHERE id = 1", (keep["seq"], keep["row_hash"])
        )
    report = audit_verify(str(db))
    assert not report.ok
    assert any("head" in p and "MAC" in p for p in report.problems), report.problems
    assert _verify(db, cp) == 3
    report = audit_verify(str(db), checkpoints=[cp])
    assert any("removed" in p for p in report.problems), report.problems


def test_truncation_to_a_replayed_old_head_is_caught_by_the_checkpoint(env: Env, db: Path) -> None:
    with sqlite3.connect(db) as conn:
        old_head = conn.execute("SELECT seq, row_hash, mac FROM audit_head WHERE id = 1").fetchone()
    env.create_key()
    env.create_key()
    cp = env.tmp / "cp.json"
    _checkpoint(db, cp)
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM audit_log WHERE chain = 1 AND seq > ?", (old_head[0],))
        conn.execute("UPDATE audit_head SET seq = ?, row_hash = ?, mac = ? WHERE id = 1", old_head)
        conn.execute("DELETE FROM audit_checkpoints")  # the copy in the database goes too
    # a head the attacker saw earlier carries a valid MAC: only the kept checkpoint shows the cut
    assert _verify(db, cp) == 3
    problems = audit_verify(str(db), checkpoints=[cp]).problems
    assert any("chain 1" in p and "removed" in p for p in problems), problems


def test_full_rewrite_is_detected(env: Env, db: Path) -> None:
    cp = env.tmp / "cp.json"
    _checkpoint(db, cp)
    rows = _rows(db)
    prev = genesis(1)
    with sqlite3.connect(db) as conn:
        for row in rows:
            content = dict(row)
            if content["action"] == "key-create":
                content["reason"] = "rewritten"
            new_hash = chain_hash(prev, content)
            conn.execute(
                "UPDATE audit_log SET reason = ?, prev_hash = ?, row_hash = ? WHERE chain = 1 AND seq = ?",
                (content["reason"], prev, new_hash, row["seq"]),
            )
            prev = new_hash
        conn.execute("UPDATE audit_head SET row_hash = ? WHERE id = 1", (prev,))
    report = audit_verify(str(db))
    assert not report.ok  # every link is consistent, but the head's MAC needs the key
    assert any("MAC" in p for p in report.problems), report.problems
    assert _verify(db, cp) == 3
    problems = audit_verify(str(db), checkpoints=[cp]).problems
    assert any("rewritten" in p for p in problems), problems


def test_a_forged_checkpoint_file_is_refused(env: Env, db: Path) -> None:
    cp = env.tmp / "cp.json"
    _checkpoint(db, cp)
    doc = json.loads(cp.read_text())
    doc["payload"]["chains"][0]["seq"] = 1
    cp.write_text(json.dumps(doc))
    problems = audit_verify(str(db), checkpoints=[cp]).problems
    assert any("signature" in p for p in problems), problems
    assert _verify(db, cp) == 3


def test_writer_does_not_extend_a_tampered_head(env: Env, db: Path) -> None:
    """Appending after a moved head would bless the cut with a fresh MAC: the writer must
    leave that chain for ``verify`` to report and continue on another."""
    rows = _rows(db)
    keep = rows[-2]
    env.broker.close()  # the running writer ends its lease
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM audit_log WHERE chain = 1 AND seq > ?", (keep["seq"],))
        conn.execute(
            "UPDATE audit_head SET seq = ?, row_hash = ? WHERE id = 1", (keep["seq"], keep["row_hash"])
        )
    other = open_broker(str(db))
    try:
        other.audit.record("token-revoke", "ok", actor="test", reason="after the cut")
    finally:
        other.close()
        other.store.dispose()
    assert _rows(db, 1)[-1]["seq"] == keep["seq"]  # nothing appended to the cut chain
    assert [r["reason"] for r in _rows(db, 2)] == ["after the cut"]
    problems = audit_verify(str(db)).problems
    assert problems and all("chain 1" in p for p in problems), problems


def test_two_writers_use_two_chains_and_the_checkpoint_covers_both(env: Env, db: Path) -> None:
    other = open_broker(str(db))
    try:
        for i in range(3):
            other.audit.record("token-revoke", "ok", actor="replica-2", reason=f"r{i}")
            env.create_key()
    finally:
        other.close()
        other.store.dispose()
    with sqlite3.connect(db) as conn:
        chains = {c for (c,) in conn.execute("SELECT DISTINCT chain FROM audit_log")}
    assert chains == {1, 2}
    cp = env.tmp / "cp.json"
    _checkpoint(db, cp)
    assert {c["chain"] for c in json.loads(cp.read_text())["payload"]["chains"]} == {1, 2}
    assert _verify(db, cp) == 0
    with sqlite3.connect(db) as conn:  # a whole chain removed, head and all
        conn.execute("DELETE FROM audit_log WHERE chain = 2")
        conn.execute("DELETE FROM audit_head WHERE id = 2")
    problems = audit_verify(str(db), checkpoints=[cp]).problems
    assert any("chain 2" in p for p in problems), problems


def test_verify_without_the_master_key_is_a_clear_error(env: Env, db: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.db"
    with sqlite3.connect(db) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
    with pytest.raises(BadInputError, match="master key") as exc:
        _verify(copy)
    assert exc.value.exit_code == 2


def test_a_single_chain_database_upgrades_and_still_verifies(tmp_path: Path) -> None:
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import text

    from layerseal.broker import database

    db = tmp_path / "old.db"
    engine = database.create_db_engine(str(db))
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(database.__file__).parent / "migrations"))
    with engine.connect() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0002")
        conn.commit()
        prev = genesis(1)
        for seq in (1, 2, 3):  # rows as the single-chain broker wrote them
            content = {"seq": seq, "at_ms": seq, "actor": "a", "action": "release", "decision": "ok"}
            content |= {"tenant": "t", "keys": "[]", "evidence_digest": None, "measurement": None}
            content["reason"] = ""
            row_hash = chain_hash(prev, content)
            conn.execute(
                text(
                    "INSERT INTO audit_log (seq, at_ms, actor, action, decision, tenant, keys, reason, "
                    "prev_hash, row_hash) VALUES (:seq, :at_ms, :actor, :action, :decision, :tenant, :keys, "
                    ":reason, :p, :h)"
                ),
                dict(content, p=prev, h=row_hash),
            )
            prev = row_hash
        conn.execute(text("UPDATE audit_head SET seq = 3, row_hash = :h WHERE id = 1"), {"h": prev})
        conn.commit()
    engine.dispose()
    broker = open_broker(str(db), create_master_key=True)  # migrates; adopts the old head
    try:
        broker.audit.record("token-revoke", "ok", actor="new", reason="after the upgrade")
    finally:
        broker.close()
        broker.store.dispose()
    assert [r["seq"] for r in _rows(db)] == [1, 2, 3, 4]
    report = audit_verify(str(db))
    assert report.ok and report.rows == 4, report.problems


def test_writers_store_chained_checkpoints_and_a_removed_one_is_noticed(tmp_path: Path) -> None:
    from layerseal.broker.auditlog import ChainAppender, audit_keys

    broker = open_broker(str(tmp_path / "b.db"), create_master_key=True)
    try:
        keys = audit_keys(broker.store, broker.custody)
        assert keys is not None
        ticks = iter(range(0, 10_000, 10))
        appender = ChainAppender(broker.store, keys, checkpoint_interval=15, clock=lambda: next(ticks))
        entry = broker.audit.entry("token-revoke", "ok", actor="t")
        for _ in range(6):  # the clock moves 10 s per call: a checkpoint every other batch
            appender.append_batch([entry])
        appender.close()
    finally:
        broker.close()
        broker.store.dispose()
    db = tmp_path / "b.db"
    with sqlite3.connect(db) as conn:
        numbers = [n for (n,) in conn.execute("SELECT number FROM audit_checkpoints ORDER BY number")]
    assert len(numbers) >= 3 and numbers == list(range(1, len(numbers) + 1))
    report = audit_verify(str(db))
    assert report.ok and report.checkpoints == len(numbers), report.problems
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM audit_checkpoints WHERE number = 2")
    problems = audit_verify(str(db)).problems
    assert any("checkpoints removed" in p for p in problems), problems


def test_a_head_reset_to_no_mac_is_not_adopted_by_the_next_start(env: Env, db: Path) -> None:
    rows = _rows(db)
    keep = rows[-3]
    env.broker.close()
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM audit_log WHERE chain = 1 AND seq > ?", (keep["seq"],))
        conn.execute(
            "UPDATE audit_head SET seq = ?, row_hash = ?, mac = NULL WHERE id = 1",
            (keep["seq"], keep["row_hash"]),
        )
    other = open_broker(str(db))
    other.close()
    other.store.dispose()
    problems = audit_verify(str(db)).problems
    assert any("chain 1 head" in p and "MAC" in p for p in problems), problems
