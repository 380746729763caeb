"""A realistic broker history for console tests: three tenants, releases, denials of several
kinds, a rotation with the previous version retired, a revoked key and unused keys."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from layerseal.attest.sim_platform import SimAttester
from layerseal.crypto.keys import generate_key
from layerseal.errors import LayersealError
from layerseal.image.digest import Digest
from layerseal.image.encryption import PrivateOptions
from layerseal.kbs.client import EnclaveClient, PublisherClient

SCOPES = ["keys:write", "keys:read", "policy:write", "audit:read"]
GLOBEX_MEASUREMENT = "cd" * 48
WRONG_MEASUREMENT = "ef" * 48


def _optsdata() -> bytes:
    return PrivateOptions(os.urandom(32), os.urandom(16), Digest.of(os.urandom(8))).to_json_bytes()


@dataclass
class History:
    url: str
    admin_token: str
    tokens: dict[str, str]
    kids: dict[str, list[str]]  # "tenant/repo" -> kids of its layers
    packets: dict[str, bytes] = field(default_factory=dict)
    debug_denied_key: str = ""  # key id an enclave in debug mode was refused
    retired_kid: str = ""
    revoked_kid: str = ""
    unused_key: str = ""
    never_released_key: str = ""

    def key_id(self, kid: str) -> str:
        return kid.rsplit("/", 1)[1].split(".")[0]


def _fetch(url: str, attester: SimAttester, kids: list[str]) -> bool:
    """One enclave session asking for *kids*; True if released, False if refused."""
    with EnclaveClient(url, attester, generate_key("EC-P256")) as enclave:
        try:
            enclave.get_keys(kids)
        except LayersealError:
            return False
    return True


def build(url: str, admin_token: str, platform_dir: Path) -> History:
    with PublisherClient(url, admin_token) as admin:
        admin.register_platform((platform_dir / "platform-cert.pem").read_bytes(), description="rack 1 (sim)")
        tokens = {
            t: admin.create_token(t, SCOPES, description=f"{t} CI")[1] for t in ("acme", "globex", "initech")
        }
    good = SimAttester(platform_dir)
    globex_enclave = SimAttester(platform_dir, measurement=GLOBEX_MEASUREMENT)
    history = History(url, admin_token, tokens, {})
    clients = {t: PublisherClient(url, tok) for t, tok in tokens.items()}
    try:
        acme, globex, initech = clients["acme"], clients["globex"], clients["initech"]
        acme.add_refvalues("allowed-measurements", [good.measurement])
        globex.add_refvalues("allowed-measurements", [GLOBEX_MEASUREMENT])
        initech.add_refvalues("allowed-measurements", [good.measurement])
        globex.set_policy(
            {
                "version": "1.0.0",
                "anyOf": [
                    {
                        "allOf": [
                            {"claim": "measurement", "in": "refvalues:allowed-measurements"},
                            {"claim": "debug", "equals": False},
                            {"claim": "svn", "greaterOrEquals": 2},
                        ]
                    }
                ],
            }
        )
        layout = {
            ("acme", "registry.local/shop"): 3,
            ("acme", "registry.local/api"): 2,
            ("globex", "registry.local/ledger"): 2,
            ("initech", "registry.local/tps"): 2,
        }
        for (tenant, repo), n in layout.items():
            kids = []
            for i in range(n):
                packet = clients[tenant].create_layer_key(
                    repo, str(Digest.of(f"{repo}/{i}".encode())), _optsdata()
                )
                kid = str(json.loads(packet)["kid"])
                history.packets[kid] = packet
                kids.append(kid)
            history.kids[f"{tenant}/{repo}"] = kids
        shop, api = history.kids["acme/registry.local/shop"], history.kids["acme/registry.local/api"]
        ledger, tps = history.kids["globex/registry.local/ledger"], history.kids["initech/registry.local/tps"]
        # releases
        for _ in range(3):
            assert _fetch(url, good, shop)
        assert _fetch(url, good, api)
        for _ in range(2):
            assert _fetch(url, globex_enclave, ledger)
        # denials: a debug enclave, a wrong measurement, another tenant's measurement, a low svn
        assert not _fetch(url, SimAttester(platform_dir, debug=True), shop[:1])
        history.debug_denied_key = history.key_id(shop[0])
        assert not _fetch(url, SimAttester(platform_dir, measurement=WRONG_MEASUREMENT), api)
        assert not _fetch(url, good, ledger[:1])
        assert not _fetch(url, SimAttester(platform_dir, measurement=GLOBEX_MEASUREMENT, svn=1), ledger)
        # rotation: shop layer 1 gets version 2, version 1 retired; asking for v1 is refused
        key1 = history.key_id(shop[1])
        acme.rotate_key(key1, packet=history.packets[shop[1]], retire_previous=True)
        history.retired_kid = shop[1]
        assert not _fetch(url, good, [shop[1]])
        assert _fetch(url, good, [shop[1].rsplit(".", 1)[0] + ".2"])
        # a revoked key
        globex.revoke_key(history.key_id(ledger[1]))
        history.revoked_kid = ledger[1]
        assert not _fetch(url, globex_enclave, [ledger[1]])
        # initech: one key marked unused, one never asked for
        initech.mark_unused(history.key_id(tps[0]))
        history.unused_key = history.key_id(tps[0])
        history.never_released_key = history.key_id(tps[1])
    finally:
        for c in clients.values():
            c.close()
    return history
