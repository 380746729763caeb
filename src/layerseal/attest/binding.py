"""Report-data binding of the KBS nonce and the enclave public key (RCAR 0.4.0).

The evidence's report data must equal ``SHA-384(JCS({"additional-evidence", "nonce",
"tee-pubkey"}))`` zero-padded to 64 bytes, so the evidence is fresh (nonce) and names
the only key a released secret may be wrapped to (tee-pubkey).  Additional (device)
evidence is bound to ``SHA-384(JCS({"nonce", "tee-pubkey"}))``, as Trustee's KBS binds it
and guest-components' attester produces it; the primary evidence then binds the
additional evidence itself.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

from layerseal.errors import BadInputError, DeniedError
from layerseal.wire.jcs import canonicalize

REPORT_DATA_SIZE = 64


def runtime_data(nonce: str, tee_pubkey: Mapping[str, Any], additional_evidence: str = "") -> dict[str, Any]:
    """The JSON object whose canonical form is hashed into the evidence."""
    return {"additional-evidence": additional_evidence, "nonce": nonce, "tee-pubkey": dict(tee_pubkey)}


HASH_ALGORITHMS = ("sha256", "sha384", "sha512")


def report_data(
    nonce: str, tee_pubkey: Mapping[str, Any], additional_evidence: str = "", algorithm: str = "sha384"
) -> bytes:
    """The 64 report-data bytes an honest enclave puts in its evidence.

    *algorithm* is SHA-384 unless a KBS challenge's ``extra-params`` names another
    (``selected-hash-algorithm``, kbs-types' names), as guest-components honours it.
    """
    if algorithm not in HASH_ALGORITHMS:
        raise BadInputError(
            f"report data hash algorithm: expected one of {list(HASH_ALGORITHMS)}, seen {algorithm!r:.20}"
        )
    material = canonicalize(runtime_data(nonce, tee_pubkey, additional_evidence))
    return hashlib.new(algorithm, material).digest().ljust(REPORT_DATA_SIZE, b"\0")


def device_report_data(nonce: str, tee_pubkey: Mapping[str, Any]) -> bytes:
    """The report data of a piece of additional evidence: it cannot bind itself, so only the
    nonce and tee-pubkey (zero-padded to 64 bytes like the primary's)."""
    digest = hashlib.sha384(canonicalize({"nonce": nonce, "tee-pubkey": dict(tee_pubkey)})).digest()
    return digest.ljust(REPORT_DATA_SIZE, b"\0")


def check_report_data(what: str, seen: bytes, expected: bytes) -> None:
    """Refuse evidence whose report data is not the *expected* binding; *what* names the
    field (``snp report data``)."""
    if not hmac.compare_digest(seen, expected):
        raise DeniedError(
            f"{what}: expected SHA-384 of this session's nonce and tee-pubkey "
            f"({expected[:8].hex()}...), seen {seen[:8].hex()}..."
        )
