"""KBS responses decrypted the way CoCo's kbs_protocol does it.

The guest never uses the received ``protected`` text as AAD: it parses the header into
kbs-types' ``ProtectedHeader {alg, enc, #[flatten] other_fields}`` and computes the AAD as
``BASE64URL(serde_json::to_string(header))``.  serde_json's map is sorted unless the
``preserve_order`` feature is on (then it keeps the received order), so both renderings
must give back our exact bytes.  Written from kbs-types 0.18 / guest-components (2026-08).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, keywrap
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.concatkdf import ConcatKDFHash

from layerseal.crypto import jwe
from layerseal.crypto.keys import PrivateKey, public_key_to_jwk


def b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _sorted_value(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sorted_value(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted_value(v) for v in value]
    return value


def serde_sorted(header: dict[str, Any]) -> str:
    """serde_json without preserve_order: struct fields alg, enc, then a BTreeMap."""
    other = {k: _sorted_value(v) for k, v in sorted(header.items()) if k not in ("alg", "enc")}
    return json.dumps({"alg": header["alg"], "enc": header["enc"], **other}, separators=(",", ":"))


def serde_preserved(header: dict[str, Any]) -> str:
    """serde_json with preserve_order: alg, enc, then the rest in received order."""
    other = {k: v for k, v in header.items() if k not in ("alg", "enc")}
    return json.dumps({"alg": header["alg"], "enc": header["enc"], **other}, separators=(",", ":"))


def unwrap_cek(header: dict[str, Any], encrypted_key: bytes, key: PrivateKey) -> bytes:
    alg = header["alg"]
    if alg == "RSA-OAEP-256":
        assert isinstance(key, rsa.RSAPrivateKey)
        return key.decrypt(encrypted_key, padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None))
    assert alg == "ECDH-ES+A256KW" and isinstance(key, ec.EllipticCurvePrivateKey)
    epk = header["epk"]
    assert epk["crv"] == {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}[key.curve.name]
    peer = ec.EllipticCurvePublicNumbers(
        int.from_bytes(b64d(epk["x"]), "big"), int.from_bytes(b64d(epk["y"]), "big"), key.curve
    ).public_key()
    z = key.exchange(ec.ECDH(), peer)
    other = len(alg).to_bytes(4, "big") + alg.encode() + bytes(8) + (256).to_bytes(4, "big")
    kek = ConcatKDFHash(hashes.SHA256(), 32, other).derive(z)
    return keywrap.aes_key_unwrap(kek, encrypted_key)


def kbs_protocol_decrypt(
    response: dict[str, Any], key: PrivateKey, render: Callable[[dict[str, Any]], str]
) -> bytes:
    header = json.loads(b64d(response["protected"]))
    cek = unwrap_cek(header, b64d(response["encrypted_key"]), key)
    aad = b64e(render(header).encode()).encode()
    return AESGCM(cek).decrypt(
        b64d(response["iv"]), b64d(response["ciphertext"]) + b64d(response["tag"]), aad
    )


KEYS: dict[str, Callable[[], PrivateKey]] = {
    "RSA": lambda: rsa.generate_private_key(65537, 2048),
    "EC P-256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "EC P-384": lambda: ec.generate_private_key(ec.SECP384R1()),
    "EC P-521": lambda: ec.generate_private_key(ec.SECP521R1()),
}


@pytest.mark.parametrize("render", [serde_sorted, serde_preserved], ids=["sorted", "preserve_order"])
@pytest.mark.parametrize("kind", list(KEYS))
def test_guest_decrypts_our_response(kind: str, render: Callable[[dict[str, Any]], str]) -> None:
    key = KEYS[kind]()
    tee_pubkey = public_key_to_jwk(key.public_key())
    payload = b'{"kid":"kbs:///t/layer-key/1"}' * 3
    for _ in range(4):  # random epk coordinates: several draws
        response = jwe.encrypt_to_jwk(payload, tee_pubkey)
        assert kbs_protocol_decrypt(response, key, render) == payload
        # and the received text is exactly what the guest re-serializes
        assert b64d(response["protected"]).decode() == render(json.loads(b64d(response["protected"])))


@pytest.mark.parametrize("kind", list(KEYS))
def test_protected_header_is_trustees_bytes(kind: str) -> None:
    key = KEYS[kind]()
    response = jwe.encrypt_to_jwk(b"x", public_key_to_jwk(key.public_key()))
    text = b64d(response["protected"]).decode()
    if kind == "RSA":
        assert text == '{"alg":"RSA-OAEP-256","enc":"A256GCM"}'
    else:
        assert text.startswith('{"alg":"ECDH-ES+A256KW","enc":"A256GCM","epk":{"crv":"P-')
        assert list(json.loads(text)["epk"]) == ["crv", "kty", "x", "y"]
    assert set(response) == {"protected", "encrypted_key", "iv", "ciphertext", "tag"}


@pytest.mark.parametrize("kind", list(KEYS))
def test_our_own_decryption_still_opens_it(kind: str) -> None:
    key = KEYS[kind]()
    response = jwe.encrypt_to_jwk(b"secret", public_key_to_jwk(key.public_key()))
    assert jwe.decrypt_from_jwk(response, key) == b"secret"


@pytest.mark.parametrize("kind", list(KEYS))
def test_ocicrypt_single_recipient_header_is_canonical_too(kind: str) -> None:
    key = KEYS[kind]()
    data = json.loads(jwe.encrypt(b"opts", [key.public_key()]))
    header = json.loads(b64d(data["protected"]))
    assert b64d(data["protected"]).decode() == serde_sorted(header)
    assert jwe.decrypt(json.dumps(data).encode(), [key]) == b"opts"
