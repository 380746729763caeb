"""Verifying one RCAR attestation: primary evidence, additional evidence and init-data.

Trustee's order, with layerseal's rule that nothing unverified becomes a claim:

1. the primary evidence must carry ``report_data(nonce, tee-pubkey, additional_evidence)``
   (so the additional evidence, as sent, is bound by the primary TEE);
2. the additional evidence is a JSON object ``{"<tee>": <evidence>, ...}`` (guest-components'
   ``CompositeEvidence``); each piece of a kind layerseal verifies (``snp``, ``tdx``,
   ``az-snp-vtpm``, ``az-tdx-vtpm``, ``sgx``, ``sim``) must carry
   ``device_report_data(nonce, tee-pubkey)`` and adds its claims under ``additional.<tee>``;
   a piece of any other kind (``nvidia``, ...) is bound by step 1 but yields no claim at all,
   and a piece that fails refuses the whole attestation;
3. init-data, when sent, must match the primary TEE's field (:mod:`layerseal.attest.initdata`)
   and then appears under ``init_data``.

Pure: verifiers come from the caller.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from layerseal.attest import binding, initdata
from layerseal.attest.claims import Claims, Verifier
from layerseal.errors import BadInputError, LayersealError
from layerseal.wire.jsonload import loads_object

# kinds whose additional evidence is verified; "sample" is unsigned, so never vouched for
VERIFIED_ADDITIONAL = ("snp", "tdx", "az-snp-vtpm", "azsnpvtpm", "az-tdx-vtpm", "aztdxvtpm", "sgx", "sim")
MAX_ADDITIONAL = 8


def _evidence_bytes(value: Any, what: str) -> bytes:
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":")).encode()
    raise BadInputError(f"{what}: expected an object or string, seen {type(value).__name__}")


def parse_additional(text: str) -> dict[str, Any]:
    """The additional evidence string as ``{tee: evidence}`` (empty when none was sent)."""
    what = "attestation tee-evidence.additional_evidence"
    if not text.strip():
        return {}
    obj = loads_object(text, what, expected="a JSON object of TEE evidence")
    if len(obj) > MAX_ADDITIONAL:
        raise BadInputError(f"{what}: expected at most {MAX_ADDITIONAL} pieces, seen {len(obj)}")
    return obj


def verify(
    tee: str,
    evidence: bytes,
    *,
    nonce: str,
    tee_pubkey: Mapping[str, Any],
    verifier_for: Callable[[str], Verifier],
    additional_evidence: str = "",
    init_data: Any = None,
) -> Claims:
    """The claims of one attestation (raises ``DeniedError`` when any verified part fails)."""
    parsed_init = initdata.parse(init_data)
    pieces = parse_additional(additional_evidence)
    expected = binding.report_data(nonce, tee_pubkey, additional_evidence)
    claims = verifier_for(tee).verify(evidence, expected)
    verified: dict[str, Mapping[str, Any]] = {}
    if pieces:
        device_rd = binding.device_report_data(nonce, tee_pubkey)
        for kind, piece in pieces.items():
            if kind not in VERIFIED_ADDITIONAL:
                continue  # bound by the primary evidence, but vouched for by nobody
            what = f"attestation additional evidence {kind!r}"
            try:
                sub = verifier_for(kind).verify(_evidence_bytes(piece, what), device_rd)
            except LayersealError as exc:
                # same family (400 malformed, 403 refused), named as the additional piece
                raise type(exc)(f"{what}: {exc}") from exc
            verified[kind] = MappingProxyType(sub.as_tree())
    if verified:
        claims = dataclasses.replace(claims, additional=MappingProxyType(verified))
    if parsed_init is not None:
        claims = initdata.check(claims, parsed_init)
    return claims
