"""Azure TDX confidential VMs (TDX behind the paravisor's vTPM): evidence parser and pure verifier.

Evidence (RCAR ``tee`` = ``az-tdx-vtpm``), Trustee's shape::

    {"version": 1,  (optional)
     "tpm_quote": {"signature": hex, "message": hex TPMS_ATTEST, "pcrs": [hex SHA-256 PCR, ...]},
     "hcl_report": base64url | [bytes], "td_quote": base64url | [bytes]}

The HCL report is that of :mod:`layerseal.attest.az_snp_vtpm` with report type 4 (TDX): its
hardware slot holds the 1024-byte TD report, whose report data (offset 128) the TD quote
carries.  Checks, each named in its error: the TD quote verifies under the pinned Intel
root (:class:`layerseal.attest.tdx.TdxVerifier`, the TDX checks and claims); it is the
quote of the HCL's TD report (same report data); its report data starts with SHA-256 of
the HCL var data; the attestation key there signed the TPM quote; the PCR digest; the
quote's extraData (and the var data's ``user-data`` when present) carry the expected
report data.  The checks shared with az-snp-vtpm are :mod:`layerseal.attest.az_snp_vtpm`'s,
naming this TEE in their errors.
"""

from __future__ import annotations

import hmac

from layerseal.attest import az_snp_vtpm as az
from layerseal.attest import tdx
from layerseal.attest.binding import REPORT_DATA_SIZE
from layerseal.attest.claims import Claims, Verifier
from layerseal.errors import BadInputError, DeniedError, LayersealError
from layerseal.wire.b64 import b64decode_either

TEE = "az-tdx-vtpm"
HCL_REPORT_TYPE_TDX = 4
TD_REPORT_SIZE = 1024
TD_REPORT_DATA = slice(128, 192)  # REPORTMACSTRUCT.reportdata
MAX_QUOTE = 16 * 1024


def _blob(value: object, what: str, limit: int) -> bytes:
    if (
        isinstance(value, list)
        and len(value) <= limit
        and all(isinstance(b, int) and 0 <= b < 256 for b in value)
    ):
        return bytes(value)
    if isinstance(value, str) and len(value) <= 2 * limit:
        return b64decode_either(value, what)
    raise BadInputError(f"{what}: expected base64url or a byte array of at most {limit} bytes")


def parse_evidence(evidence: bytes) -> az.Evidence:
    obj = az.evidence_object(evidence, TEE)
    version = obj.get("version", 1)
    if version != 1 or isinstance(version, bool):
        raise BadInputError(f"{TEE} evidence version: expected 1, seen {str(version)[:20]!r}")
    return az.Evidence(
        version=1,
        tpm=az.parse_tpm_quote(obj, TEE),
        hcl_report=_blob(obj.get("hcl_report"), f"{TEE} evidence hcl_report", 16 * 1024),
        hardware=_blob(obj.get("td_quote"), f"{TEE} evidence td_quote", MAX_QUOTE),
    )


class AzTdxVtpmVerifier:
    """Verifies Azure TDX vTPM evidence; the TD quote through a :class:`tdx.TdxVerifier`."""

    tee = TEE

    def __init__(self, tdx_verifier: Verifier) -> None:
        self._tdx = tdx_verifier

    def verify(self, evidence: bytes, expected_report_data: bytes) -> Claims:
        if len(expected_report_data) > REPORT_DATA_SIZE:
            raise BadInputError(f"{TEE} expected report data: expected at most {REPORT_DATA_SIZE} bytes")
        ev = parse_evidence(evidence)
        hcl = az.parse_hcl_report(ev.hcl_report, TEE, HCL_REPORT_TYPE_TDX, "TDX")
        td_report = hcl.hw_report[:TD_REPORT_SIZE]

        # 1. the TD quote is genuine (its report data is checked against the HCL below)
        quoted_rd = tdx.parse_quote(tdx.quote_bytes(ev.hardware)).td.report_data
        try:
            td_claims = self._tdx.verify(ev.hardware, quoted_rd)
        except LayersealError as exc:
            raise type(exc)(f"{TEE} {exc}") from exc
        if not hmac.compare_digest(td_report[TD_REPORT_DATA], quoted_rd):
            raise DeniedError(
                f"{TEE} td quote: expected the quote of the HCL's TD report (report data "
                f"{td_report[TD_REPORT_DATA][:8].hex()}...), seen {quoted_rd[:8].hex()}..."
            )

        # 2. the TD's report data binds the var data, hence the attestation key in it
        var_data = az.bound_var_data(TEE, hcl, quoted_rd, "td report data")
        ak = az.attestation_key(var_data, TEE)

        # 3. the attestation key signed the quote over the PCRs and the report data (and the
        #    var data's user-data carries it too, when the paravisor put it there)
        attest = az.check_tpm_quote(
            TEE, ak, ev.tpm, var_data, expected_report_data, user_data="user-data" in var_data
        )
        return az.vtpm_claims(TEE, td_claims, "td", attest, ev.tpm, ak)
