"""Issue 15 finding 6 through the CLI against a live broker: list/get/delete of tokens,
policies, reference values and platforms; validation errors exit 2; ``audit list``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import deploy, optsdata
from support.layerseal_cli import run_layerseal

pytestmark = pytest.mark.integration


def test_admin_lifecycle_cli(tmp_path: Path, sim_platform_dir: Path) -> None:
    d = deploy(str(tmp_path / "broker.db"), tmp_path, sim_platform_dir)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAYERSEAL_")}
    env["LAYERSEAL_BROKER_URL"] = d.url
    env["LAYERSEAL_BROKER_TOKEN"] = (tmp_path / "admin.token").read_text().strip()

    def ls(*args: str, code: int = 0) -> str:
        r = run_layerseal("broker", *args, env=env, cwd=tmp_path, timeout=60)
        assert r.returncode == code, (args, r.stdout, r.stderr)
        return r.stdout if code == 0 else r.stderr

    try:
        key = d.acme.create_layer_key("registry.local/app", "sha256:" + "1" * 64, optsdata())
        kid = json.loads(key)["kid"].split("/")[-1].split(".")[0]

        # tokens: create with expiry, list (header, status, expiry, last use), get, revoke
        created = json.loads(
            ls("token", "create", "--tenant", "acme", "--scope", "keys:read", "--expires-in", "2h", "--json")
        )
        table = ls("token", "list", "--tenant", "acme")
        assert table.splitlines()[0].split()[:3] == ["TOKEN", "ID", "TENANT"]
        assert "LAST USED" in table and created["token_id"] in table and "never" in table
        got = json.loads(ls("token", "get", created["token_id"], "--json"))
        assert got["status"] == "active" and got["expires_at"] == created["expires_at"]
        assert "revoked" in ls("token", "revoke", created["token_id"])
        assert json.loads(ls("token", "get", created["token_id"], "--json"))["status"] == "revoked"
        assert "expected a duration" in ls(
            "token", "create", "--tenant", "acme", "--scope", "keys:read", "--expires-in", "soon", code=2
        )

        # policies: a misspelt claim or set is refused (exit 2); a good one listed, shown, deleted
        bad = tmp_path / "bad.json"
        bad.write_text(
            json.dumps(
                {
                    "version": "1.0.0",
                    "anyOf": [{"allOf": [{"claim": "measurement", "in": "refvalues:allowed-measurement"}]}],
                }
            )
        )
        err = ls("policy", "set", "--tenant", "acme", str(bad), code=2)
        assert "'allowed-measurement'" in err and "allowed-measurements" in err
        good = tmp_path / "good.json"
        good.write_text(
            json.dumps(
                {
                    "version": "1.0.0",
                    "anyOf": [
                        {
                            "allOf": [
                                {"claim": "measurement", "in": "refvalues:allowed-measurements"},
                                {"claim": "sim.svn", "greaterOrEquals": 1},
                            ]
                        }
                    ],
                }
            )
        )
        ls(
            "policy",
            "set",
            "--tenant",
            "acme",
            str(good),
            "--scope",
            "repository",
            "--target",
            "registry.local/app",
        )
        assert "registry.local/app" in ls("policy", "list", "--tenant", "acme")
        shown = json.loads(
            ls("policy", "get", "--tenant", "acme", "--scope", "repository", "--target", "registry.local/app")
        )
        assert shown["anyOf"][0]["allOf"][1]["claim"] == "sim.svn"
        ls("policy", "delete", "--tenant", "acme", "--scope", "repository", "--target", "registry.local/app")
        assert "no policies" in ls("policy", "list", "--tenant", "acme")
        assert "expected to exist" in ls("policy", "get", "--tenant", "acme", code=2)

        # reference values: validated, listed, shown, removed
        assert "lowercase hex" in ls(
            "refvalues", "add", "--tenant", "acme", "allowed-measurements", "abc", code=2
        )
        ls("refvalues", "add", "--tenant", "acme", "allowed-measurements", "ef" * 48)
        assert "allowed-measurements" in ls("refvalues", "list")
        values = ls("refvalues", "get", "--tenant", "acme", "allowed-measurements").split()
        assert "ef" * 48 in values and d.attester.measurement in values
        ls("refvalues", "remove", "--tenant", "acme", "allowed-measurements", "ef" * 48)
        assert ls("refvalues", "get", "--tenant", "acme", "allowed-measurements").split() == [
            d.attester.measurement
        ]

        # platforms
        platforms = json.loads(ls("platform", "list", "--json"))
        fp = platforms[0]["fingerprint"]
        assert "FINGERPRINT" in ls("platform", "list") and fp in ls("platform", "get", fp)
        ls("platform", "delete", fp)
        assert "no platforms" in ls("platform", "list")

        # audit: table with header, filters, JSON
        table = ls("audit", "list", "--key", kid)
        assert table.splitlines()[0].split()[:4] == ["ID", "TIME", "TENANT", "ACTION"]
        assert "key-create" in table and len(table.splitlines()) == 2
        entries = json.loads(ls("audit", "list", "--action", "token-revoke", "--json"))
        assert [e["action"] for e in entries] == ["token-revoke"] and created["token_id"] in entries[0][
            "reason"
        ]
        assert "no matching" in ls("audit", "list", "--outcome", "deny")
        assert "ISO-8601" in ls("audit", "list", "--since", "last tuesday", code=2)
    finally:
        for c in d.clients:
            c.close()
        for b in d.brokers:
            b.kill()
