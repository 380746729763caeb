"""The KBS RCAR endpoints through Starlette's TestClient: happy path and each denial."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from brokerenv import Env
from starlette.testclient import TestClient

from layerseal.attest.binding import report_data
from layerseal.attest.sample import SampleAttester
from layerseal.attest.sim_platform import SimAttester
from layerseal.broker.app import create_app
from layerseal.broker.ratelimit import RateLimiter
from layerseal.broker.server import open_broker
from layerseal.broker.service import BrokerConfig
from layerseal.crypto.jwe import decrypt_from_jwk
from layerseal.crypto.keys import generate_key
from layerseal.errors import WrongKeyError
from layerseal.kbs.client import tee_pubkey_jwk
from layerseal.kbs.packets import unwrap_key_packet


def rcar(client: TestClient, attester: Any, key: Any = None, *, tee: str = "sim") -> tuple[str, str, Any]:
    key = key or generate_key("EC-P256")
    jwk = tee_pubkey_jwk(key)
    r = client.post("/kbs/v0/auth", json={"version": "0.4.0", "tee": tee, "extra-params": ""})
    assert r.status_code == 200, r.text
    sid = r.cookies["kbs-session-id"]
    nonce = r.json()["nonce"]
    assert len(base64.b64decode(nonce)) == 32
    body = {
        "runtime-data": {"nonce": nonce, "tee-pubkey": jwk},
        "tee-evidence": {
            "primary_evidence": attester.evidence(report_data(nonce, jwk)),
            "additional_evidence": "",
        },
    }
    client.cookies.clear()
    r = client.post("/kbs/v0/attest", json=body, headers={"Cookie": f"kbs-session-id={sid}"})
    client.cookies.clear()
    return sid, r, key  # type: ignore[return-value]


def test_full_flow_batch_release_opens_only_with_enclave_key(env: Env) -> None:
    a = env.create_key()
    b = env.create_key()
    env.create_key()  # a third key that is not requested
    _sid, r, key = rcar(env.client, env.attester)
    assert r.status_code == 200, r.text
    token = r.json()["token"]
    paths = [a["kid"].removeprefix("kbs:///"), b["kid"].removeprefix("kbs:///")]
    r = env.client.post(
        "/kbs/v0/resources", json={"resources": paths}, headers={"Authorization": f"Bearer {token}"}
    )
    assert r.status_code == 200, r.text
    plain = json.loads(decrypt_from_jwk(r.json(), key))
    assert sorted(plain["resources"]) == sorted(paths)
    kek = base64.b64decode(plain["resources"][paths[0]])
    optsdata = unwrap_key_packet(base64.b64decode(a["packet"]), kek)
    assert json.loads(optsdata)["digest"].startswith("sha256:")
    other = generate_key("EC-P256")
    with pytest.raises(WrongKeyError):
        decrypt_from_jwk(r.json(), other)


def test_single_resource_with_cookie(env: Env) -> None:
    a = env.create_key()
    sid, r, key = rcar(env.client, env.attester)
    assert r.status_code == 200
    path = a["kid"].removeprefix("kbs:///")
    r = env.client.get(f"/kbs/v0/resource/{path}", headers={"Cookie": f"kbs-session-id={sid}"})
    assert r.status_code == 200, r.text
    assert len(decrypt_from_jwk(r.json(), key)) == 32


def test_replayed_nonce_is_401(env: Env) -> None:
    key = generate_key("EC-P256")
    jwk = tee_pubkey_jwk(key)
    r = env.client.post("/kbs/v0/auth", json={"version": "0.4.0", "tee": "sim"})
    sid, nonce = r.cookies["kbs-session-id"], r.json()["nonce"]
    body = {
        "runtime-data": {"nonce": nonce, "tee-pubkey": jwk},
        "tee-evidence": env.attester.evidence(report_data(nonce, jwk)),
    }
    env.client.cookies.clear()
    first = env.client.post("/kbs/v0/attest", json=body, headers={"Cookie": f"kbs-session-id={sid}"})
    second = env.client.post("/kbs/v0/attest", json=body, headers={"Cookie": f"kbs-session-id={sid}"})
    assert first.status_code == 200
    assert second.status_code == 401
    assert second.headers["content-type"] == "application/problem+json"
    assert "nonce" in second.json()["detail"]


def test_wrong_measurement_is_403_naming_condition(env: Env) -> None:
    a = env.create_key()
    other = SimAttester(env.platform_dir, measurement="ab" * 48)
    _, r, _ = rcar(env.client, other)
    token = r.json()["token"]
    r = env.client.post(
        "/kbs/v0/resources", json={"resources": [a["kid"]]}, headers={"Authorization": f"Bearer {token}"}
    )
    assert r.status_code == 403
    assert "measurement in" in r.json()["detail"]
    assert r.json()["type"].endswith("policy-denied")


def test_denial_names_the_condition_but_not_the_policy_contents(env: Env) -> None:
    """The measurement list of a policy is the tenant's business: the client learns which
    condition failed, the audit log gets the details."""
    secret_list = ["cd" * 48, "ef" * 48]
    policy = {"version": "1.0.0", "anyOf": [{"allOf": [{"claim": "measurement", "in": secret_list}]}]}
    r = env.client.put("/api/v1/policies", json={"policy": policy}, headers=env.headers)
    assert r.status_code == 200, r.text
    a = env.create_key()
    _, r, _ = rcar(env.client, env.attester)
    r = env.client.post(
        "/kbs/v0/resources",
        json={"resources": [a["kid"]]},
        headers={"Authorization": f"Bearer {r.json()['token']}"},
    )
    assert r.status_code == 403
    detail = r.json()["detail"]
    assert "anyOf[0].allOf[0] 'measurement in'" in detail
    assert secret_list[0] not in detail and env.attester.measurement not in detail
    reason = list(env.broker.store.iter_audit())[-1].content["reason"]
    assert secret_list[0] in reason and env.attester.measurement in reason


def test_debug_enclave_is_403(env: Env) -> None:
    a = env.create_key()
    _, r, _ = rcar(env.client, SimAttester(env.platform_dir, debug=True))
    r = env.client.post(
        "/kbs/v0/resources",
        json={"resources": [a["kid"]]},
        headers={"Authorization": f"Bearer {r.json()['token']}"},
    )
    assert r.status_code == 403
    assert "'debug equals'" in r.json()["detail"]


def test_sample_tee_is_refused_unless_the_broker_allows_it(env: Env) -> None:
    """Unsigned 'sample' evidence proves nothing: a tenant policy that does not mention the
    tee (svn >= 2) must not release to it on a production broker."""
    lax = {"version": "1.0.0", "anyOf": [{"allOf": [{"claim": "svn", "greaterOrEquals": 2}]}]}
    assert env.client.put("/api/v1/policies", json={"policy": lax}, headers=env.headers).status_code == 200
    r = env.client.post("/kbs/v0/auth", json={"version": "0.4.0", "tee": "sample"})
    assert r.status_code == 403
    assert "--allow-sample-tee" in r.json()["detail"]


def test_sample_tee_with_allow_flag_attests_but_default_policy_refuses(env: Env) -> None:
    broker = open_broker(str(env.tmp / "broker.db"), config=BrokerConfig(allow_sample_tee=True))
    try:
        with TestClient(create_app(broker, limiter=RateLimiter(1000, 1000))) as client:
            a = env.create_key()
            _, r, _ = rcar(client, SampleAttester(), tee="sample")
            assert r.status_code == 200, r.text
            r = client.post(
                "/kbs/v0/resources",
                json={"resources": [a["kid"]]},
                headers={"Authorization": f"Bearer {r.json()['token']}"},
            )
            assert r.status_code == 403
            assert "'tee notEquals'" in r.json()["detail"]
    finally:
        broker.close()
        broker.store.dispose()


def test_evidence_bound_to_other_key_is_403(env: Env) -> None:
    key, other = generate_key("EC-P256"), generate_key("EC-P256")
    jwk, other_jwk = tee_pubkey_jwk(key), tee_pubkey_jwk(other)
    r = env.client.post("/kbs/v0/auth", json={"version": "0.4.0", "tee": "sim"})
    sid, nonce = r.cookies["kbs-session-id"], r.json()["nonce"]
    body = {
        "runtime-data": {"nonce": nonce, "tee-pubkey": jwk},
        "tee-evidence": env.attester.evidence(report_data(nonce, other_jwk)),
    }
    env.client.cookies.clear()
    r = env.client.post("/kbs/v0/attest", json=body, headers={"Cookie": f"kbs-session-id={sid}"})
    assert r.status_code == 403
    assert "report data" in r.json()["detail"]


def test_unknown_key_is_404_and_no_session_is_401(env: Env) -> None:
    _, r, _ = rcar(env.client, env.attester)
    headers = {"Authorization": f"Bearer {r.json()['token']}"}
    r = env.client.get("/kbs/v0/resource/acme/layer-key/k" + "a" * 26, headers=headers)
    assert r.status_code == 404
    r = env.client.get("/kbs/v0/resource/acme/layer-key/k" + "a" * 26)
    assert r.status_code == 401
    r = env.client.get(
        "/kbs/v0/resource/acme/layer-key/k" + "a" * 26, headers={"Authorization": "Bearer x.y.z"}
    )
    assert r.status_code == 401


def test_malformed_requests_are_400(env: Env) -> None:
    assert env.client.post("/kbs/v0/auth", content=b"{not json").status_code == 400
    assert env.client.post("/kbs/v0/auth", json={"version": "0.4.0", "tee": "tdx-nope"}).status_code == 400
    assert env.client.post("/kbs/v0/auth", json=[1, 2]).status_code == 400
    _, r, _ = rcar(env.client, env.attester)
    headers = {"Authorization": f"Bearer {r.json()['token']}"}
    r = env.client.post("/kbs/v0/resources", json={"resources": ["../../etc"]}, headers=headers)
    assert r.status_code == 400
    assert r.headers["content-type"] == "application/problem+json"


def test_policies_are_evaluated_in_the_evaluation_processes_not_on_the_loop(env: Env) -> None:
    """A release whose decision is not cached is judged by another process (an evaluating
    thread would hold the GIL the event loop needs); a dead evaluator denies, then recovers."""
    import os
    import signal

    from layerseal.broker.service import evaluation as service

    a = env.create_key()
    _, r, _ = rcar(env.client, env.attester)
    headers = {"Authorization": f"Bearer {r.json()['token']}"}
    r = env.client.post("/kbs/v0/resources", json={"resources": [a["kid"]]}, headers=headers)
    assert r.status_code == 200, r.text
    pool = service._pool
    assert pool is not None
    pids = set(pool._processes)  # type: ignore[attr-defined]
    assert pids and os.getpid() not in pids
    # a new policy (new digest): evaluated again, in the pool; kill the evaluators first
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    strict = {"version": "1.0.0", "anyOf": [{"allOf": [{"claim": "svn", "greaterOrEquals": 0}]}]}
    assert env.client.put("/api/v1/policies", json={"policy": strict}, headers=env.headers).status_code == 200
    r = env.client.post("/kbs/v0/resources", json={"resources": [a["kid"]]}, headers=headers)
    # the dead pool is noticed at submission (a new one serves) or while waiting (denied)
    assert r.status_code == 200 or "evaluation failed" in r.json()["detail"], r.text
    r = env.client.post("/kbs/v0/resources", json={"resources": [a["kid"]]}, headers=headers)
    assert r.status_code == 200, r.text
    assert service._pool is not pool
