"""RCAR against real broker processes (uvicorn) on SQLite and PostgreSQL, with the sim TEE."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from conftest import Deployment, deploy, optsdata
from layerseal.attest.binding import report_data
from layerseal.attest.sim_platform import SimAttester, init_platform
from layerseal.crypto.jwe import decrypt_from_jwk
from layerseal.crypto.keys import generate_key
from layerseal.errors import LayersealError, NotFoundError
from layerseal.kbs.client import EnclaveClient, tee_pubkey_jwk, unwrap_key_packet
from layerseal.kbs.problems import ForbiddenError, PolicyDeniedError

pytestmark = pytest.mark.integration


def kid_path(packet: bytes) -> str:
    return str(json.loads(packet)["kid"]).removeprefix("kbs:///")


def test_release_exactly_requested_keys(deployment: Deployment) -> None:
    opts = [optsdata() for _ in range(4)]
    packets = [
        deployment.acme.create_layer_key("registry.local/app", f"sha256:{i:064x}", o)
        for i, o in enumerate(opts)
    ]
    key = generate_key("EC-P256")
    with EnclaveClient(deployment.url, deployment.attester, key) as enclave:
        wanted = [json.loads(p)["kid"] for p in packets[:3]]
        keks = enclave.get_keys(wanted)
        assert sorted(keks) == sorted(wanted)
        for packet, o in zip(packets[:3], opts[:3], strict=True):
            assert unwrap_key_packet(packet, keks[json.loads(packet)["kid"]]) == o
        # the raw response opens only with the enclave key
        r = httpx.post(
            deployment.url + "/kbs/v0/resources",
            json={"resources": [kid_path(packets[0])]},
            headers={"Authorization": f"Bearer {enclave.token}"},
        )
        assert r.status_code == 200
        body = r.json()
        assert set(json.loads(decrypt_from_jwk(body, key))["resources"]) == {kid_path(packets[0])}
        with pytest.raises(LayersealError):
            decrypt_from_jwk(body, generate_key("EC-P256"))
    audit = deployment.acme.audit()
    releases = [e for e in audit if e["action"] == "release" and e["decision"] == "ok"]
    assert len(json.loads(releases[0]["keys"])) == 3


def test_wrong_measurement_and_debug_are_403(deployment: Deployment) -> None:
    packet = deployment.acme.create_layer_key("registry.local/app", "sha256:" + "1" * 64, optsdata())
    kid = json.loads(packet)["kid"]
    wrong = SimAttester(deployment.platform_dir, measurement="ef" * 48)
    with (
        EnclaveClient(deployment.url, wrong, generate_key("EC-P256")) as enclave,
        pytest.raises(PolicyDeniedError, match=r"HTTP 403.*measurement in"),
    ):
        enclave.get_keys([kid])
    debug = SimAttester(deployment.platform_dir, debug=True)
    with (
        EnclaveClient(deployment.url, debug, generate_key("EC-P256")) as enclave,
        pytest.raises(PolicyDeniedError, match=r"HTTP 403.*'debug equals'"),
    ):
        enclave.get_keys([kid])
    denials = [e for e in deployment.acme.audit() if e["decision"] == "deny"]
    assert {e["measurement"] for e in denials} >= {"ef" * 48}


def test_replayed_nonce_is_401(deployment: Deployment) -> None:
    enclave = EnclaveClient(deployment.url, deployment.attester, generate_key("EC-P256"))
    nonce = enclave.challenge()
    body = enclave.attestation_body(nonce)
    cookie = {"Cookie": f"kbs-session-id={enclave.session_id}"}
    first = httpx.post(deployment.url + "/kbs/v0/attest", json=body, headers=cookie)
    replay = httpx.post(deployment.url + "/kbs/v0/attest", json=body, headers=cookie)
    enclave.close()
    assert first.status_code == 200
    assert replay.status_code == 401
    assert "nonce" in replay.json()["detail"]


def test_evidence_bound_to_another_public_key_is_403(deployment: Deployment) -> None:
    enclave = EnclaveClient(deployment.url, deployment.attester, generate_key("EC-P256"))
    nonce = enclave.challenge()
    other_jwk = tee_pubkey_jwk(generate_key("EC-P256"))
    body = {
        "runtime-data": {"nonce": nonce, "tee-pubkey": enclave.tee_pubkey},
        "tee-evidence": deployment.attester.evidence(report_data(nonce, other_jwk)),
    }
    r = httpx.post(
        deployment.url + "/kbs/v0/attest",
        json=body,
        headers={"Cookie": f"kbs-session-id={enclave.session_id}"},
    )
    enclave.close()
    assert r.status_code == 403
    assert "report data" in r.json()["detail"]


def test_unregistered_platform_is_403(deployment: Deployment, tmp_path: Path) -> None:
    rogue_dir = tmp_path / "rogue"
    init_platform(rogue_dir)
    with (
        EnclaveClient(deployment.url, SimAttester(rogue_dir), generate_key("EC-P256")) as enclave,
        pytest.raises(ForbiddenError, match=r"HTTP 403.*unregistered"),
    ):
        enclave.attest()


def test_key_of_another_tenant(deployment: Deployment) -> None:
    globex_packet = deployment.globex.create_layer_key(
        "registry.local/other", "sha256:" + "2" * 64, optsdata()
    )
    globex_kid = json.loads(globex_packet)["kid"]
    with EnclaveClient(deployment.url, deployment.attester, generate_key("EC-P256")) as enclave:
        # attested for acme's measurement: globex's policy (its own reference values) refuses
        with pytest.raises(PolicyDeniedError, match=r"HTTP 403.*measurement in"):
            enclave.get_keys([globex_kid])
        # the same key id under acme's namespace does not exist
        with pytest.raises(NotFoundError, match="HTTP 404"):
            enclave.get_keys([globex_kid.replace("/globex/", "/acme/")])
    # and acme's publisher token cannot see globex's key at all
    with pytest.raises(NotFoundError, match="HTTP 404"):
        deployment.acme.get_key(globex_kid.rsplit("/", 1)[1].split(".")[0])


def test_revoked_token_is_401(deployment: Deployment) -> None:
    packet = deployment.acme.create_layer_key("registry.local/app", "sha256:" + "3" * 64, optsdata())
    with EnclaveClient(deployment.url, deployment.attester, generate_key("EC-P256")) as enclave:
        token = enclave.attest()
        deployment.admin.revoke_attestation_token(token=token)
        r = httpx.post(
            deployment.url + "/kbs/v0/resources",
            json={"resources": [json.loads(packet)["kid"]]},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert r.status_code == 401
        assert "revoked" in r.json()["detail"]


def test_expired_token_is_401(tmp_path: Path, sim_platform_dir: Path) -> None:
    d = deploy(str(tmp_path / "short.db"), tmp_path, sim_platform_dir, extra=["--token-ttl", "1"])
    try:
        packet = d.acme.create_layer_key("registry.local/app", "sha256:" + "4" * 64, optsdata())
        with EnclaveClient(d.url, d.attester, generate_key("EC-P256")) as enclave:
            token = enclave.attest()
            time.sleep(2.5)  # outlive the 1 s token (and the session it bounds)
            for headers in (
                {"Authorization": f"Bearer {token}"},
                {"Cookie": f"kbs-session-id={enclave.session_id}"},
            ):
                r = httpx.post(
                    d.url + "/kbs/v0/resources",
                    json={"resources": [json.loads(packet)["kid"]]},
                    headers=headers,
                )
                assert r.status_code == 401
                assert "expired" in r.json()["detail"]
            # the client re-attests by itself once its token expired
            assert len(enclave.get_keys([json.loads(packet)["kid"]])) == 1
    finally:
        for c in d.clients:
            c.close()
        for b in d.brokers:
            b.kill()


def test_session_started_on_one_replica_finishes_on_another(deployment: Deployment) -> None:
    if len(deployment.brokers) < 2:
        pytest.skip("one replica on SQLite; the two-replica case runs on PostgreSQL")
    a, b = deployment.brokers[0].url, deployment.brokers[1].url
    packet = deployment.acme.create_layer_key("registry.local/app", "sha256:" + "5" * 64, optsdata())
    kid = json.loads(packet)["kid"]
    key = generate_key("EC-P256")
    on_a = EnclaveClient(a, deployment.attester, key)
    nonce = on_a.challenge()
    body = on_a.attestation_body(nonce)
    cookie = {"Cookie": f"kbs-session-id={on_a.session_id}"}
    r = httpx.post(b + "/kbs/v0/attest", json=body, headers=cookie)
    assert r.status_code == 200, r.text
    # resources with the cookie on A, with the token on B; replay on A fails
    ra = httpx.post(a + "/kbs/v0/resources", json={"resources": [kid]}, headers=cookie)
    rb = httpx.post(
        b + "/kbs/v0/resources",
        json={"resources": [kid]},
        headers={"Authorization": f"Bearer {r.json()['token']}"},
    )
    assert ra.status_code == 200 and rb.status_code == 200
    assert json.loads(decrypt_from_jwk(ra.json(), key)) == json.loads(decrypt_from_jwk(rb.json(), key))
    assert httpx.post(a + "/kbs/v0/attest", json=body, headers=cookie).status_code == 401
    on_a.close()


def test_revoked_key_version_and_rotation(deployment: Deployment) -> None:
    o = optsdata()
    packet = deployment.acme.create_layer_key("registry.local/app", "sha256:" + "6" * 64, o)
    kid = json.loads(packet)["kid"]
    key_id = kid.rsplit("/", 1)[1].split(".")[0]
    new_packet = deployment.acme.rotate_key(key_id, packet=packet)
    assert json.loads(new_packet)["kid"].endswith(".2")
    deployment.acme.revoke_key_version(key_id, 1)
    with EnclaveClient(deployment.url, deployment.attester, generate_key("EC-P256")) as enclave:
        assert enclave.unwrap(new_packet) == o
        with pytest.raises(ForbiddenError, match="revoked"):
            enclave.get_keys([kid])
    deployment.acme.revoke_key(key_id)
    with (
        EnclaveClient(deployment.url, deployment.attester, generate_key("EC-P256")) as enclave,
        pytest.raises(ForbiddenError, match="revoked"),
    ):
        enclave.get_keys([json.loads(new_packet)["kid"]])
