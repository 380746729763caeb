"""Publisher and admin endpoints: scopes, tenants, key lifecycle, policies, problems, ops endpoints."""

from __future__ import annotations

import base64
import json

import pytest
from brokerenv import Env, make_optsdata

from layerseal.errors import BadInputError, NotFoundError
from layerseal.kbs.client import PublisherClient
from layerseal.kbs.problems import ForbiddenError, UnauthenticatedError


def test_missing_or_bad_token_is_401_problem(env: Env) -> None:
    for headers in (
        {},
        {"Authorization": "Bearer nope"},
        {"Authorization": "Bearer lsk_0011223344556677_wrong"},
    ):
        r = env.client.get("/api/v1/keys", headers=headers)
        assert r.status_code == 401
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["status"] == 401
        assert "lsk_" not in r.json()["detail"].replace("lsk_<id>", "")


def test_key_lifecycle_versions_and_cleanup(env: Env) -> None:
    created = env.create_key("registry.local/app")
    key_id = created["key"]["key_id"]
    assert created["kid"] == f"kbs:///acme/layer-key/{key_id}.1"
    packet = base64.b64decode(created["packet"])
    r = env.client.post(
        f"/api/v1/keys/{key_id}/rotate",
        json={"packet": base64.b64encode(packet).decode()},
        headers=env.headers,
    )
    assert r.status_code == 201 and r.json()["kid"].endswith(".2")
    r = env.client.post(f"/api/v1/keys/{key_id}/versions/1/retire", json={}, headers=env.headers)
    assert [v["status"] for v in r.json()["key"]["versions"]] == ["retired", "active"]
    assert env.client.delete(f"/api/v1/keys/{key_id}", headers=env.headers).status_code == 403
    r = env.client.post(f"/api/v1/keys/{key_id}/unused", json={"unused": True}, headers=env.headers)
    assert r.json()["key"]["unused"] is True
    assert env.client.delete(f"/api/v1/keys/{key_id}", headers=env.headers).status_code == 204
    assert env.client.get(f"/api/v1/keys/{key_id}", headers=env.headers).status_code == 404


def test_scopes_and_tenants_are_enforced(env: Env) -> None:
    r = env.client.post("/api/v1/tokens", json={"tenant": "acme", "scopes": ["keys:read"]}, headers=env.admin)
    reader = {"Authorization": f"Bearer {r.json()['token']}"}
    body = {
        "repository": "registry.local/app",
        "layer_digest": "sha256:" + "0" * 64,
        "optsdata": base64.b64encode(make_optsdata()).decode(),
    }
    r = env.client.post("/api/v1/keys", json=body, headers=reader)
    assert r.status_code == 403 and "keys:write" in r.json()["detail"]
    r = env.client.post("/api/v1/keys", json={**body, "tenant": "globex"}, headers=env.headers)
    assert r.status_code == 403 and "globex" in r.json()["detail"]
    assert (
        env.client.post(
            "/api/v1/tokens", json={"tenant": "acme", "scopes": ["admin"]}, headers=env.headers
        ).status_code
        == 403
    )
    # admin acts for a tenant it names; a tenant's token lists only its own keys
    r = env.client.post("/api/v1/keys", json={**body, "tenant": "globex"}, headers=env.admin)
    assert r.status_code == 201
    listed = env.client.get("/api/v1/keys", headers=env.headers).json()["keys"]
    assert all(k["tenant"] == "acme" for k in listed)


def test_create_key_rejects_bad_optsdata_and_digest(env: Env) -> None:
    good = {
        "repository": "registry.local/app",
        "layer_digest": "sha256:" + "0" * 64,
        "optsdata": base64.b64encode(make_optsdata()).decode(),
    }
    for bad in (
        {"optsdata": "!!!"},
        {"optsdata": base64.b64encode(b"{}").decode()},
        {"layer_digest": "md5:00"},
        {"repository": "UPPER/case"},
    ):
        r = env.client.post("/api/v1/keys", json={**good, **bad}, headers=env.headers)
        assert r.status_code == 400, r.text


def test_policy_set_list_and_release_uses_most_specific(env: Env) -> None:
    policy = {"version": "1.0.0", "anyOf": [{"allOf": [{"claim": "sim.svn", "greaterOrEquals": 99}]}]}
    r = env.client.put(
        "/api/v1/policies",
        json={"scope": "repository", "target": "registry.local/strict", "policy": policy},
        headers=env.headers,
    )
    assert r.status_code == 200, r.text
    r = env.client.put(
        "/api/v1/policies", json={"policy": {"version": "1.0.0", "anyOf": []}}, headers=env.headers
    )
    assert r.status_code == 400
    listed = env.client.get("/api/v1/policies", headers=env.headers).json()["policies"]
    assert listed[0]["target"] == "registry.local/strict"
    strict = env.create_key("registry.local/strict")
    lax = env.create_key("registry.local/lax")
    from test_broker_rcar_api import rcar

    _, r, _ = rcar(env.client, env.attester)
    headers = {"Authorization": f"Bearer {r.json()['token']}"}
    ok = env.client.post("/kbs/v0/resources", json={"resources": [lax["kid"]]}, headers=headers)
    assert ok.status_code == 200
    denied = env.client.post(
        "/kbs/v0/resources", json={"resources": [lax["kid"], strict["kid"]]}, headers=headers
    )
    assert denied.status_code == 403 and "sim.svn greaterOrEquals" in denied.json()["detail"]


def test_publisher_client_over_test_transport(env: Env) -> None:
    client = PublisherClient("http://testserver", env.tenant_token, transport=env.client._transport)  # type: ignore[attr-defined]
    packet = client.create_layer_key("registry.local/app", "sha256:" + "9" * 64, make_optsdata())
    kid = json.loads(packet)["kid"]
    key_id = kid.rsplit("/", 1)[1].split(".")[0]
    assert client.get_key(key_id)["kid"] == kid
    assert any(k["key_id"] == key_id for k in client.list_keys("registry.local/app"))
    assert client.add_refvalues("golden", ["aa", "bb"]) == 2
    assert client.list_refvalues()["acme"]["golden"] == ["aa", "bb"]
    assert any(e["action"] == "key-create" for e in client.audit())
    try:
        client.get_key("k" + "z" * 26)
    except NotFoundError as exc:
        assert "HTTP 404" in str(exc)
    else:
        raise AssertionError("unknown key did not raise")
    try:
        client.list_platforms()
    except ForbiddenError as exc:
        assert "admin" in str(exc)
    else:
        raise AssertionError("tenant token listed platforms")
    bad = PublisherClient("http://testserver", "lsk_00_x", transport=env.client._transport)  # type: ignore[attr-defined]
    try:
        bad.list_keys()
    except UnauthenticatedError as exc:
        assert "HTTP 401" in str(exc)
    else:
        raise AssertionError("bad token accepted")


def test_ops_endpoints(env: Env) -> None:
    env.create_key()
    assert env.client.get("/healthz").json() == {"status": "ok"}
    metrics = env.client.get("/metrics").text
    assert 'layerseal_broker_requests_total{endpoint="keys_create",status="201"}' in metrics
    assert "layerseal_broker_request_seconds_bucket" in metrics
    doc = env.client.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.") and "/kbs/v0/resources" in doc["paths"]
    r = env.client.get("/no/such/thing")
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"


def test_auth_rate_limit(env: Env) -> None:
    from starlette.testclient import TestClient

    from layerseal.broker.app import create_app
    from layerseal.broker.ratelimit import RateLimiter

    limited = TestClient(create_app(env.broker, limiter=RateLimiter(rate=0.001, burst=2)))
    statuses = [
        limited.post("/kbs/v0/auth", json={"version": "0.4.0", "tee": "sim"}).status_code for _ in range(4)
    ]
    assert statuses == [200, 200, 429, 429]


def test_challenge_flood_from_many_addresses_stores_nothing_and_denies_no_one(env: Env) -> None:
    """The flood that filled the 10,000-session cap from 120 addresses: challenges are now
    stateless (MAC'd cookies), so it leaves no row behind and a real enclave still attests."""
    from sqlalchemy import func, select

    from layerseal.broker import schema

    body = {"version": "0.4.0", "tee": "sim"}
    for i in range(12_000):
        env.broker.auth(f"10.0.{i % 120}.1", body)
    with env.broker.store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(schema.sessions)).scalar_one() == 0
    from test_broker_rcar_api import rcar

    _sid, r, _key = rcar(env.client, env.attester)
    assert r.status_code == 200, r.text


def test_forged_or_expired_challenge_cookie_is_401(env: Env) -> None:
    r = env.client.post("/kbs/v0/auth", json={"version": "0.4.0", "tee": "sim"})
    cookie = r.cookies["kbs-session-id"]
    tee, expires, nonce, mac = cookie.split(".")
    forged = ".".join([tee, str(int(expires) + 3600), nonce, mac])
    body = {"runtime-data": {"nonce": r.json()["nonce"], "tee-pubkey": {}}, "tee-evidence": {}}
    env.client.cookies.clear()
    for value in (forged, "x" * 40, cookie[:-2]):
        r = env.client.post("/kbs/v0/attest", json=body, headers={"Cookie": f"kbs-session-id={value}"})
        assert r.status_code in (400, 401), r.text
    broker = env.broker
    challenge = broker.auth("c", {"version": "0.4.0", "tee": "sim"})
    with pytest.raises(UnauthenticatedError, match="expired"):
        broker.attestation.open_challenge(challenge.session_id, challenge.expires_at + 1)


def test_api_tokens_can_expire_and_listings_show_it(env: Env) -> None:
    import time

    from layerseal.cli.broker import parse_expires

    soon = time.time() + 3600
    r = env.client.post(
        "/api/v1/tokens",
        json={"tenant": "acme", "scopes": ["keys:read"], "expires_at": soon},
        headers=env.admin,
    )
    assert r.status_code == 201, r.text
    token_id, token = r.json()["token_id"], r.json()["token"]
    headers = {"Authorization": f"Bearer {token}"}
    assert env.client.get("/api/v1/keys", headers=headers).status_code == 200
    listed = {t["token_id"]: t for t in env.client.get("/api/v1/tokens", headers=env.admin).json()["tokens"]}
    assert listed[token_id]["expires_at"] == soon and listed[token_id]["expired"] is False
    env.broker.clock = lambda: soon + 1  # an hour later
    r = env.client.get("/api/v1/keys", headers=headers)
    assert r.status_code == 401 and "expired" in r.json()["detail"]
    listed = {t["token_id"]: t for t in env.client.get("/api/v1/tokens", headers=env.admin).json()["tokens"]}
    assert listed[token_id]["expired"] is True
    for bad in ("tomorrow", True, 1.0, soon + 20 * 366 * 86400):
        r = env.client.post(
            "/api/v1/tokens",
            json={"tenant": "acme", "scopes": ["keys:read"], "expires_at": bad},
            headers=env.admin,
        )
        assert r.status_code == 400, (bad, r.text)
    assert parse_expires("30d", 1000.0) == 1000.0 + 30 * 86400
    assert parse_expires("90m", 0.0) == 5400.0
    assert parse_expires("2027-01-31", 0.0) == 1801353600.0
    with pytest.raises(BadInputError, match="--expires"):
        parse_expires("soon", 0.0)


def test_ipv6_clients_share_a_bucket_per_64() -> None:
    from layerseal.broker.ratelimit import RateLimiter

    limiter = RateLimiter(rate=0.001, burst=2)
    # one host rotating through the addresses of its /64 gets no more than one address
    assert [limiter.allow(f"2001:db8:1:2::{i:x}") for i in range(4)] == [True, True, False, False]
    assert limiter.allow("2001:db8:1:3::1")  # another /64
    assert [limiter.allow("192.0.2.1"), limiter.allow("192.0.2.2")] == [True, True]
