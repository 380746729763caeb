"""The simulated TEE: evidence format and its (pure) verifier.

A sim platform owns an EC P-384 signing key and a self-signed certificate (see
``sim_platform``).  Evidence is the JSON object::

    {"format": "layerseal-sim/1",
     "report": b64(JSON {"measurement": hex, "report_data": b64(64 bytes), "svn": int, "debug": bool}),
     "signature": b64(DER ECDSA-P384-SHA384 over the report bytes),
     "certificate": b64(DER platform certificate)}

The verifier trusts only certificates registered with it (compared by SHA-256 of the DER).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from layerseal.attest.binding import REPORT_DATA_SIZE, check_report_data
from layerseal.attest.claims import Claims
from layerseal.attest.x509util import certificate_fingerprint
from layerseal.errors import BadInputError, DeniedError
from layerseal.wire.b64 import b64decode
from layerseal.wire.jsonload import loads_object

__all__ = ["SimVerifier", "encode_report", "make_evidence"]

TEE = "sim"
FORMAT = "layerseal-sim/1"
_HEX_RE = re.compile(r"^[0-9a-f]{16,128}$")


def _b64(value: Any, what: str) -> bytes:
    return b64decode(value, f"sim evidence {what}")


def encode_report(measurement: str, report_data: bytes, svn: int, debug: bool) -> bytes:
    if len(report_data) != REPORT_DATA_SIZE:
        raise BadInputError(f"sim report data: expected {REPORT_DATA_SIZE} bytes, seen {len(report_data)}")
    report = {
        "measurement": measurement,
        "report_data": base64.b64encode(report_data).decode(),
        "svn": svn,
        "debug": debug,
    }
    return json.dumps(report, sort_keys=True, separators=(",", ":")).encode()


def make_evidence(report: bytes, signature: bytes, cert_der: bytes) -> dict[str, str]:
    return {
        "format": FORMAT,
        "report": base64.b64encode(report).decode(),
        "signature": base64.b64encode(signature).decode(),
        "certificate": base64.b64encode(cert_der).decode(),
    }


class SimVerifier:
    """Verifies sim evidence signed by one of the trusted platform certificates."""

    tee = TEE

    def __init__(self, trusted_certificates: Iterable[bytes]) -> None:
        self._trusted: dict[str, x509.Certificate] = {}
        for der in trusted_certificates:
            self._trusted[certificate_fingerprint(der)] = x509.load_der_x509_certificate(der)

    def verify(self, evidence: bytes, expected_report_data: bytes) -> Claims:
        obj = loads_object(evidence, "sim evidence")
        if obj.get("format") != FORMAT:
            seen_format = str(obj.get("format"))[:40]
            raise BadInputError(f"sim evidence format: expected {FORMAT!r}, seen {seen_format!r}")
        report_bytes = _b64(obj.get("report"), "report")
        signature = _b64(obj.get("signature"), "signature")
        cert_der = _b64(obj.get("certificate"), "certificate")
        fingerprint = certificate_fingerprint(cert_der)
        cert = self._trusted.get(fingerprint)
        if cert is None:
            raise DeniedError(
                "sim evidence platform: expected a registered platform certificate, "
                f"seen unregistered {fingerprint}"
            )
        public_key = cert.public_key()
        assert isinstance(public_key, ec.EllipticCurvePublicKey)  # checked at registration
        try:
            public_key.verify(signature, report_bytes, ec.ECDSA(hashes.SHA384()))
        except InvalidSignature as exc:
            raise DeniedError(
                f"sim evidence signature: expected valid under platform {fingerprint}, seen invalid"
            ) from exc
        report = _parse_report(report_bytes)
        seen = _b64(report["report_data"], "report.report_data")
        check_report_data("sim evidence report data", seen, expected_report_data)
        details = {
            "measurement": report["measurement"],
            "svn": report["svn"],
            "debug": report["debug"],
            "platform": fingerprint,
        }
        return Claims(
            tee=TEE,
            measurement=report["measurement"],
            svn=report["svn"],
            debug=report["debug"],
            details=MappingProxyType(details),
        )


def _parse_report(data: bytes) -> Mapping[str, Any]:
    report = loads_object(data, "sim report")
    measurement = report.get("measurement")
    if not isinstance(measurement, str) or not _HEX_RE.match(measurement):
        raise BadInputError("sim report measurement: expected 16-128 lowercase hex digits")
    svn = report.get("svn")
    if isinstance(svn, bool) or not isinstance(svn, int) or not 0 <= svn < 2**32:
        raise BadInputError(f"sim report svn: expected an integer 0..2**32-1, seen {svn!r}")
    if not isinstance(report.get("debug"), bool):
        raise BadInputError("sim report debug: expected a boolean")
    return report
