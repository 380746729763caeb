"""Structured JSON logs of a whole RCAR flow, denials included, carry no secret."""

from __future__ import annotations

import base64
import io
import json
import logging

from brokerenv import Env, make_optsdata
from test_broker_rcar_api import rcar

from layerseal.broker.jsonlog import JsonFormatter
from layerseal.crypto.jwe import decrypt_from_jwk


def test_no_secret_reaches_the_logs(env: Env) -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("layerseal")
    old_level = root.level
    root.setLevel(logging.DEBUG)  # setLevel, not .level: loggers cache isEnabledFor answers
    root.addHandler(handler)
    try:
        optsdata = make_optsdata()
        key = env.create_key(optsdata=optsdata)
        _sid, r, enclave_key = rcar(env.client, env.attester)
        token = r.json()["token"]
        path = key["kid"].removeprefix("kbs:///")
        r = env.client.post(
            "/kbs/v0/resources", json={"resources": [path]}, headers={"Authorization": f"Bearer {token}"}
        )
        assert r.status_code == 200
        kek = json.loads(decrypt_from_jwk(r.json(), enclave_key))["resources"][path]
        # denials and bad input are logged too
        assert (
            env.client.post(
                "/kbs/v0/resources", json={"resources": [path]}, headers={"Authorization": "Bearer x.y.z"}
            ).status_code
            == 401
        )
        assert env.client.post("/kbs/v0/attest", content=b"{not json").status_code in (400, 401)
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    text = out.getvalue()
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert lines, "the flow logged nothing"  # otherwise the assertions below prove nothing
    secrets = [
        token,
        kek,
        base64.b64encode(optsdata).decode(),
        json.loads(optsdata)["symkey"],
        env.tenant_token,
        env.admin["Authorization"].removeprefix("Bearer "),
        base64.b64decode(key["packet"]).decode(),
    ]
    for secret in secrets:
        assert secret not in text
