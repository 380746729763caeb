"""Load test of the key broker: 32 clients attest once, then fetch batches of 10 layer keys.

The broker runs as a real uvicorn process (``broker serve --workers N``); the load
generator is this process, using a minimal keep-alive HTTP/1.1 client on asyncio so that
the client side costs as little CPU as possible (both share the machine's cores).
Scenarios, for each worker count: the trivial ``/healthz`` endpoint (the server stack's
ceiling), batch releases on SQLite (audit fsync full, and normal) and on PostgreSQL.
Prints a table and writes ``bench/results/broker_load.json``.

Audit lock section (PostgreSQL): writer threads append group-committed batches straight
through the store, as replicas would, and the store times how long each transaction held
its chain head's row lock.  Measured two ways in the same run: every writer on one shared
chain (the former single-chain design: one lock for all replicas) and each writer on its
own chain (the current design).  The projected single-database ceiling is what the lock
alone allows: ``rows per write / hold time`` for the shared lock whatever the replica
count, ``N x`` that with one chain per replica (the database's CPU and WAL bandwidth are
then the limit, which this projection does not model; the measured aggregate shows them).

    .venv/bin/python bench/broker_load.py [--seconds 10] [--clients 32] [--workers 1,2] [--no-postgres]
    .venv/bin/python bench/broker_load.py --audit-only [--audit-seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "integration" / "broker"))

from brokerproc import postgres_available, start_broker  # noqa: E402

from layerseal.attest.sim_platform import SimAttester, init_platform  # noqa: E402
from layerseal.broker.masterkey import create_master_key_file  # noqa: E402
from layerseal.crypto.jwe import decrypt_from_jwk  # noqa: E402
from layerseal.crypto.keys import generate_key  # noqa: E402
from layerseal.image.digest import Digest  # noqa: E402
from layerseal.image.encryption import PrivateOptions  # noqa: E402
from layerseal.kbs.client import EnclaveClient, PublisherClient  # noqa: E402

N_KEYS = 200
BATCH = 10


class Conn:
    """One keep-alive HTTP/1.1 connection; just enough protocol for this benchmark."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        body = await self.reader.readexactly(length)
        return status, body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def build(method: str, path: str, host: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def run_load(url: str, requests_per_client: list[list[bytes]], seconds: float) -> dict[str, Any]:
    host, port = url.removeprefix("http://").split(":")
    latencies: list[float] = []
    errors = 0
    stop_at = 0.0
    warm_until = 0.0

    async def client(reqs: list[bytes]) -> None:
        nonlocal errors
        conn = Conn(host, int(port))
        i = 0
        try:
            while True:
                now = time.perf_counter()
                if now >= stop_at:
                    return
                t0 = now
                status, _ = await conn.request(reqs[i % len(reqs)])
                t1 = time.perf_counter()
                i += 1
                if t0 >= warm_until:
                    if status != 200:
                        errors += 1
                    latencies.append(t1 - t0)
        finally:
            conn.close()

    start = time.perf_counter()
    warm_until = start + 1.0
    stop_at = warm_until + seconds
    await asyncio.gather(*(client(r) for r in requests_per_client))
    latencies.sort()
    n = len(latencies)
    return {
        "requests": n,
        "errors": errors,
        "seconds": seconds,
        "per_second": round(n / seconds, 1),
        "p50_ms": round(latencies[n // 2] * 1000, 2) if n else None,
        "p99_ms": round(latencies[min(n - 1, int(n * 0.99))] * 1000, 2) if n else None,
    }


def setup(
    db: str, work: Path, platform_dir: Path, clients: int, extra: list[str]
) -> tuple[Any, list[EnclaveClient], list[str]]:
    key_file = work / "master.key"
    create_master_key_file(key_file)
    proc = start_broker(
        db,
        work,
        master_key_file=key_file,
        admin_token_file=work / "admin.token",
        extra=["--log-level", "warning", *extra],
    )
    admin = PublisherClient(proc.url, (work / "admin.token").read_text().strip())
    admin.register_platform((platform_dir / "platform-cert.pem").read_bytes())
    tenant = PublisherClient(
        proc.url, admin.create_token("bench", ["keys:write", "keys:read", "policy:write"])[1]
    )
    attester = SimAttester(platform_dir)
    tenant.add_refvalues("allowed-measurements", [attester.measurement])
    kids = []
    for i in range(N_KEYS):
        opts = PrivateOptions(os.urandom(32), os.urandom(16), Digest.of(str(i).encode())).to_json_bytes()
        packet = tenant.create_layer_key(f"registry.local/bench{i % 5}", str(Digest.of(os.urandom(8))), opts)
        kids.append(json.loads(packet)["kid"].removeprefix("kbs:///"))
    enclaves = []
    for _ in range(clients):  # each client attests once
        e = EnclaveClient(proc.url, attester, generate_key("EC-P256"))
        e.attest()
        enclaves.append(e)
    # sanity: a batch opens with the enclave key and holds exactly the requested keys
    want = kids[:BATCH]
    assert sorted(enclaves[0].get_keys(want)) == sorted(want)
    admin.close()
    tenant.close()
    return proc, enclaves, kids


def batch_requests(url: str, enclaves: list[EnclaveClient], kids: list[str]) -> list[list[bytes]]:
    host = url.removeprefix("http://")
    rng = random.Random(7)
    out = []
    for e in enclaves:
        reqs = []
        for _ in range(16):
            body = json.dumps({"resources": rng.sample(kids, BATCH)}).encode()
            reqs.append(
                build(
                    "POST",
                    "/kbs/v0/resources",
                    host,
                    {"Authorization": f"Bearer {e.token}", "Content-Type": "application/json"},
                    body,
                )
            )
        out.append(reqs)
    return out


def scenario(
    name: str,
    db: str,
    work: Path,
    platform_dir: Path,
    args: argparse.Namespace,
    results: dict[str, Any],
    workers: int,
    extra: list[str] | None = None,
) -> None:
    work.mkdir(parents=True, exist_ok=True)
    proc, enclaves, kids = setup(
        db, work, platform_dir, args.clients, ["--workers", str(workers), *(extra or [])]
    )
    try:
        host = proc.url.removeprefix("http://")
        if name == "sqlite":
            health = [[build("GET", "/healthz", host, {})] for _ in range(args.clients)]
            r = asyncio.run(run_load(proc.url, health, args.seconds))
            r["workers"] = workers
            results[f"healthz_w{workers}"] = r
            print_row(f"healthz (ceiling), w{workers}", r)
        r = asyncio.run(run_load(proc.url, batch_requests(proc.url, enclaves, kids), args.seconds))
        r["keys_per_second"] = round(r["per_second"] * BATCH, 1)
        r["workers"] = workers
        results[f"batch_{name}_w{workers}"] = r
        print_row(f"batch of {BATCH}, {name}, w{workers}", r)
        # a released batch still opens with the enclave key after the run
        import httpx

        resp = httpx.post(
            proc.url + "/kbs/v0/resources",
            json={"resources": kids[:BATCH]},
            headers={"Authorization": f"Bearer {enclaves[0].token}"},
        )
        assert len(json.loads(decrypt_from_jwk(resp.json(), enclaves[0].private_key))["resources"]) == BATCH
    finally:
        for e in enclaves:
            e.close()
        proc.kill()


AUDIT_PROJECT_REPLICAS = (1, 3, 10, 30)


def _audit_entry(i: int) -> dict[str, Any]:
    return {
        "at_ms": int(time.time() * 1000),
        "actor": f"token:{i:08x}",
        "action": "release",
        "decision": "ok",
        "tenant": "bench",
        "keys": json.dumps([f"kbs:///bench/r/k{i:026d}"] * BATCH),
        "evidence_digest": None,
        "measurement": "ab" * 48,
        "reason": "",
    }


def audit_lock_run(url: str, mode: str, writers: int, rows_per_write: int, seconds: float) -> dict[str, Any]:
    """*writers* threads appending batches of *rows_per_write* rows for *seconds*."""
    from layerseal.broker import database
    from layerseal.broker.auditlog import ChainAppender, audit_keys
    from layerseal.broker.custody import MasterKeyCustody
    from layerseal.broker.store import Store

    engine = database.create_db_engine(url, pool_size=writers + 2)
    database.migrate(engine)
    store = Store(engine)
    keys = audit_keys(store, MasterKeyCustody(os.urandom(32)))
    assert keys is not None
    store.adopt_audit_heads(keys)
    stop = time.monotonic() + seconds
    batch = [_audit_entry(i) for i in range(rows_per_write)]
    shared_owner = "bench-shared-owner"
    if mode == "shared":
        store.claim_audit_chain(shared_owner, keys, 3600)

    def writer() -> None:
        appender = ChainAppender(store, keys, checkpoint_interval=3600)
        while time.monotonic() < stop:
            if mode == "shared":  # everyone on chain 1, as with the single global head
                out = store.append_audit_batch(batch, chain=1, owner=shared_owner, keys=keys, lease=3600)
                assert isinstance(out, list)
            else:
                appender.append_batch(batch)
        appender.close()

    threads = [threading.Thread(target=writer) for _ in range(writers)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - started
    stats = store.audit_stats
    hold_ms = stats.hold_seconds / max(stats.writes, 1) * 1000
    wait_ms = stats.wait_seconds / max(stats.writes, 1) * 1000
    chains = len(store.audit_heads())
    engine.dispose()
    per_lock = rows_per_write / (hold_ms / 1000) if hold_ms else 0.0
    return {
        "mode": mode,
        "writers": writers,
        "rows_per_write": rows_per_write,
        "writes": stats.writes,
        "chains": chains,
        "hold_ms_per_write": round(hold_ms, 3),
        "lock_acquire_ms_per_write": round(wait_ms, 3),
        "measured_rows_per_s": round(stats.rows / wall, 1),
        # the lock bounds throughput at rows_per_write / hold: one lock for all replicas
        # (shared) or one per replica (per-chain)
        "projected_ceiling": {
            str(n): round(per_lock if mode == "shared" else per_lock * n) for n in AUDIT_PROJECT_REPLICAS
        },
    }


def audit_lock_bench(seconds: float, results: dict[str, Any]) -> None:
    import psycopg

    dsn = "host=127.0.0.1 port=5432 user=postgres dbname=test"
    head = "  ".join(f"N={n:<6}" for n in AUDIT_PROJECT_REPLICAS)
    print(
        "\naudit lock (PostgreSQL): hold time per audit write; projected ceiling (releases/s) by replicas N"
    )
    print(
        f"{'mode':<10} {'writers':>7} {'rows/write':>10} {'hold ms':>8} {'acquire ms':>10} "
        f"{'measured/s':>10}  {head}"
    )
    runs = []
    for mode in ("shared", "per-chain"):
        for writers, rows in ((1, 1), (3, 1), (3, 8), (3, 16)):
            schema = "ls_bench_audit_" + uuid.uuid4().hex[:8]
            with psycopg.connect(dsn, autocommit=True) as c:
                c.execute(f'CREATE SCHEMA "{schema}"')
            try:
                url = f"postgresql://postgres@127.0.0.1:5432/test?options=-csearch_path%3D{schema}"
                r = audit_lock_run(url, mode, writers, rows, seconds)
            finally:
                with psycopg.connect(dsn, autocommit=True) as c:
                    c.execute(f'DROP SCHEMA "{schema}" CASCADE')
            runs.append(r)
            ceil = "  ".join(f"{r['projected_ceiling'][str(n)]:<8}" for n in AUDIT_PROJECT_REPLICAS)
            print(
                f"{mode:<10} {writers:>7} {rows:>10} {r['hold_ms_per_write']:>8} "
                f"{r['lock_acquire_ms_per_write']:>10} {r['measured_rows_per_s']:>10}  {ceil}",
                flush=True,
            )
    per_chain = [r for r in runs if r["mode"] == "per-chain" and r["writers"] > 1]
    best = max(per_chain, key=lambda r: r["projected_ceiling"]["10"])
    results["audit_lock"] = {
        "runs": runs,
        "goal_releases_per_s": 20000,
        "goal_replicas": 10,
        "goal_met": best["projected_ceiling"]["10"] >= 20000,
        "lock_shared_by_all_replicas": False,
        "note": "hold = locking read to commit return; acquire = issuing the locking read until it "
        "returns (a round trip, plus any wait for the lock); the projection is the lock bound "
        "only, the database's CPU/WAL limits are not modelled",
    }


def print_row(name: str, r: dict[str, Any]) -> None:
    print(f"{name:<40} {r['per_second']:>10} {r['p50_ms']:>9} {r['p99_ms']:>9} {r['errors']:>7}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts to measure")
    parser.add_argument(
        "--only", default="sqlite,sqlite_audit_sync_normal,postgres", help="comma-separated scenarios to run"
    )
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "broker_load.json"))
    parser.add_argument("--audit-seconds", type=float, default=3.0, help="per audit-lock run")
    parser.add_argument("--audit-only", action="store_true", help="only the audit lock section")
    args = parser.parse_args()
    if args.audit_only:
        if not postgres_available():
            print("audit lock section needs PostgreSQL at 127.0.0.1:5432", file=sys.stderr)
            return 4
        audit_results: dict[str, Any] = {}
        audit_lock_bench(args.audit_seconds, audit_results)
        out = Path(args.out).with_name("broker_audit_lock.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(audit_results, indent=2) + "\n")
        print(f"written {out}")
        return 0
    worker_counts = [int(w) for w in args.workers.split(",")]
    results: dict[str, Any] = {}
    print(f"{'scenario':<40} {'req/s':>10} {'p50 ms':>9} {'p99 ms':>9} {'errors':>7}")
    with_pg = not args.no_postgres and postgres_available()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        platform_dir = base / "platform"
        init_platform(platform_dir)
        only = set(args.only.split(","))
        for w in worker_counts:
            d = base / f"sqlite-w{w}"
            if "sqlite" in only:
                scenario("sqlite", str(d / "broker.db"), d, platform_dir, args, results, w)
            d = base / f"sqlite-normal-w{w}"
            if "sqlite_audit_sync_normal" in only:
                scenario(
                    "sqlite_audit_sync_normal",
                    str(d / "broker.db"),
                    d,
                    platform_dir,
                    args,
                    results,
                    w,
                    ["--audit-sync", "normal"],
                )
            if with_pg and "postgres" in only:
                import psycopg

                schema = "ls_bench_" + uuid.uuid4().hex[:10]
                dsn = "host=127.0.0.1 port=5432 user=postgres dbname=test"
                with psycopg.connect(dsn, autocommit=True) as c:
                    c.execute(f'CREATE SCHEMA "{schema}"')
                try:
                    url = f"postgresql://postgres@127.0.0.1:5432/test?options=-csearch_path%3D{schema}"
                    scenario("postgres", url, base / f"pg-w{w}", platform_dir, args, results, w)
                finally:
                    with psycopg.connect(dsn, autocommit=True) as c:
                        c.execute(f'DROP SCHEMA "{schema}" CASCADE')
    if with_pg:
        audit_lock_bench(args.audit_seconds, results)
    best_sqlite = max(
        (v for k, v in results.items() if k.startswith("batch_sqlite_w")),
        key=lambda r: r["per_second"],
        default={},
    )
    best_pg = max(
        (v for k, v in results.items() if k.startswith("batch_postgres_w")),
        key=lambda r: r["per_second"],
        default=None,
    )
    results["targets"] = {
        "sqlite_releases_per_s": 1000,
        "sqlite_p99_ms": 50,
        "best_sqlite_workers": best_sqlite.get("workers"),
        "sqlite_met": bool(best_sqlite) and best_sqlite["per_second"] >= 1000 and best_sqlite["p99_ms"] <= 50,
        "postgres_fraction_of_sqlite": round(best_pg["per_second"] / best_sqlite["per_second"], 3)
        if best_pg and best_sqlite
        else None,
        "postgres_fraction_target": 0.7,
    }
    results["setup"] = {
        "clients": args.clients,
        "batch": BATCH,
        "keys": N_KEYS,
        "server": "uvicorn (uvloop, httptools), 'broker serve --workers N'; audit rows group-committed",
        "load_generator": "same machine (shares the cores), asyncio keep-alive HTTP/1.1, one process",
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
