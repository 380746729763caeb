"""The HTTP edge: text no database can store is a 400 everywhere; liveness and readiness."""

from __future__ import annotations

import pytest
from brokerenv import Env

SURROGATE = '"\\ud800"'  # a JSON escape of a lone UTF-16 surrogate
NUL = '"a\\u0000b"'

# (method, path, JSON body template with {bad} where the string goes, needs the tenant token)
BODIES = [
    ("POST", "/kbs/v0/auth", '{"version": "0.4.0", "tee": {bad}}', False),
    ("POST", "/kbs/v0/auth", '{"version": "0.4.0", "tee": "sim", "extra-params": {bad}}', False),
    ("POST", "/kbs/v0/attest", '{"runtime-data": {"nonce": {bad}, "tee-pubkey": {}}}', False),
    ("POST", "/kbs/v0/resources", '{"resources": [{bad}]}', False),
    ("POST", "/api/v1/keys", '{"repository": {bad}, "layer_digest": "x", "optsdata": ""}', True),
    ("PUT", "/api/v1/policies", '{"policy": {"version": "1.0.0", "description": {bad}}}', True),
    ("POST", "/api/v1/refvalues", '{"name": "m", "values": [{bad}]}', True),
    ("POST", "/api/v1/refvalues/remove", '{"name": {bad}, "values": ["a"]}', True),
    ("POST", "/api/v1/platforms", '{"certificate": "x", "description": {bad}}', False),
    ("POST", "/api/v1/tokens", '{"tenant": "acme", "scopes": ["keys:read"], "description": {bad}}', False),
    ("POST", "/api/v1/attestation-tokens/revoke", '{"jti": {bad}}', False),
    ("POST", "/api/v1/keys/k0000000000000000000000000a/unused", '{"unused": true, {bad}: 1}', True),
]


@pytest.mark.parametrize("bad", [SURROGATE, NUL], ids=["surrogate", "nul"])
@pytest.mark.parametrize(("method", "path", "template", "tenant"), BODIES)
def test_bad_text_in_bodies_is_400(
    env: Env, bad: str, method: str, path: str, template: str, tenant: bool
) -> None:
    headers = {"Content-Type": "application/json", **(env.headers if tenant else env.admin)}
    r = env.client.request(method, path, content=template.replace("{bad}", bad).encode(), headers=headers)
    assert r.status_code == 400, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert "NUL or lone surrogates" in r.json()["detail"]


@pytest.mark.parametrize(
    "url",
    [
        "/api/v1/keys?repository=a%00b",
        "/api/v1/keys?tenant=%ED%A0%80",
        "/api/v1/keys/k%00",
        "/api/v1/policies?tenant=acme%00",
        "/api/v1/audit?tenant=%00",
    ],
)
def test_bad_text_in_paths_and_queries_is_400(env: Env, url: str) -> None:
    r = env.client.get(url, headers=env.admin)
    assert r.status_code == 400, r.text


def test_surrogates_through_the_store_would_have_failed(env: Env) -> None:
    """The stored row is what broke: a surrogate reaching SQLite raised UnicodeEncodeError."""
    r = env.client.post(
        "/api/v1/tokens",
        content=b'{"tenant": "acme", "scopes": ["keys:read"], "description": "\\udfff"}',
        headers={"Content-Type": "application/json", **env.admin},
    )
    assert r.status_code == 400
    listed = env.client.get("/api/v1/tokens", headers=env.admin).json()["tokens"]
    assert all("\udfff" not in t["description"] for t in listed)


def test_healthz_and_readyz(env: Env) -> None:
    assert env.client.get("/healthz").json() == {"status": "ok"}
    assert env.client.get("/readyz").json() == {"status": "ready"}
