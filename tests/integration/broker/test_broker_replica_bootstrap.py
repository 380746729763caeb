"""Replicas started together on a fresh deployment: one master key, one admin token, all serve."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from brokerproc import _ENTRY, free_port, postgres_available, postgres_schema

pytestmark = pytest.mark.integration

REPLICAS = 3
ROUNDS = 10


def _spawn(db: str, work: Path, i: int) -> tuple[subprocess.Popen[bytes], str, Path]:
    port = free_port()
    log = work / f"replica-{i}.log"
    cmd = [sys.executable, "-c", _ENTRY, "broker", "serve", "--db", db, "--listen", f"127.0.0.1:{port}"]
    cmd += ["--master-key-file", str(work / "master.key"), "--admin-token-file", str(work / "admin.token")]
    cmd += ["--log-level", "warning", "--db-pool-size", "2"]
    env = {k: v for k, v in os.environ.items() if k != "LAYERSEAL_MASTER_KEY"}
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=work)
    return proc, f"http://127.0.0.1:{port}", log


def _wait_healthy(proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"replica exited with {proc.returncode}: {log.read_text()[-1500:]}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"replica did not become healthy: {log.read_text()[-1500:]}")


@pytest.mark.skipif(not postgres_available(), reason="PostgreSQL at 127.0.0.1:5432 is not reachable")
def test_three_replicas_started_at_once_share_one_key_and_one_admin_token(tmp_path: Path) -> None:
    import psycopg

    for round_no in range(ROUNDS):
        work = tmp_path / f"round{round_no}"
        work.mkdir()
        with postgres_schema() as db:
            replicas = [_spawn(db, work, i) for i in range(REPLICAS)]  # no replica waits for another
            try:
                for proc, url, log in replicas:
                    _wait_healthy(proc, url, log)
                token = (work / "admin.token").read_text().strip()
                schema = db.rsplit("%3D", 1)[1]
                with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=test") as conn:
                    conn.execute(f'SET search_path TO "{schema}"')
                    admins = conn.execute("SELECT token_id FROM api_tokens WHERE tenant = '*'").fetchall()
                    boot = conn.execute("SELECT value FROM bootstrap WHERE name = 'admin-token'").fetchall()
                assert len(admins) == 1, f"round {round_no}: {len(admins)} admin tokens stored"
                assert boot == admins and token.startswith(f"lsk_{admins[0][0]}_")
                # every replica accepts the one token: they share the database and the master key
                for _, url, _ in replicas:
                    r = httpx.get(url + "/api/v1/keys", headers={"Authorization": f"Bearer {token}"})
                    assert r.status_code == 200, r.text
                leftovers = sorted(p.name for p in work.iterdir() if ".tmp" in p.name or "pending" in p.name)
                assert leftovers == []
                assert len((work / "master.key").read_text().strip()) == 44
            finally:
                for proc, _, _ in replicas:
                    proc.terminate()
                for proc, _, _ in replicas:
                    try:
                        proc.wait(timeout=20)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
