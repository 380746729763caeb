"""A broker with one tenant and one sim platform whose measurement it accepts, shared by the
keyprovider tests of this run (each uses its own repository)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from integration.broker.brokerproc import BrokerProcess, start_sim_tenant_broker
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
    world = start_sim_tenant_broker(workdir)
    token_file = workdir / "acme.token"
    token_file.write_text(world.token + "\n")
    token_file.chmod(0o600)
    try:
        yield World(world.broker, world.acme, world.token, token_file, world.platform)
    finally:
        world.close()
