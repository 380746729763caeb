"""Asymmetric key loading, JWK conversion and generation (pure: bytes in, key objects out).

Keys are ``cryptography`` objects: RSA and EC on P-256/P-384/P-521, the kinds JWE
(RFC 7518) and ocicrypt wrap to.  Loaders accept the formats users actually hold:
PEM and DER (SPKI, PKCS#1, SEC1, PKCS#8, encrypted PKCS#8), X.509 certificates and
JWK JSON.  Error messages name the key by ``what`` and never contain key material.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Mapping
from typing import Any, TypeAlias, TypeVar

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey, EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

from layerseal.errors import BadInputError
from layerseal.wire.b64 import b64url_decode
from layerseal.wire.jsonload import loads

__all__ = [
    "KEY_KINDS",
    "PrivateKey",
    "PublicKey",
    "generate_key",
    "jwk_thumbprint",
    "key_description",
    "key_kind",
    "load_private_key",
    "load_public_key",
    "private_key_to_pem",
    "public_key_from_jwk",
    "public_key_to_jwk",
    "public_key_to_pem",
]

PublicKey: TypeAlias = RSAPublicKey | EllipticCurvePublicKey
PrivateKey: TypeAlias = RSAPrivateKey | EllipticCurvePrivateKey

# JWK curve name -> (cryptography curve, coordinate length in bytes)
_CURVES: dict[str, tuple[ec.EllipticCurve, int]] = {
    "P-256": (ec.SECP256R1(), 32),
    "P-384": (ec.SECP384R1(), 48),
    "P-521": (ec.SECP521R1(), 66),
}
_CURVE_BY_OID_NAME = {curve.name: jwk_name for jwk_name, (curve, _) in _CURVES.items()}

_KINDS: dict[str, Callable[[], PrivateKey]] = {
    "EC-P256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "EC-P384": lambda: ec.generate_private_key(ec.SECP384R1()),
    "EC-P521": lambda: ec.generate_private_key(ec.SECP521R1()),
    "RSA-2048": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "RSA-3072": lambda: rsa.generate_private_key(public_exponent=65537, key_size=3072),
    "RSA-4096": lambda: rsa.generate_private_key(public_exponent=65537, key_size=4096),
}
#: the names :func:`generate_key` accepts
KEY_KINDS: tuple[str, ...] = tuple(_KINDS)

_SUPPORTED = "an RSA or EC P-256/P-384/P-521 key"


# --------------------------------------------------------------------------- helpers


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(value: Any, what: str) -> bytes:
    return b64url_decode(value, what, empty=False)


def _int_from_b64url(value: Any, what: str) -> int:
    return int.from_bytes(_b64url_decode(value, what), "big")


def _int_to_b64url(value: int, length: int | None = None) -> str:
    size = length if length is not None else max(1, (value.bit_length() + 7) // 8)
    return _b64url(value.to_bytes(size, "big"))


def _curve_name(curve: ec.EllipticCurve, what: str) -> str:
    name = _CURVE_BY_OID_NAME.get(curve.name)
    if name is None:
        raise BadInputError(f"{what}: expected {_SUPPORTED}, seen EC curve {curve.name}")
    return name


_Key = TypeVar("_Key", bound=PublicKey | PrivateKey)


def _supported_curve(key: _Key, what: str) -> _Key:
    if isinstance(key, EllipticCurvePublicKey | EllipticCurvePrivateKey):
        _curve_name(key.curve, what)
    return key


def _unsupported(key: object, what: str) -> BadInputError:
    return BadInputError(f"{what}: expected {_SUPPORTED}, seen {type(key).__name__}")


def _check_public(key: object, what: str) -> PublicKey:
    if isinstance(key, RSAPublicKey | EllipticCurvePublicKey):
        return _supported_curve(key, what)
    raise _unsupported(key, what)


def _check_private(key: object, what: str) -> PrivateKey:
    if isinstance(key, RSAPrivateKey | EllipticCurvePrivateKey):
        return _supported_curve(key, what)
    raise _unsupported(key, what)


def _looks_like_json(data: bytes) -> bool:
    return data.lstrip().startswith(b"{")


def _load_jwk_json(data: bytes, what: str) -> dict[str, Any]:
    obj = loads(data, what, expected="a JWK JSON object")
    if not isinstance(obj, dict):
        raise BadInputError(f"{what}: expected a JWK JSON object, seen {type(obj).__name__}")
    if "keys" in obj and "kty" not in obj:
        raise BadInputError(f"{what}: expected a single JWK, seen a JWK set")
    return obj


def _pem_label(data: bytes) -> str | None:
    start = data.find(b"-----BEGIN ")
    if start < 0:
        return None
    end = data.find(b"-----", start + 11)
    if end < 0:
        return None
    return data[start + 11 : end].decode("ascii", "replace").strip()


# --------------------------------------------------------------------------- loading


def load_public_key(data: bytes, what: str = "public key") -> PublicKey:
    """Load a public key from PEM/DER SPKI, PEM PKCS#1, an X.509 certificate or a JWK."""
    if _looks_like_json(data):
        return public_key_from_jwk(_load_jwk_json(data, what), what)
    label = _pem_label(data)
    if label is not None:
        if "PRIVATE KEY" in label:
            raise BadInputError(f"{what}: expected a public key or certificate, seen a PEM {label}")
        try:
            if label in ("CERTIFICATE", "X509 CERTIFICATE", "TRUSTED CERTIFICATE"):
                from cryptography import x509  # 30 ms to import: only for certificates

                loaded: object = x509.load_pem_x509_certificate(data).public_key()
            else:
                loaded = serialization.load_pem_public_key(data)
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise BadInputError(
                f"{what}: expected a PEM public key or certificate, seen a malformed PEM {label}"
            ) from exc
        return _check_public(loaded, what)
    try:
        loaded = serialization.load_der_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        try:
            from cryptography import x509

            loaded = x509.load_der_x509_certificate(data).public_key()
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise BadInputError(
                f"{what}: expected a PEM/DER public key, an X.509 certificate or a JWK, "
                f"seen {len(data)} bytes of something else"
            ) from exc
    return _check_public(loaded, what)


def _needs_password(loader: Callable[[bytes, bytes | None], object], data: bytes) -> bool:
    try:
        loader(data, None)
    except TypeError:
        return True
    except (ValueError, UnsupportedAlgorithm):
        return False
    return False


def _load_private(
    loader: Callable[[bytes, bytes | None], object], data: bytes, password: bytes | None, what: str
) -> object:
    label = _pem_label(data)
    kind = f"a malformed PEM {label}" if label else f"{len(data)} bytes that are no DER private key"
    try:
        try:
            return loader(data, password)
        except TypeError:
            if password is None:
                raise BadInputError(
                    f"{what}: expected a password for this encrypted private key, seen none"
                ) from None
            # A password for an unencrypted key is harmless (one flag for many keys), so retry without.
            return loader(data, None)
    except TypeError as exc:
        raise BadInputError(f"{what}: expected a PKCS#8, SEC1 or PKCS#1 private key, seen {kind}") from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        if password is not None and _needs_password(loader, data):
            raise BadInputError(
                f"{what}: expected the right password, seen one that does not decrypt the key"
            ) from exc
        raise BadInputError(
            f"{what}: expected a PKCS#8, SEC1 or PKCS#1 private key or a JWK, seen {kind}"
        ) from exc


def load_private_key(data: bytes, what: str = "private key", password: bytes | None = None) -> PrivateKey:
    """Load a private key from PKCS#8 (optionally encrypted), SEC1, PKCS#1 PEM/DER or a JWK."""
    if _looks_like_json(data):
        return _private_key_from_jwk(_load_jwk_json(data, what), what)
    label = _pem_label(data)
    if label is not None and "PRIVATE KEY" not in label:
        raise BadInputError(f"{what}: expected a PEM private key, seen a PEM {label}")
    if label is not None:
        loaded = _load_private(serialization.load_pem_private_key, data, password, what)
    else:
        loaded = _load_private(serialization.load_der_private_key, data, password, what)
    return _check_private(loaded, what)


# --------------------------------------------------------------------------- JWK


def public_key_to_jwk(key: PublicKey) -> dict[str, str]:
    """The RFC 7517/7518 public JWK of ``key``."""
    if isinstance(key, EllipticCurvePublicKey):
        crv = _curve_name(key.curve, "public key")
        size = _CURVES[crv][1]
        nums = key.public_numbers()
        return {"kty": "EC", "crv": crv, "x": _int_to_b64url(nums.x, size), "y": _int_to_b64url(nums.y, size)}
    if isinstance(key, RSAPublicKey):
        rnums = key.public_numbers()
        return {"kty": "RSA", "n": _int_to_b64url(rnums.n), "e": _int_to_b64url(rnums.e)}
    raise BadInputError(f"public key: expected {_SUPPORTED}, seen {type(key).__name__}")


def _jwk_field(jwk: Mapping[str, Any], name: str, what: str) -> Any:
    if name not in jwk:
        raise BadInputError(f"{what}: field '{name}' is missing")
    return jwk[name]


def _ec_public_from_jwk(jwk: Mapping[str, Any], what: str) -> tuple[EllipticCurvePublicKey, str]:
    crv = _jwk_field(jwk, "crv", what)
    if crv not in _CURVES:
        raise BadInputError(f"{what}: field 'crv': expected one of {', '.join(_CURVES)}, seen {crv!r}")
    curve, size = _CURVES[crv]
    coords = []
    for name in ("x", "y"):
        raw = _b64url_decode(_jwk_field(jwk, name, what), f"{what}: field '{name}'")
        if len(raw) != size:
            raise BadInputError(f"{what}: field '{name}': expected {size} bytes for {crv}, seen {len(raw)}")
        coords.append(int.from_bytes(raw, "big"))
    try:
        key = ec.EllipticCurvePublicNumbers(coords[0], coords[1], curve).public_key()
    except ValueError as exc:
        raise BadInputError(f"{what}: expected a point on {crv}, seen coordinates off the curve") from exc
    return key, crv


def _rsa_public_numbers(jwk: Mapping[str, Any], what: str) -> rsa.RSAPublicNumbers:
    n = _int_from_b64url(_jwk_field(jwk, "n", what), f"{what}: field 'n'")
    e = _int_from_b64url(_jwk_field(jwk, "e", what), f"{what}: field 'e'")
    if n.bit_length() < 1024 or e < 3 or e % 2 == 0:
        raise BadInputError(
            f"{what}: expected an RSA modulus of at least 1024 bits and an odd exponent, seen "
            f"{n.bit_length()} bits and exponent {e}"
        )
    return rsa.RSAPublicNumbers(e, n)


def _check_kty(jwk: Mapping[str, Any], what: str) -> str:
    if not isinstance(jwk, Mapping):
        raise BadInputError(f"{what}: expected a JWK object, seen {type(jwk).__name__}")
    kty = _jwk_field(jwk, "kty", what)
    if kty not in ("EC", "RSA"):
        raise BadInputError(f"{what}: field 'kty': expected 'EC' or 'RSA', seen {kty!r}")
    return str(kty)


def public_key_from_jwk(jwk: Mapping[str, Any], what: str = "JWK") -> PublicKey:
    """The public key of an RFC 7517 JWK; private members, if any, are ignored."""
    if _check_kty(jwk, what) == "EC":
        return _ec_public_from_jwk(jwk, what)[0]
    try:
        return _rsa_public_numbers(jwk, what).public_key()
    except ValueError as exc:
        raise BadInputError(f"{what}: expected a valid RSA public key, seen inconsistent 'n'/'e'") from exc


def _private_key_from_jwk(jwk: Mapping[str, Any], what: str) -> PrivateKey:
    kty = _check_kty(jwk, what)
    if "d" not in jwk:
        raise BadInputError(f"{what}: expected a private JWK (with 'd'), seen a public one")
    d = _int_from_b64url(jwk["d"], f"{what}: field 'd'")
    if kty == "EC":
        public, crv = _ec_public_from_jwk(jwk, what)
        try:
            key = ec.derive_private_key(d, _CURVES[crv][0])
        except ValueError as exc:
            raise BadInputError(f"{what}: field 'd': expected a scalar in range for {crv}") from exc
        if key.public_key().public_numbers() != public.public_numbers():
            raise BadInputError(f"{what}: expected 'd' to match 'x'/'y', seen a mismatched key pair")
        return key
    pub = _rsa_public_numbers(jwk, what)
    try:
        if all(name in jwk for name in ("p", "q")):
            p = _int_from_b64url(jwk["p"], f"{what}: field 'p'")
            q = _int_from_b64url(jwk["q"], f"{what}: field 'q'")
        else:
            # RFC 7518 6.3.2 lets a JWK omit the CRT members; recover them from n, e, d.
            p, q = rsa.rsa_recover_prime_factors(pub.n, pub.e, d)
        dmp1 = _int_from_b64url(jwk["dp"], f"{what}: field 'dp'") if "dp" in jwk else rsa.rsa_crt_dmp1(d, p)
        dmq1 = _int_from_b64url(jwk["dq"], f"{what}: field 'dq'") if "dq" in jwk else rsa.rsa_crt_dmq1(d, q)
        iqmp = _int_from_b64url(jwk["qi"], f"{what}: field 'qi'") if "qi" in jwk else rsa.rsa_crt_iqmp(p, q)
        return rsa.RSAPrivateNumbers(p, q, d, dmp1, dmq1, iqmp, pub).private_key()
    except ValueError as exc:
        raise BadInputError(
            f"{what}: expected a consistent RSA private key, seen inconsistent members"
        ) from exc


# --------------------------------------------------------------------------- output and generation


def private_key_to_pem(key: PrivateKey) -> bytes:
    """Unencrypted PKCS#8 PEM (the form skopeo/ocicrypt accept)."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def public_key_to_pem(key: PublicKey) -> bytes:
    """SubjectPublicKeyInfo PEM."""
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def generate_key(kind: str = "EC-P256") -> PrivateKey:
    """A fresh key pair of ``kind`` (one of :data:`KEY_KINDS`)."""
    factory = _KINDS.get(kind)
    if factory is None:
        raise BadInputError(f"key kind: expected one of {', '.join(_KINDS)}, seen {kind!r}")
    return factory()


def _public_of(key: PublicKey | PrivateKey) -> PublicKey:
    if isinstance(key, RSAPrivateKey | EllipticCurvePrivateKey):
        return key.public_key()
    return key


def jwk_thumbprint(key: PublicKey | PrivateKey) -> str:
    """RFC 7638 SHA-256 thumbprint (base64url) of the public part of ``key``."""
    jwk = public_key_to_jwk(_public_of(key))
    required = ("crv", "kty", "x", "y") if jwk["kty"] == "EC" else ("e", "kty", "n")
    canonical = json.dumps({name: jwk[name] for name in required}, separators=(",", ":"), sort_keys=True)
    return _b64url(hashlib.sha256(canonical.encode("ascii")).digest())


def key_kind(key: PublicKey | PrivateKey) -> str:
    """Short type description, e.g. ``EC P-256`` or ``RSA 2048``."""
    public = _public_of(key)
    if isinstance(public, EllipticCurvePublicKey):
        return f"EC {_curve_name(public.curve, 'key')}"
    return f"RSA {public.key_size}"


def key_description(key: PublicKey | PrivateKey) -> str:
    """Human description for inspect output, e.g. ``EC P-256 (sha256 thumbprint 3k2Vt1lYkqK0dGmX…)``."""
    return f"{key_kind(key)} (sha256 thumbprint {jwk_thumbprint(key)[:16]}…)"
