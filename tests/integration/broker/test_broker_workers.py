"""``broker serve --workers N`` and audit group commit against real uvicorn processes.

Workers share nothing but the database, so a client may attest on one and fetch keys on
another; every acknowledged release has its audit row, even when the broker is killed.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from brokerproc import BrokerProcess

from conftest import deploy, optsdata
from layerseal.broker.server import audit_verify
from layerseal.crypto.keys import generate_key
from layerseal.errors import LayersealError
from layerseal.kbs.client import EnclaveClient, unwrap_key_packet

pytestmark = pytest.mark.integration


def worker_pids(broker: BrokerProcess) -> list[int]:
    """The uvicorn worker processes under a supervisor (spawned via multiprocessing)."""
    out = []
    for task in Path(f"/proc/{broker.proc.pid}/task").iterdir():
        for pid in (task / "children").read_text().split():
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"spawn_main" in cmdline and b"resource_tracker" not in cmdline:
                out.append(int(pid))
    return out


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def jti_of(token: str) -> str:
    return str(json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))["jti"])


def test_two_workers_serve_the_same_clients(db_url: str, tmp_path: Path, sim_platform_dir: Path) -> None:
    d = deploy(db_url, tmp_path, sim_platform_dir, extra=["--workers", "2"])
    try:
        workers = worker_pids(d.brokers[0])
        assert len(workers) == 2
        opts = [optsdata() for _ in range(6)]
        packets = [
            d.acme.create_layer_key("registry.local/workers", f"sha256:{i:064x}", o)
            for i, o in enumerate(opts)
        ]
        kids = [json.loads(p)["kid"] for p in packets]
        failures: list[BaseException] = []
        done: list[int] = []

        def client() -> None:
            try:
                # each client has its own connections; the kernel spreads them over the workers
                for _ in range(3):
                    with EnclaveClient(d.url, d.attester, generate_key("EC-P256")) as enclave:
                        for _ in range(5):
                            keks = enclave.get_keys(kids)
                            for packet, o in zip(packets, opts, strict=True):
                                assert unwrap_key_packet(packet, keks[json.loads(packet)["kid"]]) == o
                            done.append(1)
            except BaseException as exc:
                failures.append(exc)

        threads = [threading.Thread(target=client) for _ in range(8)]
        busy_before = [cpu_seconds(pid) for pid in workers]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not failures, failures[0]
        busy = [cpu_seconds(pid) - b for pid, b in zip(workers, busy_before, strict=True)]
        assert min(busy) > 0.05, f"expected both workers to serve, seen CPU seconds {busy}"
        assert len(done) == 8 * 3 * 5
        releases = [e for e in d.acme.audit() if e["action"] == "release" and e["decision"] == "ok"]
        assert len(releases) == len(done)
        report = audit_verify(db_url, master_key_file=tmp_path / "master.key")
        assert report.ok, report.problems
    finally:
        for c in d.clients:
            c.close()
        for b in d.brokers:
            b.kill()
        assert all(b.proc.returncode == 0 for b in d.brokers)  # SIGTERM stops the workers cleanly


def test_a_worker_paused_past_uvicorns_default_healthcheck_is_kept(
    tmp_path: Path, sim_platform_dir: Path
) -> None:
    """A loaded host can starve a worker for seconds; it must not be killed mid-request."""
    d = deploy(str(tmp_path / "paused.db"), tmp_path, sim_platform_dir, extra=["--workers", "2"])
    try:
        workers = worker_pids(d.brokers[0])
        assert len(workers) == 2
        os.kill(workers[0], signal.SIGSTOP)
        try:
            time.sleep(7)  # uvicorn's own default (5 s) would kill and replace it here
        finally:
            os.kill(workers[0], signal.SIGCONT)
        time.sleep(1)
        assert sorted(worker_pids(d.brokers[0])) == sorted(workers)
        packet = d.acme.create_layer_key("registry.local/paused", f"sha256:{1:064x}", optsdata())
        assert json.loads(packet)["kid"]
    finally:
        for c in d.clients:
            c.close()
        for b in d.brokers:
            b.kill()


def test_sigkill_during_release_load_loses_no_acknowledged_audit_row(
    tmp_path: Path, sim_platform_dir: Path
) -> None:
    db = str(tmp_path / "crash.db")
    d = deploy(db, tmp_path, sim_platform_dir)
    kids = [
        json.loads(d.acme.create_layer_key("registry.local/crash", f"sha256:{i:064x}", optsdata()))["kid"]
        for i in range(4)
    ]
    acked: dict[str, int] = {}
    stop = threading.Event()
    lock = threading.Lock()

    def client() -> None:
        with EnclaveClient(d.url, d.attester, generate_key("EC-P256"), timeout=5) as enclave:
            enclave.attest()
            assert enclave.token is not None
            actor = f"token:{jti_of(enclave.token)[:8]}"
            while not stop.is_set():
                try:
                    enclave.get_keys(kids)
                except LayersealError:
                    return  # the broker died mid-request: this release was never acknowledged
                with lock:
                    acked[actor] = acked.get(actor, 0) + 1

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    while sum(acked.values()) < 300 and any(t.is_alive() for t in threads):
        threads[0].join(0.05)
    d.brokers[0].kill(signal.SIGKILL)
    stop.set()
    for t in threads:
        t.join(30)
    for c in d.clients:
        c.close()
    assert d.brokers[0].proc.returncode == -signal.SIGKILL
    assert len(acked) == 8 and sum(acked.values()) >= 300

    report = audit_verify(db, master_key_file=tmp_path / "master.key")
    assert report.ok, report.problems
    from layerseal.broker import database
    from layerseal.broker.store import Store

    engine = database.create_db_engine(db)
    try:
        rows = [r.content for r in Store(engine).iter_audit()]
    finally:
        engine.dispose()
    audited: dict[str, int] = {}
    for row in rows:
        if row["action"] == "release" and row["decision"] == "ok":
            audited[row["actor"]] = audited.get(row["actor"], 0) + 1
    for actor, n in acked.items():
        assert audited.get(actor, 0) >= n, f"{actor}: {n} releases acknowledged, {audited.get(actor)} audited"
