"""Load test of the key broker: 32 clients attest once, then fetch batches of 10 layer keys.

The broker runs as a real uvicorn process (``broker serve --workers N``); the load
generator is this process, using a minimal keep-alive HTTP/1.1 client on asyncio so that
the client side costs as little CPU as possible (both share the machine's cores).
Scenarios, for each worker count: the trivial ``/healthz`` endpoint (the server stack's
ceiling), batch releases on SQLite (audit fsync full, and normal) and on PostgreSQL.
Prints a table and writes ``bench/results/broker_load.json``.

    .venv/bin/python bench/broker_load.py [--seconds 10] [--clients 32] [--workers 1,2] [--no-postgres]
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
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "integration" / "broker"))

from brokerproc import postgres_available, start_broker  # noqa: E402

from layerseal.attest.sim_platform import SimAttester, init_platform  # noqa: E402
from layerseal.broker.client import EnclaveClient, PublisherClient  # noqa: E402
from layerseal.broker.masterkey import create_master_key_file  # noqa: E402
from layerseal.crypto.jwe import decrypt_from_jwk  # noqa: E402
from layerseal.crypto.keys import generate_key  # noqa: E402
from layerseal.image.digest import Digest  # noqa: E402
from layerseal.image.encryption import PrivateOptions  # noqa: E402

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
    args = parser.parse_args()
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
