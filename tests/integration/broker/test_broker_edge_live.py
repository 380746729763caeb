"""The broker's edge against real uvicorn processes: client addresses behind proxies,
header size limits, and a PostgreSQL outage (a private server, stopped and restarted)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from brokerproc import BrokerProcess, free_port, start_broker

from conftest import deploy
from layerseal.attest.binding import report_data
from layerseal.attest.sim_platform import SimAttester
from layerseal.broker.masterkey import create_master_key_file
from layerseal.crypto.keys import generate_key
from layerseal.kbs.client import tee_pubkey_jwk

pytestmark = pytest.mark.integration

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def attest_via(url: str, attester: SimAttester, headers: dict[str, str]) -> httpx.Response:
    jwk = tee_pubkey_jwk(generate_key("EC-P256"))
    with httpx.Client(base_url=url, headers=headers) as c:
        r = c.post("/kbs/v0/auth", json={"version": "0.4.0", "tee": "sim"})
        assert r.status_code == 200, r.text
        nonce = r.json()["nonce"]
        body = {
            "runtime-data": {"nonce": nonce, "tee-pubkey": jwk},
            "tee-evidence": attester.evidence(report_data(nonce, jwk)),
        }
        return c.post("/kbs/v0/attest", json=body)


@pytest.mark.parametrize("trusted", [False, True], ids=["untrusted-peer", "trusted-proxy"])
def test_x_forwarded_for_counts_only_from_a_trusted_proxy(
    tmp_path: Path, sim_platform_dir: Path, trusted: bool
) -> None:
    extra = ["--trusted-proxy", "127.0.0.1"] if trusted else []
    d = deploy(str(tmp_path / "broker.db"), tmp_path, sim_platform_dir, extra=extra)
    try:
        r = attest_via(d.url, d.attester, {"X-Forwarded-For": "203.0.113.7"})
        assert r.status_code == 200, r.text
        actors = [e["actor"] for e in d.admin.audit() if e["action"] == "attest"]
        assert actors[-1] == ("client:203.0.113.7" if trusted else "client:127.0.0.1")
    finally:
        for c in d.clients:
            c.close()
        for b in d.brokers:
            b.kill()


def test_oversized_headers_get_431_and_the_broker_keeps_serving(tmp_path: Path) -> None:
    key = tmp_path / "master.key"
    create_master_key_file(key)
    b = start_broker(str(tmp_path / "b.db"), tmp_path, master_key_file=key, admin_token_file=tmp_path / "t")
    try:
        host, port = b.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
            sent = 0
            try:
                while sent < 50 * 1024 * 1024:  # the 50 MB header the finding was accepted with
                    s.sendall(b"a" * 65536)
                    sent += 65536
            except OSError:
                pass  # the broker closed the connection
            reply = s.recv(4096)
        assert reply.startswith(b"HTTP/1.1 431"), reply[:100]
        assert sent < 50 * 1024 * 1024
        assert httpx.get(b.url + "/healthz", headers={"X-Ok": "a" * 8000}).status_code == 200
    finally:
        b.kill()


# ---------------------------------------------------------------------- database outage


class PrivatePostgres:
    """A throw-away PostgreSQL cluster on a free loopback port (never the shared one)."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ls-pg-"))
        self.port = free_port()
        os.chmod(self.dir, 0o755)
        shutil.chown(self.dir, "postgres", "postgres")
        self.data = self.dir / "data"
        self._as_pg([str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres"])

    def _as_pg(self, cmd: list[str]) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *cmd], check=True, capture_output=True, timeout=120
        )

    def start(self) -> None:
        opts = f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.dir}"
        self._as_pg(
            [
                str(PG_BIN / "pg_ctl"),
                "-D",
                str(self.data),
                "-o",
                opts,
                "-w",
                "-l",
                str(self.dir / "log"),
                "start",
            ]
        )

    def stop(self) -> None:
        self._as_pg([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"])

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def destroy(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    if not (PG_BIN / "initdb").exists() or shutil.which("runuser") is None:
        pytest.skip("PostgreSQL 15 binaries or runuser not available")
    pg = PrivatePostgres()
    try:
        pg.start()
        yield pg
    finally:
        pg.destroy()


def _statuses(b: BrokerProcess, admin: str) -> tuple[int, int, int, httpx.Response]:
    keys = httpx.get(b.url + "/api/v1/keys", headers={"Authorization": f"Bearer {admin}"}, timeout=30)
    auth = httpx.post(b.url + "/kbs/v0/auth", json={"version": "0.4.0", "tee": "sim"}, timeout=30)
    ready = httpx.get(b.url + "/readyz", timeout=30)
    health = httpx.get(b.url + "/healthz", timeout=30)
    assert auth.status_code == 200  # challenges need no database
    return keys.status_code, ready.status_code, health.status_code, keys


def test_database_outage_is_503_with_retry_after_logged_once_and_recovers(
    tmp_path: Path, private_postgres: PrivatePostgres
) -> None:
    key = tmp_path / "master.key"
    create_master_key_file(key)
    token_file = tmp_path / "admin.token"
    b = start_broker(private_postgres.url, tmp_path, master_key_file=key, admin_token_file=token_file)
    admin = token_file.read_text().strip()
    try:
        assert _statuses(b, admin)[:3] == (200, 200, 200)
        private_postgres.stop()
        for _ in range(20):
            keys, ready, health, response = _statuses(b, admin)
            assert (keys, ready, health) == (503, 503, 200)
            assert response.headers["Retry-After"].isdigit()
            assert response.headers["content-type"] == "application/problem+json"
            assert "database unavailable" in response.json()["detail"]
        private_postgres.start()
        deadline = time.monotonic() + 30
        while _statuses(b, admin)[:2] != (200, 200):
            assert time.monotonic() < deadline, "broker did not recover"
            time.sleep(0.2)
        # the audit log (and every write) works again
        r = httpx.post(
            b.url + "/api/v1/tokens",
            json={"tenant": "acme", "scopes": ["keys:read"]},
            headers={"Authorization": f"Bearer {admin}"},
        )
        assert r.status_code == 201, r.text
    finally:
        b.kill()
    log = b.log.read_text()
    assert log.count("database unavailable: answering 503") == 1, log[-3000:]
    assert log.count("database available again") == 1
    assert "internal error" not in log and "unhandled error" not in log


def _children(pid: int) -> set[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return {int(x) for x in out.split()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_policy_evaluation_processes_end_with_a_killed_broker(tmp_path: Path) -> None:
    key = tmp_path / "master.key"
    create_master_key_file(key)
    b = start_broker(str(tmp_path / "b.db"), tmp_path, master_key_file=key, admin_token_file=tmp_path / "t")
    children: set[int] = set()
    try:
        deadline = time.monotonic() + 60
        while len(children) < 2 and time.monotonic() < deadline:
            children = _children(b.proc.pid)
            time.sleep(0.2)
        assert len(children) >= 2, "the evaluation processes did not start"
        b.kill(9)  # SIGKILL: no shutdown code runs in the broker
        deadline = time.monotonic() + 30
        while any(_alive(c) for c in children) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_alive(c) for c in children), "evaluation processes outlived the broker"
    finally:
        b.kill()
        for c in children:
            if _alive(c):
                os.kill(c, 9)
