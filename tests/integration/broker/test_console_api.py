"""Console JSON views, the policy dry-run CLI and console sessions on SQLite and PostgreSQL
(two replicas on PostgreSQL: a session opened on one is valid on the other)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import Deployment, optsdata, running_deployment
from layerseal.attest.sim_platform import SimAttester
from layerseal.crypto.keys import generate_key
from layerseal.errors import LayersealError
from layerseal.kbs.client import EnclaveClient
from support.layerseal_cli import run_layerseal

pytestmark = pytest.mark.integration


@pytest.fixture
def console_deployment(db_url: str, tmp_path: Path, sim_platform_dir: Path) -> Iterator[Deployment]:
    with running_deployment(db_url, tmp_path, sim_platform_dir, extra=["--console"]) as d:
        yield d


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return run_layerseal(*args, timeout=120)


def test_filters_dry_run_cli_and_sessions(console_deployment: Deployment, tmp_path: Path) -> None:
    d = console_deployment
    packets = [
        d.acme.create_layer_key("registry.local/app", f"sha256:{i:064x}", optsdata()) for i in range(2)
    ]
    kids = [json.loads(p)["kid"] for p in packets]
    with EnclaveClient(d.url, d.attester, generate_key("EC-P256")) as enclave:
        enclave.get_keys(kids)
    debug = SimAttester(d.platform_dir, debug=True)
    with (
        EnclaveClient(d.brokers[-1].url, debug, generate_key("EC-P256")) as enclave,
        pytest.raises(LayersealError),
    ):
        enclave.get_keys(kids[:1])
    admin_token = (d.workdir / "admin.token").read_text().strip()
    h = {"Authorization": f"Bearer {admin_token}"}
    for broker in d.brokers:  # every replica answers from the shared database
        r = httpx.get(
            broker.url + "/api/v1/console/audit",
            params={"tenant": "acme", "key": kids[0], "outcome": "deny"},
            headers=h,
        )
        assert r.status_code == 200, r.text
        (denial,) = r.json()["entries"]
        assert denial["failing_conditions"][0]["condition"] == "debug equals false"
        assert denial["claims"]["debug"] is True
    platform = denial["platform"]
    r = httpx.get(
        d.url + "/api/v1/console/audit", params={"platform": platform, "action": "release"}, headers=h
    )
    assert {e["decision"] for e in r.json()["entries"]} == {"ok", "deny"}
    r = httpx.get(d.url + "/api/v1/console/audit", params={"repository": "registry.local/app"}, headers=h)
    assert {e["action"] for e in r.json()["entries"]} == {"key-create", "release"}
    images = httpx.get(d.url + "/api/v1/console/images", params={"tenant": "acme"}, headers=h).json()
    (repo,) = images["repositories"]
    assert sorted(k["releases"] for k in repo["keys"]) == [1, 1]
    assert sorted(k["denials"] for k in repo["keys"]) == [0, 1]

    # the dry-run CLI: against the recorded attestation, then against claims from a file
    policy = tmp_path / "policy.json"
    policy.write_text(
        json.dumps({"version": "1.0.0", "anyOf": [{"allOf": [{"claim": "svn", "greaterOrEquals": 1}]}]})
    )
    base = [
        "broker",
        "policy",
        "dry-run",
        str(policy),
        "--url",
        d.url,
        "--token-file",
        str(d.workdir / "admin.token"),
    ]
    out = cli(*base, "--tenant", "acme", "--audit-entry", str(denial["id"]))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(
        f"released under this policy (tenant acme): changed from the recorded deny of audit entry {denial['id']}"
    )
    assert "deciding: anyOf[0] holds" in out.stdout
    claims = tmp_path / "claims.json"
    claims.write_text(json.dumps(dict(denial["claims"], svn=0)))
    out = cli(*base, "--tenant", "acme", "--claims", str(claims), "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["deciding"] == ["anyOf[0]: 'svn greaterOrEquals 1' fails (svn = 0)"]
    out = cli(*base, "--audit-entry", str(denial["id"]))  # an admin must name the tenant
    assert out.returncode == 2 and "tenant" in out.stderr and "Traceback" not in out.stderr
    claims.write_text("[1]")
    out = cli(*base, "--tenant", "acme", "--claims", str(claims))
    assert out.returncode == 2 and "claims file" in out.stderr

    # a console session opened on one replica works on every replica (shared sealed key)
    with httpx.Client(base_url=d.url) as c:
        csrf = c.get("/console/login").cookies["layerseal-console-csrf"]
        r = c.post("/console/login", data={"token": admin_token, "csrf": csrf})
        assert r.status_code == 303
        session = {k: v for k, v in c.cookies.items() if k == "layerseal-console"}
    for broker in d.brokers:
        r = httpx.get(broker.url + "/console/audit", params={"outcome": "deny"}, cookies=session)
        assert r.status_code == 200 and "debug equals false" in r.text
