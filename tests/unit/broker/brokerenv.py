"""Helpers for broker unit tests: the test environment and an RCAR round trip."""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.testclient import TestClient

from layerseal.attest.sim_platform import SimAttester
from layerseal.broker.service import Broker
from layerseal.image.digest import Digest
from layerseal.image.encryption import PrivateOptions


def make_optsdata(seed: bytes = b"layer") -> bytes:
    return PrivateOptions(symkey=os.urandom(32), nonce=os.urandom(16), digest=Digest.of(seed)).to_json_bytes()


@dataclass
class Env:
    client: TestClient
    broker: Broker
    admin: dict[str, str]
    tenant_token: str
    headers: dict[str, str]
    platform_dir: Path
    attester: SimAttester
    tmp: Path

    def create_key(self, repo: str = "registry.local/app", optsdata: bytes | None = None) -> dict[str, Any]:
        r = self.client.post(
            "/api/v1/keys",
            json={
                "repository": repo,
                "layer_digest": str(Digest.of(b"x" + os.urandom(4))),
                "optsdata": base64.b64encode(optsdata or make_optsdata()).decode(),
            },
            headers=self.headers,
        )
        assert r.status_code == 201, r.text
        return dict(r.json())
