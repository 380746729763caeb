"""JWE (RFC 7516) wrapping as ocicrypt's ``jwe`` scheme and the KBS resource response write it.

Encryption follows go-jose as used by ocicrypt: ``enc`` A256GCM; one recipient gives the
flattened JSON serialisation with every header protected (go-jose moves the recipient
header into the protected one), several give the general serialisation with
``{"enc":"A256GCM"}`` protected and ``alg``/``epk`` per recipient.  A protected header is
written as Trustee writes it (``alg``, ``enc``, then the other members sorted at every
depth, compact): CoCo guests rebuild it with serde_json to compute the AAD, and those are
the only bytes both of serde_json's map orders give back (see :func:`protected_header_json`).
One recipient is encrypted here with ``cryptography`` so those bytes are exactly the AAD.

Decryption accepts compact, flattened and general serialisations.  The key management
and content algorithms are joserfc's; the envelope is parsed here because joserfc's JSON
path re-serialises the protected header to compute the AAD (RFC 7516 says: the ASCII of
the *received* base64url text), cannot report how many keys and recipients it tried,
and does not tell a wrong key from altered data.  go-jose's stray top-level
``encrypted_key`` in general serialisation is ignored here (joserfc ignores it as well).
"""

from __future__ import annotations

import base64
import json
import os
import warnings
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey, EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.concatkdf import ConcatKDFHash
from cryptography.hazmat.primitives.keywrap import aes_key_wrap
from joserfc.errors import JoseError, SecurityWarning
from joserfc.jwa import JWEEncModel, JWEKeyAgreement, JWEKeyEncryption
from joserfc.jwe import (
    FlattenedJSONEncryption,
    GeneralJSONEncryption,
    JWERegistry,
    Recipient,
    encrypt_json,
)
from joserfc.jwk import ECKey, RSAKey

from layerseal.crypto.keys import PrivateKey, PublicKey, key_kind, public_key_from_jwk, public_key_to_jwk
from layerseal.errors import BadInputError, IntegrityError, MisuseError, WrongKeyError
from layerseal.wire.b64 import b64url_decode
from layerseal.wire.jsonload import loads

__all__ = ["decrypt", "decrypt_from_jwk", "encrypt", "encrypt_to_jwk", "protected_header_json"]

CONTENT_ENC = "A256GCM"
RSA_ALGS = ("RSA-OAEP", "RSA-OAEP-256", "RSA1_5")
EC_ALGS = ("ECDH-ES", "ECDH-ES+A128KW", "ECDH-ES+A192KW", "ECDH-ES+A256KW")
ENCS = ("A128GCM", "A192GCM", "A256GCM", "A128CBC-HS256", "A192CBC-HS384", "A256CBC-HS512")
KBS_ALGS = ("RSA-OAEP-256", "ECDH-ES+A256KW", "RSA1_5")
DEFAULT_RSA_ALG = "RSA-OAEP"  # go-jose/ocicrypt: OAEP with SHA-1
DEFAULT_EC_ALG = "ECDH-ES+A256KW"
# Algorithms whose key unwrap is itself authenticated: if the unwrap succeeds but the
# content tag fails, the key was right and the data was altered.
_AUTHENTICATED_UNWRAP = frozenset(
    {"RSA-OAEP", "RSA-OAEP-256", "ECDH-ES+A128KW", "ECDH-ES+A192KW", "ECDH-ES+A256KW"}
)
# Bound on inflated plaintext of "zip":"DEF" JWEs: anyone holding a public key can send one.
MAX_INFLATED = 64 * 1024 * 1024

_REGISTRY = JWERegistry(algorithms=[*RSA_ALGS, *EC_ALGS, *ENCS], strict_check_header=False)
_REGISTRY.max_recipients = 1024
# Looked up directly so decryption does not pass joserfc's RSA1_5 SecurityWarning on to callers.
_ALG_MODELS = {name: JWERegistry.algorithms["alg"][name] for name in (*RSA_ALGS, *EC_ALGS)}
_ENC_MODELS = {name: JWERegistry.algorithms["enc"][name] for name in ENCS}
_B64URL_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


# --------------------------------------------------------------------------- encoding helpers


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(value: Any, what: str, field: str) -> bytes:
    return b64url_decode(value, f"{what}: field '{field}'")


def _dumps(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


# --------------------------------------------------------------------------- encryption


def _joserfc_key(key: PublicKey | PrivateKey) -> RSAKey | ECKey:
    if isinstance(key, RSAPublicKey | RSAPrivateKey):
        return RSAKey.import_key(key)
    return ECKey.import_key(key)


def _pick_alg(key: PublicKey, alg: str | None, index: int) -> str:
    is_rsa = isinstance(key, RSAPublicKey)
    if not is_rsa and not isinstance(key, EllipticCurvePublicKey):
        raise BadInputError(f"recipient {index}: expected an RSA or EC public key, seen {type(key).__name__}")
    if alg is None:
        return DEFAULT_RSA_ALG if is_rsa else DEFAULT_EC_ALG
    allowed = RSA_ALGS if is_rsa else EC_ALGS
    if alg not in allowed:
        raise BadInputError(
            f"recipient {index} ({key_kind(key)}): expected alg {' or '.join(allowed)}, seen {alg!r}"
        )
    return alg


def protected_header_json(header: Mapping[str, Any]) -> bytes:
    """The protected header's bytes as Trustee (kbs-types) writes them and CoCo guests rebuild them.

    kbs_protocol computes the AAD from ``serde_json::to_string(ProtectedHeader)`` of the
    header it parsed: the struct fields ``alg`` and ``enc`` first, then the other members
    from a map that is sorted (serde_json without ``preserve_order``) or in received order
    (with it).  Writing ``alg``, ``enc``, then every other member sorted at every depth,
    compact, gives the same bytes either way.
    """

    def ordered(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: ordered(value[k]) for k in sorted(value)}
        if isinstance(value, list):
            return [ordered(v) for v in value]
        return value

    head = {name: header[name] for name in ("alg", "enc") if name in header}
    rest = {k: ordered(header[k]) for k in sorted(header) if k not in head}
    return json.dumps({**head, **rest}, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _concat_kdf(z: bytes, algorithm_id: str, bits: int) -> bytes:
    # RFC 7518 4.6.2 with empty apu/apv, as go-jose, Trustee and kbs_protocol use it
    other = len(algorithm_id).to_bytes(4, "big") + algorithm_id.encode() + bytes(8) + bits.to_bytes(4, "big")
    return ConcatKDFHash(hashes.SHA256(), bits // 8, other).derive(z)


_KW_BITS = {"ECDH-ES+A128KW": 128, "ECDH-ES+A192KW": 192, "ECDH-ES+A256KW": 256}


def _wrap_cek(alg: str, key: PublicKey, header: dict[str, Any]) -> tuple[bytes, bytes]:
    """(content key, encrypted_key) for *alg*; adds ``epk`` to *header* for ECDH-ES."""
    if isinstance(key, RSAPublicKey):
        cek = os.urandom(32)
        if alg == "RSA1_5":
            return cek, key.encrypt(cek, asym_padding.PKCS1v15())
        # RSA-OAEP is OAEP with SHA-1 by definition (RFC 7518 4.3); go-jose/ocicrypt default to it
        digest = hashes.SHA256() if alg == "RSA-OAEP-256" else hashes.SHA1()  # noqa: S303
        return cek, key.encrypt(cek, asym_padding.OAEP(asym_padding.MGF1(digest), digest, None))
    ephemeral = ec.generate_private_key(key.curve)
    header["epk"] = public_key_to_jwk(ephemeral.public_key())
    z = ephemeral.exchange(ec.ECDH(), key)
    if alg == "ECDH-ES":  # direct agreement: the derived key is the content key
        return _concat_kdf(z, CONTENT_ENC, 256), b""
    kek = _concat_kdf(z, alg, _KW_BITS[alg])
    cek = os.urandom(32)
    return cek, aes_key_wrap(kek, cek)


def _encrypt_single(payload: bytes, key: PublicKey, alg: str) -> dict[str, str]:
    # One recipient: every header (alg, enc, epk) protected, as go-jose writes it and as the
    # KBS resource response carries it; the AAD is the exact text sent.
    header: dict[str, Any] = {"alg": alg, "enc": CONTENT_ENC}
    try:
        cek, encrypted_key = _wrap_cek(alg, key, header)
    except ValueError as exc:
        raise BadInputError(f"recipient ({key_kind(key)}, alg {alg}): {exc}") from exc
    protected = _b64url(protected_header_json(header))
    iv = os.urandom(12)
    sealed = AESGCM(cek).encrypt(iv, payload, protected.encode("ascii"))
    out = {"protected": protected}
    if encrypted_key:  # RFC 7516 7.2.1: absent when empty (ECDH-ES direct)
        out["encrypted_key"] = _b64url(encrypted_key)
    out.update(iv=_b64url(iv), ciphertext=_b64url(sealed[:-16]), tag=_b64url(sealed[-16:]))
    return out


def encrypt(payload: bytes, recipients: Sequence[PublicKey], *, alg: str | None = None) -> bytes:
    """Encrypt ``payload`` to every key in ``recipients`` as ocicrypt/go-jose do; UTF-8 JSON bytes."""
    if not recipients:
        raise MisuseError("JWE recipients: expected at least one public key, seen none")
    algs = [_pick_alg(key, alg, i) for i, key in enumerate(recipients)]
    if len(recipients) == 1:
        return _dumps(_encrypt_single(payload, recipients[0], algs[0]))
    if "ECDH-ES" in algs:
        raise BadInputError(
            f"JWE alg: expected a key-wrapping algorithm for {len(recipients)} recipients, "
            "seen 'ECDH-ES' (direct agreement allows one recipient only)"
        )
    obj = GeneralJSONEncryption({"enc": CONTENT_ENC}, payload)
    for key, key_alg in zip(recipients, algs, strict=True):
        obj.add_recipient({"alg": key_alg}, _joserfc_key(key))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SecurityWarning)
            data = encrypt_json(obj, None, registry=_REGISTRY)
    except (JoseError, ValueError) as exc:
        raise BadInputError(f"JWE recipients: {exc}") from exc
    out = {
        "protected": data["protected"],
        "recipients": data["recipients"],
        "iv": data["iv"],
        "ciphertext": data["ciphertext"],
        "tag": data["tag"],
    }
    return _dumps(out)


def encrypt_to_jwk(payload: bytes, jwk: Mapping[str, Any]) -> dict[str, Any]:
    """Flattened JWE of ``payload`` to a KBS ``tee-pubkey`` JWK; its ``alg`` member picks the algorithm.

    A JWK without ``alg`` gets RSA-OAEP-256 (RSA) or ECDH-ES+A256KW (EC).
    """
    what = "tee-pubkey JWK"
    key = public_key_from_jwk(jwk, what)
    alg = jwk.get("alg")
    if alg is None:
        alg = "RSA-OAEP-256" if isinstance(key, RSAPublicKey) else "ECDH-ES+A256KW"
    allowed = ("RSA-OAEP-256", "RSA1_5") if isinstance(key, RSAPublicKey) else ("ECDH-ES+A256KW",)
    if alg not in allowed:
        raise BadInputError(
            f"{what}: field 'alg': expected {' or '.join(allowed)} for kty {jwk['kty']}, seen {alg!r}"
        )
    return dict(_encrypt_single(payload, key, alg))


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class _Recipient:
    header: dict[str, Any]  # merged protected + shared unprotected + per-recipient headers
    encrypted_key: bytes


@dataclass(frozen=True)
class _Envelope:
    protected: dict[str, Any]
    aad: bytes  # the additional authenticated data of RFC 7516 5.1 step 14
    recipients: list[_Recipient]
    iv: bytes
    ciphertext: bytes
    tag: bytes


def _header_object(value: Any, what: str, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadInputError(f"{what}: field '{field}': expected a JSON object, seen {type(value).__name__}")
    return value


def _decode_protected(segment: Any, what: str) -> dict[str, Any]:
    raw = _b64url_decode(segment, what, "protected")
    if not raw:
        return {}
    header = loads(raw, f"{what}: field 'protected'", expected="base64url of a JSON object")
    return _header_object(header, what, "protected")


def _merge(what: str, *parts: tuple[str, Mapping[str, Any] | None]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for field, part in parts:
        for name, value in (part or {}).items():
            if name in merged:
                # RFC 7516 7.2.1: the header sets must be disjoint
                raise BadInputError(
                    f"{what}: field '{field}': expected headers disjoint from the others, seen {name!r} twice"
                )
            merged[name] = value
    return merged


def _parse_compact(text: str, what: str) -> _Envelope:
    parts = text.split(".")
    if len(parts) != 5:
        raise BadInputError(
            f"{what}: expected JSON or compact serialisation (5 dot-separated parts), seen {len(parts)} parts"
        )
    protected = _decode_protected(parts[0], what)
    return _Envelope(
        protected=protected,
        aad=parts[0].encode("ascii"),
        recipients=[_Recipient(protected, _b64url_decode(parts[1], what, "encrypted_key"))],
        iv=_b64url_decode(parts[2], what, "iv"),
        ciphertext=_b64url_decode(parts[3], what, "ciphertext"),
        tag=_b64url_decode(parts[4], what, "tag"),
    )


def _parse_json(obj: Mapping[str, Any], what: str) -> _Envelope:
    if not isinstance(obj, Mapping):
        raise BadInputError(f"{what}: expected a JSON object, seen {type(obj).__name__}")
    segment = obj.get("protected", "")
    protected = _decode_protected(segment, what)
    unprotected = _header_object(obj["unprotected"], what, "unprotected") if "unprotected" in obj else None
    aad = str(segment).encode("ascii")
    if "aad" in obj:
        _b64url_decode(obj["aad"], what, "aad")
        aad += b"." + str(obj["aad"]).encode("ascii")
    if "recipients" in obj:
        items = obj["recipients"]
        if not isinstance(items, list) or not items:
            raise BadInputError(f"{what}: field 'recipients': expected a non-empty array, seen {items!r:.40}")
        fields = [f"recipients[{i}]" for i in range(len(items))]
    else:
        # flattened; also the general form's stray top-level "encrypted_key" never gets here
        items, fields = [obj], [""]
    recipients = []
    for item, field in zip(items, fields, strict=True):
        prefix = f"{field}." if field else ""
        if not isinstance(item, Mapping):
            raise BadInputError(f"{what}: field '{field}': expected an object, seen {type(item).__name__}")
        header = _header_object(item["header"], what, f"{prefix}header") if "header" in item else None
        merged = _merge(
            what, ("protected", protected), ("unprotected", unprotected), (f"{prefix}header", header)
        )
        ek = (
            _b64url_decode(item["encrypted_key"], what, f"{prefix}encrypted_key")
            if "encrypted_key" in item
            else b""
        )
        recipients.append(_Recipient(merged, ek))
    for name in ("iv", "ciphertext", "tag"):
        if name not in obj:
            raise BadInputError(f"{what}: field '{name}' is missing")
    return _Envelope(
        protected=protected,
        aad=aad,
        recipients=recipients,
        iv=_b64url_decode(obj["iv"], what, "iv"),
        ciphertext=_b64url_decode(obj["ciphertext"], what, "ciphertext"),
        tag=_b64url_decode(obj["tag"], what, "tag"),
    )


def _parse(jwe: bytes, what: str) -> _Envelope:
    try:
        text = jwe.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise BadInputError(f"{what}: expected UTF-8 JSON or compact text, seen binary data") from exc
    if text.startswith("{"):
        return _parse_json(loads(text, what, expected="a JSON object"), what)
    if not text:
        raise BadInputError(f"{what}: expected a JWE, seen empty input")
    return _parse_compact(text, what)


# --------------------------------------------------------------------------- decryption


def _str_header(header: Mapping[str, Any], name: str, what: str) -> str:
    value = header.get(name)
    if not isinstance(value, str):
        seen = "nothing" if value is None else type(value).__name__
        raise BadInputError(f"{what}: header '{name}': expected a string, seen {seen}")
    return value


def _check_envelope(env: _Envelope, what: str) -> JWEEncModel:
    encs = {_str_header(r.header, "enc", what) for r in env.recipients}
    if len(encs) != 1:
        raise BadInputError(
            f"{what}: header 'enc': expected one value for all recipients, seen {sorted(encs)}"
        )
    enc_name = encs.pop()
    if enc_name not in _ENC_MODELS:
        raise BadInputError(f"{what}: header 'enc': expected one of {', '.join(ENCS)}, seen {enc_name!r}")
    enc = _ENC_MODELS[enc_name]
    if len(env.iv) * 8 != enc.iv_size:
        raise BadInputError(
            f"{what}: field 'iv': expected {enc.iv_size // 8} bytes for {enc_name}, seen {len(env.iv)}"
        )
    tag_size = 16 if enc_name.endswith("GCM") else enc.cek_size // 16
    if len(env.tag) != tag_size:
        raise BadInputError(
            f"{what}: field 'tag': expected {tag_size} bytes for {enc_name}, seen {len(env.tag)}"
        )
    for recipient in env.recipients:
        crit = recipient.header.get("crit")
        if crit is not None:
            # no JWE extension is understood here, so RFC 7515 4.1.11 says reject
            raise BadInputError(f"{what}: header 'crit': expected no critical extensions, seen {crit!r}")
    zip_name = env.protected.get("zip")
    if zip_name is not None and zip_name != "DEF":
        raise BadInputError(f"{what}: header 'zip': expected 'DEF' or none, seen {zip_name!r}")
    if any("zip" in r.header for r in env.recipients) and zip_name is None:
        raise BadInputError(f"{what}: header 'zip': expected in the protected header, seen it unprotected")
    return enc


def _inflate(data: bytes, what: str) -> bytes:
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, MAX_INFLATED)
    except zlib.error as exc:
        raise BadInputError(
            f"{what}: expected DEFLATE-compressed plaintext ('zip':'DEF'), seen invalid data"
        ) from exc
    if inflater.unconsumed_tail or not inflater.eof:
        raise BadInputError(
            f"{what}: expected plaintext up to {MAX_INFLATED} bytes after inflating, seen more"
        )
    return out


def _fits(alg: str, key: PrivateKey, epk: PublicKey | None) -> bool:
    if alg in RSA_ALGS:
        return isinstance(key, RSAPrivateKey)
    return (
        isinstance(key, EllipticCurvePrivateKey)
        and isinstance(epk, EllipticCurvePublicKey)
        and epk.curve.name == key.curve.name
    )


def _unwrap(alg: str, enc: JWEEncModel, recipient: _Recipient, key: RSAKey | ECKey) -> bytes | None:
    """The content key, or None when ``key`` does not open this recipient."""
    model = _ALG_MODELS[alg]
    holder: Recipient[Any] = Recipient(FlattenedJSONEncryption(dict(recipient.header)), None, key)
    holder.encrypted_key = recipient.encrypted_key
    try:
        if isinstance(model, JWEKeyAgreement):
            agreed = model.decrypt_agreed_upon_key(enc, holder)
            cek = agreed if model.direct_mode else model.unwrap_cek_with_auk(recipient.encrypted_key, agreed)
        elif isinstance(model, JWEKeyEncryption):
            cek = model.decrypt_cek(holder)
        else:  # pragma: no cover - _ALG_MODELS holds only the two kinds above
            return None
    except (JoseError, ValueError):
        return None
    # RSA1_5 with a wrong key yields random bytes of any length (implicit rejection)
    return cek if len(cek) * 8 == enc.cek_size else None


def _decrypt_envelope(env: _Envelope, keys: Sequence[PrivateKey], what: str) -> bytes:
    enc = _check_envelope(env, what)
    if not keys:
        raise WrongKeyError(f"{what}: expected at least one private key to try, seen none")
    joserfc_keys = [_joserfc_key(k) for k in keys]
    seen_algs: list[str] = []
    supported = 0
    altered = False
    for index, recipient in enumerate(env.recipients):
        alg = _str_header(recipient.header, "alg", what)
        seen_algs.append(alg)
        if alg not in _ALG_MODELS:
            continue  # another recipient may use an algorithm we have
        supported += 1
        epk: PublicKey | None = None
        if alg in EC_ALGS:
            if "epk" not in recipient.header:
                raise BadInputError(f"{what}: recipient {index}: header 'epk' is missing (needed by {alg})")
            epk = public_key_from_jwk(recipient.header["epk"], f"{what}: recipient {index}: header 'epk'")
            if alg == "ECDH-ES" and recipient.encrypted_key:
                raise BadInputError(
                    f"{what}: recipient {index}: field 'encrypted_key': expected none for ECDH-ES"
                )
        elif not recipient.encrypted_key:
            raise BadInputError(
                f"{what}: recipient {index}: field 'encrypted_key': expected a wrapped key for {alg}"
            )
        for key, jkey in zip(keys, joserfc_keys, strict=True):
            if not _fits(alg, key, epk):
                continue
            cek = _unwrap(alg, enc, recipient, jkey)
            if cek is None:
                continue
            try:
                plaintext = enc.decrypt(env.ciphertext, env.tag, cek, env.iv, env.aad)
            except (JoseError, ValueError):
                altered = altered or alg in _AUTHENTICATED_UNWRAP
                continue
            if env.protected.get("zip") == "DEF":
                return _inflate(plaintext, what)
            return plaintext
    if altered:
        raise IntegrityError(
            f"{what}: expected the authentication tag to match, seen a mismatch after the content key "
            "was unwrapped (the ciphertext, tag, iv or protected header was altered)"
        )
    algs = ", ".join(sorted(set(seen_algs)))
    if not supported:
        raise BadInputError(f"{what}: header 'alg': expected one of {', '.join(_ALG_MODELS)}, seen {algs}")
    kinds = ", ".join(key_kind(k) for k in keys)
    raise WrongKeyError(
        f"{what}: expected a key that opens one of {len(env.recipients)} recipient(s) (alg {algs}), "
        f"seen {len(keys)} key(s) that do not ({kinds})"
    )


def decrypt(jwe: bytes, keys: Sequence[PrivateKey], what: str = "JWE") -> bytes:
    """Open a compact, flattened or general JWE with any of ``keys``."""
    return _decrypt_envelope(_parse(jwe, what), keys, what)


def decrypt_from_jwk(jwe: Mapping[str, Any], key: PrivateKey) -> bytes:
    """Open a KBS resource response (flattened JWE object) with the enclave's private key."""
    what = "KBS response JWE"
    return _decrypt_envelope(_parse_json(jwe, what), [key], what)
