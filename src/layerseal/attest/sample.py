"""Trustee's ``sample`` TEE: unsigned evidence, kept for protocol compatibility only.

Evidence is ``{"svn": "<n>", "report_data": "<b64>"}`` with no signature, so anyone can
produce it: its claims say ``debug: true`` and the default release policy refuses it.
"""

from __future__ import annotations

import base64
import hmac
from types import MappingProxyType

from layerseal.attest.binding import REPORT_DATA_SIZE
from layerseal.attest.claims import Claims
from layerseal.errors import BadInputError, DeniedError
from layerseal.image import jsonutil
from layerseal.wire.b64 import b64decode

TEE = "sample"


class SampleVerifier:
    """Checks the binding only; there is nothing else to check."""

    tee = TEE

    def verify(self, evidence: bytes, expected_report_data: bytes) -> Claims:
        try:
            obj = jsonutil.loads(evidence, "sample evidence")
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadInputError("sample evidence: expected a JSON object, seen invalid JSON") from exc
        if not isinstance(obj, dict):
            raise BadInputError(f"sample evidence: expected a JSON object, seen {type(obj).__name__}")
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
        padded = seen.ljust(REPORT_DATA_SIZE, b"\0")
        if not hmac.compare_digest(padded, expected_report_data):
            raise DeniedError(
                "sample evidence report data: expected SHA-384 of this session's nonce and tee-pubkey "
                f"({expected_report_data[:8].hex()}...), seen {seen[:8].hex()}..."
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
