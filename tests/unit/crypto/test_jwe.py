"""JWE wrapping (layerseal.crypto.jwe): ocicrypt/go-jose style, KBS style, interop and tampering."""

from __future__ import annotations

import base64
import functools
import json
import os
import re
import struct
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.concatkdf import ConcatKDFHash
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap, aes_key_wrap
from hypothesis import given, settings
from hypothesis import strategies as st
from joserfc.jwe import FlattenedJSONEncryption as JFlattened
from joserfc.jwe import JWERegistry, encrypt_compact, encrypt_json
from joserfc.jwk import ECKey, RSAKey

from layerseal.crypto import jwe as J
from layerseal.crypto.keys import PrivateKey, generate_key, public_key_to_jwk
from layerseal.errors import BadInputError, IntegrityError, LayersealError, MisuseError, WrongKeyError

EC_KINDS = ["EC-P256", "EC-P384", "EC-P521"]
CURVE_OF = {"EC-P256": "P-256", "EC-P384": "P-384", "EC-P521": "P-521"}


@functools.cache
def key(kind: str, n: int = 0) -> PrivateKey:
    return generate_key(kind)


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64u(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def header_of(obj: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(unb64u(obj["protected"]))
    return result


def jkey(k: PrivateKey) -> RSAKey | ECKey:
    return RSAKey.import_key(k) if not isinstance(k, ec.EllipticCurvePrivateKey) else ECKey.import_key(k)


ALL_ALG_CASES = [
    *[(alg, "RSA-2048") for alg in ("RSA-OAEP", "RSA-OAEP-256", "RSA1_5")],
    *[
        (alg, kind)
        for alg in ("ECDH-ES", "ECDH-ES+A128KW", "ECDH-ES+A192KW", "ECDH-ES+A256KW")
        for kind in EC_KINDS
    ],
]


# --------------------------------------------------------------------------- one recipient


@pytest.mark.parametrize(("alg", "kind"), ALL_ALG_CASES)
def test_single_recipient_round_trip(alg: str, kind: str) -> None:
    priv = key(kind)
    out = J.encrypt(b"layer key options", [priv.public_key()], alg=alg)
    obj = json.loads(out)
    expected_fields = {"protected", "iv", "ciphertext", "tag"} | (
        {"encrypted_key"} if alg != "ECDH-ES" else set()
    )
    assert set(obj) == expected_fields
    header = header_of(obj)
    assert header["alg"] == alg
    assert header["enc"] == "A256GCM"
    if kind.startswith("EC"):
        # go-jose puts the per-recipient header (epk) into the protected header for one recipient
        assert header["epk"]["crv"] == CURVE_OF[kind]
    assert len(unb64u(obj["iv"])) == 12
    assert J.decrypt(out, [priv]) == b"layer key options"


@pytest.mark.parametrize(
    ("kind", "alg"), [("RSA-2048", "RSA-OAEP"), *[(k, "ECDH-ES+A256KW") for k in EC_KINDS]]
)
def test_default_alg_is_ocicrypt_choice(kind: str, alg: str) -> None:
    out = json.loads(J.encrypt(b"x", [key(kind).public_key()]))
    assert header_of(out)["alg"] == alg


def test_output_is_compact_utf8_json() -> None:
    out = J.encrypt(b"x", [key("EC-P256").public_key()])
    assert out == json.dumps(json.loads(out), separators=(",", ":")).encode()


def test_wrong_key_single_recipient() -> None:
    out = J.encrypt(b"secret", [key("RSA-2048").public_key()])
    with pytest.raises(
        WrongKeyError, match=r"layer 3 key: .*1 recipient\(s\) \(alg RSA-OAEP\), seen 2 key\(s\)"
    ):
        J.decrypt(out, [key("RSA-2048", 1), key("EC-P256")], "layer 3 key")


@pytest.mark.parametrize("alg", ["RSA1_5", "ECDH-ES"])
def test_wrong_key_for_unauthenticated_unwrap_is_wrong_key(alg: str) -> None:
    kind = "RSA-2048" if alg.startswith("RSA") else "EC-P256"
    out = J.encrypt(b"secret", [key(kind).public_key()], alg=alg)
    with pytest.raises(WrongKeyError):
        J.decrypt(out, [key(kind, 1)])


# --------------------------------------------------------------------------- several recipients


def test_several_recipients_general_form() -> None:
    privs = [key("RSA-2048"), key("EC-P256"), key("EC-P384"), key("EC-P521"), key("RSA-2048", 1)]
    out = J.encrypt(b"optsdata", [p.public_key() for p in privs])
    obj = json.loads(out)
    assert set(obj) == {"protected", "recipients", "iv", "ciphertext", "tag"}
    assert header_of(obj) == {"enc": "A256GCM"}
    assert [r["header"]["alg"] for r in obj["recipients"]] == [
        "RSA-OAEP",
        *["ECDH-ES+A256KW"] * 3,
        "RSA-OAEP",
    ]
    assert all(("epk" in r["header"]) == (r["header"]["alg"] != "RSA-OAEP") for r in obj["recipients"])
    for priv in privs:
        assert J.decrypt(out, [priv]) == b"optsdata"
    with pytest.raises(WrongKeyError, match=r"5 recipient\(s\).*seen 2 key\(s\)"):
        J.decrypt(out, [key("EC-P256", 1), key("RSA-2048", 2)])


def test_several_keys_tried_until_one_opens() -> None:
    out = J.encrypt(b"p", [key("EC-P384").public_key(), key("RSA-2048").public_key()])
    assert J.decrypt(out, [key("EC-P256"), key("RSA-2048", 1), key("EC-P384")]) == b"p"


def test_stray_top_level_encrypted_key_is_tolerated() -> None:
    privs = [key("EC-P256"), key("RSA-2048")]
    obj = json.loads(J.encrypt(b"go-jose", [p.public_key() for p in privs]))
    obj["encrypted_key"] = obj["recipients"][0]["encrypted_key"]  # what go-jose writes
    data = json.dumps(obj).encode()
    for priv in privs:
        assert J.decrypt(data, [priv]) == b"go-jose"


def test_direct_ecdh_refuses_several_recipients() -> None:
    with pytest.raises(BadInputError, match="ECDH-ES"):
        J.encrypt(b"x", [key("EC-P256").public_key(), key("EC-P384").public_key()], alg="ECDH-ES")


def test_encrypt_argument_errors() -> None:
    with pytest.raises(MisuseError):
        J.encrypt(b"x", [])
    with pytest.raises(
        BadInputError, match=r"recipient 1 \(EC P-256\): expected alg ECDH-ES.*, seen 'RSA-OAEP'"
    ):
        J.encrypt(b"x", [key("RSA-2048").public_key(), key("EC-P256").public_key()], alg="RSA-OAEP")
    with pytest.raises(BadInputError, match="recipient 0"):
        J.encrypt(b"x", [key("RSA-2048").public_key()], alg="A256KW")


# --------------------------------------------------------------------------- other producers


def test_compact_serialisation_from_joserfc() -> None:
    priv = key("RSA-2048")
    reg = JWERegistry(algorithms=["RSA-OAEP-256", "A128CBC-HS256"])
    compact = encrypt_compact(
        {"alg": "RSA-OAEP-256", "enc": "A128CBC-HS256"}, b"compact", jkey(priv), registry=reg
    )
    assert compact.count(".") == 4
    assert J.decrypt(compact.encode(), [priv]) == b"compact"


def test_flattened_with_unprotected_headers_from_joserfc() -> None:
    priv = key("EC-P384")
    obj = JFlattened({"enc": "A192GCM"}, b"flat", {"cty": "text/plain"})
    obj.add_recipient({"alg": "ECDH-ES+A128KW"}, jkey(priv))
    data = encrypt_json(obj, None, registry=JWERegistry(algorithms=["ECDH-ES+A128KW", "A192GCM"]))
    assert "epk" in data["header"]  # joserfc keeps epk unprotected, unlike go-jose
    assert J.decrypt(json.dumps(data).encode(), [priv]) == b"flat"


def test_compressed_payload() -> None:
    priv = key("EC-P256")
    reg = JWERegistry(algorithms=["ECDH-ES+A256KW", "A256GCM", "DEF"])
    payload = b"a" * 5000
    compact = encrypt_compact(
        {"alg": "ECDH-ES+A256KW", "enc": "A256GCM", "zip": "DEF"}, payload, jkey(priv), registry=reg
    )
    assert len(compact) < len(payload)
    assert J.decrypt(compact.encode(), [priv]) == payload


def _concat_kdf(shared: bytes, alg: str, bits: int) -> bytes:
    # RFC 7518 4.6.2 with empty apu/apv
    other = struct.pack(">I", len(alg)) + alg.encode() + struct.pack(">I", 0) + struct.pack(">I", 0)
    other += struct.pack(">I", bits)
    return ConcatKDFHash(hashes.SHA256(), bits // 8, other).derive(shared)


def test_hand_made_rsa_oaep_flattened_decrypts() -> None:
    """Built with `cryptography` only; the protected header is not in joserfc's canonical JSON form."""
    priv = key("RSA-2048")
    protected = b64u(b'{ "enc": "A256GCM",  "alg": "RSA-OAEP" }')
    cek, iv = os.urandom(32), os.urandom(12)
    sealed = AESGCM(cek).encrypt(iv, b"hand made", protected.encode("ascii"))
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
    jwe = {
        "protected": protected,
        "encrypted_key": b64u(priv.public_key().encrypt(cek, oaep)),
        "iv": b64u(iv),
        "ciphertext": b64u(sealed[:-16]),
        "tag": b64u(sealed[-16:]),
    }
    assert J.decrypt(json.dumps(jwe, indent=2).encode(), [priv]) == b"hand made"


def test_hand_made_go_jose_general_with_ecdh_decrypts() -> None:
    """A go-jose-shaped general JWE (stray encrypted_key included) built with `cryptography` only."""
    rsa_priv, ec_priv = key("RSA-2048"), key("EC-P256")
    protected = b64u(b'{"enc":"A256GCM"}')
    cek, iv = os.urandom(32), os.urandom(12)
    sealed = AESGCM(cek).encrypt(iv, b"general", protected.encode("ascii"))
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
    ephemeral = ec.generate_private_key(ec.SECP256R1())
    kek = _concat_kdf(ephemeral.exchange(ec.ECDH(), ec_priv.public_key()), "ECDH-ES+A256KW", 256)
    recipients = [
        {"header": {"alg": "RSA-OAEP"}, "encrypted_key": b64u(rsa_priv.public_key().encrypt(cek, oaep))},
        {
            "header": {"alg": "ECDH-ES+A256KW", "epk": public_key_to_jwk(ephemeral.public_key())},
            "encrypted_key": b64u(aes_key_wrap(kek, cek)),
        },
    ]
    jwe = {
        "protected": protected,
        "encrypted_key": recipients[0]["encrypted_key"],
        "recipients": recipients,
        "iv": b64u(iv),
        "ciphertext": b64u(sealed[:-16]),
        "tag": b64u(sealed[-16:]),
    }
    data = json.dumps(jwe).encode()
    assert J.decrypt(data, [ec_priv]) == b"general"
    assert J.decrypt(data, [rsa_priv]) == b"general"


def test_our_output_opens_with_plain_primitives() -> None:
    """The reverse direction: what we write is standard RSA-OAEP/ECDH-ES+A256KW + A256GCM."""
    rsa_priv, ec_priv = key("RSA-2048"), key("EC-P256")
    one = json.loads(J.encrypt(b"to go-jose", [rsa_priv.public_key()]))
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
    cek = rsa_priv.decrypt(unb64u(one["encrypted_key"]), oaep)
    ct = unb64u(one["ciphertext"]) + unb64u(one["tag"])
    assert AESGCM(cek).decrypt(unb64u(one["iv"]), ct, one["protected"].encode()) == b"to go-jose"

    two = json.loads(J.encrypt(b"multi", [rsa_priv.public_key(), ec_priv.public_key()]))
    rec = two["recipients"][1]
    epk = ec.EllipticCurvePublicNumbers(
        int.from_bytes(unb64u(rec["header"]["epk"]["x"]), "big"),
        int.from_bytes(unb64u(rec["header"]["epk"]["y"]), "big"),
        ec.SECP256R1(),
    ).public_key()
    kek = _concat_kdf(ec_priv.exchange(ec.ECDH(), epk), "ECDH-ES+A256KW", 256)
    cek = aes_key_unwrap(kek, unb64u(rec["encrypted_key"]))
    ct = unb64u(two["ciphertext"]) + unb64u(two["tag"])
    assert AESGCM(cek).decrypt(unb64u(two["iv"]), ct, two["protected"].encode()) == b"multi"


# --------------------------------------------------------------------------- tampering


def _flip(text: str) -> str:
    raw = bytearray(unb64u(text))
    raw[len(raw) // 2] ^= 0x01
    return b64u(bytes(raw))


def _reencode_protected(obj: dict[str, Any]) -> None:
    header = header_of(obj)
    header["kid"] = "injected"
    obj["protected"] = b64u(json.dumps(header, separators=(",", ":")).encode())


TAMPERS: dict[str, Callable[[dict[str, Any]], None]] = {
    "ciphertext": lambda o: o.update(ciphertext=_flip(o["ciphertext"])),
    "tag": lambda o: o.update(tag=_flip(o["tag"])),
    "iv": lambda o: o.update(iv=_flip(o["iv"])),
    "protected": _reencode_protected,
}


@pytest.mark.parametrize("field", list(TAMPERS))
@pytest.mark.parametrize(("alg", "kind"), [("RSA-OAEP", "RSA-2048"), ("ECDH-ES+A256KW", "EC-P256")])
def test_tampering_is_an_integrity_error(field: str, alg: str, kind: str) -> None:
    priv = key(kind)
    obj = json.loads(J.encrypt(b"do not alter", [priv.public_key()], alg=alg))
    TAMPERS[field](obj)
    with pytest.raises(IntegrityError, match="authentication tag"):
        J.decrypt(json.dumps(obj).encode(), [priv])


@pytest.mark.parametrize("field", list(TAMPERS))
def test_tampering_general_form(field: str) -> None:
    priv = key("EC-P521")
    obj = json.loads(J.encrypt(b"do not alter", [key("RSA-2048").public_key(), priv.public_key()]))
    TAMPERS[field](obj)
    with pytest.raises(IntegrityError):
        J.decrypt(json.dumps(obj).encode(), [priv])


@pytest.mark.parametrize("alg", ["ECDH-ES", "RSA1_5"])
def test_tampering_with_unauthenticated_unwrap_still_fails(alg: str) -> None:
    priv = key("EC-P256" if alg == "ECDH-ES" else "RSA-2048")
    obj = json.loads(J.encrypt(b"do not alter", [priv.public_key()], alg=alg))
    obj["ciphertext"] = _flip(obj["ciphertext"])
    with pytest.raises(LayersealError):
        J.decrypt(json.dumps(obj).encode(), [priv])


def test_tampered_encrypted_key_fails() -> None:
    priv = key("EC-P384")
    obj = json.loads(J.encrypt(b"x", [priv.public_key()]))
    obj["encrypted_key"] = _flip(obj["encrypted_key"])
    with pytest.raises(WrongKeyError):
        J.decrypt(json.dumps(obj).encode(), [priv])


# --------------------------------------------------------------------------- malformed input


def _valid() -> dict[str, Any]:
    result: dict[str, Any] = json.loads(J.encrypt(b"x", [key("RSA-2048").public_key()]))
    return result


MALFORMED: dict[str, tuple[Callable[[dict[str, Any]], Any], str]] = {
    "missing iv": (lambda o: o.pop("iv"), "field 'iv' is missing"),
    "bad base64": (lambda o: o.update(ciphertext="***"), "field 'ciphertext': expected base64url text"),
    "iv length": (
        lambda o: o.update(iv=b64u(b"12345678")),
        "field 'iv': expected 12 bytes for A256GCM, seen 8",
    ),
    "tag length": (lambda o: o.update(tag=b64u(b"short")), "field 'tag': expected 16 bytes"),
    "protected not json": (
        lambda o: o.update(protected=b64u(b"nope")),
        "field 'protected': expected base64url of a JSON",
    ),
    "protected list": (
        lambda o: o.update(protected=b64u(b"[1]")),
        "field 'protected': expected a JSON object, seen list",
    ),
    "protected object": (
        lambda o: o.update(protected={"alg": "RSA-OAEP"}),
        "field 'protected': expected base64url",
    ),
    "no enc": (
        lambda o: o.update(protected=b64u(b'{"alg":"RSA-OAEP"}')),
        "header 'enc': expected a string, seen nothing",
    ),
    "bad enc": (
        lambda o: o.update(protected=b64u(b'{"alg":"RSA-OAEP","enc":"A256CTR"}')),
        "header 'enc': expected one of",
    ),
    "unknown alg": (
        lambda o: o.update(protected=b64u(b'{"alg":"A256KW","enc":"A256GCM"}')),
        "header 'alg': expected one of .*seen A256KW",
    ),
    "crit": (
        lambda o: o.update(protected=b64u(b'{"alg":"RSA-OAEP","enc":"A256GCM","crit":["exp"],"exp":1}')),
        "header 'crit': expected no critical extensions",
    ),
    "duplicate header": (
        lambda o: o.update(header={"alg": "RSA-OAEP"}),
        "field 'header': expected headers disjoint",
    ),
    "header not object": (lambda o: o.update(header="x"), "field 'header': expected a JSON object, seen str"),
    "empty recipients": (lambda o: o.update(recipients=[]), "field 'recipients': expected a non-empty array"),
    "missing encrypted_key": (
        lambda o: o.pop("encrypted_key"),
        "field 'encrypted_key': expected a wrapped key",
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_json_names_field(case: str) -> None:
    obj = _valid()
    mutate, message = MALFORMED[case]
    mutate(obj)
    with pytest.raises(BadInputError, match=r"^layer 0 key: .*" + message) as info:
        J.decrypt(json.dumps(obj).encode(), [key("RSA-2048")], "layer 0 key")
    assert not isinstance(info.value, WrongKeyError)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "expected a JWE, seen empty input"),
        (b"\xff\xfe", "expected UTF-8"),
        (b"{nope", "expected a JSON object, seen invalid JSON"),
        (b"[1, 2]", "5 dot-separated parts"),
        (b"a.b.c.d", "seen 4 parts"),
        (b"eyJ9.a.b.c.d", "field 'protected'"),
    ],
)
def test_malformed_text(data: bytes, message: str) -> None:
    with pytest.raises(BadInputError, match=message):
        J.decrypt(data, [key("EC-P256")])


def test_ecdh_recipient_without_epk() -> None:
    obj = json.loads(J.encrypt(b"x", [key("EC-P256").public_key(), key("EC-P384").public_key()]))
    del obj["recipients"][1]["header"]["epk"]
    with pytest.raises(BadInputError, match="recipient 1: header 'epk' is missing"):
        J.decrypt(json.dumps(obj).encode(), [key("EC-P384")])


def test_no_keys_given() -> None:
    with pytest.raises(WrongKeyError, match="at least one private key"):
        J.decrypt(J.encrypt(b"x", [key("EC-P256").public_key()]), [])


def test_error_messages_hold_no_key_material() -> None:
    priv = key("EC-P256", 1)
    d = ECKey.import_key(priv).as_dict(private=True)["d"]
    with pytest.raises(WrongKeyError) as info:
        J.decrypt(J.encrypt(b"secret payload", [key("EC-P256").public_key()]), [priv])
    text = str(info.value)
    assert d not in text
    assert "secret payload" not in text


# --------------------------------------------------------------------------- KBS style


@pytest.mark.parametrize(
    ("alg", "kind"),
    [("RSA-OAEP-256", "RSA-2048"), ("RSA1_5", "RSA-2048"), *[("ECDH-ES+A256KW", k) for k in EC_KINDS]],
)
def test_kbs_round_trip(alg: str, kind: str) -> None:
    priv = key(kind)
    jwk = {**public_key_to_jwk(priv.public_key()), "alg": alg}
    out = J.encrypt_to_jwk(b"resource bytes", jwk)
    assert set(out) == {"protected", "encrypted_key", "iv", "ciphertext", "tag"}
    header = header_of(out)
    assert (header["alg"], header["enc"]) == (alg, "A256GCM")
    assert ("epk" in header) == kind.startswith("EC")
    assert J.decrypt_from_jwk(out, priv) == b"resource bytes"
    with pytest.raises(WrongKeyError, match="KBS response JWE"):
        J.decrypt_from_jwk(out, key(kind, 1))


def test_kbs_rsa_oaep_256_by_hand() -> None:
    priv = key("RSA-2048")
    out = J.encrypt_to_jwk(b"kbs", {**public_key_to_jwk(priv.public_key()), "alg": "RSA-OAEP-256"})
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    cek = priv.decrypt(unb64u(out["encrypted_key"]), oaep)
    sealed = unb64u(out["ciphertext"]) + unb64u(out["tag"])
    assert AESGCM(cek).decrypt(unb64u(out["iv"]), sealed, out["protected"].encode("ascii")) == b"kbs"


@pytest.mark.parametrize(("kind", "alg"), [("RSA-2048", "RSA-OAEP-256"), ("EC-P384", "ECDH-ES+A256KW")])
def test_kbs_jwk_without_alg_gets_default(kind: str, alg: str) -> None:
    priv = key(kind)
    out = J.encrypt_to_jwk(b"d", public_key_to_jwk(priv.public_key()))
    assert header_of(out)["alg"] == alg
    assert J.decrypt_from_jwk(out, priv) == b"d"


@pytest.mark.parametrize(
    ("kind", "alg"), [("RSA-2048", "ECDH-ES+A256KW"), ("EC-P256", "RSA-OAEP-256"), ("RSA-2048", "RSA-OAEP")]
)
def test_kbs_alg_must_fit_key(kind: str, alg: str) -> None:
    jwk = {**public_key_to_jwk(key(kind).public_key()), "alg": alg}
    with pytest.raises(
        BadInputError, match=f"tee-pubkey JWK: field 'alg': expected .*seen '{re.escape(alg)}'"
    ):
        J.encrypt_to_jwk(b"x", jwk)


def test_kbs_bad_jwk() -> None:
    with pytest.raises(BadInputError, match="tee-pubkey JWK: field 'kty'"):
        J.encrypt_to_jwk(b"x", {"kty": "oct", "k": "AAAA"})


def test_kbs_decrypt_malformed() -> None:
    with pytest.raises(BadInputError, match="KBS response JWE: field 'iv' is missing"):
        J.decrypt_from_jwk({"protected": b64u(b'{"alg":"RSA-OAEP-256","enc":"A256GCM"}')}, key("RSA-2048"))


# --------------------------------------------------------------------------- property tests


@settings(max_examples=30, deadline=None)
@given(payload=st.binary(max_size=4096), alg_kind=st.sampled_from(ALL_ALG_CASES))
def test_payload_round_trip_single(payload: bytes, alg_kind: tuple[str, str]) -> None:
    alg, kind = alg_kind
    assert J.decrypt(J.encrypt(payload, [key(kind).public_key()], alg=alg), [key(kind)]) == payload


@settings(max_examples=20, deadline=None)
@given(payload=st.binary(max_size=2048), which=st.integers(min_value=0, max_value=3))
def test_payload_round_trip_several(payload: bytes, which: int) -> None:
    privs = [key("RSA-2048"), key("EC-P256"), key("EC-P384"), key("EC-P521")]
    out = J.encrypt(payload, [p.public_key() for p in privs])
    assert J.decrypt(out, [privs[which]]) == payload


@settings(max_examples=20, deadline=None)
@given(payload=st.binary(max_size=2048), kind=st.sampled_from(["RSA-2048", *EC_KINDS]))
def test_payload_round_trip_kbs(payload: bytes, kind: str) -> None:
    priv = key(kind)
    assert (
        J.decrypt_from_jwk(J.encrypt_to_jwk(payload, public_key_to_jwk(priv.public_key())), priv) == payload
    )
