"""Fuzzed request bodies and paths never produce a 500."""

from __future__ import annotations

import json
from typing import Any

from brokerenv import Env
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda c: st.lists(c, max_size=5) | st.dictionaries(st.text(max_size=15), c, max_size=5),
    max_leaves=15,
)
KEYS = [
    "version",
    "tee",
    "extra-params",
    "runtime-data",
    "tee-evidence",
    "nonce",
    "tee-pubkey",
    "resources",
    "repository",
    "layer_digest",
    "optsdata",
    "policy",
    "scope",
    "target",
    "tenant",
    "name",
    "values",
    "packet",
]
shaped = st.dictionaries(st.sampled_from(KEYS), json_values, max_size=6)
ENDPOINTS = [
    ("POST", "/kbs/v0/auth"),
    ("POST", "/kbs/v0/attest"),
    ("POST", "/kbs/v0/resources"),
    ("POST", "/api/v1/keys"),
    ("PUT", "/api/v1/policies"),
    ("POST", "/api/v1/refvalues"),
    ("POST", "/api/v1/platforms"),
    ("POST", "/api/v1/tokens"),
]
SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@SETTINGS
@given(
    endpoint=st.sampled_from(ENDPOINTS),
    body=st.one_of(shaped, json_values),
    raw=st.booleans(),
    blob=st.binary(max_size=64),
)
def test_bodies_never_500(env: Env, endpoint: tuple[str, str], body: Any, raw: bool, blob: bytes) -> None:
    method, path = endpoint
    headers = dict(env.admin) if path.startswith("/api") else {"Cookie": "kbs-session-id=fuzz"}
    content = blob if raw else json.dumps(body).encode()
    r = env.client.request(
        method, path, content=content, headers={**headers, "content-type": "application/json"}
    )
    assert r.status_code < 500, (path, content[:200], r.text)
    if r.status_code >= 400:
        assert r.headers["content-type"] == "application/problem+json"


@SETTINGS
@given(repo=st.text(max_size=20), kind=st.text(max_size=12), tag=st.text(max_size=40))
def test_resource_paths_never_500(env: Env, repo: str, kind: str, tag: str) -> None:
    from urllib.parse import quote

    r = env.client.get(
        f"/kbs/v0/resource/{quote(repo, safe='')}/{quote(kind, safe='')}/{quote(tag, safe='')}"
    )
    assert r.status_code in (400, 401, 404), r.text


@SETTINGS
@given(body=shaped)
def test_attest_with_live_session_never_500(env: Env, body: dict[str, Any]) -> None:
    r = env.client.post("/kbs/v0/auth", json={"version": "0.4.0", "tee": "sim"})
    sid = r.cookies["kbs-session-id"]
    env.client.cookies.clear()
    r = env.client.post("/kbs/v0/attest", json=body, headers={"Cookie": f"kbs-session-id={sid}"})
    assert r.status_code in (400, 401, 403), r.text
