"""ocicrypt's ``pkcs7`` key wrapping: the private options in a PKCS#7 EnvelopedData (pure).

What ocicrypt writes (``keywrap/pkcs7`` through Go's ``pkcs7.Encrypt``), read from the
annotations skopeo produces: one ``KeyTransRecipientInfo`` per X.509 recipient (issuer
and serial number, RSA PKCS#1 v1.5 key transport; ocicrypt wraps to RSA certificates
only), the content encrypted with AES-128-GCM, the 16-byte tag appended.  Go's encoder
has three quirks its decoder expects, so they are reproduced byte for byte:

* the algorithm parameters are a primitive element with tag 0x10 whose value is the
  DER ``SEQUENCE { [4] IMPLICIT nonce, INTEGER 16 }`` (a context tag 4, not an OCTET STRING);
* the encrypted content is ``[0]`` *constructed*, holding one OCTET STRING.

Decryption also takes the standard DER forms (RFC 5084 ``GCMParameters``, ``[0]``
primitive content) and AES-CBC content.  A small TLV reader does the parsing: general
ASN.1 libraries refuse Go's quirks.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.x509 import Certificate

from layerseal.crypto.keys import PrivateKey
from layerseal.errors import BadInputError, WrongKeyError
from layerseal.wire.der import DerReader, der_int, der_oid, tlv

_OID_ENVELOPED = "1.2.840.113549.1.7.3"
_OID_DATA = "1.2.840.113549.1.7.1"
_OID_RSA = "1.2.840.113549.1.1.1"
_OID_AES128_GCM = "2.16.840.1.101.3.4.1.6"
_GCM = {"2.16.840.1.101.3.4.1.6": 16, "2.16.840.1.101.3.4.1.26": 24, "2.16.840.1.101.3.4.1.46": 32}
_CBC = {"2.16.840.1.101.3.4.1.2": 16, "2.16.840.1.101.3.4.1.22": 24, "2.16.840.1.101.3.4.1.42": 32}

SEQUENCE, SET, INTEGER, OCTET_STRING, OID, NULL = 0x30, 0x31, 0x02, 0x04, 0x06, 0x05


# --------------------------------------------------------------------------- DER reading


def _oid_text(body: bytes) -> str:
    if not body:
        return ""
    parts = [body[0] // 40, body[0] % 40]
    value = 0
    for b in body[1:]:
        value = (value << 7) | (b & 0x7F)
        if not b & 0x80:
            parts.append(value)
            value = 0
    return ".".join(map(str, parts))


# --------------------------------------------------------------------------- the scheme


def certificate_recipient(cert: Certificate, what: str) -> RSAPublicKey:
    key = cert.public_key()
    if not isinstance(key, RSAPublicKey):
        raise BadInputError(
            f"{what}: expected an RSA certificate (ocicrypt's pkcs7 wraps to RSA only), "
            f"seen a {type(key).__name__.lstrip('_').removesuffix('PublicKey')} key"
        )
    return key


def encrypt(data: bytes, certs: Sequence[Certificate]) -> bytes:
    """DER ContentInfo(EnvelopedData) of *data* for every certificate, as ocicrypt writes it."""
    if not certs:
        raise BadInputError("pkcs7: expected at least one recipient certificate, seen none")
    cek, nonce = os.urandom(16), os.urandom(12)
    sealed = AESGCM(cek).encrypt(nonce, data, None)
    recipients = b""
    for i, cert in enumerate(certs):
        public = certificate_recipient(cert, f"pkcs7 recipient {i}")
        rid = tlv(SEQUENCE, cert.issuer.public_bytes() + der_int(cert.serial_number))
        recipients += tlv(
            SEQUENCE,
            der_int(0)
            + rid
            + tlv(SEQUENCE, der_oid(_OID_RSA))
            + tlv(OCTET_STRING, public.encrypt(cek, padding.PKCS1v15())),
        )
    gcm_params = tlv(SEQUENCE, tlv(0x84, nonce) + der_int(16))
    algorithm = tlv(SEQUENCE, der_oid(_OID_AES128_GCM) + tlv(0x10, gcm_params))
    content_info = tlv(SEQUENCE, der_oid(_OID_DATA) + algorithm + tlv(0xA0, tlv(OCTET_STRING, sealed)))
    enveloped = tlv(SEQUENCE, der_int(0) + tlv(SET, recipients) + content_info)
    return tlv(SEQUENCE, der_oid(_OID_ENVELOPED) + tlv(0xA0, enveloped))


def _gcm_nonce(params: bytes, what: str) -> bytes:
    tag, body = DerReader(params, what).next()
    if tag == 0x10:  # Go's wrapper around the real SEQUENCE
        tag, body = DerReader(body, what).next()
    if tag != SEQUENCE:
        raise BadInputError(f"{what}: expected GCM parameters (a SEQUENCE), seen DER tag 0x{tag:02x}")
    ntag, nonce = DerReader(body, what).next()
    if ntag not in (0x84, OCTET_STRING):
        raise BadInputError(f"{what}: expected the GCM nonce, seen DER tag 0x{ntag:02x}")
    return nonce


def _ciphertext(tag: int, body: bytes, what: str) -> bytes:
    if tag == 0x80:
        return body
    parts = DerReader(body, what)
    out = b""
    while parts.more():
        out += parts.next(OCTET_STRING)[1]
    return out


def _content(oid: str, params: bytes, ciphertext: bytes, cek: bytes, what: str) -> bytes | None:
    if oid in _GCM:
        if len(cek) != _GCM[oid]:
            return None
        try:
            return AESGCM(cek).decrypt(_gcm_nonce(params, what), ciphertext, None)
        except (InvalidTag, ValueError):
            return None
    if oid in _CBC:
        tag, iv = DerReader(params, what).next()
        if len(cek) != _CBC[oid] or tag != OCTET_STRING or len(iv) != 16 or len(ciphertext) % 16:
            return None
        dec = Cipher(algorithms.AES(cek), modes.CBC(iv)).decryptor()
        try:
            unpadder = sym_padding.PKCS7(128).unpadder()
            return unpadder.update(dec.update(ciphertext) + dec.finalize()) + unpadder.finalize()
        except ValueError:
            return None
    raise BadInputError(f"{what}: content encryption: expected AES-GCM or AES-CBC, seen OID {oid}")


def decrypt(blob: bytes, keys: Sequence[PrivateKey], what: str = "pkcs7") -> bytes:
    """The content, opened with whichever RSA key one of the recipients was wrapped for.

    Raises :class:`WrongKeyError` when none of *keys* opens it.
    """
    outer = DerReader(DerReader(blob, what).next(SEQUENCE)[1], what)
    oid = _oid_text(outer.next(OID)[1])
    if oid != _OID_ENVELOPED:
        raise BadInputError(f"{what}: expected a PKCS#7 EnvelopedData, seen content type {oid}")
    env = DerReader(DerReader(outer.next(0xA0)[1], what).next(SEQUENCE)[1], what)
    env.next(INTEGER)
    recipients = DerReader(env.next(SET)[1], what)
    eci = DerReader(env.next(SEQUENCE)[1], what)
    eci.next(OID)
    alg = DerReader(eci.next(SEQUENCE)[1], what)
    content_oid = _oid_text(alg.next(OID)[1])
    params = alg.data[alg.pos :]
    ciphertext = _ciphertext(*eci.next(), what) if eci.more() else b""
    rsa_keys = [k for k in keys if isinstance(k, RSAPrivateKey)]
    while recipients.more():
        tag, body = recipients.next()
        if tag != SEQUENCE:
            continue  # not a KeyTransRecipientInfo
        ri = DerReader(body, what)
        ri.next(INTEGER)
        ri.next()  # rid: the key is found by trying, so the certificate is not needed
        ri.next(SEQUENCE)
        encrypted_key = ri.next(OCTET_STRING)[1]
        for key in rsa_keys:
            try:
                cek = key.decrypt(encrypted_key, padding.PKCS1v15())
            except ValueError:
                continue
            # a wrong key may "decrypt" to random bytes (implicit rejection): the content's
            # authentication tag or padding decides
            content = _content(content_oid, params, ciphertext, cek, what)
            if content is not None:
                return content
    raise WrongKeyError(f"{what}: expected a key for one of its recipients, seen none that opens it")
