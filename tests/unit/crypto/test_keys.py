"""Key loading, JWK conversion, generation and description (layerseal.crypto.keys)."""

from __future__ import annotations

import datetime
import functools
import json
import re

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from joserfc.jwk import ECKey, RSAKey

from layerseal.crypto import keys as K
from layerseal.errors import BadInputError

PEM = serialization.Encoding.PEM
DER = serialization.Encoding.DER
SPKI = serialization.PublicFormat.SubjectPublicKeyInfo
PKCS1 = serialization.PublicFormat.PKCS1
PKCS8 = serialization.PrivateFormat.PKCS8
TRADITIONAL = serialization.PrivateFormat.TraditionalOpenSSL  # SEC1 for EC, PKCS#1 for RSA
NOENC = serialization.NoEncryption()

FAST_KINDS = ["EC-P256", "EC-P384", "EC-P521", "RSA-2048"]


@functools.cache
def key(kind: str) -> K.PrivateKey:
    return K.generate_key(kind)


def same_public(a: K.PublicKey, b: K.PublicKey) -> bool:
    return a.public_bytes(DER, SPKI) == b.public_bytes(DER, SPKI)


def same_private(a: K.PrivateKey, b: K.PrivateKey) -> bool:
    return a.private_bytes(DER, PKCS8, NOENC) == b.private_bytes(DER, PKCS8, NOENC)


def self_signed_cert(priv: K.PrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "layerseal test")])
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(priv.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(priv, hashes.SHA256())
    )


# --------------------------------------------------------------------------- generation


@pytest.mark.parametrize(
    ("kind", "cls", "size"),
    [
        ("EC-P256", ec.EllipticCurvePrivateKey, 256),
        ("EC-P384", ec.EllipticCurvePrivateKey, 384),
        ("EC-P521", ec.EllipticCurvePrivateKey, 521),
        ("RSA-2048", rsa.RSAPrivateKey, 2048),
        ("RSA-3072", rsa.RSAPrivateKey, 3072),
        ("RSA-4096", rsa.RSAPrivateKey, 4096),
    ],
)
def test_generate_key_kinds(kind: str, cls: type, size: int) -> None:
    k = key(kind)
    assert isinstance(k, cls)
    assert k.key_size == size
    assert kind in K.KEY_KINDS


def test_generate_key_default_is_p256() -> None:
    k = K.generate_key()
    assert isinstance(k, ec.EllipticCurvePrivateKey)
    assert k.curve.name == "secp256r1"


def test_generate_key_unknown_kind() -> None:
    with pytest.raises(BadInputError, match=r"key kind: expected one of .*seen 'DSA-1024'"):
        K.generate_key("DSA-1024")


# --------------------------------------------------------------------------- public key formats


@pytest.mark.parametrize("kind", FAST_KINDS)
@pytest.mark.parametrize("fmt", ["pem-spki", "der-spki", "jwk", "jwk-private", "cert-pem", "cert-der"])
def test_load_public_key_formats(kind: str, fmt: str) -> None:
    priv = key(kind)
    pub = priv.public_key()
    if fmt == "pem-spki":
        data = pub.public_bytes(PEM, SPKI)
    elif fmt == "der-spki":
        data = pub.public_bytes(DER, SPKI)
    elif fmt == "jwk":
        data = json.dumps(K.public_key_to_jwk(pub)).encode()
    elif fmt == "jwk-private":
        data = (
            json.dumps(ECKey.import_key(priv).as_dict(private=True)).encode()
            if kind.startswith("EC")
            else (json.dumps(RSAKey.import_key(priv).as_dict(private=True)).encode())
        )
    elif fmt == "cert-pem":
        data = self_signed_cert(priv).public_bytes(PEM)
    else:
        data = self_signed_cert(priv).public_bytes(DER)
    loaded = K.load_public_key(data)
    assert same_public(loaded, pub)


@pytest.mark.parametrize("encoding", [PEM, DER])
def test_load_public_key_pkcs1_rsa(encoding: serialization.Encoding) -> None:
    pub = key("RSA-2048").public_key()
    data = pub.public_bytes(encoding, PKCS1)
    if encoding is PEM:
        assert data.startswith(b"-----BEGIN RSA PUBLIC KEY-----")
    assert same_public(K.load_public_key(data), pub)


def test_load_public_key_tolerates_surrounding_text() -> None:
    pub = key("EC-P256").public_key()
    data = b"a comment line\n" + pub.public_bytes(PEM, SPKI) + b"\n"
    assert same_public(K.load_public_key(data), pub)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"garbage",
        bytes(range(256)),
        b"-----BEGIN PUBLIC KEY-----\nbm90IGEga2V5\n-----END PUBLIC KEY-----\n",
        b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
        b"{not json",
        b'["a", "list"]',
        b'{"kty": "oct", "k": "AAAA"}',
        b'{"keys": []}',
    ],
)
def test_load_public_key_garbage_names_what(data: bytes) -> None:
    with pytest.raises(BadInputError, match=r"^recipient key 7: .*expected"):
        K.load_public_key(data, "recipient key 7")


def test_load_public_key_refuses_private_pem() -> None:
    data = key("EC-P256").private_bytes(PEM, PKCS8, NOENC)
    with pytest.raises(
        BadInputError, match="pubkey: expected a public key or certificate, seen a PEM PRIVATE KEY"
    ):
        K.load_public_key(data, "pubkey")


def test_load_public_key_refuses_unsupported_types() -> None:
    ed = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(PEM, SPKI)
    with pytest.raises(BadInputError, match="ed: expected an RSA or EC P-256/P-384/P-521 key"):
        K.load_public_key(ed, "ed")
    k1 = ec.generate_private_key(ec.SECP256K1()).public_key().public_bytes(PEM, SPKI)
    with pytest.raises(BadInputError, match="secp256k1"):
        K.load_public_key(k1, "k1")


# --------------------------------------------------------------------------- private key formats


@pytest.mark.parametrize("kind", FAST_KINDS)
@pytest.mark.parametrize("encoding", [PEM, DER])
@pytest.mark.parametrize("fmt", ["pkcs8", "traditional", "pkcs8-encrypted"])
def test_load_private_key_formats(kind: str, encoding: serialization.Encoding, fmt: str) -> None:
    priv = key(kind)
    if fmt == "pkcs8":
        data, password = priv.private_bytes(encoding, PKCS8, NOENC), None
    elif fmt == "traditional":
        data, password = priv.private_bytes(encoding, TRADITIONAL, NOENC), None
        if encoding is PEM:
            label = b"EC PRIVATE KEY" if kind.startswith("EC") else b"RSA PRIVATE KEY"
            assert data.startswith(b"-----BEGIN " + label)
    else:
        password = b"correct horse"
        data = priv.private_bytes(encoding, PKCS8, serialization.BestAvailableEncryption(password))
        if encoding is PEM:
            assert data.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY")
    assert same_private(K.load_private_key(data, password=password), priv)


@pytest.mark.parametrize("kind", FAST_KINDS)
def test_load_private_key_jwk(kind: str) -> None:
    priv = key(kind)
    jwk = (ECKey if kind.startswith("EC") else RSAKey).import_key(priv).as_dict(private=True)
    assert same_private(K.load_private_key(json.dumps(jwk).encode()), priv)


def test_load_private_key_rsa_jwk_without_crt_members() -> None:
    priv = key("RSA-2048")
    jwk = RSAKey.import_key(priv).as_dict(private=True)
    minimal = {name: jwk[name] for name in ("kty", "n", "e", "d")}
    assert same_private(K.load_private_key(json.dumps(minimal).encode()), priv)


def test_load_private_key_jwk_public_only() -> None:
    data = json.dumps(K.public_key_to_jwk(key("EC-P256").public_key())).encode()
    with pytest.raises(BadInputError, match=r"enclave key: expected a private JWK \(with 'd'\)"):
        K.load_private_key(data, "enclave key")


def test_load_private_key_jwk_mismatched_d() -> None:
    jwk = ECKey.import_key(key("EC-P256")).as_dict(private=True)
    other = ECKey.import_key(K.generate_key("EC-P256")).as_dict(private=True)
    jwk["d"] = other["d"]
    with pytest.raises(BadInputError, match="mismatched key pair"):
        K.load_private_key(json.dumps(jwk).encode(), "k")


def test_load_private_key_password_cases() -> None:
    priv = key("EC-P384")
    encrypted = priv.private_bytes(PEM, PKCS8, serialization.BestAvailableEncryption(b"pw"))
    with pytest.raises(
        BadInputError, match="signing key: expected a password for this encrypted private key"
    ):
        K.load_private_key(encrypted, "signing key")
    with pytest.raises(BadInputError, match="signing key: expected the right password"):
        K.load_private_key(encrypted, "signing key", password=b"wrong")
    encrypted_der = priv.private_bytes(DER, PKCS8, serialization.BestAvailableEncryption(b"pw"))
    with pytest.raises(BadInputError, match="expected the right password"):
        K.load_private_key(encrypted_der, "k", password=b"wrong")
    # a password given for an unencrypted key is ignored, not an error
    plain = priv.private_bytes(PEM, PKCS8, NOENC)
    assert same_private(K.load_private_key(plain, password=b"unused"), priv)
    assert same_private(K.load_private_key(priv.private_bytes(DER, PKCS8, NOENC), password=b"x"), priv)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"garbage",
        bytes(range(256)),
        b"-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
        b"-----BEGIN EC PRIVATE KEY-----\nbm90IGEga2V5\n-----END EC PRIVATE KEY-----\n",
        b"{bad json",
        b'{"kty": "EC", "crv": "P-256", "d": "AAAA"}',
        b'{"kty": "RSA", "n": "AQAB", "e": "AQAB", "d": "AQAB"}',
    ],
)
def test_load_private_key_garbage_names_what(data: bytes) -> None:
    with pytest.raises(BadInputError, match=r"^decryption key 2: "):
        K.load_private_key(data, "decryption key 2")


def test_load_private_key_refuses_public_pem() -> None:
    data = key("EC-P256").public_key().public_bytes(PEM, SPKI)
    with pytest.raises(BadInputError, match="k: expected a PEM private key, seen a PEM PUBLIC KEY"):
        K.load_private_key(data, "k")


def test_load_private_key_refuses_ed25519() -> None:
    data = ed25519.Ed25519PrivateKey.generate().private_bytes(PEM, PKCS8, NOENC)
    with pytest.raises(BadInputError, match="expected an RSA or EC"):
        K.load_private_key(data)


def test_errors_never_contain_key_material() -> None:
    jwk = ECKey.import_key(key("EC-P256")).as_dict(private=True)
    jwk["x"] = jwk["x"][:-2]  # break it so loading fails
    with pytest.raises(BadInputError) as info:
        K.load_private_key(json.dumps(jwk).encode(), "k")
    assert jwk["d"] not in str(info.value)


# --------------------------------------------------------------------------- JWK


@pytest.mark.parametrize("kind", FAST_KINDS)
def test_jwk_round_trip_and_matches_joserfc(kind: str) -> None:
    pub = key(kind).public_key()
    jwk = K.public_key_to_jwk(pub)
    assert same_public(K.public_key_from_jwk(jwk), pub)
    reference = (ECKey if kind.startswith("EC") else RSAKey).import_key(pub).as_dict(private=False)
    assert jwk == {k: v for k, v in reference.items() if k != "kid"}
    if kind.startswith("EC"):
        assert list(jwk) == ["kty", "crv", "x", "y"]
        size = {"EC-P256": 32, "EC-P384": 48, "EC-P521": 66}[kind]
        assert len(jwk["x"]) == len(jwk["y"]) == (size * 8 + 5) // 6
    else:
        assert list(jwk) == ["kty", "n", "e"]
        assert jwk["e"] == "AQAB"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda j: j.pop("kty"), "field 'kty' is missing"),
        (lambda j: j.update(kty="OKP"), "field 'kty': expected 'EC' or 'RSA', seen 'OKP'"),
        (lambda j: j.update(crv="P-192"), "field 'crv': expected one of P-256, P-384, P-521, seen 'P-192'"),
        (lambda j: j.update(x=j["x"][:-4]), "field 'x': expected 32 bytes for P-256"),
        (lambda j: j.update(y="A" * 43), "off the curve"),
        (lambda j: j.update(x="not+base64/"), "field 'x': expected base64url text"),
        (lambda j: j.update(y=17), "field 'y': expected base64url text, seen int"),
    ],
)
def test_public_key_from_jwk_rejects_bad_ec(mutate: object, message: str) -> None:
    jwk: dict[str, object] = dict(K.public_key_to_jwk(key("EC-P256").public_key()))
    mutate(jwk)  # type: ignore[operator]
    with pytest.raises(BadInputError, match=r"^tee-pubkey: .*" + re.escape(message)):
        K.public_key_from_jwk(jwk, "tee-pubkey")


def test_public_key_from_jwk_rejects_tiny_rsa() -> None:
    with pytest.raises(BadInputError, match="RSA modulus of at least 1024 bits"):
        K.public_key_from_jwk({"kty": "RSA", "n": "AQAB", "e": "AQAB"})


def test_thumbprint_rfc7638_example() -> None:
    # RFC 7638 section 3.1
    jwk = {
        "kty": "RSA",
        "n": (
            "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPe"
            "bWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQ"
            "MicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcR"
            "wr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
        ),
        "e": "AQAB",
    }
    assert K.jwk_thumbprint(K.public_key_from_jwk(jwk)) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


@pytest.mark.parametrize("kind", FAST_KINDS)
def test_thumbprint_matches_joserfc(kind: str) -> None:
    priv = key(kind)
    reference = (ECKey if kind.startswith("EC") else RSAKey).import_key(priv.public_key()).thumbprint()
    assert K.jwk_thumbprint(priv) == K.jwk_thumbprint(priv.public_key()) == reference


# --------------------------------------------------------------------------- PEM output and description


@pytest.mark.parametrize("kind", FAST_KINDS)
def test_pem_output_round_trips(kind: str) -> None:
    priv = key(kind)
    pem = K.private_key_to_pem(priv)
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")
    assert same_private(K.load_private_key(pem), priv)
    pub_pem = K.public_key_to_pem(priv.public_key())
    assert pub_pem.startswith(b"-----BEGIN PUBLIC KEY-----\n")
    assert same_public(K.load_public_key(pub_pem), priv.public_key())


@pytest.mark.parametrize(
    ("kind", "prefix"),
    [("EC-P256", "EC P-256"), ("EC-P384", "EC P-384"), ("EC-P521", "EC P-521"), ("RSA-2048", "RSA 2048")],
)
def test_key_description(kind: str, prefix: str) -> None:
    priv = key(kind)
    text = K.key_description(priv)
    assert re.fullmatch(re.escape(prefix) + r" \(sha256 thumbprint [A-Za-z0-9_-]{16}…\)", text)
    assert text == K.key_description(priv.public_key())
    assert K.jwk_thumbprint(priv)[:16] in text
    assert K.key_description(K.generate_key(kind)) != text
