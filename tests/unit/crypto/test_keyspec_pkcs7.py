"""--decryption-key password forms (skopeo's, plus env=) and ocicrypt's pkcs7 wrapping."""

from __future__ import annotations

import datetime
import os

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from layerseal.crypto import pkcs7
from layerseal.crypto.keyspec import KeySpec, PasswordSource, parse_key_spec, password_bytes
from layerseal.errors import BadInputError, WrongKeyError

FILES = {"/k/key.pem", "/k/odd:name.pem"}


def parse(spec: str) -> KeySpec:
    return parse_key_spec(spec, FILES.__contains__)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("/k/key.pem", KeySpec("/k/key.pem")),
        ("/k/odd:name.pem", KeySpec("/k/odd:name.pem")),  # an existing file wins
        ("/k/key.pem:s3cret", KeySpec("/k/key.pem", PasswordSource("pass", "s3cret"))),
        ("/k/key.pem:pass=a:b", KeySpec("/k/key.pem", PasswordSource("pass", "a:b"))),
        ("/k/key.pem:file=/run/pw", KeySpec("/k/key.pem", PasswordSource("file", "/run/pw"))),
        ("/k/key.pem:file:/run/pw", KeySpec("/k/key.pem", PasswordSource("file", "/run/pw"))),
        ("/k/key.pem:fd=3", KeySpec("/k/key.pem", PasswordSource("fd", "3"))),
        ("/k/key.pem:env=KEY_PW", KeySpec("/k/key.pem", PasswordSource("env", "KEY_PW"))),
        ("/k/key.pem:env:KEY_PW", KeySpec("/k/key.pem", PasswordSource("env", "KEY_PW"))),
    ],
)
def test_key_specs(spec: str, expected: KeySpec) -> None:
    assert parse(spec) == expected


@pytest.mark.parametrize(
    ("spec", "needle"),
    [("", "empty value"), ("/k/key.pem:fd=x", "file descriptor"), ("/k/key.pem:env=", "empty")],
)
def test_bad_key_specs(spec: str, needle: str) -> None:
    with pytest.raises(BadInputError, match=needle):
        parse(spec)


def test_literal_password_is_never_shown() -> None:
    source = parse("/k/key.pem:hunter2").password
    assert source is not None
    assert "hunter2" not in repr(source) and "hunter2" not in source.describe()


def test_password_file_trailing_newline() -> None:
    assert password_bytes(b"pw\n", "file") == [b"pw", b"pw\n"]
    assert password_bytes(b"pw\r\n", "fd") == [b"pw", b"pw\r\n"]
    assert password_bytes(b"pw\n", "env") == [b"pw\n"]


def make_cert(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, cn: str) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


@pytest.fixture(scope="module")
def rsa_pair() -> tuple[rsa.RSAPrivateKey, x509.Certificate, rsa.RSAPrivateKey, x509.Certificate]:
    a, b = (rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(2))
    return a, make_cert(a, "a"), b, make_cert(b, "b")


def test_pkcs7_round_trip_for_each_recipient(rsa_pair: tuple) -> None:  # type: ignore[type-arg]
    a, cert_a, b, cert_b = rsa_pair
    blob = pkcs7.encrypt(b'{"symkey":"x"}', [cert_a, cert_b])
    assert pkcs7.decrypt(blob, [a]) == b'{"symkey":"x"}'
    assert pkcs7.decrypt(blob, [b]) == b'{"symkey":"x"}'
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(WrongKeyError):
        pkcs7.decrypt(blob, [other, ec.generate_private_key(ec.SECP256R1())])


def test_pkcs7_structure_is_what_ocicrypt_writes(rsa_pair: tuple) -> None:  # type: ignore[type-arg]
    """Go's encoder quirks, which its decoder expects: GCM parameters in a primitive 0x10
    element around SEQUENCE { [4] nonce, INTEGER 16 }; the content in a constructed [0]."""
    _, cert_a, _, _ = rsa_pair
    blob = pkcs7.encrypt(b"data", [cert_a])
    aes128_gcm = pkcs7.der_oid("2.16.840.1.101.3.4.1.6")
    at = blob.index(aes128_gcm) + len(aes128_gcm)
    assert blob[at : at + 6] == bytes([0x10, 0x13, 0x30, 0x11, 0x84, 0x0C])
    assert blob[at + 18 : at + 21] == bytes([0x02, 0x01, 0x10])  # ICV length 16
    assert blob[at + 21 : at + 25] == bytes([0xA0, 2 + 20, 0x04, 20])  # [0] { OCTET STRING data+tag }
    assert len(blob) == at + 25 + 20
    assert cert_a.issuer.public_bytes() in blob
    assert pkcs7.der_int(cert_a.serial_number) in blob


def test_pkcs7_reads_standard_der_too(rsa_pair: tuple) -> None:  # type: ignore[type-arg]
    """RFC 5084 GCMParameters (OCTET STRING nonce, no wrapper) and a primitive [0] content."""
    a, cert_a, _, _ = rsa_pair
    blob = pkcs7.encrypt(b"data", [cert_a])
    aes128_gcm = pkcs7.der_oid("2.16.840.1.101.3.4.1.6")
    at = blob.index(aes128_gcm) + len(aes128_gcm)
    nonce = blob[at + 6 : at + 18]
    sealed = blob[at + 25 :]
    std_params = pkcs7.tlv(0x30, pkcs7.tlv(0x04, nonce))
    algorithm = pkcs7.tlv(0x30, aes128_gcm + std_params)
    eci = pkcs7.tlv(0x30, pkcs7.der_oid("1.2.840.113549.1.7.1") + algorithm + pkcs7.tlv(0x80, sealed))
    start = blob.index(pkcs7.der_int(0) + pkcs7.tlv(0x31, b"")[:1])  # version + SET of recipients
    recipients_set = blob[start + 3 : blob.index(pkcs7.der_oid("1.2.840.113549.1.7.1")) - 2]
    env = pkcs7.tlv(0x30, pkcs7.der_int(0) + recipients_set + eci)
    std = pkcs7.tlv(0x30, pkcs7.der_oid("1.2.840.113549.1.7.3") + pkcs7.tlv(0xA0, env))
    assert pkcs7.decrypt(std, [a]) == b"data"


def test_pkcs7_tampered_content_and_bad_input(rsa_pair: tuple) -> None:  # type: ignore[type-arg]
    a, cert_a, _, _ = rsa_pair
    blob = bytearray(pkcs7.encrypt(os.urandom(64), [cert_a]))
    blob[-1] ^= 1
    with pytest.raises(WrongKeyError):
        pkcs7.decrypt(bytes(blob), [a])
    with pytest.raises(BadInputError, match="expected DER tag 0x06"):
        pkcs7.decrypt(b"\x30\x03\x02\x01\x00", [a])
    with pytest.raises(BadInputError, match="PKCS#7 EnvelopedData"):
        pkcs7.decrypt(pkcs7.tlv(0x30, pkcs7.der_oid("1.2.840.113549.1.7.1")), [a])
    with pytest.raises(BadInputError, match="RSA certificate"):
        pkcs7.encrypt(b"x", [make_cert(ec.generate_private_key(ec.SECP256R1()), "ec")])
