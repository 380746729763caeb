"""The enclave key of the keyprovider and a lean JWE opener for the broker's answers (pure).

The key is EC P-256 and the broker seals to it with ``ECDH-ES+A256KW`` / ``A256GCM``
(RFC 7518), every header protected.  Opening exactly that form needs only a few
``cryptography`` primitives; ``layerseal.crypto.jwe`` (joserfc, X.509) costs ~40 ms of
imports, too much for a tool ocicrypt starts once per layer, so it is loaded only for
any other form.  The private key is (de)serialised as its JWK ``d`` so the token cache
can hold it beside the token it is bound to.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.concatkdf import ConcatKDFHash
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap

from layerseal.errors import BadInputError, IntegrityError
from layerseal.wire.b64 import b64url_decode
from layerseal.wire.jsonload import loads

ALG = "ECDH-ES+A256KW"
ENC = "A256GCM"
_SIZE = 32  # P-256 coordinate bytes


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def generate() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def tee_pubkey(key: ec.EllipticCurvePrivateKey) -> dict[str, str]:
    """The KBS ``tee-pubkey``: public JWK plus the ``alg`` the broker must seal with."""
    nums = key.public_key().public_numbers()
    return {
        "kty": "EC",
        "crv": "P-256",
        "x": b64url(nums.x.to_bytes(_SIZE, "big")),
        "y": b64url(nums.y.to_bytes(_SIZE, "big")),
        "alg": ALG,
    }


def private_d(key: ec.EllipticCurvePrivateKey) -> str:
    return b64url(key.private_numbers().private_value.to_bytes(_SIZE, "big"))


def key_from_d(d: Any, pubkey: Mapping[str, Any]) -> ec.EllipticCurvePrivateKey:
    """The private key from its ``d``, checked against the public JWK it was cached with."""
    raw = b64url_decode(d, "cached enclave key d")
    if len(raw) != _SIZE:
        raise BadInputError(f"cached enclave key d: expected {_SIZE} bytes, seen {len(raw)}")
    try:
        key = ec.derive_private_key(int.from_bytes(raw, "big"), ec.SECP256R1())
    except ValueError as exc:
        raise BadInputError("cached enclave key d: expected a P-256 scalar, seen an invalid one") from exc
    if tee_pubkey(key) != dict(pubkey):
        raise BadInputError("cached enclave key: expected the key of the cached tee-pubkey, seen another")
    return key


def _epk(header: Mapping[str, Any]) -> ec.EllipticCurvePublicKey | None:
    epk = header.get("epk")
    if not isinstance(epk, dict) or epk.get("kty") != "EC" or epk.get("crv") != "P-256":
        return None
    x = b64url_decode(epk.get("x"), "JWE epk x")
    y = b64url_decode(epk.get("y"), "JWE epk y")
    try:  # rejects points off the curve (invalid-curve attacks)
        return ec.EllipticCurvePublicNumbers(
            int.from_bytes(x, "big"), int.from_bytes(y, "big"), ec.SECP256R1()
        ).public_key()
    except ValueError as exc:
        raise BadInputError("JWE epk: expected a point on P-256, seen another") from exc


def _lenprefixed(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def open_jwe(doc: Mapping[str, Any], key: ec.EllipticCurvePrivateKey, what: str = "broker JWE") -> bytes:
    """The plaintext of a flattened JWE sealed to *key* (any other form goes to crypto.jwe)."""
    segment = doc.get("protected")
    header: Any = None
    if isinstance(segment, str):
        raw = b64url_decode(segment, f"{what} protected")
        header = loads(raw, f"{what}: field 'protected'", expected="base64url of JSON")
    simple = (
        isinstance(header, dict)
        and header.get("alg") == ALG
        and header.get("enc") == ENC
        and "zip" not in header
        and "crit" not in header
        and not ({"header", "unprotected", "recipients", "aad"} & set(doc))
    )
    epk = _epk(header) if simple else None
    if not simple or epk is None:
        from layerseal.crypto.jwe import decrypt_from_jwk

        return decrypt_from_jwk(doc, key)
    assert isinstance(header, dict) and isinstance(segment, str)
    shared = key.exchange(ec.ECDH(), epk)
    otherinfo = (
        _lenprefixed(ALG.encode())
        + _lenprefixed(b64url_decode(header.get("apu", ""), f"{what} apu"))
        + _lenprefixed(b64url_decode(header.get("apv", ""), f"{what} apv"))
        + struct.pack(">I", 256)
    )
    kek = ConcatKDFHash(hashes.SHA256(), 32, otherinfo).derive(shared)
    try:
        cek = aes_key_unwrap(kek, b64url_decode(doc.get("encrypted_key"), f"{what} encrypted_key"))
        iv = b64url_decode(doc.get("iv"), f"{what} iv")
        sealed = b64url_decode(doc.get("ciphertext"), f"{what} ciphertext") + b64url_decode(
            doc.get("tag"), f"{what} tag"
        )
        return AESGCM(cek).decrypt(iv, sealed, segment.encode("ascii"))
    except (InvalidUnwrap, InvalidTag, ValueError) as exc:
        raise IntegrityError(
            f"{what}: expected to open with this enclave key, "
            "seen a mismatch (altered, or sealed to another key)"
        ) from exc
