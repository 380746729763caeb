"""Operator console: how fast the pages render a 10,000-row audit history.

A broker database gets 10,000 audit rows shaped like a real history (three tenants, about
60 keys; releases, policy denials with their failing condition, attestations with recorded
claims, key events, spread over a week), then a live broker (``serve --console``) serves
it.  Measured, median and best of N:

- server: the full HTML round trip of each page (httpx, signed-in session), including the
  whole history on one page (``limit=10000``) and the default first page of 100;
- browser: headless Chromium loading the same pages, navigation start to the load event
  (Navigation Timing), when Debian's chromium and chromium-driver are installed;
- baselines in the same run: the same rows as JSON from ``/api/v1/audit`` (the broker's
  plain audit API) and as an HTML table from the sqlite3 command-line tool (``-html``).

Target (issue 19): the 10,000-row history renders in under a second.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import machine, save, table

ROWS = 10_000
N = 5
TARGET_S = 1.0
TENANTS = ("acme", "globex", "initech")


def _history(db: Path, key_file: Path, token_file: Path) -> str:
    """Fill *db* with ROWS audit rows; returns a tenant whose denials the filters look for."""
    import random

    from layerseal.broker.masterkey import create_master_key_file
    from layerseal.broker.server import ensure_admin_token, open_broker
    from layerseal.broker.service import Principal

    create_master_key_file(key_file)
    broker = open_broker(str(db), master_key_file=key_file, create_master_key=False)
    ensure_admin_token(broker, token_file)
    rng = random.Random(19)
    admin = Principal("bench", "*", ("admin",))
    keys: dict[str, list[str]] = {}
    from layerseal.image.digest import Digest
    from layerseal.image.encryption import PrivateOptions

    for t in TENANTS:
        keys[t] = []
        for i in range(20):
            opts = PrivateOptions(os.urandom(32), os.urandom(16), Digest.of(os.urandom(8))).to_json_bytes()
            info, _ = broker.create_layer_key(
                admin,
                {
                    "tenant": t,
                    "repository": f"registry.local/{t}-app{i % 4}",
                    "layer_digest": str(Digest.of(f"{t}{i}".encode())),
                    "optsdata": __import__("base64").b64encode(opts).decode(),
                },
            )
            keys[t].append(info.key_id)
    platform = "sha256:" + "ab" * 32
    good, bad = "e1" * 48, "ef" * 48
    digests = []
    for i in range(400):
        digest = f"{i:064x}"
        debug = i % 10 == 0
        measurement = bad if i % 7 == 0 else good
        claims = {
            "tee": "sim",
            "measurement": measurement,
            "svn": 2,
            "debug": debug,
            "sim": {"measurement": measurement, "svn": 2, "debug": debug, "platform": platform},
        }
        broker.store.record_claims(digest, "sim", platform, json.dumps(claims))
        digests.append((digest, claims))
    now_ms = int(time.time() * 1000)
    start_ms = now_ms - 7 * 86400 * 1000
    existing = sum(1 for _ in broker.store.iter_audit())
    entries: list[dict[str, Any]] = []
    for n in range(ROWS - existing):
        at = start_ms + n * (7 * 86400 * 1000 // ROWS)
        t = rng.choice(TENANTS)
        digest, claims = rng.choice(digests)
        roll = rng.random()
        base = {"at_ms": at, "tenant": t, "evidence_digest": digest, "measurement": claims["measurement"]}
        if roll < 0.12:
            entries.append(
                dict(
                    base,
                    actor="client:10.0.0.7",
                    action="attest",
                    decision="ok",
                    tenant=None,
                    keys="[]",
                    reason="tee sim svn 2 debug False",
                )
            )
            continue
        picked = rng.sample(keys[t], 3)
        if claims["debug"] or claims["measurement"] == bad or roll > 0.93:
            cond = (
                "debug equals false' failed (debug = true)"
                if claims["debug"]
                else f'measurement in "refvalues:allowed-measurements"\' failed (measurement = "{bad}")'
            )
            entries.append(
                dict(
                    base,
                    actor=f"token:{n:08x}",
                    action="release",
                    decision="deny",
                    keys=json.dumps(sorted(f"{t}/layer-key/{k}.1" for k in picked)),
                    reason=f"resource {t}/layer-key/{picked[0]}.1: default policy denied release: "
                    f"anyOf[0]: condition '{cond}",
                )
            )
        else:
            entries.append(
                dict(
                    base,
                    actor=f"token:{n:08x}",
                    action="release",
                    decision="ok",
                    keys=json.dumps(sorted(f"{t}/{k}.1" for k in picked)),
                    reason="policy allowed",
                )
            )
    for i in range(0, len(entries), 1000):
        broker.store.append_audit_batch(entries[i : i + 1000])
    broker.close()
    broker.store.dispose()
    return "acme"


def _timings(fn: Any) -> dict[str, float]:
    runs = []
    for _ in range(N):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return {"median_s": statistics.median(runs), "min_s": min(runs)}


def _start(db: Path, key_file: Path, token_file: Path, work: Path) -> tuple[subprocess.Popen[bytes], str]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "layerseal.cli.main",
        "broker",
        "serve",
        "--db",
        str(db),
        "--listen",
        f"127.0.0.1:{port}",
        "--master-key-file",
        str(key_file),
        "--admin-token-file",
        str(token_file),
        "--console",
        "--log-level",
        "warning",
    ]
    log = (work / "broker.log").open("wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=work)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("broker did not start")


def _chromium(
    url: str, session: dict[str, str], pages: dict[str, str], work: Path
) -> dict[str, dict[str, float]]:
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        return {}
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from support.browser import Browser

    browser = Browser(work / "profile")
    out: dict[str, dict[str, float]] = {}
    try:
        browser.get(url + "/console/static/console.css")
        for name, value in session.items():
            browser.driver.add_cookie({"name": name, "value": value, "path": "/console"})
        for label, path in pages.items():
            loads, walls, parts = [], [], []
            for _ in range(N):
                start = time.perf_counter()
                browser.get(url + path)
                walls.append(time.perf_counter() - start)
                nav = browser.driver.execute_script(
                    "const n = performance.getEntriesByType('navigation')[0];"
                    "return [n.responseEnd, n.domContentLoadedEventEnd, n.loadEventEnd];"
                )
                loads.append(float(nav[2]) / 1000)
                parts.append([float(x) / 1000 for x in nav])
            rows = len(browser.all("#timeline tr.entry")) if "audit" in path else None
            out[label] = {
                "load_median_s": statistics.median(loads),
                "load_min_s": min(loads),
                "driver_get_median_s": statistics.median(walls),
                "rows": rows or 0,
                "response_end_median_s": statistics.median(p[0] for p in parts),
                "dom_content_loaded_median_s": statistics.median(p[1] for p in parts),
            }
        # the whole history the way the console pages it: 1,000 rows a page, following "older"
        for size in (1000, 100):
            browser.get(f"{url}/console/audit?limit={size}")
            page_loads, seen = [], 0
            while True:
                nav = browser.driver.execute_script(
                    "return performance.getEntriesByType('navigation')[0].loadEventEnd;"
                )
                page_loads.append(float(nav) / 1000)
                seen += len(browser.all("#timeline tr.entry"))
                older = browser.all("#older")
                if not older:
                    break
                browser.get(older[0].get_attribute("href"))
            out[f"whole history, {size:,} rows a page ({len(page_loads)} pages)"] = {
                "load_median_s": statistics.median(page_loads),
                "load_min_s": min(page_loads),
                "load_max_s": max(page_loads),
                "rows": seen,
            }
    finally:
        browser.close()
    return out


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-console-"))
    try:
        db, key_file, token_file = work / "broker.db", work / "master.key", work / "admin.token"
        t0 = time.perf_counter()
        tenant = _history(db, key_file, token_file)
        build_s = time.perf_counter() - t0
        proc, url = _start(db, key_file, token_file, work)
        try:
            token = token_file.read_text().strip()
            auth = {"Authorization": f"Bearer {token}"}
            client = httpx.Client(base_url=url, timeout=60)
            csrf = client.get("/console/login").cookies["layerseal-console-csrf"]
            client.post("/console/login", data={"token": token, "csrf": csrf})
            session = {k: v for k, v in client.cookies.items() if k == "layerseal-console"}
            pages = {
                "audit, all 10,000 rows on one page": "/console/audit?limit=10000",
                "audit, first page (100 rows)": "/console/audit",
                "audit, a page of 1,000 rows": "/console/audit?limit=1000",
                f"audit, {tenant} denials (filtered)": f"/console/audit?tenant={tenant}&outcome=deny",
                "images and keys": "/console/keys",
                "activity chart": "/console/activity",
            }
            results: dict[str, Any] = {"server": {}, "baselines": {}}
            rows = []
            for label, path in pages.items():
                r = client.get(path)
                assert r.status_code == 200, (path, r.status_code)
                t = _timings(lambda p=path: client.get(p).raise_for_status())
                t["bytes"] = len(r.content)
                t["rows"] = r.text.count('<tr class="entry ')
                results["server"][label] = t
                rows.append(
                    [
                        label,
                        t["rows"] or "",
                        f"{t['median_s']:.3f}",
                        f"{t['min_s']:.3f}",
                        f"{len(r.content) / 1024:.0f}",
                    ]
                )
            baselines = {
                "JSON /api/v1/console/audit?limit=10000": lambda: client.get(
                    "/api/v1/console/audit", params={"limit": 10000}, headers=auth
                ).raise_for_status(),
                "JSON /api/v1/audit?limit=10000 (plain audit API)": lambda: client.get(
                    "/api/v1/audit", params={"limit": 10000}, headers=auth
                ).raise_for_status(),
            }
            if shutil.which("sqlite3"):
                baselines["sqlite3 -html (10,000 rows, no server)"] = lambda: subprocess.run(
                    ["sqlite3", "-html", str(db), "SELECT * FROM audit_log ORDER BY seq DESC"],
                    check=True,
                    capture_output=True,
                )
            for label, fn in baselines.items():
                t = _timings(fn)
                results["baselines"][label] = t
                rows.append([label, ROWS, f"{t['median_s']:.3f}", f"{t['min_s']:.3f}", ""])
            print(
                table(
                    f"console pages over {ROWS:,} audit rows: HTTP round trip, best/median of {N} (s)",
                    ["page", "rows", "median", "best", "KiB"],
                    rows,
                )
            )
            browser = _chromium(url, session, {k: v for k, v in pages.items() if "audit" in k}, work)
            if browser:
                brows = []
                for label, b in browser.items():
                    worst = b.get("load_max_s", b["load_median_s"])
                    brows.append(
                        [
                            label,
                            b["rows"],
                            f"{b['load_median_s']:.3f}",
                            f"{b['load_min_s']:.3f}",
                            f"{worst:.3f}" if "load_max_s" in b else "",
                            "yes" if worst < TARGET_S else "NO",
                        ]
                    )
                print(
                    table(
                        f"headless Chromium: navigation start to load event (s); pages: median/best of {N}, "
                        "whole history: median/best/worst page",
                        ["page", "rows", "median", "best", "worst", f"< {TARGET_S:g} s"],
                        brows,
                    )
                )
            results["browser"] = browser
            client.close()
        finally:
            proc.terminate()
            proc.wait(timeout=20)
        path = save(
            "console_render",
            {
                "rows": ROWS,
                "n": N,
                "target_s": TARGET_S,
                "history_build_s": build_s,
                "machine": machine(),
                **results,
            },
        )
        print(f"saved {path}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
