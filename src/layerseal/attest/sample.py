"""Trustee's ``sample`` TEE: unsigned evidence, kept for protocol compatibility only.

Evidence is ``{"svn": "<n>", "report_data": "<b64>"}`` with no signature, so anyone can
produce it: its claims say ``debug: true`` and the default release policy refuses it.
"""

from __future__ import annotations

import base64
from types import MappingProxyType

from layerseal.attest.binding import REPORT_DATA_SIZE, check_report_data
from layerseal.attest.claims import Claims
from layerseal.errors import BadInputError
from layerseal.wire.b64 import b64decode
from layerseal.wire.jsonload import loads_object

TEE = "sample"


class SampleVerifier:
    """Checks the binding only; there is nothing else to check."""

    tee = TEE

    def verify(self, evidence: bytes, expected_report_data: bytes) -> Claims:
        obj = loads_object(evidence, "sample evidence")
        svn_text = obj.get("svn", "0")
        try:
            svn = int(str(svn_text))
        except ValueError as exc:
            shown = str(svn_text)[:20]
            raise BadInputError(f"sample evidence svn: expected a decimal string, seen {shown!r}") from exc
        if not 0 <= svn < 2**32:
            raise BadInputError(f"sample evidence svn: expected 0..2**32-1, seen {svn}")
        seen = b64decode(obj.get("report_data"), "sample evidence report_data")
        # Trustee's sample attester sends the bare 48-byte digest or the padded 64 bytes.
        check_report_data(
            "sample evidence report data", seen.ljust(REPORT_DATA_SIZE, b"\0"), expected_report_data
        )
        details = {"svn": svn}
        return Claims(tee=TEE, measurement="", svn=svn, debug=True, details=MappingProxyType(details))


class SampleAttester:
    """Trustee-compatible unsigned evidence (for protocol tests; the default policy refuses it)."""

    tee = TEE

    def __init__(self, svn: int = 1) -> None:
        self.svn = svn

    def evidence(self, report_data: bytes) -> dict[str, str]:
        return {"svn": str(self.svn), "report_data": base64.b64encode(report_data).decode()}
