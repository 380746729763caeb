"""CoCo init-data: the TOML document a host hands a TEE at launch, bound by its digest.

An RCAR attestation may carry ``"init-data": {"format": "toml", "body": "<TOML text>"}``
(kbs-types 0.18; a bare TOML string is taken as the body too).  The body is parsed as
Trustee's ``Initdata {version, algorithm, data: {string: string}}``; its digest is the
named algorithm (``sha256``, ``sha384``, ``sha512``) over the exact body bytes.  The TEE
holds that digest in a field the host set at launch and the hardware signs:

* ``snp``: HOSTDATA (32 bytes), the digest truncated or zero-padded to 32 bytes;
* ``tdx``: MRCONFIGID (48 bytes), truncated or zero-padded to 48 bytes;
* ``az-snp-vtpm``: PCR 8 of the vTPM quote, ``SHA-256(32 zero bytes || digest)`` (the
  digest extended once into a reset PCR; it must be a SHA-256 digest).

These are Trustee's verifier rules (``regularize_data`` and ``verify_init_data``).  Other
TEEs have no such field, so init-data sent with them is refused rather than vouched for.
Pure: no I/O.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from layerseal.attest.claims import Claims
from layerseal.errors import BadInputError, DeniedError

MAX_BODY = 256 * 1024
MAX_INLINE = 1024  # longest data entry copied into the claims
MAX_INLINE_TOTAL = 4096
MAX_ENTRIES = 64
ALGORITHMS = ("sha256", "sha384", "sha512")
# TEE -> (claim detail holding the field, field size) for fields compared after regularizing
_FIELDS = {"snp": ("host_data", 32, "HOSTDATA"), "tdx": ("mr_config_id", 48, "MRCONFIGID")}
VTPM_PCR = 8


@dataclass(frozen=True)
class InitData:
    """A parsed init-data document and its digest."""

    body: str
    version: str
    algorithm: str
    digest: bytes
    data: Mapping[str, str]

    def claims(self) -> dict[str, Any]:
        """What policies see under ``init_data`` once the TEE's field matched.

        ``data`` holds each entry up to :data:`MAX_INLINE` characters (claims travel in
        every token; a kata ``policy.rego`` is often tens of KiB); ``data_sha256`` holds
        ``sha256:<hex>`` of every entry, so a policy can pin a large one by digest.
        """
        inline: dict[str, str] = {}
        budget = MAX_INLINE_TOTAL
        for key in sorted(self.data):
            value = self.data[key]
            if len(value) <= MAX_INLINE and len(value) <= budget:
                inline[key] = value
                budget -= len(value)
        return {
            "digest": self.digest.hex(),
            "algorithm": self.algorithm,
            "version": self.version,
            "data": inline,
            "data_sha256": {
                key: "sha256:" + hashlib.sha256(value.encode()).hexdigest()
                for key, value in self.data.items()
            },
        }


def parse(value: Any) -> InitData | None:
    """The ``init-data`` member of an attestation (None when absent)."""
    what = "attestation init-data"
    if value is None:
        return None
    if isinstance(value, Mapping):
        fmt = value.get("format")
        if fmt != "toml":
            raise BadInputError(
                f"{what} format: expected 'toml' (as CoCo guests send), seen {str(fmt)[:20]!r}"
            )
        body = value.get("body")
    else:
        body = value
    if not isinstance(body, str):
        raise BadInputError(f"{what} body: expected TOML text, seen {type(body).__name__}")
    if len(body) > MAX_BODY:
        raise BadInputError(f"{what} body: expected at most {MAX_BODY} characters, seen {len(body)}")
    try:
        doc = tomllib.loads(body)
    except tomllib.TOMLDecodeError as exc:
        raise BadInputError(f"{what} body: expected TOML, seen invalid text ({exc})") from exc
    version, algorithm, data = doc.get("version"), doc.get("algorithm"), doc.get("data", {})
    if not isinstance(version, str):
        raise BadInputError(f"{what}: expected 'version' (a string, e.g. '0.1.0'), seen {version!r:.30}")
    if algorithm not in ALGORITHMS:
        raise BadInputError(
            f"{what} algorithm: expected one of {list(ALGORITHMS)}, seen {str(algorithm)[:20]!r}"
        )
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise BadInputError(f"{what} data: expected a table of strings, seen {type(data).__name__}")
    if len(data) > MAX_ENTRIES:
        raise BadInputError(f"{what} data: expected at most {MAX_ENTRIES} entries, seen {len(data)}")
    digest = hashlib.new(str(algorithm), body.encode("utf-8")).digest()
    return InitData(body, version, str(algorithm), digest, MappingProxyType(dict(data)))


def _regularized(digest: bytes, size: int) -> bytes:
    return digest[:size].ljust(size, b"\0")


def check(claims: Claims, init_data: InitData) -> Claims:
    """*claims* with ``init_data`` added, once the TEE's field is seen to hold its digest."""
    tee = claims.tee
    if tee in _FIELDS:
        name, size, label = _FIELDS[tee]
        seen = bytes.fromhex(str(claims.details[name]))
        expected = _regularized(init_data.digest, size)
    elif tee in ("az-snp-vtpm", "az-tdx-vtpm"):
        label = f"PCR{VTPM_PCR}"
        if init_data.algorithm != "sha256":
            raise BadInputError(
                f"attestation init-data algorithm: expected sha256 for {tee} (its digest is "
                f"extended into {label}), seen {init_data.algorithm}"
            )
        pcr = claims.details.get("pcrs", {}).get(f"pcr{VTPM_PCR:02d}")
        if pcr is None:
            raise DeniedError(f"{tee} init-data: expected {label} in the quote, seen it not selected")
        seen = bytes.fromhex(str(pcr))
        expected = hashlib.sha256(bytes(32) + init_data.digest).digest()
    else:
        raise BadInputError(
            f"attestation init-data: expected a TEE that binds its digest (snp HOSTDATA, tdx MRCONFIGID, "
            f"az-snp-vtpm/az-tdx-vtpm PCR{VTPM_PCR}), seen tee {tee}"
        )
    if not hmac.compare_digest(seen, expected):
        raise DeniedError(
            f"{tee} {label}: expected the init-data digest ({init_data.algorithm} {expected[:8].hex()}...), "
            f"seen {seen[:8].hex()}..."
        )
    return dataclasses.replace(claims, init_data=MappingProxyType(init_data.claims()))
