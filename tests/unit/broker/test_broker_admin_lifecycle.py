"""Issue 15 finding 6: the admin lifecycle (tokens with expiry and last use, get/delete),
validated policies and reference values, and audit search with filters."""

from __future__ import annotations

import time

from brokerenv import Env

M = "ab" * 48  # a SHA-384 measurement


def _token(env: Env, **extra: object) -> dict[str, object]:
    r = env.client.post(
        "/api/v1/tokens", json={"tenant": "acme", "scopes": ["keys:read"], **extra}, headers=env.admin
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


def test_token_expiry_last_use_get_and_delete(env: Env) -> None:
    created = _token(env, expires_in=3600)
    token_id = str(created["token_id"])
    assert isinstance(created["expires_at"], float) and created["expires_at"] > time.time() + 3000
    view = env.client.get(f"/api/v1/tokens/{token_id}", headers=env.admin).json()
    assert view["status"] == "active" and view["last_used_at"] is None
    own = {"Authorization": f"Bearer {created['token']}"}
    assert env.client.get("/api/v1/keys", headers=own).status_code == 200
    view = env.client.get(f"/api/v1/tokens/{token_id}", headers=env.admin).json()
    assert view["last_used_at"] is not None and abs(view["last_used_at"] - time.time()) < 60
    listed = {t["token_id"]: t for t in env.client.get("/api/v1/tokens", headers=env.admin).json()["tokens"]}
    assert listed[token_id]["expires_at"] == created["expires_at"]

    # past its expiry the token no longer authenticates, and is listed as expired
    real = env.broker.clock
    env.broker.clock = lambda: real() + 7200
    try:
        r = env.client.get("/api/v1/keys", headers=own)
        assert r.status_code == 401 and "expired" in r.json()["detail"]
        assert env.client.get(f"/api/v1/tokens/{token_id}", headers=env.admin).json()["status"] == "expired"
    finally:
        env.broker.clock = real

    assert env.client.delete(f"/api/v1/tokens/{token_id}", headers=env.admin).status_code == 204
    assert env.client.get(f"/api/v1/tokens/{token_id}", headers=env.admin).json()["status"] == "revoked"
    assert env.client.get("/api/v1/tokens/nosuchtoken", headers=env.admin).status_code == 404


def test_token_expiry_out_of_range_is_refused(env: Env) -> None:
    for bad in (0, -5, "soon", True, 1e12):
        r = env.client.post(
            "/api/v1/tokens",
            json={"tenant": "acme", "scopes": ["keys:read"], "expires_in": bad},
            headers=env.admin,
        )
        assert r.status_code == 400 and "expires_in" in r.json()["detail"], (bad, r.text)


def _set_policy(env: Env, *conditions: dict[str, object]) -> tuple[int, str]:
    doc = {"version": "1.0.0", "anyOf": [{"allOf": list(conditions)}]}
    r = env.client.put("/api/v1/policies", json={"policy": doc}, headers=env.headers)
    return r.status_code, r.json().get("detail", "")


def test_policy_with_unknown_claim_is_refused(env: Env) -> None:
    status, detail = _set_policy(env, {"claim": "mesurement", "in": "refvalues:allowed-measurements"})
    assert status == 400 and "expected a known claim" in detail and "'mesurement'" in detail
    status, detail = _set_policy(env, {"claim": "snp.guestsvn", "greaterOrEquals": 2})
    assert status == 400 and "guest_svn" in detail and "snp.guestsvn" in detail
    status, detail = _set_policy(env, {"claim": "svn.major", "equals": 1})
    assert status == 400 and "'svn' alone" in detail
    # known claims, TEE fields, free-form init_data and raw CEL pass
    status, detail = _set_policy(
        env,
        {"claim": "measurement", "in": "refvalues:allowed-measurements"},
        {"claim": "sim.platform", "exists": True},
        {"claim": "tdx.rtmr3", "notEquals": "00" * 48},
        {"claim": "init_data.image", "exists": False},
        {"cel": "claims.svn >= 0"},
    )
    assert status == 200, detail


def test_policy_naming_a_missing_refvalue_set_is_refused(env: Env) -> None:
    status, detail = _set_policy(env, {"claim": "measurement", "in": "refvalues:allowed-measurement"})
    assert status == 400
    assert "'allowed-measurement'" in detail and "allowed-measurements" in detail and "seen none" in detail
    # nothing was stored: the default policy still applies
    assert env.client.get("/api/v1/policies", headers=env.headers).json()["policies"] == []


def test_policy_with_malformed_literal_measurement_is_refused(env: Env) -> None:
    status, detail = _set_policy(env, {"claim": "measurement", "in": ["not-hex"]})
    assert status == 400 and "lowercase hex" in detail and "'not-hex'" in detail
    assert _set_policy(env, {"claim": "measurement", "in": [M]})[0] == 200


def test_measurement_refvalues_are_validated(env: Env) -> None:
    def add(name: str, *values: str) -> tuple[int, str]:
        r = env.client.post(
            "/api/v1/refvalues", json={"name": name, "values": list(values)}, headers=env.headers
        )
        return r.status_code, r.json().get("detail", "")

    # allowed-measurements is what the default policy compares the measurement with
    status, detail = add("allowed-measurements", "XYZ")
    assert status == 400 and "lowercase hex" in detail
    status, detail = add("allowed-measurements", M[:-2])  # truncated
    assert status == 400 and "94 characters" in detail
    status, detail = add("allowed-measurements", M.upper())
    assert status == 400
    status, detail = add("allowed-measurements", "cd" * 32)  # other length than the stored sha384
    assert status == 400 and "one length" in detail
    assert add("allowed-measurements", M) == (200, "")
    # a set a policy compares with a digest claim is checked too; other sets are free-form
    assert add("debug-builds", "anything goes")[0] == 200
    assert add("good-rtmr", "11" * 48)[0] == 200
    assert _set_policy(env, {"claim": "tdx.rtmr3", "in": "refvalues:good-rtmr"})[0] == 200
    status, detail = add("good-rtmr", "short")
    assert status == 400 and "'good-rtmr'" in detail
    # a policy comparing a measurement with a set of non-digests is refused
    status, detail = _set_policy(env, {"claim": "measurement", "in": "refvalues:debug-builds"})
    assert status == 400 and "'debug-builds'" in detail and "lowercase hex" in detail


def test_audit_search_filters(env: Env) -> None:
    k1 = env.create_key("registry.local/app")
    k2 = env.create_key("registry.local/other")
    key1 = k1["key"]["key_id"]

    def search(**params: object) -> list[dict[str, object]]:
        r = env.client.get("/api/v1/audit", params=params, headers=env.admin)
        assert r.status_code == 200, r.text
        return list(r.json()["entries"])

    every = search()
    assert {e["action"] for e in every} >= {"key-create", "token-create", "platform-register"}
    by_key = search(key=key1)
    assert [e["action"] for e in by_key] == ["key-create"] and key1 in str(by_key[0]["keys"])
    by_repo = search(repository="registry.local/other", tenant="acme")
    assert [k2["key"]["key_id"] in str(e["keys"]) for e in by_repo] == [True]
    assert all(e["action"] == "token-create" for e in search(action="token-create"))
    assert search(outcome="deny") == []
    assert search(since="2999-01-01T00:00:00Z") == []
    assert len(search(until="2999-01-01T00:00:00Z")) == len(every)
    assert len(search(limit=2)) == 2
    first_two = search(limit=2)
    assert search(after=first_two[-1]["id"], limit=1)[0]["id"] == every[2]["id"]
    r = env.client.get("/api/v1/audit", params={"outcome": "maybe"}, headers=env.admin)
    assert r.status_code == 400 and "outcome" in r.json()["detail"]
    r = env.client.get("/api/v1/audit", params={"since": "yesterday"}, headers=env.admin)
    assert r.status_code == 400 and "ISO-8601" in r.json()["detail"]
