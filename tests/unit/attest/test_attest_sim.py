"""The sim TEE verifier and Trustee's sample verifier: bytes in, claims out."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest

from layerseal.attest.sample import SampleAttester, SampleVerifier
from layerseal.attest.sim import SimVerifier
from layerseal.attest.sim_platform import SimAttester, init_platform
from layerseal.attest.verifiers import verifier_for
from layerseal.attest.x509util import load_certificate
from layerseal.errors import BadInputError, DeniedError

RD = bytes(range(64))


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("p")
    init_platform(d, svn=3)
    return d


def cert_der(d: Path) -> bytes:
    return load_certificate((d / "platform-cert.pem").read_bytes())


def test_platform_key_is_private_and_not_overwritten(platform: Path) -> None:
    assert stat.S_IMODE((platform / "platform-key.pem").stat().st_mode) == 0o600
    with pytest.raises(BadInputError, match="refusing to overwrite"):
        init_platform(platform)


def test_valid_evidence_gives_claims(platform: Path) -> None:
    attester = SimAttester(platform)
    evidence = json.dumps(attester.evidence(RD)).encode()
    claims = SimVerifier([cert_der(platform)]).verify(evidence, RD)
    assert claims.tee == "sim" and claims.svn == 3 and claims.debug is False
    assert claims.measurement == attester.measurement
    tree = claims.as_tree()
    assert tree["sim"]["platform"].startswith("sha256:")


def test_report_data_mismatch_unregistered_platform_and_forgery(platform: Path, tmp_path: Path) -> None:
    evidence_obj = SimAttester(platform).evidence(RD)
    evidence = json.dumps(evidence_obj).encode()
    verifier = SimVerifier([cert_der(platform)])
    with pytest.raises(DeniedError, match="report data"):
        verifier.verify(evidence, bytes(64))
    init_platform(tmp_path / "other")
    with pytest.raises(DeniedError, match="unregistered"):
        SimVerifier([cert_der(tmp_path / "other")]).verify(evidence, RD)
    report = json.loads(base64.b64decode(evidence_obj["report"]))
    report["debug"] = True  # flip a claim without re-signing
    forged = dict(evidence_obj, report=base64.b64encode(json.dumps(report).encode()).decode())
    with pytest.raises(DeniedError, match="signature"):
        verifier.verify(json.dumps(forged).encode(), RD)


@pytest.mark.parametrize(
    "blob", [b"", b"[]", b"{}", b'{"format":"layerseal-sim/1","report":"!!"}', os.urandom(40)]
)
def test_malformed_evidence_is_bad_input(platform: Path, blob: bytes) -> None:
    with pytest.raises(BadInputError):
        SimVerifier([cert_der(platform)]).verify(blob, RD)


def test_attester_refuses_loose_key_permissions(tmp_path: Path) -> None:
    init_platform(tmp_path)
    (tmp_path / "platform-key.pem").chmod(0o644)
    with pytest.raises(DeniedError, match="0600"):
        SimAttester(tmp_path)


def test_sample_verifier_checks_binding_and_marks_debug() -> None:
    evidence = json.dumps(SampleAttester(svn=4).evidence(RD)).encode()
    claims = SampleVerifier().verify(evidence, RD)
    assert claims.tee == "sample" and claims.debug is True and claims.svn == 4
    with pytest.raises(DeniedError):
        SampleVerifier().verify(evidence, bytes(64))
    with pytest.raises(BadInputError, match="tee"):
        verifier_for("sev")  # snp, tdx and sgx are real verifiers now
