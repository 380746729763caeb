"""Audit group commit and the release-path caches: many releases share a commit, every one
keeps its own durable, chained audit row, and rule or key changes apply immediately."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from brokerenv import Env
from test_broker_audit_chain import main
from test_broker_rcar_api import rcar

from layerseal.broker.groupcommit import AuditCommitter
from layerseal.broker.server import audit_verify, open_broker
from layerseal.errors import LayersealError
from layerseal.kbs.packets import ResourcePath
from layerseal.kbs.problems import ForbiddenError, PolicyDeniedError, UnauthenticatedError


class SlowLog:
    """A fake chain: appends take a while, so concurrent rows must share transactions."""

    def __init__(self, poison: str | None = None) -> None:
        self.rows: list[str] = []
        self.batches: list[int] = []
        self.poison = poison
        self.lock = threading.Lock()

    def append(self, entries: Sequence[Mapping[str, Any]]) -> list[int]:
        time.sleep(0.005)
        if any(e["reason"] == self.poison for e in entries):
            raise RuntimeError("refused row")
        with self.lock:
            start = len(self.rows)
            self.rows.extend(str(e["reason"]) for e in entries)
            self.batches.append(len(entries))
            return list(range(start + 1, start + 1 + len(entries)))


def test_committer_batches_concurrent_rows_and_returns_each_seq() -> None:
    log = SlowLog()
    committer = AuditCommitter(log.append, idle_exit=0.2)
    seqs: dict[int, int] = {}

    def worker(i: int) -> None:
        seqs[i] = committer.append({"reason": str(i)})

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(seqs.values()) == list(range(1, 65))
    # each caller got the seq of its own row
    assert all(log.rows[seq - 1] == str(i) for i, seq in seqs.items())
    assert len(log.batches) < 64 and sum(log.batches) == 64
    time.sleep(0.4)
    assert not committer._running  # the idle writer thread went away


def test_committer_runs_the_idle_hook_when_it_goes_idle_and_the_close_hook_once() -> None:
    log = SlowLog()
    events: list[str] = []
    committer = AuditCommitter(
        log.append,
        idle_exit=0.05,
        on_idle=lambda: events.append("idle"),
        on_close=lambda: events.append("close"),
    )
    committer.append({"reason": "a"})
    deadline = time.monotonic() + 10
    while not events and time.monotonic() < deadline:
        time.sleep(0.01)
    assert events == ["idle"]  # the writer checkpoints what it wrote before it goes away
    committer.close()
    committer.close()
    assert events == ["idle", "close"]


def test_committer_isolates_a_failing_row_and_refuses_after_close() -> None:
    log = SlowLog(poison="bad")
    committer = AuditCommitter(log.append)
    futures = [committer.submit({"reason": r}) for r in ("a", "bad", "b", "c")]
    assert futures[0].result(5) >= 1
    with pytest.raises(RuntimeError):
        futures[1].result(5)
    assert {f.result(5) for f in (futures[2], futures[3])} == {2, 3}
    committer.close()
    with pytest.raises(LayersealError, match="closed"):
        committer.submit({"reason": "late"})


def _token(env: Env) -> str:
    _, r, _ = rcar(env.client, env.attester)
    assert r.status_code == 200, r.text
    return str(r.json()["token"])


def test_concurrent_releases_share_commits_and_chain_verifies(env: Env) -> None:
    kids = [env.create_key()["kid"].removeprefix("kbs:///") for _ in range(5)]
    auth = f"Bearer {_token(env)}"
    broker = env.broker
    before_rows, before_batches = broker.audit_log.rows, broker.audit_log.batches
    n = 200

    async def burst() -> list[Any]:
        calls = [broker.release_request_async(None, auth, kids[i % 5 :] or kids) for i in range(n)]
        return list(await asyncio.gather(*calls))

    results = asyncio.run(burst())
    assert all(len(keks) >= 1 for _attested, keks in results)
    assert broker.audit_log.rows - before_rows == n
    assert broker.audit_log.batches - before_batches < n  # commits were shared
    db = str(env.tmp / "broker.db")
    report = audit_verify(db)
    assert report.ok, report.problems
    assert main(["broker", "audit", "verify", "--db", db]) == 0
    entries = env.client.get("/api/v1/audit?limit=10000", headers=env.admin).json()["entries"]
    releases = [e for e in entries if e["action"] == "release" and e["decision"] == "ok"]
    assert len(releases) == n
    assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))


def test_denials_are_audited_before_the_error(env: Env) -> None:
    kid = env.create_key()["kid"].removeprefix("kbs:///")
    auth = f"Bearer {_token(env)}"
    unknown = kid.rsplit("/", 1)[0] + "/k" + "a" * 26
    with pytest.raises(LayersealError):
        asyncio.run(env.broker.release_request_async(None, auth, [kid, unknown]))
    last = list(env.broker.store.iter_audit())[-1].content
    assert (last["action"], last["decision"]) == ("release", "deny")
    assert unknown in json.loads(last["keys"])


def test_rule_changes_by_another_replica_apply_to_the_next_release(env: Env) -> None:
    """Policies and refvalues are cached per replica; a change made through a second broker on
    the same database (another worker) must still take effect on the first at once."""
    kid = env.create_key()["kid"].removeprefix("kbs:///")
    auth = f"Bearer {_token(env)}"
    broker = env.broker
    assert broker.release_request(None, auth, [kid])[1]
    assert broker.release_request(None, auth, [kid])[1]  # served from the cached rules
    other = open_broker(str(env.tmp / "broker.db"))
    try:
        strict = {"version": "1.0.0", "anyOf": [{"allOf": [{"claim": "sim.svn", "greaterOrEquals": 99}]}]}
        other.store.put_policy("acme", "tenant", "", json.dumps(strict))
        with pytest.raises(PolicyDeniedError, match=r"sim\.svn greaterOrEquals"):
            broker.release_request(None, auth, [kid])
        assert "greaterOrEquals 99" in list(broker.store.iter_audit())[-1].content["reason"]
        other.store.delete_policy("acme", "tenant", "")
        assert broker.release_request(None, auth, [kid])[1]
        measurement = env.attester.measurement
        other.store.remove_refvalues("acme", "allowed-measurements", [measurement])
        with pytest.raises(PolicyDeniedError):
            broker.release_request(None, auth, [kid])
        other.store.add_refvalues("acme", "allowed-measurements", [measurement])
        assert broker.release_request(None, auth, [kid])[1]
        # key and token revocation are read per request, never cached
        key_id = ResourcePath.parse(kid).key_id
        other.store.set_version_status(key_id, None, "revoked")
        with pytest.raises(ForbiddenError):
            broker.release_request(None, auth, [kid])
        jti = json.loads(base64.urlsafe_b64decode(auth.split(".")[1] + "=="))["jti"]
        other.store.revoke_jti(jti, time.time() + 300)
        with pytest.raises(UnauthenticatedError, match="revoked"):
            broker.release_request(None, auth, [kid])
    finally:
        other.close()
        other.store.dispose()


def test_worker_options_round_trip_and_bounds(tmp_path: Path) -> None:
    from layerseal.broker.server import ServeOptions, _options_from_json, _options_to_json
    from layerseal.broker.service import BrokerConfig

    options = ServeOptions(
        db_url=str(tmp_path / "b.db"),
        master_key_file=tmp_path / "mk",
        admin_token_file=tmp_path / "admin.token",
        workers=2,
        config=BrokerConfig(token_ttl=60),
    )
    back = _options_from_json(_options_to_json(options))
    assert back.master_key_file == tmp_path / "mk" and back.config.token_ttl == 60 and back.workers == 2
    assert back.admin_token_file is None  # workers never bootstrap admin tokens
    for bad in (0, 65):
        with pytest.raises(LayersealError, match="--workers"):
            ServeOptions(workers=bad)
