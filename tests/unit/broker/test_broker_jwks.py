"""The JWK Set of the attestation-token key: another service verifies our tokens with it alone."""

from __future__ import annotations

import pytest
from brokerenv import Env
from joserfc import jwt
from joserfc.errors import BadSignatureError
from joserfc.jwk import ECKey, KeySet
from test_broker_coco_attest import attest


def test_tokens_verify_with_the_published_jwks_and_name_its_kid(env: Env) -> None:
    r = env.client.get("/.well-known/jwks.json")
    assert r.status_code == 200
    doc = r.json()
    assert len(doc["keys"]) == 1
    entry = doc["keys"][0]
    assert entry["kty"] == "EC" and entry["crv"] == "P-256" and entry["alg"] == "ES256"
    assert entry["use"] == "sig" and "d" not in entry
    keys = KeySet.import_key_set(doc)
    r = attest(env, env.attester.evidence)
    assert r.status_code == 200, r.text
    token = r.json()["token"]
    decoded = jwt.decode(token, keys, algorithms=["ES256"])
    assert decoded.header["kid"] == entry["kid"]
    assert decoded.claims["tcb"]["tee"] == "sim"
    # the kid is the key's RFC 7638 thumbprint
    assert ECKey.import_key(entry).thumbprint() == entry["kid"]


def test_a_token_of_another_key_does_not_verify(env: Env) -> None:
    doc = env.client.get("/.well-known/jwks.json").json()
    other = ECKey.generate_key("P-256")
    forged = jwt.encode({"alg": "ES256", "kid": doc["keys"][0]["kid"]}, {"tcb": {}}, other)
    with pytest.raises(BadSignatureError):
        jwt.decode(forged, KeySet.import_key_set(doc), algorithms=["ES256"])


def test_jwks_is_in_the_openapi_document(env: Env) -> None:
    assert "/.well-known/jwks.json" in env.client.get("/openapi.json").json()["paths"]
