"""The console's pages, sessions and JSON views behind Starlette's TestClient (SQLite).

The browser-level tests (real Chromium, live broker) are in
tests/integration/broker/test_console_browser.py; these cover the rules one by one.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from brokerenv import Env
from starlette.testclient import TestClient

from layerseal.attest.sim_platform import SimAttester
from layerseal.broker.app import create_app
from layerseal.broker.console.session import SessionSealer
from layerseal.broker.console.views import failing_conditions
from layerseal.broker.ratelimit import RateLimiter
from layerseal.crypto.keys import generate_key
from layerseal.errors import LayersealError
from layerseal.kbs.client import EnclaveClient

RELAXED = {
    "version": "1.0.0",
    "anyOf": [{"allOf": [{"claim": "measurement", "in": "refvalues:allowed-measurements"}]}],
}


@pytest.fixture
def console(env: Env) -> Iterator[TestClient]:
    """The same broker as *env*, with the console pages on."""
    with TestClient(create_app(env.broker, limiter=RateLimiter(1000, 1000), console=True)) as client:
        yield client


def fetch(env: Env, attester: SimAttester, kids: list[str]) -> bool:
    with EnclaveClient(
        "http://testserver", attester, generate_key("EC-P256"), transport=env.client._transport
    ) as e:
        try:
            e.get_keys(kids)
        except LayersealError:
            return False
    return True


def sign_in(client: TestClient, token: str) -> None:
    client.cookies.clear()
    csrf = client.get("/console/login").cookies["layerseal-console-csrf"]
    r = client.post("/console/login", data={"token": token, "csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303, r.text
    assert r.headers["location"] == "/console/audit"


def deny_entry(env: Env) -> dict[str, Any]:
    key = env.create_key()
    assert not fetch(env, SimAttester(env.platform_dir, debug=True), [key["kid"]])
    r = env.client.get("/api/v1/console/audit", params={"outcome": "deny"}, headers=env.headers)
    return dict(r.json()["entries"][0])


def test_failing_conditions_are_read_from_the_reason() -> None:
    reason = (
        "resource acme/layer-key/k.1: policy denied release: anyOf[0]: condition 'debug equals false' "
        'failed (debug = true); anyOf[1]: condition \'cel "a; b"\' failed (claims {"x": 1})'
    )
    assert failing_conditions(reason) == [
        {"group": "anyOf[0]", "condition": "debug equals false", "observed": "debug = true"},
        {"group": "anyOf[1]", "condition": 'cel "a; b"', "observed": 'claims {"x": 1}'},
    ]
    assert failing_conditions("resource x: expected an unrevoked key, seen revoked") == []


def test_session_cookie_is_sealed_and_expires() -> None:
    now = [1000.0]
    sealer = SessionSealer(b"k" * 32, clock=lambda: now[0])
    cookie, session = sealer.seal("lsk_secret_token")
    assert "lsk_secret_token" not in cookie
    opened = sealer.open(cookie)
    assert opened is not None and opened.token == "lsk_secret_token" and opened.csrf == session.csrf
    flipped = cookie[:-2] + ("A" if cookie[-2] != "A" else "B") + cookie[-1]
    assert sealer.open(flipped) is None
    assert SessionSealer(b"x" * 32, clock=lambda: now[0]).open(cookie) is None  # another broker's key
    now[0] += 8 * 3600 + 1
    assert sealer.open(cookie) is None


def test_pages_need_a_session_and_carry_the_csp(env: Env, console: TestClient) -> None:
    r = console.get("/console/keys", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/console/login"
    assert "default-src 'none'" in r.headers["content-security-policy"]
    console.cookies.set("layerseal-console", "forged", path="/console")
    assert console.get("/console/keys", follow_redirects=False).status_code == 303
    sign_in(console, env.tenant_token)
    r = console.get("/console/keys")
    assert r.status_code == 200 and "script" not in r.text.lower()
    assert r.headers["x-frame-options"] == "DENY" and r.headers["referrer-policy"] == "no-referrer"


def test_csrf_and_cross_site_posts_are_refused(env: Env, console: TestClient) -> None:
    csrf = console.get("/console/login").cookies["layerseal-console-csrf"]
    r = console.post("/console/login", data={"token": env.tenant_token, "csrf": "other"})
    assert r.status_code == 403 and "CSRF" in r.text
    r = console.post(
        "/console/login",
        data={"token": env.tenant_token, "csrf": csrf},
        headers={"Sec-Fetch-Site": "cross-site"},
    )
    assert r.status_code == 403
    r = console.post(
        "/console/login",
        data={"token": env.tenant_token, "csrf": csrf},
        headers={"Origin": "https://evil.example"},
    )
    assert r.status_code == 403
    sign_in(console, env.tenant_token)
    r = console.post("/console/policy", data={"policy": "{}", "claims": "{}"})  # no token in the form
    assert r.status_code == 403
    r = console.post("/console/logout", data={"csrf": "nope"})
    assert r.status_code == 403


def test_a_wrong_token_does_not_sign_in(console: TestClient) -> None:
    csrf = console.get("/console/login").cookies["layerseal-console-csrf"]
    r = console.post("/console/login", data={"token": "lsk_0123456789abcdef_nope", "csrf": csrf})
    assert r.status_code == 401 and "unknown, revoked or expired token" in r.text
    assert "layerseal-console=" not in r.headers.get("set-cookie", "")


def test_revoking_the_token_ends_its_console_session(env: Env, console: TestClient) -> None:
    sign_in(console, env.tenant_token)
    assert console.get("/console/audit", follow_redirects=False).status_code == 200
    token_id = env.broker.authenticate(f"Bearer {env.tenant_token}").token_id
    assert env.client.post(f"/api/v1/tokens/{token_id}/revoke", headers=env.admin).status_code == 204
    r = console.get("/console/audit", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/console/login"


def test_denial_text_is_escaped(env: Env, console: TestClient) -> None:
    key = env.create_key()
    pol = {"version": "1.0.0", "anyOf": [{"allOf": [{"cel": "claims.tee == '<script>alert(1)</script>'"}]}]}
    r = env.client.put("/api/v1/policies", json={"policy": pol}, headers=env.headers)
    assert r.status_code == 200, r.text
    assert not fetch(env, env.attester, [key["kid"]])
    sign_in(console, env.tenant_token)
    page = console.get("/console/audit", params={"outcome": "deny"}).text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>" not in page


def test_timeline_filters_and_pages(env: Env) -> None:
    a, b = env.create_key("registry.local/a"), env.create_key("registry.local/b")
    for _ in range(3):
        assert fetch(env, env.attester, [a["kid"]])
    assert fetch(env, env.attester, [b["kid"]])
    assert not fetch(env, SimAttester(env.platform_dir, measurement="ef" * 48), [b["kid"]])

    def get(**params: Any) -> Any:
        r = env.client.get("/api/v1/console/audit", params=params, headers=env.headers)
        assert r.status_code == 200, r.text
        return r.json()

    assert {e["action"] for e in get(repository="registry.local/a")["entries"]} == {"key-create", "release"}
    assert len(get(key=a["key"]["key_id"], action="release")["entries"]) == 3
    assert len(get(key=a["kid"], action="release")["entries"]) == 3  # a kid names its key too
    denied = get(outcome="deny")["entries"]
    assert len(denied) == 1 and "measurement in" in denied[0]["failing"]
    assert denied[0]["claims"]["measurement"] == "ef" * 48
    platform = denied[0]["platform"]
    assert platform.startswith("sha256:")
    assert len(get(platform=platform, action="release")["entries"]) == 5
    assert get(platform="tdx")["entries"] == []
    assert get(since="2000-01-01", until=str(int(time.time()) + 60))["entries"]
    assert get(since=str(int(time.time()) + 60))["entries"] == []
    # pages: newest first, each 'next' continues where the last one stopped
    seen, cursor = [], None
    while True:
        page = get(limit=2, **({} if cursor is None else {"before": cursor}))
        seen += [e["id"] for e in page["entries"]]
        cursor = page["next"]
        if cursor is None:
            break
    assert seen == sorted(seen, reverse=True) and seen == [e["id"] for e in get(limit=1000)["entries"]]
    for bad in ({"limit": "10001"}, {"since": "yesterday"}, {"outcome": "maybe"}, {"key": "nope"}):
        r = env.client.get("/api/v1/console/audit", params=bad, headers=env.headers)
        assert r.status_code == 400, bad
        assert r.json()["detail"].split(":")[0] in bad


def test_dry_run_api(env: Env) -> None:
    entry = deny_entry(env)

    def dry(body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
        return env.client.post("/api/v1/policies/dry-run", json=body, headers=headers or env.headers)

    r = dry({"policy": RELAXED, "audit_entry": entry["id"]})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["decision"] == "release" and out["changed"] is True
    assert out["source"]["recorded_decision"] == "deny"
    assert out["deciding"] == ["anyOf[0] holds: every condition (1) holds"]
    strict = {
        "version": "1.0.0",
        "anyOf": [
            {"allOf": [{"claim": "svn", "greaterOrEquals": 0}, {"claim": "debug", "equals": False}]},
            {"allOf": [{"claim": "tee", "equals": "tdx"}]},
        ],
    }
    out = dry({"policy": strict, "claims": entry["claims"]}).json()
    assert out["decision"] == "deny" and out["changed"] is None
    assert out["deciding"] == [
        "anyOf[0]: 'debug equals false' fails (debug = true)",
        'anyOf[1]: \'tee equals "tdx"\' fails (tee = "sim")',
    ]
    assert [c["holds"] for c in out["groups"][0]["conditions"]] == [True, False]
    typo = {"version": "1.0.0", "anyOf": [{"allOf": [{"claim": "measurement", "in": "refvalues:alowed"}]}]}
    assert dry({"policy": typo, "claims": entry["claims"]}).json()["warnings"] == [
        "reference values 'alowed' do not exist for tenant 'acme'"
    ]
    assert dry({"policy": RELAXED}).status_code == 400
    assert dry({"policy": RELAXED, "claims": {}, "audit_entry": 1}).status_code == 400
    assert dry({"policy": {"version": "9"}, "claims": {}}).status_code == 400
    assert dry({"policy": RELAXED, "audit_entry": 10**9}).status_code == 404
    # an entry of no tenant (an attestation) is not the tenant's to dry-run
    attest = env.client.get("/api/v1/console/audit", params={"action": "attest"}, headers=env.admin).json()
    assert dry({"policy": RELAXED, "audit_entry": attest["entries"][0]["id"]}).status_code == 404
    # admins name the tenant
    assert dry({"policy": RELAXED, "audit_entry": entry["id"]}, env.admin).status_code == 400
    r = dry({"policy": RELAXED, "audit_entry": entry["id"], "tenant": "acme"}, env.admin)
    assert r.status_code == 200 and r.json()["decision"] == "release"


def test_other_tenant_sees_nothing_of_acme(env: Env, tmp_path: Path) -> None:
    entry = deny_entry(env)
    r = env.client.post(
        "/api/v1/tokens",
        json={"tenant": "globex", "scopes": ["keys:read", "audit:read", "policy:write"]},
        headers=env.admin,
    )
    other = {"Authorization": f"Bearer {r.json()['token']}"}
    assert env.client.get(f"/api/v1/console/audit/{entry['id']}", headers=other).status_code == 404
    assert (
        env.client.get("/api/v1/console/audit", params={"tenant": "acme"}, headers=other).status_code == 403
    )
    own = env.client.get("/api/v1/console/audit", headers=other).json()["entries"]
    assert [(e["tenant"], e["action"]) for e in own] == [("globex", "token-create")]
    assert env.client.get("/api/v1/console/images", headers=other).json()["repositories"] == []
    assert env.client.get("/api/v1/console/activity", headers=other).json()["totals"] == {
        "releases": 0,
        "denials": 0,
    }
    assert env.client.get("/api/v1/console/activity", headers=other).json()["latency"] is None
    plats = env.client.get("/api/v1/console/platforms", headers=other).json()
    assert plats["platforms"] is None and plats["refvalues"] == {}
    r = env.client.post(
        "/api/v1/policies/dry-run", json={"policy": RELAXED, "audit_entry": entry["id"]}, headers=other
    )
    assert r.status_code == 404


def test_over_tls_the_cookie_is_secure_and_host_only(env: Env) -> None:
    app = create_app(env.broker, limiter=RateLimiter(1000, 1000), console=True)
    with TestClient(app, base_url="https://testserver") as client:
        r = client.get("/console/login")
        assert "secure" in r.headers["set-cookie"].lower()
        csrf = r.cookies["layerseal-console-csrf"]
        r = client.post(
            "/console/login", data={"token": env.tenant_token, "csrf": csrf}, follow_redirects=False
        )
        assert r.status_code == 303
        cookie = r.headers["set-cookie"]
        assert cookie.startswith("__Host-layerseal-console=")
        flags = cookie.lower()
        assert "; secure" in flags and "path=/;" in flags and "domain" not in flags
        assert client.get("/console/keys", follow_redirects=False).status_code == 200
