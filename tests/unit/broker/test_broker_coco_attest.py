"""RCAR attestations in CoCo's shapes (kbs-types 0.18): init-data, additional evidence, SNP JSON."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from brokerenv import Env

from layerseal.attest.binding import device_report_data, report_data
from layerseal.crypto.keys import generate_key
from layerseal.kbs.client import tee_pubkey_jwk

COCO_SNP = json.loads(
    (Path(__file__).parents[2] / "data" / "tee" / "snp" / "coco-guest-evidence.json").read_text()
)
INIT_DATA = {"format": "toml", "body": 'algorithm = "sha384"\nversion = "0.1.0"\n[data]\n"aa.toml" = "x"\n'}


def attest(
    env: Env,
    make_primary: Any,
    *,
    additional: Any = "",
    init_data: Any = None,
    tee: str = "sim",
) -> Any:
    jwk = tee_pubkey_jwk(generate_key("EC-P256"))
    r = env.client.post("/kbs/v0/auth", json={"version": "0.4.0", "tee": tee, "extra-params": {}})
    assert r.status_code == 200, r.text
    sid, nonce = r.cookies["kbs-session-id"], r.json()["nonce"]
    extra = additional(nonce, jwk) if callable(additional) else additional
    body: dict[str, Any] = {
        "runtime-data": {"nonce": nonce, "tee-pubkey": jwk},
        "tee-evidence": {
            "primary_evidence": make_primary(report_data(nonce, jwk, extra)),
            "additional_evidence": extra,
        },
    }
    if init_data is not None:
        body["init-data"] = init_data
    env.client.cookies.clear()
    r = env.client.post("/kbs/v0/attest", json=body, headers={"Cookie": f"kbs-session-id={sid}"})
    env.client.cookies.clear()
    return r


def token_claims(r: Any) -> dict[str, Any]:
    payload = r.json()["token"].split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "==")))


def test_init_data_is_refused_for_a_tee_that_cannot_bind_it(env: Env) -> None:
    r = attest(env, env.attester.evidence, init_data=INIT_DATA)
    assert r.status_code == 400, r.text
    assert "init-data: expected a TEE that binds its digest" in r.json()["detail"]
    r = attest(env, env.attester.evidence, init_data={"format": "yaml", "body": ""})
    assert r.status_code == 400
    assert "format: expected 'toml'" in r.json()["detail"]


def test_verified_additional_evidence_becomes_claims(env: Env) -> None:
    def device(nonce: str, jwk: dict[str, Any]) -> str:
        return json.dumps({"sim": env.attester.evidence(device_report_data(nonce, jwk))})

    r = attest(env, env.attester.evidence, additional=device)
    assert r.status_code == 200, r.text
    tcb = token_claims(r)["tcb"]
    assert tcb["additional"]["sim"]["tee"] == "sim"
    assert tcb["additional"]["sim"]["measurement"] == env.attester.measurement


def test_additional_evidence_that_fails_refuses_the_attestation(env: Env) -> None:
    def bound_to_primary_data(nonce: str, jwk: dict[str, Any]) -> str:
        # device evidence must carry the device binding, not the primary's
        return json.dumps({"sim": env.attester.evidence(report_data(nonce, jwk))})

    r = attest(env, env.attester.evidence, additional=bound_to_primary_data)
    assert r.status_code == 403, r.text
    assert "additional evidence 'sim'" in r.json()["detail"]


def test_unverifiable_additional_evidence_gives_no_claims(env: Env) -> None:
    kinds = json.dumps({"nvidia": {"evidence_list": []}, "sample": {"svn": "9", "report_data": ""}})
    r = attest(env, env.attester.evidence, additional=kinds)
    assert r.status_code == 200, r.text
    tcb = token_claims(r)["tcb"]
    assert "additional" not in tcb
    assert "nvidia" not in json.dumps(tcb) and '"9"' not in json.dumps(tcb)


def test_malformed_additional_evidence_is_400(env: Env) -> None:
    r = attest(env, env.attester.evidence, additional="{not json")
    assert r.status_code == 400
    assert "additional_evidence: expected a JSON object" in r.json()["detail"]
    r = attest(env, env.attester.evidence, additional=json.dumps({"snp": {"report": "!!"}}))
    assert r.status_code == 400
    assert r.json()["detail"].startswith("attestation additional evidence 'snp': snp evidence report")


def test_coco_snp_guest_evidence_reaches_the_binding_check(env: Env) -> None:
    # Trustee's fixture: a real Genoa report in the sev crate's JSON form; its report data
    # was bound to Trustee's test nonce, so the broker refuses it exactly there
    r = attest(env, lambda _rd: COCO_SNP, tee="snp")
    assert r.status_code == 403, r.text
    assert "snp report data: expected SHA-384 of this session's nonce" in r.json()["detail"]


def test_kbs_types_tee_name_for_azure_reaches_the_az_snp_vtpm_verifier(env: Env) -> None:
    # kbs-types writes Tee::AzSnpVtpm as "azsnpvtpm" (serde rename_all = "lowercase")
    r = attest(env, lambda _rd: {"version": 2}, tee="azsnpvtpm")
    assert r.status_code == 400, r.text
    assert r.json()["detail"].startswith("az-snp-vtpm evidence tpm_quote")
