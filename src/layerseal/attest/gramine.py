"""SGX evidence inside Gramine, through its ``/dev/attestation`` pseudo-files.

Gramine's attestation interface: ``attestation_type`` says which quoting is configured
(``dcap``, ``epid`` or ``none``); writing the 64 report-data bytes to ``user_report_data``
and then reading ``quote`` gives a quote over this enclave with that report data.  Only
``dcap`` quotes are accepted: EPID needs Intel's retired attestation service.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from layerseal.attest import sgx
from layerseal.attest.binding import REPORT_DATA_SIZE
from layerseal.errors import BadInputError, NotFoundError, TransportError

DEFAULT_DIR = Path("/dev/attestation")
MAX_QUOTE = 64 * 1024


def attestation_type(directory: Path = DEFAULT_DIR) -> str | None:
    """Gramine's configured attestation type, or None outside Gramine."""
    try:
        return (directory / "attestation_type").read_text().strip()
    except OSError:
        return None


class GramineAttester:
    tee = sgx.TEE

    def __init__(self, directory: Path = DEFAULT_DIR) -> None:
        self.directory = directory

    def quote(self, report_data: bytes) -> bytes:
        if len(report_data) != REPORT_DATA_SIZE:
            raise BadInputError(
                f"sgx user_report_data: expected {REPORT_DATA_SIZE} bytes, seen {len(report_data)}"
            )
        kind = attestation_type(self.directory)
        if kind is None:
            raise NotFoundError(f"sgx {self.directory}/attestation_type: expected Gramine's file, seen none")
        if kind != "dcap":
            raise BadInputError(
                f"sgx attestation type ({self.directory}): expected 'dcap', seen {kind[:20]!r}"
            )
        try:
            with open(self.directory / "user_report_data", "wb", buffering=0) as fh:
                fh.write(report_data)
            with open(self.directory / "quote", "rb", buffering=0) as fh:
                quote = fh.read(MAX_QUOTE + 1)
        except OSError as exc:
            raise TransportError(f"sgx {self.directory}: expected a quote, seen {exc.strerror}") from exc
        if not quote or len(quote) > MAX_QUOTE:
            raise TransportError(f"sgx quote: expected 1..{MAX_QUOTE} bytes, seen {len(quote)}")
        return quote

    def evidence(self, report_data: bytes) -> dict[str, Any]:
        return sgx.evidence_json(self.quote(report_data))
