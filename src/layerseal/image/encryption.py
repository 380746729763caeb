"""ocicrypt encryption annotations: public options, private options and wrapped keys.

Formats (containers/ocicrypt, see SPEC section 2): ``enc.pubopts`` is std base64 of
``{"cipher":..,"hmac":..,"cipheroptions":{}}``; the private options every key scheme
wraps are ``{"symkey":..,"digest":..,"cipheroptions":{"nonce":..}}``.  Key order and
compact form match Go's encoder so the bytes are identical to ocicrypt's.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from layerseal.errors import BadInputError
from layerseal.image import jsonutil as J
from layerseal.image.digest import Digest
from layerseal.wire.b64 import b64decode

CIPHER_AES_CTR_HMAC = "AES_256_CTR_HMAC_SHA256"
ANNOTATION_PUBOPTS = "org.opencontainers.image.enc.pubopts"
ANNOTATION_KEYS_PREFIX = "org.opencontainers.image.enc.keys."
ANNOTATION_PREFIX = "org.opencontainers.image.enc."

_EMPTY: Mapping[str, Any] = MappingProxyType({})


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@dataclass(frozen=True)
class PublicOptions:
    """What travels in the clear beside the ciphertext: cipher name and HMAC."""

    cipher: str
    hmac: bytes
    cipher_options: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    extra: Mapping[str, Any] = field(default_factory=lambda: _EMPTY, compare=False)

    def __post_init__(self) -> None:
        if self.cipher != CIPHER_AES_CTR_HMAC:
            raise BadInputError(f"layer cipher: expected {CIPHER_AES_CTR_HMAC!r}, seen {self.cipher!r}")
        if len(self.hmac) != 32:
            raise BadInputError(f"pubopts hmac: expected 32 bytes, seen {len(self.hmac)}")

    @classmethod
    def from_annotation(cls, value: str, what: str = "pubopts") -> PublicOptions:
        obj = J.loads_object(b64decode(value, what), what)
        cipher = J.get_str(obj, "cipher", what) or ""
        if cipher != CIPHER_AES_CTR_HMAC:  # say so before complaining about cipher-specific fields
            raise BadInputError(f"{what}: layer cipher: expected {CIPHER_AES_CTR_HMAC!r}, seen {cipher!r}")
        cipheroptions = obj.get("cipheroptions") or {}
        if not isinstance(cipheroptions, dict):
            raise BadInputError(f"{what}: field 'cipheroptions': expected an object")
        return cls(
            cipher=cipher,
            hmac=b64decode(obj.get("hmac"), f"{what}.hmac"),
            cipher_options=MappingProxyType(cipheroptions),
            extra=MappingProxyType(
                {k: v for k, v in obj.items() if k not in ("cipher", "hmac", "cipheroptions")}
            ),
        )

    def to_json_bytes(self) -> bytes:
        obj: dict[str, Any] = {
            "cipher": self.cipher,
            "hmac": b64encode(self.hmac),
            "cipheroptions": dict(self.cipher_options),
        }
        obj.update(self.extra)
        return J.go_dumps(obj)

    def to_annotation(self) -> str:
        return b64encode(self.to_json_bytes())


@dataclass(frozen=True, repr=False)
class PrivateOptions:
    """The secret every key scheme wraps: layer key, nonce and the plaintext digest."""

    symkey: bytes
    nonce: bytes
    digest: Digest
    extra_cipher_options: Mapping[str, Any] = field(default_factory=lambda: _EMPTY, compare=False)
    extra: Mapping[str, Any] = field(default_factory=lambda: _EMPTY, compare=False)

    def __post_init__(self) -> None:
        if len(self.symkey) != 32:
            raise BadInputError(f"private options symkey: expected 32 bytes, seen {len(self.symkey)}")
        if len(self.nonce) != 16:
            raise BadInputError(f"private options nonce: expected 16 bytes, seen {len(self.nonce)}")

    def __repr__(self) -> str:  # never print the key
        return f"PrivateOptions(digest={self.digest}, symkey=<redacted>)"

    @classmethod
    def from_json_bytes(cls, data: bytes, what: str = "private options") -> PrivateOptions:
        obj = J.loads_object(data, what)
        cipheroptions = obj.get("cipheroptions")
        if not isinstance(cipheroptions, dict):
            raise BadInputError(f"{what}: field 'cipheroptions' is missing (expected an object with 'nonce')")
        digest_text = J.get_str(obj, "digest", what) or ""
        return cls(
            symkey=b64decode(obj.get("symkey"), f"{what}.symkey"),
            nonce=b64decode(cipheroptions.get("nonce"), f"{what}.cipheroptions.nonce"),
            digest=Digest.parse(digest_text),
            extra_cipher_options=MappingProxyType({k: v for k, v in cipheroptions.items() if k != "nonce"}),
            extra=MappingProxyType(
                {k: v for k, v in obj.items() if k not in ("symkey", "digest", "cipheroptions")}
            ),
        )

    def to_json_bytes(self) -> bytes:
        cipheroptions: dict[str, Any] = {"nonce": b64encode(self.nonce)}
        cipheroptions.update(self.extra_cipher_options)
        obj: dict[str, Any] = {
            "symkey": b64encode(self.symkey),
            "digest": str(self.digest),
            "cipheroptions": cipheroptions,
        }
        obj.update(self.extra)
        return J.go_dumps(obj)


def wrapped_keys(annotations: Mapping[str, str]) -> dict[str, list[bytes]]:
    """Wrapped-key blobs by scheme (``jwe``, ``pkcs7``, ``provider.NAME``...), comma-split."""
    out: dict[str, list[bytes]] = {}
    for key, value in annotations.items():
        if key.startswith(ANNOTATION_KEYS_PREFIX):
            scheme = key[len(ANNOTATION_KEYS_PREFIX) :]
            out[scheme] = [b64decode(part, f"annotation {key}") for part in value.split(",") if part]
    return out


def keys_annotation(scheme: str, blobs: list[bytes]) -> tuple[str, str]:
    return ANNOTATION_KEYS_PREFIX + scheme, ",".join(b64encode(b) for b in blobs)


def strip_encryption(annotations: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in annotations.items() if not k.startswith(ANNOTATION_PREFIX)}
