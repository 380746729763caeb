"""Fuzzed real-TEE evidence through ``/kbs/v0/attest``: a 4xx problem document naming the
check, the session failed (never left ``verifying``), and a ``deny`` audit row, every time."""

from __future__ import annotations

import base64
import hashlib
import json
import random
from typing import Any

import pytest
from brokerenv import Env

from layerseal.attest.claims import Claims
from layerseal.crypto.keys import generate_key
from layerseal.kbs.client import tee_pubkey_jwk
from support.evidence_fuzz import CASES, Case

CASES_PER_TEE = 40


def _as_json_text(case: Case, tee: str) -> str | None:
    """The evidence as the string a CoCo guest puts in ``primary_evidence`` (binary quotes and
    reports base64 in their JSON form); None when the bytes cannot travel in JSON text."""
    data = case.evidence
    if not data.lstrip().startswith(b"{"):
        field = "quote" if tee == "tdx" else "report"
        data = json.dumps({field: base64.b64encode(data).decode()}).encode()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _attest(env: Env, tee: str, evidence: str) -> tuple[str, Any]:
    jwk = tee_pubkey_jwk(generate_key("EC-P256"))
    r = env.client.post("/kbs/v0/auth", json={"version": "0.4.0", "tee": tee, "extra-params": ""})
    assert r.status_code == 200, r.text
    sid = r.cookies["kbs-session-id"]
    body = {
        "runtime-data": {"nonce": r.json()["nonce"], "tee-pubkey": jwk},
        "tee-evidence": {"primary_evidence": evidence, "additional_evidence": ""},
    }
    env.client.cookies.clear()
    # json.dumps escapes lone surrogates as \\udXXX, as a hostile client would send them
    r = env.client.post(
        "/kbs/v0/attest",
        content=json.dumps(body).encode(),
        headers={"Cookie": f"kbs-session-id={sid}", "Content-Type": "application/json"},
    )
    env.client.cookies.clear()
    return sid, r


def _denials(env: Env) -> dict[str, str]:
    r = env.client.get("/api/v1/audit", params={"limit": "10000"}, headers=env.admin)
    assert r.status_code == 200, r.text
    return {
        e["evidence_digest"]: e["reason"]
        for e in r.json()["entries"]
        if e["action"] == "attest" and e["decision"] == "deny"
    }


@pytest.mark.parametrize("tee", sorted(CASES))
def test_fuzzed_evidence_is_a_4xx_problem_a_failed_session_and_an_audit_row(env: Env, tee: str) -> None:
    sent: list[tuple[str, str, str]] = []
    for case in CASES[tee](random.Random(f"attest-endpoint-fuzz-{tee}"), CASES_PER_TEE):
        evidence = _as_json_text(case, tee)
        if evidence is None:
            continue
        sid, r = _attest(env, tee, evidence)
        assert 400 <= r.status_code < 500, f"{case.label}: {r.status_code} {r.text[:300]}"
        assert r.headers["content-type"].startswith("application/problem+json"), case.label
        problem = r.json()
        assert problem["status"] == r.status_code
        # the detail names the check: "<tee> <check>: expected ..., seen ..."
        assert problem["detail"].startswith(tee.split("-")[0]), f"{case.label}: {problem['detail']}"
        session = env.broker.store.get_session(env.broker.session_key(sid))
        assert session is not None and session.state == "failed", f"{case.label}: {session}"
        sent.append((case.label, hashlib.sha256(evidence.encode()).hexdigest(), problem["detail"]))
    assert len(sent) > CASES_PER_TEE // 2
    denials = _denials(env)
    for label, digest, _detail in sent:
        assert digest in denials, f"{label}: no audit row for evidence {digest[:12]}"


class _BuggyVerifier:
    tee = "snp"

    def verify(self, evidence: bytes, expected_report_data: bytes) -> Claims:
        return {}["no such claim"]  # type: ignore[no-any-return]


def test_a_verifier_bug_is_still_a_refusal_with_a_failed_session_and_an_audit_row(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defence in depth: an exception no check anticipated is the evidence's fault too."""
    monkeypatch.setattr(env.broker.verifiers, "verifier_for", lambda tee, trusted=(): _BuggyVerifier())
    evidence = json.dumps({"report": "AAAA"})
    sid, r = _attest(env, "snp", evidence)
    assert r.status_code == 400, r.text
    assert r.json()["detail"] == (
        "snp evidence: expected evidence the verifier can check, seen evidence it failed on (KeyError)"
    )
    session = env.broker.store.get_session(env.broker.session_key(sid))
    assert session is not None and session.state == "failed"
    assert (
        "seen evidence it failed on (KeyError)"
        in _denials(env)[hashlib.sha256(evidence.encode()).hexdigest()]
    )


@pytest.mark.parametrize("tee", ["snp", "tdx", "az-snp-vtpm", "sim"])
def test_evidence_string_with_a_lone_surrogate_is_a_4xx_never_a_500(env: Env, tee: str) -> None:
    sid, r = _attest(env, tee, '{"report": "\ud800", "quote": "\udfff", "version": 1}')
    assert 400 <= r.status_code < 500, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    session = env.broker.store.get_session(env.broker.session_key(sid))
    # refused at the edge (challenges are stateless: no session row exists) or by the
    # verifier (session failed, audited)
    assert session is None or session.state == "failed", session
    if session is not None:
        assert session.evidence_digest is not None and session.evidence_digest in _denials(env)
