"""Fixtures for broker integration tests: real uvicorn brokers on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from brokerproc import BrokerProcess, postgres_available, postgres_schema, start_broker

from layerseal.attest.sim_platform import SimAttester, init_platform
from layerseal.broker.masterkey import create_master_key_file
from layerseal.kbs.client import PublisherClient


@dataclass
class Deployment:
    db: str
    brokers: list[BrokerProcess]
    admin: PublisherClient
    acme: PublisherClient
    globex: PublisherClient
    platform_dir: Path
    attester: SimAttester
    workdir: Path
    clients: list[PublisherClient] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.brokers[0].url


@pytest.fixture(scope="session")
def sim_platform_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("sim")
    init_platform(d)
    return d


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "broker.db")
        return
    if not postgres_available():
        pytest.skip("PostgreSQL at 127.0.0.1:5432 is not reachable")
    with postgres_schema() as url:
        yield url


def deploy(
    db: str, workdir: Path, platform_dir: Path, replicas: int = 1, extra: list[str] | None = None
) -> Deployment:
    key_file = workdir / "master.key"
    if not key_file.exists():
        create_master_key_file(key_file)
    token_file = workdir / "admin.token"
    brokers = [start_broker(db, workdir, master_key_file=key_file, admin_token_file=token_file, extra=extra)]
    # later replicas start once the first has migrated the schema and written the admin token
    for _ in range(replicas - 1):
        brokers.append(
            start_broker(db, workdir, master_key_file=key_file, admin_token_file=token_file, extra=extra)
        )
    admin = PublisherClient(brokers[0].url, token_file.read_text().strip())
    admin.register_platform((platform_dir / "platform-cert.pem").read_bytes(), description="test platform")
    scopes = ["keys:write", "keys:read", "policy:write", "audit:read"]
    acme = PublisherClient(brokers[0].url, admin.create_token("acme", scopes)[1])
    globex = PublisherClient(brokers[0].url, admin.create_token("globex", scopes)[1])
    attester = SimAttester(platform_dir)
    acme.add_refvalues("allowed-measurements", [attester.measurement])
    globex.add_refvalues("allowed-measurements", ["cd" * 48])
    return Deployment(
        db, brokers, admin, acme, globex, platform_dir, attester, workdir, [admin, acme, globex]
    )


@contextmanager
def running_deployment(
    db_url: str, workdir: Path, platform_dir: Path, extra: list[str] | None = None
) -> Iterator[Deployment]:
    """A deployment (two replicas unless SQLite) whose clients and brokers are stopped on exit."""
    d = deploy(db_url, workdir, platform_dir, replicas=2 if not db_url.endswith(".db") else 1, extra=extra)
    try:
        yield d
    finally:
        for c in d.clients:
            c.close()
        for b in d.brokers:
            b.kill()


@pytest.fixture
def deployment(db_url: str, tmp_path: Path, sim_platform_dir: Path) -> Iterator[Deployment]:
    with running_deployment(db_url, tmp_path, sim_platform_dir) as d:
        yield d


def optsdata() -> bytes:
    from layerseal.image.digest import Digest
    from layerseal.image.encryption import PrivateOptions

    return PrivateOptions(os.urandom(32), os.urandom(16), Digest.of(os.urandom(8))).to_json_bytes()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
