"""Start and stop real broker processes (uvicorn) on free 127.0.0.1 ports for integration tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from layerseal.kbs.client import PublisherClient

PG_BASE = "postgresql://postgres@127.0.0.1:5432/test"
# `layerseal broker ...` with only the broker subcommand registered, so these tests do not
# depend on every other CLI module importing cleanly
_ENTRY = (
    "import argparse, sys\n"
    "from layerseal.cli import broker\n"
    "p = argparse.ArgumentParser(prog='layerseal')\n"
    "broker.register(p.add_subparsers(dest='command', required=True))\n"
    "a = p.parse_args(sys.argv[1:])\n"
    "sys.exit(a.func(a))\n"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class BrokerProcess:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def kill(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)


def start_broker(
    db: str, workdir: Path, *, master_key_file: Path, admin_token_file: Path, extra: list[str] | None = None
) -> BrokerProcess:
    port = free_port()
    log = workdir / f"broker-{port}.log"
    cmd = [
        sys.executable,
        "-c",
        _ENTRY,
        "broker",
        "serve",
        "--db",
        db,
        "--listen",
        f"127.0.0.1:{port}",
        "--master-key-file",
        str(master_key_file),
        "--admin-token-file",
        str(admin_token_file),
        "--auth-rate",
        "1000",
        "--auth-burst",
        "1000",
        *(extra or []),
    ]
    env = {k: v for k, v in os.environ.items() if k != "LAYERSEAL_MASTER_KEY"}
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=workdir)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"broker exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return BrokerProcess(url, proc, log)
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"broker did not become healthy: {log.read_text()[-2000:]}")


def postgres_available() -> bool:
    try:
        import psycopg

        with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=test", connect_timeout=3):
            return True
    except Exception:
        return False


@contextmanager
def postgres_schema() -> Iterator[str]:
    """A fresh schema in the ``test`` database, dropped afterwards; yields the broker DB URL."""
    import psycopg

    name = "ls_broker_" + uuid.uuid4().hex[:12]
    with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=test", autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{name}"')
    try:
        yield f"{PG_BASE}?options=-csearch_path%3D{name}"
    finally:
        with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=test", autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{name}" CASCADE')


@dataclass
class SimTenantBroker:
    """A broker process with one sim platform trusted and tenant ``acme`` allowed its measurement."""

    broker: BrokerProcess
    admin: PublisherClient
    acme: PublisherClient
    token: str
    platform: Path

    def close(self) -> None:
        self.admin.close()
        self.acme.close()
        self.broker.kill()


def start_sim_tenant_broker(workdir: Path, *, other_platforms: tuple[Path, ...] = ()) -> SimTenantBroker:
    """Broker (SQLite, master key and admin token in *workdir*), the sim platform ``workdir/sim``
    registered with any *other_platforms* (made by the caller), and an ``acme`` publisher token."""
    from layerseal.attest.sim_platform import SimAttester, init_platform
    from layerseal.broker.masterkey import create_master_key_file
    from layerseal.kbs.client import PublisherClient

    key_file, admin_token = workdir / "master.key", workdir / "admin.token"
    create_master_key_file(key_file)
    broker = start_broker(
        str(workdir / "broker.db"), workdir, master_key_file=key_file, admin_token_file=admin_token
    )
    admin = PublisherClient(broker.url, admin_token.read_text().strip())
    platform = workdir / "sim"
    init_platform(platform)
    for p in (platform, *other_platforms):
        admin.register_platform((p / "platform-cert.pem").read_bytes(), description=p.name)
    token = admin.create_token("acme", ["keys:write", "keys:read", "policy:write", "audit:read"])[1]
    acme = PublisherClient(broker.url, token)
    acme.add_refvalues("allowed-measurements", [SimAttester(platform).measurement])
    return SimTenantBroker(broker, admin, acme, token, platform)
