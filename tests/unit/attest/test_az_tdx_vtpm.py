"""The az-tdx-vtpm verifier's parsing and registration (its checks run against swtpm in
tests/integration/test_vtpm_swtpm.py)."""

from __future__ import annotations

import base64
import json
import struct
from pathlib import Path

import pytest

from layerseal.attest import az_tdx_vtpm
from layerseal.attest.verifiers import SUPPORTED_TEES, verifier_for
from layerseal.errors import BadInputError, DeniedError

DATA = Path(__file__).parents[2] / "data" / "tee"
SNP_HCL_EVIDENCE = json.loads((DATA / "az-snp-vtpm" / "evidence-v2.json").read_text())
TD_QUOTE = (DATA / "tdx" / "tdx_quote_4.dat").read_bytes()


def evidence(hcl: bytes, td_quote: bytes = TD_QUOTE, **extra: object) -> bytes:
    doc = {
        "tpm_quote": SNP_HCL_EVIDENCE["tpm_quote"],
        "hcl_report": base64.urlsafe_b64encode(hcl).decode(),
        "td_quote": base64.urlsafe_b64encode(td_quote).decode(),
        **extra,
    }
    return json.dumps(doc).encode()


def tdx_hcl(var: bytes = b"{}") -> bytes:
    request = struct.pack("<5I", 20 + len(var), 1, 4, 1, len(var))
    return b"HCLA" + bytes(0x1C) + bytes(1184) + request + var


def test_registered_with_kbs_types_alias() -> None:
    assert {"az-tdx-vtpm", "aztdxvtpm"} <= set(SUPPORTED_TEES)
    assert verifier_for("aztdxvtpm").tee == "az-tdx-vtpm"


def test_an_snp_hcl_report_is_refused_by_type() -> None:
    hcl = base64.urlsafe_b64decode(SNP_HCL_EVIDENCE["hcl_report"] + "==")
    with pytest.raises(BadInputError, match=r"^az-tdx-vtpm hcl report type: expected 4 \(TDX\), seen 2"):
        verifier_for("az-tdx-vtpm").verify(evidence(hcl), bytes(64))


def test_malformed_evidence_is_named() -> None:
    v = verifier_for("az-tdx-vtpm")
    with pytest.raises(BadInputError, match=r"^az-tdx-vtpm evidence version: expected 1, seen '2'"):
        v.verify(evidence(tdx_hcl(), version=2), bytes(64))
    with pytest.raises(
        BadInputError, match=r"^az-tdx-vtpm evidence td_quote: expected base64url or a byte array"
    ):
        v.verify(evidence(tdx_hcl()).replace(b'"td_quote": "', b'"td_quote": 5, "x": "'), bytes(64))
    with pytest.raises(BadInputError, match=r"^az-tdx-vtpm hcl report signature"):
        v.verify(evidence(b"XXXX" + tdx_hcl()[4:]), bytes(64))


def test_td_quote_is_verified_first_with_the_tdx_checks() -> None:
    bad = TD_QUOTE[:100] + bytes([TD_QUOTE[100] ^ 1]) + TD_QUOTE[101:]
    with pytest.raises(DeniedError, match=r"^az-tdx-vtpm tdx (quote signature|PCK chain validity)"):
        verifier_for("az-tdx-vtpm").verify(evidence(tdx_hcl(), bad), bytes(64))
    assert az_tdx_vtpm.TEE == "az-tdx-vtpm"
