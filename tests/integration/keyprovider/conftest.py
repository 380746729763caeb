"""A broker with one tenant and one sim platform whose measurement it accepts, shared by the
keyprovider tests of this run (each uses its own repository)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from integration.broker.brokerproc import BrokerProcess, start_broker
from layerseal.attest.sim_platform import SimAttester, init_platform
from layerseal.broker.masterkey import create_master_key_file
from layerseal.kbs.client import PublisherClient


@dataclass
class World:
    broker: BrokerProcess
    acme: PublisherClient
    token: str
    token_file: Path
    platform: Path


@pytest.fixture(scope="session")
def kp_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    workdir = tmp_path_factory.mktemp("names")
    key_file = workdir / "master.key"
    create_master_key_file(key_file)
    admin_token = workdir / "admin.token"
    broker = start_broker(
        str(workdir / "broker.db"), workdir, master_key_file=key_file, admin_token_file=admin_token
    )
    admin = PublisherClient(broker.url, admin_token.read_text().strip())
    platform = workdir / "sim"
    init_platform(platform)
    admin.register_platform((platform / "platform-cert.pem").read_bytes(), description="sim")
    token = admin.create_token("acme", ["keys:write", "keys:read", "policy:write", "audit:read"])[1]
    acme = PublisherClient(broker.url, token)
    acme.add_refvalues("allowed-measurements", [SimAttester(platform).measurement])
    token_file = workdir / "acme.token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    try:
        yield World(broker, acme, token, token_file, platform)
    finally:
        admin.close()
        acme.close()
        broker.kill()
