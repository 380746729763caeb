"""The hash-chained audit log: pure chain checks and ``broker audit verify`` on a real database."""

from __future__ import annotations

import argparse
import sqlite3

from brokerenv import Env

from layerseal.broker.audit import GENESIS, AuditRow, chain_hash, verify_chain
from layerseal.broker.server import audit_verify
from layerseal.cli import broker as broker_cli


def main(argv: list[str]) -> int:
    """``layerseal`` with only the broker commands (other CLI modules may be mid-edit)."""
    parser = argparse.ArgumentParser(prog="layerseal")
    broker_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def chain(n: int) -> list[AuditRow]:
    rows, prev = [], GENESIS
    for i in range(1, n + 1):
        content = {
            "seq": i,
            "at_ms": i,
            "actor": "a",
            "action": "release",
            "decision": "ok",
            "keys": "[]",
            "reason": "",
        }
        h = chain_hash(prev, content)
        rows.append(AuditRow(content, prev, h))
        prev = h
    return rows


def test_pure_chain_detects_edit_removal_and_truncation() -> None:
    rows = chain(5)
    assert verify_chain(rows, (5, rows[-1].row_hash)).ok
    edited = list(rows)
    edited[2] = AuditRow({**rows[2].content, "decision": "deny"}, rows[2].prev_hash, rows[2].row_hash)
    assert any("edited" in p for p in verify_chain(edited, (5, rows[-1].row_hash)).problems)
    removed = rows[:2] + rows[3:]
    assert not verify_chain(removed, (5, rows[-1].row_hash)).ok
    truncated = rows[:4]
    assert any("removed" in p for p in verify_chain(truncated, (5, rows[-1].row_hash)).problems)


def test_audit_verify_cli_detects_edited_and_removed_rows(env: Env, capsys: object) -> None:
    env.create_key()
    env.create_key()
    db = env.tmp / "broker.db"
    assert audit_verify(str(db)).ok
    assert main(["broker", "audit", "verify", "--db", str(db)]) == 0
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE audit_log SET reason = 'nothing to see' WHERE seq = 2")
    report = audit_verify(str(db))
    assert not report.ok and any("row 2" in p for p in report.problems)
    assert main(["broker", "audit", "verify", "--db", str(db), "--json"]) == 3
    with sqlite3.connect(db) as conn:
        conn.execute(
            "UPDATE audit_log SET reason = (SELECT reason FROM audit_log WHERE seq = 1) WHERE seq = 2"
        )
        conn.execute("DELETE FROM audit_log WHERE seq = 3")
    assert not audit_verify(str(db)).ok


def test_log_verifier_checks_long_chains_in_slices_and_keyed_heads() -> None:
    import os

    from layerseal.broker.audit import AuditKeys, Head, LogVerifier

    keys = AuditKeys(os.urandom(32))
    rows = chain(25_001)  # more than one 10,000-row slice
    last = rows[-1]
    head = Head(1, last.seq, last.row_hash, keys.head_mac(1, last.seq, last.row_hash))
    v = LogVerifier(keys, [head], [])
    for row in rows:
        v.row(row)
    report = v.finish()
    assert report.ok and report.rows == 25_001, report.problems
    edited = list(rows)
    edited[15_000] = AuditRow(
        {**rows[15_000].content, "actor": "b"}, rows[15_000].prev_hash, rows[15_000].row_hash
    )
    v = LogVerifier(keys, [head], [])
    for row in edited:
        v.row(row)
    problems = v.finish().problems
    assert len(problems) == 1 and "row 15001 hash" in problems[0] and "edited" in problems[0], problems
    forged = Head(1, last.seq, last.row_hash, AuditKeys(os.urandom(32)).head_mac(1, last.seq, last.row_hash))
    v = LogVerifier(keys, [forged], [])
    for row in rows:
        v.row(row)
    assert any("MAC" in p for p in v.finish().problems)
