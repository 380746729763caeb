"""Small X.509 helpers shared by the real-TEE verifiers (pure: bytes in, objects out).

Certificates are compared by the SHA-256 of their DER; a chain link holds when the
child names its issuer and the issuer's key verifies the child's signature.  A chain's
:class:`Validity` is the window in which all its certificates are valid; verifiers check
it against the time their injected clock gives (the only outside input they take).

``cryptography`` parses a certificate's parts lazily, so :func:`load_cert` and
:func:`load_pem_certs` read every part a verifier may touch (names, dates, key,
extensions, signature algorithm) at once: a certificate that loads is safe to use, and
one that does not is bad input naming the part, never an exception from deep inside a
verifier.
"""

from __future__ import annotations

import datetime
import hashlib
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from layerseal.errors import BadInputError, DeniedError


def certificate_fingerprint(cert_der: bytes) -> str:
    """``sha256:<hex>`` of a DER certificate: how platforms and trust anchors are named."""
    return "sha256:" + hashlib.sha256(cert_der).hexdigest()


def fingerprint(cert: x509.Certificate) -> str:
    """``sha256:<hex>`` of the certificate's DER."""
    return certificate_fingerprint(cert.public_bytes(serialization.Encoding.DER))


def load_certificate(data: bytes) -> bytes:
    """Accept a PEM or DER platform certificate; return DER after checking it is P-384."""
    try:
        if b"-----BEGIN" in data:
            cert = x509.load_pem_x509_certificate(data)
        else:
            cert = x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise BadInputError("sim platform certificate: expected PEM or DER X.509, seen garbage") from exc
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise BadInputError("sim platform certificate: expected an EC P-384 public key, seen another")
    return cert.public_bytes(serialization.Encoding.DER)


# what cryptography raises on certificate parts it cannot read or does not support
_UNREADABLE = (
    ValueError,
    TypeError,
    UnsupportedAlgorithm,
    x509.InvalidVersion,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
)


def _reason(exc: Exception) -> str:
    """cryptography's explanation, first line, bounded (it quotes certificate parts, not secrets)."""
    return (str(exc).split("\n")[0] or type(exc).__name__)[:80]


def _der_element(data: bytes, pos: int) -> tuple[int, int]:
    """(start of content, end) of the DER element at *pos*; ValueError when malformed."""
    if pos + 2 > len(data):
        raise ValueError("truncated DER element")
    length, pos = data[pos + 1], pos + 2
    if length & 0x80:
        n = length & 0x7F
        if not 0 < n <= 4 or pos + n > len(data):
            raise ValueError("invalid DER length")
        length, pos = int.from_bytes(data[pos : pos + n], "big"), pos + n
    if pos + length > len(data):
        raise ValueError("DER element longer than its container")
    return pos, pos + length


def _signature_algorithms(der: bytes) -> tuple[bytes, bytes]:
    """The certificate's outer signatureAlgorithm and the TBS ``signature`` field, as DER."""
    start, _ = _der_element(der, 0)
    tbs_start, tbs_end = _der_element(der, start)
    outer = der[tbs_end : _der_element(der, tbs_end)[1]]
    pos = tbs_start
    if der[pos] == 0xA0:  # [0] version
        pos = _der_element(der, pos)[1]
    pos = _der_element(der, pos)[1]  # serialNumber
    return outer, der[pos : _der_element(der, pos)[1]]


def checked_cert(cert: x509.Certificate, what: str) -> x509.Certificate:
    """Read every part of *cert* a verifier uses; ``BadInputError`` names the first unreadable one."""
    parts = (
        ("version", lambda: cert.version),
        ("subject", lambda: cert.subject),
        ("issuer", lambda: cert.issuer),
        ("validity", lambda: (cert.not_valid_before_utc, cert.not_valid_after_utc)),
        ("public key", cert.public_key),
        ("extensions", lambda: list(cert.extensions)),
        ("signature algorithm", lambda: (cert.signature_hash_algorithm, cert.signature_algorithm_parameters)),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for part, read in parts:
            try:
                read()
            except _UNREADABLE as exc:
                raise BadInputError(
                    f"{what} {part}: expected a readable, supported value, seen {_reason(exc)!r}"
                ) from exc
        try:
            outer, inner = _signature_algorithms(cert.public_bytes(serialization.Encoding.DER))
        except (ValueError, IndexError) as exc:
            raise BadInputError(f"{what}: expected a DER certificate, seen malformed DER") from exc
    # RFC 5280 4.1.1.2: the unsigned outer algorithm must repeat the signed one
    if outer != inner:
        raise BadInputError(
            f"{what} signature algorithm: expected the signed {inner.hex()[:40]}, seen {outer.hex()[:40]}"
        )
    return cert


def load_cert(data: bytes, what: str) -> x509.Certificate:
    """One certificate from PEM or DER bytes, every part it has checked readable."""
    try:
        # AMD's VCEKs carry serial number 0, which cryptography warns about but accepts.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if data.lstrip().startswith(b"-----BEGIN"):
                cert = x509.load_pem_x509_certificate(data)
            else:
                cert = x509.load_der_x509_certificate(data)
    except _UNREADABLE as exc:
        raise BadInputError(
            f"{what}: expected a PEM or DER X.509 certificate, seen unparsable data ({_reason(exc)})"
        ) from exc
    return checked_cert(cert, what)


def load_pem_certs(data: bytes, what: str) -> list[x509.Certificate]:
    """Every certificate of a PEM bundle, in order, each checked as :func:`load_cert` does."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            certs = x509.load_pem_x509_certificates(data)
    except _UNREADABLE as exc:
        raise BadInputError(
            f"{what}: expected PEM certificates, seen unparsable data ({_reason(exc)})"
        ) from exc
    return [checked_cert(c, f"{what} [{i}]") for i, c in enumerate(certs)]


def load_crl(data: bytes, what: str) -> x509.CertificateRevocationList:
    """A DER or PEM CRL (its signature is the caller's to check)."""
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except ValueError as exc:
        raise BadInputError(f"{what}: expected a DER or PEM X.509 CRL, seen unparsable data") from exc


def common_name(name: x509.Name) -> str:
    attrs = name.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else name.rfc4514_string()


def verify_issued_by(child: x509.Certificate, issuer: x509.Certificate, what: str) -> None:
    """Raise ``DeniedError`` unless *issuer* names and signed *child*."""
    if child.issuer != issuer.subject:
        expected, seen = common_name(issuer.subject), common_name(child.issuer)
        if expected == seen:
            expected, seen = issuer.subject.rfc4514_string(), child.issuer.rfc4514_string()
        raise DeniedError(f"{what}: expected issuer {expected!r}, seen {seen!r}")
    verify_signature(
        issuer.public_key(),
        child.signature,
        child.tbs_certificate_bytes,
        child.signature_hash_algorithm,
        what,
        repr(common_name(issuer.subject)),
    )


def verify_signature(
    key: object,
    signature: bytes,
    signed: bytes,
    ecdsa_hash: hashes.HashAlgorithm | None,
    what: str,
    signer: str,
) -> None:
    """Raise ``DeniedError`` unless *key* signed *signed* (a certificate's or CRL's TBS bytes).

    RSA keys are AMD's (RSASSA-PSS, SHA-384, salt 48 is the only scheme AMD uses); EC keys
    are Intel's (ECDSA with the declared *ecdsa_hash*).  *signer* names the key in errors.
    """
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(
                signature,
                signed,
                padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48),
                hashes.SHA384(),
            )
        elif isinstance(key, ec.EllipticCurvePublicKey):
            if ecdsa_hash is None:
                raise DeniedError(f"{what}: expected an ECDSA signature with a hash, seen none")
            key.verify(signature, signed, ec.ECDSA(ecdsa_hash))
        else:
            raise DeniedError(f"{what}: expected an RSA or EC issuer key, seen {type(key).__name__}")
    except InvalidSignature as exc:
        raise DeniedError(f"{what}: expected a signature by {signer}, seen an invalid one") from exc


Clock = Callable[[], datetime.datetime]


def utc_now() -> datetime.datetime:
    """The default clock of the verifiers."""
    return datetime.datetime.now(datetime.UTC)


def utc_stamp(t: datetime.datetime) -> str:
    """*t* in UTC, to the second, as messages show times."""
    return t.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Validity:
    """When every certificate of a chain is valid: the latest notBefore, the earliest notAfter,
    and the certificates that set them (for messages)."""

    not_before: datetime.datetime
    not_after: datetime.datetime
    starts_with: str
    ends_with: str

    @classmethod
    def of(cls, certs: Iterable[x509.Certificate]) -> Validity:
        chain = list(certs)
        if not chain:
            raise ValueError("Validity.of: expected at least one certificate")
        first = max(chain, key=lambda c: c.not_valid_before_utc)
        last = min(chain, key=lambda c: c.not_valid_after_utc)
        return cls(
            first.not_valid_before_utc,
            last.not_valid_after_utc,
            common_name(first.subject),
            common_name(last.subject),
        )

    def check(self, at: datetime.datetime, what: str) -> None:
        """Raise ``DeniedError`` unless every certificate is valid at *at*."""
        if at < self.not_before:
            raise DeniedError(
                f"{what}: expected certificates valid at {utc_stamp(at)}, seen {self.starts_with!r} "
                f"valid only from {utc_stamp(self.not_before)}"
            )
        if at > self.not_after:
            raise DeniedError(
                f"{what}: expected certificates valid at {utc_stamp(at)}, seen {self.ends_with!r} "
                f"expired at {utc_stamp(self.not_after)}"
            )
