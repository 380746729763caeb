"""The lean JWE opener agrees with layerseal.crypto.jwe and refuses what it must."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from layerseal.crypto import jwe
from layerseal.errors import BadInputError, IntegrityError
from layerseal.keyprovider.enclavekey import b64url, generate, key_from_d, open_jwe, private_d, tee_pubkey


def test_opens_what_the_broker_seals() -> None:
    key = generate()
    sealed = jwe.encrypt_to_jwk(b'{"resources":{}}', tee_pubkey(key))
    header = json.loads(base64.urlsafe_b64decode(sealed["protected"] + "=="))
    assert header["alg"] == "ECDH-ES+A256KW" and header["enc"] == "A256GCM"  # the fast path applies
    assert open_jwe(sealed, key) == b'{"resources":{}}'


def test_other_forms_fall_back_to_crypto_jwe() -> None:
    key = generate()
    general = json.loads(jwe.encrypt(b"payload", [key.public_key(), generate().public_key()]))
    assert "recipients" in general
    assert open_jwe(general, key) == b"payload"


def test_tampered_tag_and_wrong_key_fail_integrity() -> None:
    key = generate()
    sealed = jwe.encrypt_to_jwk(b"secret", tee_pubkey(key))
    tag = base64.urlsafe_b64decode(sealed["tag"] + "==")
    bad = dict(sealed, tag=b64url(bytes([tag[0] ^ 1]) + tag[1:]))
    with pytest.raises(IntegrityError, match="expected to open with this enclave key"):
        open_jwe(bad, key)
    with pytest.raises(IntegrityError):
        open_jwe(sealed, generate())


def test_epk_off_the_curve_is_refused() -> None:
    key = generate()
    sealed = jwe.encrypt_to_jwk(b"secret", tee_pubkey(key))
    header = json.loads(base64.urlsafe_b64decode(sealed["protected"] + "=="))
    header["epk"]["y"] = b64url((1).to_bytes(32, "big"))
    forged = dict(sealed, protected=b64url(json.dumps(header).encode()))
    with pytest.raises(BadInputError, match="point on P-256"):
        open_jwe(forged, key)


def test_key_round_trips_through_d_and_checks_its_public_key() -> None:
    key = generate()
    pub = tee_pubkey(key)
    assert pub["alg"] == "ECDH-ES+A256KW" and pub["crv"] == "P-256"
    again = key_from_d(private_d(key), pub)
    assert again.private_numbers().private_value == key.private_numbers().private_value
    with pytest.raises(BadInputError, match="expected the key of the cached tee-pubkey"):
        key_from_d(private_d(generate()), pub)
    with pytest.raises(BadInputError, match="expected 32 bytes"):
        key_from_d(b64url(b"short"), pub)


def test_d_is_fixed_width() -> None:
    key = ec.derive_private_key(5, ec.SECP256R1())
    assert len(base64.urlsafe_b64decode(private_d(key) + "=")) == 32
