"""The operator console in a real headless Chromium against a live broker with a history.

One broker (``broker serve --console``, SQLite) gets a realistic history (three tenants,
releases, four kinds of denial, a rotation, a revoked key, unused keys); the browser signs
in with the admin token and with tenant tokens, filters the timeline down to a denial,
reads its failing condition and claims, runs a policy dry-run, and is refused another
tenant's rows.  Screenshots go to the test's tmp_path and must not be blank; every
request the pages made went to the broker on 127.0.0.1, and no page broke its CSP.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
from brokerproc import BrokerProcess, start_broker
from console_history import History, build

from layerseal.broker.masterkey import create_master_key_file
from support import browser as chromium
from support.browser import Browser

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not chromium.available(), reason="Debian chromium and chromium-driver are needed"),
]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, sim_platform_dir: Path) -> Iterator[History]:
    work = tmp_path_factory.mktemp("console")
    key_file, token_file = work / "master.key", work / "admin.token"
    create_master_key_file(key_file)
    proc: BrokerProcess = start_broker(
        str(work / "broker.db"),
        work,
        master_key_file=key_file,
        admin_token_file=token_file,
        extra=["--console"],
    )
    try:
        yield build(proc.url, token_file.read_text().strip(), sim_platform_dir)
    finally:
        proc.kill()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    b = Browser(tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield b
    finally:
        b.close()


def sign_in(browser: Browser, live: History, token: str) -> None:
    browser.driver.delete_all_cookies()
    browser.get(live.url + "/console/audit")
    assert browser.url.endswith("/console/login")  # no session: the sign-in page
    browser.fill("#token", token)
    browser.submit("#sign-in")
    assert browser.url.endswith("/console/audit"), browser.text()


def check_traffic(browser: Browser, live: History) -> None:
    browser.drain_logs()
    assert browser.requested, "the performance log recorded no request"
    strays = [u for u in browser.requested if not u.startswith(live.url + "/")]
    assert strays == [], f"requests that left the broker: {strays}"
    csp = [m for m in browser.console if "Content Security Policy" in m]
    assert csp == [], csp


def test_admin_finds_a_denial_its_condition_and_claims(
    live: History, browser: Browser, tmp_path: Path
) -> None:
    sign_in(browser, live, live.admin_token)
    assert browser.text("#whoami").startswith("admin")
    # the whole history: every tenant's rows
    tenants = {row.text for row in browser.all("#timeline tr.entry td:nth-child(3)")}
    assert {"acme", "globex", "initech"} <= tenants
    assert browser.screenshot(tmp_path / "timeline.png") > 8
    # filter through the form to acme's denials of the key a debug enclave asked for
    browser.fill("input[name=tenant]", "acme")
    browser.fill("input[name=key]", live.debug_denied_key)
    browser.select("#outcome", "deny")
    browser.submit("#apply")
    rows = browser.all("#timeline tr.entry")
    assert len(rows) == 1, browser.text("#timeline")
    assert rows[0].find_element("css selector", "td.outcome").text == "denied"
    failing = rows[0].find_element("css selector", "td.failing").text
    assert "debug equals false" in failing and "debug = true" in failing
    assert browser.screenshot(tmp_path / "denial.png") > 8
    # its page: the failing condition and the claims it judged
    rows[0].find_element("css selector", "td a").click()
    assert "debug equals false" in browser.text("#failing")
    claims = json.loads(browser.text("#claims"))
    assert claims["debug"] is True and claims["tee"] == "sim"
    entry_id = int(browser.url.rsplit("/", 1)[1])
    browser.screenshot(tmp_path / "entry.png")
    # other denials are there with their own conditions
    browser.get(live.url + "/console/audit?" + urlencode({"tenant": "globex", "outcome": "deny"}))
    failing_cells = " | ".join(c.text for c in browser.all("#timeline td.failing"))
    assert "svn greaterOrEquals 2" in failing_cells
    assert "measurement in" in failing_cells
    assert "expected an unrevoked key, seen revoked" in failing_cells
    # a policy dry-run against that recorded attestation: without the debug condition it would release
    browser.get(live.url + "/console/policy?tenant=acme")
    browser.select("#audit-entry", str(entry_id))
    relaxed = {
        "version": "1.0.0",
        "anyOf": [{"allOf": [{"claim": "measurement", "in": "refvalues:allowed-measurements"}]}],
    }
    browser.fill("#policy", json.dumps(relaxed))
    browser.submit("#run-dry-run")
    assert browser.text("#dry-run-decision") == "would be released"
    assert "changed from the recorded deny" in browser.text("#dry-run-changed")
    assert "anyOf[0] holds" in browser.text("#dry-run-result")
    assert browser.screenshot(tmp_path / "dry-run.png") > 8
    # and the stricter one says which condition decides
    browser.fill("#audit-entry-id", str(entry_id))
    browser.fill(
        "#policy",
        json.dumps({"version": "1.0.0", "anyOf": [{"allOf": [{"claim": "debug", "equals": False}]}]}),
    )
    browser.submit("#run-dry-run")
    assert browser.text("#dry-run-decision") == "would be denied"
    assert "'debug equals false' fails (debug = true)" in browser.text("#dry-run-result")
    # images and keys: the rotation, the revoked key, unused ones
    browser.get(live.url + "/console/keys")
    rotated = browser.css(f"#key-{live.key_id(live.retired_kid)}").text
    assert "#1 retired" in rotated and "#2 active" in rotated
    assert browser.css(f"#key-{live.key_id(live.revoked_kid)} td.status").text == "revoked"
    unused = browser.text("#unused")
    assert f"{live.unused_key} initech registry.local/tps marked unused" in unused
    assert f"{live.never_released_key} initech registry.local/tps never released" in unused
    assert browser.screenshot(tmp_path / "keys.png") > 8
    browser.get(live.url + "/console/platforms")
    assert "rack 1 (sim)" in browser.text("#platforms")
    # the chart: bars drawn for releases and denials, and the latency histogram
    browser.get(live.url + "/console/activity")
    heights = [float(r.get_attribute("height")) for r in browser.all("#activity-chart rect.ok")]
    assert sum(heights) > 0
    assert sum(float(r.get_attribute("height")) for r in browser.all("#activity-chart rect.deny")) > 0
    assert "kbs_resources" in browser.text()
    assert browser.screenshot(tmp_path / "activity.png") > 8
    check_traffic(browser, live)


def test_tenant_sees_only_its_tenant(live: History, browser: Browser, tmp_path: Path) -> None:
    sign_in(browser, live, live.tokens["globex"])
    assert browser.text("#whoami").startswith("tenant globex")
    cells = [c.text for c in browser.all("#timeline tr.entry td:nth-child(3)")]
    assert cells and set(cells) == {"globex"}
    assert browser.screenshot(tmp_path / "tenant.png") > 8
    # asking for acme's rows is refused, and an acme entry does not exist for globex
    browser.get(live.url + "/console/audit?tenant=acme")
    assert "Error 403" in browser.text("h1")
    admin = httpx.Client(base_url=live.url, headers={"Authorization": f"Bearer {live.admin_token}"})
    acme_entry = admin.get("/api/v1/console/audit", params={"tenant": "acme", "limit": 1}).json()["entries"][
        0
    ]
    browser.get(f"{live.url}/console/audit/{acme_entry['id']}")
    assert "Error 404" in browser.text("h1")
    browser.get(live.url + "/console/keys")
    assert "registry.local/ledger" in browser.text() and "registry.local/shop" not in browser.text()
    browser.get(live.url + "/console/platforms")
    text = browser.text()
    assert "admin only" in text and "acme" not in text and "initech" not in text
    # the same through the JSON API
    tenant = httpx.Client(base_url=live.url, headers={"Authorization": f"Bearer {live.tokens['globex']}"})
    assert tenant.get("/api/v1/console/audit", params={"tenant": "acme"}).status_code == 403
    assert tenant.get(f"/api/v1/console/audit/{acme_entry['id']}").status_code == 404
    own = tenant.get("/api/v1/console/audit", params={"limit": 10000}).json()["entries"]
    assert own and {e["tenant"] for e in own} == {"globex"}
    repos = tenant.get("/api/v1/console/images").json()["repositories"]
    assert {r["tenant"] for r in repos} == {"globex"}
    dry = tenant.post(
        "/api/v1/policies/dry-run",
        json={
            "policy": {"version": "1.0.0", "anyOf": [{"allOf": [{"claim": "debug", "equals": False}]}]},
            "audit_entry": acme_entry["id"],
        },
    )
    assert dry.status_code == 404, dry.text
    # the admin's view of acme matches what acme's own token gets
    acme = httpx.Client(base_url=live.url, headers={"Authorization": f"Bearer {live.tokens['acme']}"})
    mine = acme.get("/api/v1/console/audit", params={"limit": 10000}).json()["entries"]
    theirs = admin.get("/api/v1/console/audit", params={"tenant": "acme", "limit": 10000}).json()["entries"]
    assert [e["id"] for e in mine] == [e["id"] for e in theirs]
    for c in (admin, tenant, acme):
        c.close()
    # signing out ends the session
    browser.get(live.url + "/console/audit")
    browser.submit("header form.who button")
    assert browser.url.endswith("/console/login")
    browser.get(live.url + "/console/keys")
    assert browser.url.endswith("/console/login")
    check_traffic(browser, live)


def test_console_headers_and_off_by_default(live: History, tmp_path: Path, sim_platform_dir: Path) -> None:
    r = httpx.get(live.url + "/console/login")
    assert r.status_code == 200
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp  # no script at all
    assert r.headers["x-frame-options"] == "DENY" and r.headers["cache-control"] == "no-store"
    assert "<script" not in r.text.lower()
    # a sign-in without the CSRF cookie's value is refused
    r = httpx.post(live.url + "/console/login", data={"token": live.admin_token, "csrf": "x"})
    assert r.status_code == 403
    # cookie flags of a real sign-in
    with httpx.Client(base_url=live.url) as c:
        csrf = c.get("/console/login").cookies["layerseal-console-csrf"]
        r = c.post("/console/login", data={"token": live.admin_token, "csrf": csrf})
        assert r.status_code == 303
        cookie = r.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/console" in cookie
        assert live.admin_token.lower() not in cookie  # the token is sealed, not stored as is
    # a broker started without --console has no pages (the JSON API stays)
    key_file = tmp_path / "master.key"
    create_master_key_file(key_file)
    plain = start_broker(
        str(tmp_path / "b.db"), tmp_path, master_key_file=key_file, admin_token_file=tmp_path / "t"
    )
    try:
        assert httpx.get(plain.url + "/console/login").status_code == 404
        token = (tmp_path / "t").read_text().strip()
        r = httpx.get(plain.url + "/api/v1/console/audit", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200
    finally:
        plain.kill()
