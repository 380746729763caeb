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
report data.  Messages of the shared helpers are renamed to this TEE.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import struct
from collections.abc import Callable
from types import MappingProxyType
from typing import Any, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from layerseal.attest import az_snp_vtpm as az
from layerseal.attest import tdx
from layerseal.attest.claims import Claims, Verifier
from layerseal.errors import BadInputError, DeniedError, LayersealError
from layerseal.image.jsonutil import loads_object

TEE = "az-tdx-vtpm"
HCL_REPORT_TYPE_TDX = 4
TD_REPORT_SIZE = 1024
TD_REPORT_DATA = slice(128, 192)  # REPORTMACSTRUCT.reportdata
MAX_QUOTE = 16 * 1024
_MAX_EVIDENCE = 64 * 1024
T = TypeVar("T")


def _renamed(call: Callable[[], T]) -> T:
    """Run a shared az-snp-vtpm helper; its errors name this TEE."""
    try:
        return call()
    except LayersealError as exc:
        raise type(exc)(str(exc).replace(az.TEE, TEE, 1)) from exc


def _blob(value: object, what: str, limit: int) -> bytes:
    if (
        isinstance(value, list)
        and len(value) <= limit
        and all(isinstance(b, int) and 0 <= b < 256 for b in value)
    ):
        return bytes(value)
    if isinstance(value, str) and len(value) <= 2 * limit:
        try:
            return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        except (binascii.Error, ValueError) as exc:
            raise BadInputError(f"{what}: expected base64url, seen invalid text") from exc
    raise BadInputError(f"{what}: expected base64url or a byte array of at most {limit} bytes")


@dataclasses.dataclass(frozen=True)
class Evidence:
    version: int
    signature: bytes
    message: bytes
    pcrs: tuple[bytes, ...]
    hcl_report: bytes
    td_quote: bytes


def parse_evidence(evidence: bytes) -> Evidence:
    if len(evidence) > _MAX_EVIDENCE:
        raise BadInputError(f"{TEE} evidence: expected at most {_MAX_EVIDENCE} bytes, seen {len(evidence)}")
    obj = loads_object(evidence, f"{TEE} evidence")
    version = obj.get("version", 1)
    if version != 1 or isinstance(version, bool):
        raise BadInputError(f"{TEE} evidence version: expected 1, seen {str(version)[:20]!r}")
    quote = obj.get("tpm_quote")
    if not isinstance(quote, dict):
        raise BadInputError(
            f"{TEE} evidence tpm_quote: expected an object with signature/message/pcrs, seen none"
        )
    pcrs = quote.get("pcrs")
    if not isinstance(pcrs, list) or len(pcrs) > az.MAX_PCRS:
        raise BadInputError(
            f"{TEE} evidence tpm_quote.pcrs: expected an array of at most {az.MAX_PCRS} hex strings"
        )
    values = tuple(az._hex(p, f"{TEE} evidence tpm_quote.pcrs[{i}]", az.PCR_SIZE) for i, p in enumerate(pcrs))
    if any(len(v) != az.PCR_SIZE for v in values):
        raise BadInputError(f"{TEE} evidence tpm_quote.pcrs: expected {az.PCR_SIZE}-byte values")
    return Evidence(
        version=1,
        signature=az._hex(quote.get("signature"), f"{TEE} evidence tpm_quote.signature", az.MAX_SIGNATURE),
        message=az._hex(quote.get("message"), f"{TEE} evidence tpm_quote.message", az.MAX_QUOTE_MESSAGE),
        pcrs=values,
        hcl_report=_blob(obj.get("hcl_report"), f"{TEE} evidence hcl_report", 16 * 1024),
        td_quote=_blob(obj.get("td_quote"), f"{TEE} evidence td_quote", MAX_QUOTE),
    )


@dataclasses.dataclass(frozen=True)
class HclReport:
    td_report: bytes
    var_data: bytes


def parse_hcl_report(raw: bytes) -> HclReport:
    if len(raw) < az.HCL_VAR_DATA_OFFSET:
        raise BadInputError(
            f"{TEE} hcl report size: expected at least {az.HCL_VAR_DATA_OFFSET} bytes, seen {len(raw)}"
        )
    if raw[:4] != az.HCL_SIGNATURE:
        raise BadInputError(f"{TEE} hcl report signature: expected {az.HCL_SIGNATURE!r}, seen {raw[:4]!r}")
    _size, _version, report_type, hash_type, var_size = struct.unpack_from("<5I", raw, az.HCL_REQUEST_OFFSET)
    if report_type != HCL_REPORT_TYPE_TDX:
        raise BadInputError(
            f"{TEE} hcl report type: expected {HCL_REPORT_TYPE_TDX} (TDX), seen {report_type}"
        )
    if hash_type != az.HCL_HASH_SHA256:
        raise BadInputError(
            f"{TEE} hcl report hash type: expected {az.HCL_HASH_SHA256} (SHA-256), seen {hash_type}"
        )
    end = az.HCL_VAR_DATA_OFFSET + var_size
    if end > len(raw):
        raise BadInputError(
            f"{TEE} hcl var data size: expected at most {len(raw) - az.HCL_VAR_DATA_OFFSET}, seen {var_size}"
        )
    start = az.HCL_HEADER_SIZE
    return HclReport(raw[start : start + TD_REPORT_SIZE], raw[az.HCL_VAR_DATA_OFFSET : end])


class AzTdxVtpmVerifier:
    """Verifies Azure TDX vTPM evidence; the TD quote through a :class:`tdx.TdxVerifier`."""

    tee = TEE

    def __init__(self, tdx_verifier: Verifier) -> None:
        self._tdx = tdx_verifier

    def verify(self, evidence: bytes, expected_report_data: bytes) -> Claims:
        if len(expected_report_data) > az.REPORT_DATA_SIZE:
            raise BadInputError(f"{TEE} expected report data: expected at most {az.REPORT_DATA_SIZE} bytes")
        ev = parse_evidence(evidence)
        hcl = parse_hcl_report(ev.hcl_report)

        # 1. the TD quote is genuine (its report data is checked against the HCL below)
        quoted_rd = tdx.parse_quote(tdx.quote_bytes(ev.td_quote)).td.report_data
        try:
            td_claims = self._tdx.verify(ev.td_quote, quoted_rd)
        except LayersealError as exc:
            raise type(exc)(f"{TEE} {exc}") from exc
        if not hmac.compare_digest(hcl.td_report[TD_REPORT_DATA], quoted_rd):
            raise DeniedError(
                f"{TEE} td quote: expected the quote of the HCL's TD report (report data "
                f"{hcl.td_report[TD_REPORT_DATA][:8].hex()}...), seen {quoted_rd[:8].hex()}..."
            )

        # 2. the TD's report data binds the var data, hence the attestation key in it
        var_hash = hashlib.sha256(hcl.var_data).digest()
        if not hmac.compare_digest(quoted_rd[:32], var_hash):
            raise DeniedError(
                f"{TEE} hcl var data binding: expected SHA-256 {quoted_rd[:8].hex()}... (td report data), "
                f"seen {var_hash[:8].hex()}..."
            )
        var_data = _var_data_json(hcl.var_data)
        ak = _renamed(lambda: az.attestation_key(var_data))

        # 3. the attestation key signed the TPM quote
        try:
            ak.verify(ev.signature, ev.message, padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature as exc:
            raise DeniedError(
                f"{TEE} tpm quote signature: expected RSASSA-PKCS1-v1_5 SHA-256 by {az.AK_KID}, seen invalid"
            ) from exc
        attest = _renamed(lambda: az.parse_attest(ev.message))
        _renamed(lambda: az.AzSnpVtpmVerifier._check_pcrs(attest, ev.pcrs))

        # 4. the quote (and the var data's user-data, when the paravisor put it) carry the report data
        expected = az._regularized(expected_report_data)
        if not hmac.compare_digest(az._regularized(attest.extra_data), expected):
            raise DeniedError(
                f"{TEE} tpm quote extraData: expected the report data {expected[:8].hex()}..., "
                f"seen {attest.extra_data[:8].hex()}..."
            )
        if "user-data" in var_data:
            user_data = _renamed(lambda: az._user_data(var_data))
            if not hmac.compare_digest(az._regularized(user_data), expected):
                raise DeniedError(
                    f"{TEE} hcl user-data: expected the report data {expected[:8].hex()}..., "
                    f"seen {user_data[:8].hex()}..."
                )
        details = dict(td_claims.details)
        details["td_report_data"] = details["report_data"]
        details["report_data"] = attest.extra_data.hex()
        indices = attest.selections[0].indices
        details["pcrs"] = {f"pcr{i:02d}": v.hex() for i, v in zip(indices, ev.pcrs, strict=True)}
        details["ak"] = az._key_id(ak)
        return Claims(
            tee=TEE,
            measurement=td_claims.measurement,
            svn=td_claims.svn,
            debug=td_claims.debug,
            details=MappingProxyType(details),
        )


def _var_data_json(raw: bytes) -> dict[str, Any]:
    return loads_object(raw, f"{TEE} hcl var data")
