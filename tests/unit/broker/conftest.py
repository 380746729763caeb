"""Fixtures for broker unit tests: a broker on SQLite in tmp_path behind Starlette's TestClient."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from brokerenv import Env
from starlette.testclient import TestClient

from layerseal.attest.sim_platform import SimAttester, init_platform
from layerseal.broker.app import create_app
from layerseal.broker.ratelimit import RateLimiter
from layerseal.broker.server import ensure_admin_token, open_broker


@pytest.fixture(scope="session")
def sim_platform(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("simplatform")
    init_platform(d)
    return d


@pytest.fixture
def env(tmp_path: Path, sim_platform: Path) -> Iterator[Env]:
    broker = open_broker(str(tmp_path / "broker.db"), create_master_key=True)
    token_file = tmp_path / "admin.token"
    ensure_admin_token(broker, token_file)
    admin_token = token_file.read_text().strip()
    admin = {"Authorization": f"Bearer {admin_token}"}
    app = create_app(broker, limiter=RateLimiter(1000, 1000))
    with TestClient(app) as client:
        cert = (sim_platform / "platform-cert.pem").read_text()
        r = client.post("/api/v1/platforms", json={"tee": "sim", "certificate": cert}, headers=admin)
        assert r.status_code == 201, r.text
        r = client.post(
            "/api/v1/tokens",
            json={"tenant": "acme", "scopes": ["keys:write", "keys:read", "policy:write", "audit:read"]},
            headers=admin,
        )
        assert r.status_code == 201, r.text
        tenant_token = r.json()["token"]
        headers = {"Authorization": f"Bearer {tenant_token}"}
        attester = SimAttester(sim_platform)
        r = client.post(
            "/api/v1/refvalues",
            json={"name": "allowed-measurements", "values": [attester.measurement]},
            headers=headers,
        )
        assert r.status_code == 200, r.text
        yield Env(client, broker, admin, tenant_token, headers, sim_platform, attester, tmp_path)
    broker.store.dispose()
