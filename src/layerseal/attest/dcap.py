"""Intel DCAP quotes: what the TDX and SGX verifiers share (pure).

Both quote kinds end in the same ECDSA signature data: the attestation key's signature over
header and body, the quoting enclave's (QE) report signed by the PCK key and binding the
attestation key (``SHA-256(key || qe_auth_data)``), and the PCK chain (certification data
type 5) up to the pinned Intel SGX Root CA.  Intel's signed PCS collateral (TCB info, QE
identity) has one format for both.  Every error names its TEE (``tdx`` or ``sgx``).
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import itertools
import struct
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils

from layerseal.attest.binding import check_report_data
from layerseal.attest.bytereader import ByteReader
from layerseal.attest.x509util import (
    Clock,
    Validity,
    common_name,
    fingerprint,
    load_cert,
    load_pem_certs,
    utc_now,
    verify_issued_by,
)
from layerseal.errors import BadInputError, DeniedError
from layerseal.wire.b64 import b64decode_either
from layerseal.wire.der import der_items
from layerseal.wire.jsonload import loads

HEADER_SIZE = 48
ATT_KEY_ECDSA_P256 = 2
INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")
QE_REPORT_SIZE = 384
CERT_DATA_QE_REPORT = 6
CERT_DATA_PCK_CHAIN = 5
SGX_EXTENSION_OID = "1.2.840.113741.1.13.1"
_SGX_OID_PREFIX = bytes.fromhex("2a864886f84d010d01")  # DER body of 1.2.840.113741.1.13.1
_CHAIN_CACHE_SIZE = 256


# ---------------------------------------------------------------------------- quote


@dataclass(frozen=True)
class DcapQuote:
    """The header fields and signature data every DCAP quote has; ``signed`` is the byte
    range the attestation key signs (header and body)."""

    version: int
    att_key_type: int
    tee_type: int
    qe_vendor_id: bytes
    signed: bytes
    signature: bytes
    attestation_key: bytes
    qe_report: bytes
    qe_report_signature: bytes
    qe_auth_data: bytes
    pck_chain_pem: bytes


def header(data: bytes, tee: str, versions: tuple[int, int]) -> tuple[dict[str, Any], ByteReader]:
    """The :class:`DcapQuote` header fields, and a reader standing after the header."""
    if len(data) < HEADER_SIZE:
        raise BadInputError(f"{tee} quote size: expected at least {HEADER_SIZE} bytes, seen {len(data)}")
    version, att_key_type, tee_type = struct.unpack_from("<HHI", data, 0)
    if version not in versions:
        raise BadInputError(f"{tee} quote version: expected {versions[0]} or {versions[1]}, seen {version}")
    fields = {
        "version": version,
        "att_key_type": att_key_type,
        "tee_type": tee_type,
        "qe_vendor_id": data[12:28],
    }
    return fields, ByteReader(data, f"{tee} quote", offset=HEADER_SIZE)


def signature_data(
    data: bytes, rd: ByteReader, signature_name: str, *, wrapped: bool, chain_limit: int | None = None
) -> dict[str, Any]:
    """Read the signature data after the body (``rd`` stands at its length field): the
    :class:`DcapQuote` fields from ``signed`` on.  *wrapped*: the QE report sits in
    certification data type 6; with *chain_limit*, the PCK chain is bounded and must end
    the signature data."""
    prefix = rd.prefix
    signed = data[: rd.pos]
    sig_len = rd.uint(4, "signature data length")
    sig_end = rd.pos + sig_len
    if sig_end > len(data) or any(data[sig_end:]):
        # quotes are often zero-padded to a buffer size; anything else is unsigned garbage
        raise BadInputError(
            f"{prefix} signature data: expected {sig_len} bytes then zero padding, "
            f"seen {len(data) - rd.pos} bytes"
        )
    rd = ByteReader(data[:sig_end], prefix, offset=rd.pos)
    signature = rd.take(64, signature_name)
    attestation_key = rd.take(64, "attestation key")
    if wrapped:
        cert_type = rd.uint(2, "certification data type")
        if cert_type != CERT_DATA_QE_REPORT:
            raise BadInputError(
                f"{prefix} certification data type: expected {CERT_DATA_QE_REPORT} (QE report), "
                f"seen {cert_type}"
            )
        rd.uint(4, "certification data size")
    qe_report = rd.take(QE_REPORT_SIZE, "QE report")
    qe_report_signature = rd.take(64, "QE report signature")
    qe_auth_data = rd.take(rd.uint(2, "QE auth data size"), "QE auth data")
    inner_type = rd.uint(2, "PCK certification data type")
    if inner_type != CERT_DATA_PCK_CHAIN:
        raise BadInputError(
            f"{prefix} PCK certification data type: expected {CERT_DATA_PCK_CHAIN} (PEM chain), "
            f"seen {inner_type}"
        )
    if chain_limit is None:
        pck_chain = rd.take(rd.uint(4, "PCK chain size"), "PCK chain")
    else:
        pck_chain = rd.sized("PCK chain", chain_limit, size_bytes=4)
        if any(data[rd.pos : sig_end]):
            # every byte of the signature data belongs to a field: a wrong size is not shrugged off
            raise BadInputError(
                f"{prefix} PCK chain: expected the signature data to end with it, "
                f"seen {sig_end - rd.pos} more bytes"
            )
    return {
        "signed": signed,
        "signature": signature,
        "attestation_key": attestation_key,
        "qe_report": qe_report,
        "qe_report_signature": qe_report_signature,
        "qe_auth_data": qe_auth_data,
        "pck_chain_pem": pck_chain.rstrip(b"\0"),
    }


def quote_bytes(evidence: bytes, tee: str, *, invalid_json: str | None = None) -> bytes:
    """The quote inside ``{"quote": b64}`` evidence (Trustee's shape), or the raw quote;
    *invalid_json* replaces the JSON parser's message for text that is not JSON."""
    if evidence.lstrip()[:1] != b"{":
        return evidence
    try:
        obj = loads(evidence, f"{tee} evidence")
    except BadInputError as exc:
        if invalid_json is None:
            raise
        raise BadInputError(f"{tee} evidence: {invalid_json}") from exc
    quote = obj.get("quote") if isinstance(obj, dict) else None
    if not isinstance(quote, str):
        raise BadInputError(f"{tee} evidence: expected field 'quote' (base64 string), seen none")
    return b64decode_either(quote, f"{tee} evidence quote")


def raw_signature(raw: bytes) -> bytes:
    """DER of a raw ``r || s`` ECDSA P-256 signature, as Intel writes them."""
    return utils.encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))


def check_header(quote: DcapQuote, tee: str, tee_type: int) -> None:
    """ECDSA P-256 attestation key, the TEE's type, Intel's QE."""
    if quote.att_key_type != ATT_KEY_ECDSA_P256:
        raise DeniedError(
            f"{tee} quote attestation key type: expected 2 (ECDSA P-256), seen {quote.att_key_type}"
        )
    if quote.tee_type != tee_type:
        raise DeniedError(
            f"{tee} quote tee type: expected {tee_type:#x} ({tee.upper()}), seen {quote.tee_type:#x}"
        )
    if quote.qe_vendor_id != INTEL_QE_VENDOR_ID:
        raise DeniedError(
            f"{tee} quote QE vendor: expected Intel {INTEL_QE_VENDOR_ID.hex()}, "
            f"seen {quote.qe_vendor_id.hex()}"
        )


def _verify_p256(key: ec.EllipticCurvePublicKey, raw: bytes, signed: bytes, what: str, signer: str) -> None:
    """ECDSA P-256 SHA-256 of a raw ``r || s`` signature (Intel's form)."""
    try:
        key.verify(raw_signature(raw), signed, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError) as exc:
        raise DeniedError(f"{what}: expected valid under the {signer}, seen invalid") from exc


def check_signatures(
    quote: DcapQuote,
    pck_key: ec.EllipticCurvePublicKey,
    tee: str,
    signature_name: str,
    qe_identity: QeIdentity | None,
    now: datetime.datetime,
) -> str:
    """The QE report under the PCK key, the QE's identity (when given), the QE's binding of
    the attestation key, and the quote under that key; returns the QE's TCB status."""
    _verify_p256(pck_key, quote.qe_report_signature, quote.qe_report, f"{tee} QE report signature", "PCK key")
    qe_status = "unknown"
    if qe_identity is not None:
        qe_status = qe_tcb_status(qe_identity, quote.qe_report, now, tee)
    binding = hashlib.sha256(quote.attestation_key + quote.qe_auth_data).digest()
    seen = quote.qe_report[320:384]
    if not hmac.compare_digest(seen, binding + bytes(32)):
        raise DeniedError(
            f"{tee} QE report data: expected SHA-256(attestation key || auth data) {binding[:8].hex()}..., "
            f"seen {seen[:8].hex()}..."
        )
    try:
        key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + quote.attestation_key)
    except ValueError as exc:
        raise DeniedError(f"{tee} attestation key: expected a P-256 point, seen an invalid one") from exc
    _verify_p256(key, quote.signature, quote.signed, f"{tee} {signature_name}", "attestation key")
    return qe_status


# ---------------------------------------------------------------------------- PCK chain


@dataclass(frozen=True)
class SgxExtension:
    """The PCK certificate facts TCB evaluation needs."""

    fmspc: str
    sgx_tcb_svns: tuple[int, ...]
    pce_svn: int


def sgx_extension(pck: x509.Certificate) -> SgxExtension | None:
    """FMSPC, the 16 SGX TCB component SVNs and PCESVN from the PCK's SGX extension."""
    try:
        ext = pck.extensions.get_extension_for_oid(x509.ObjectIdentifier(SGX_EXTENSION_OID))
    except x509.ExtensionNotFound:
        return None
    if not isinstance(ext.value, x509.UnrecognizedExtension):
        return None
    what = "tdx PCK SGX extension"
    outer = der_items(ext.value.value, what)
    if len(outer) != 1 or outer[0][0] != 0x30:
        raise BadInputError(f"{what}: expected one SEQUENCE, seen {len(outer)} elements")
    fields: dict[bytes, bytes] = {}
    for tag, body in der_items(outer[0][1], what):
        pair = der_items(body, what) if tag == 0x30 else []
        if len(pair) == 2 and pair[0][0] == 0x06 and pair[0][1].startswith(_SGX_OID_PREFIX):
            fields[pair[0][1][len(_SGX_OID_PREFIX) :]] = pair[1][1]
    fmspc = fields.get(b"\x04")
    tcb = fields.get(b"\x02")
    if fmspc is None or tcb is None:
        raise BadInputError(f"{what}: expected FMSPC and TCB fields, seen {len(fields)} fields")
    comps: dict[int, int] = {}
    for tag, body in der_items(tcb, what):
        pair = der_items(body, what) if tag == 0x30 else []
        # an empty OID names no component: skipped, so the count check below refuses it
        if len(pair) == 2 and pair[0][0] == 0x06 and pair[0][1] and pair[1][0] == 0x02:
            comps[pair[0][1][-1]] = int.from_bytes(pair[1][1], "big")
    if any(i not in comps for i in range(1, 18)):
        raise BadInputError(f"{what}: expected TCB components 1..16 and PCESVN, seen {sorted(comps)}")
    return SgxExtension(fmspc.hex(), tuple(comps[i] for i in range(1, 17)), comps[17])


def verified_pck_chain(
    chain_pem: bytes, root: x509.Certificate, root_fingerprint: str, tee: str
) -> tuple[list[x509.Certificate], ec.EllipticCurvePublicKey]:
    """The certificates of a PCK chain (PCK, intermediate CA(s), root) and the PCK's P-256 key,
    once the root is the pinned one and every link verifies."""
    certs = load_pem_certs(chain_pem, f"{tee} PCK chain")
    if len(certs) < 2 or len(certs) > 4:
        raise DeniedError(
            f"{tee} PCK chain: expected PCK, intermediate CA(s) and root, seen {len(certs)} certs"
        )
    pinned = certs[-1]
    if fingerprint(pinned) != root_fingerprint:
        raise DeniedError(
            f"{tee} PCK chain root: expected the pinned {common_name(root.subject)!r} "
            f"{root_fingerprint}, seen {common_name(pinned.subject)!r} {fingerprint(pinned)}"
        )
    for child, issuer in itertools.pairwise(certs):
        verify_issued_by(child, issuer, f"{tee} PCK chain link {common_name(child.subject)!r}")
    public = certs[0].public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey) or public.curve.name != "secp256r1":
        raise DeniedError(f"{tee} PCK key: expected EC P-256, seen {type(public).__name__}")
    return certs, public


@dataclass(frozen=True)
class PckChain:
    """A verified PCK chain (PCK first) with the PCK's key and SGX extension."""

    certs: tuple[x509.Certificate, ...]
    public_key: ec.EllipticCurvePublicKey
    sgx: SgxExtension | None
    validity: Validity


class PckChains:
    """PCK chains verified under the pinned root, remembered by the SHA-256 of their PEM
    (a platform sends the same chain with every quote; least recently used go first)."""

    def __init__(self, root_ca: bytes, tee: str) -> None:
        self.root = load_cert(root_ca, f"{tee} pinned root")
        self.root_fingerprint = fingerprint(self.root)
        self._tee = tee
        self._chains: OrderedDict[bytes, PckChain] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, chain_pem: bytes) -> PckChain:
        key = hashlib.sha256(chain_pem).digest()
        with self._lock:
            hit = self._chains.get(key)
            if hit is not None:
                self._chains.move_to_end(key)
                return hit
        certs, public = verified_pck_chain(chain_pem, self.root, self.root_fingerprint, self._tee)
        made = PckChain(tuple(certs), public, sgx_extension(certs[0]), Validity.of(certs))
        with self._lock:
            self._chains[key] = made
            if len(self._chains) > _CHAIN_CACHE_SIZE:
                self._chains.popitem(last=False)
        return made


# ---------------------------------------------------------------------------- collateral


def _signed_member(text: bytes, name: bytes, tee: str) -> bytes:
    """The exact bytes of a top-level JSON object member, as Intel signed them."""
    key = b'"' + name + b'":'
    start = text.find(key)
    if start < 0:
        raise BadInputError(f"{tee} collateral: expected member {name.decode()!r}, seen none")
    i = start + len(key)
    while i < len(text) and text[i] in b" \t\r\n":
        i += 1
    depth, in_str, esc, begin = 0, False, False, i
    for j in range(i, len(text)):
        c = text[j]
        if in_str:
            esc, in_str = (False, True) if esc else (c == 0x5C, c != 0x22)
            continue
        if c == 0x22:
            in_str = True
        elif c == 0x7B:
            depth += 1
        elif c == 0x7D:
            depth -= 1
            if depth == 0:
                return text[begin : j + 1]
    raise BadInputError(
        f"{tee} collateral: expected a complete {name.decode()!r} object, seen truncated JSON"
    )


def signed_collateral(raw: bytes, member: str, issuer_chain_pem: bytes, root_ca: bytes, what: str) -> Any:
    """Intel PCS collateral ``{"<member>": {...}, "signature": hex}``: the issuer chain ends at
    the pinned root, each link signed by the next, and the member's exact bytes are signed.
    *what* starts with the TEE (``tdx TCB info``)."""
    tee = what.split(" ", 1)[0]
    root = load_cert(root_ca, f"{tee} pinned root")
    certs = load_pem_certs(issuer_chain_pem, f"{what} issuer chain")
    if not certs or fingerprint(certs[-1]) != fingerprint(root):
        raise DeniedError(
            f"{what} issuer chain root: expected the pinned {fingerprint(root)}, "
            f"seen {fingerprint(certs[-1]) if certs else 'no certificate'}"
        )
    for child, issuer in itertools.pairwise(certs):
        verify_issued_by(child, issuer, f"{what} chain link {common_name(child.subject)!r}")
    try:
        doc = loads(raw, what)
        sig = bytes.fromhex(doc["signature"])
        body = doc[member]
    except (BadInputError, ValueError, KeyError, TypeError) as exc:
        raise BadInputError(f'{what}: expected {{"{member}": {{...}}, "signature": hex}}') from exc
    signer = certs[0].public_key()
    if not isinstance(signer, ec.EllipticCurvePublicKey) or len(sig) != 64:
        raise DeniedError(f"{what} signature: expected a 64-byte ECDSA P-256 signature, seen another")
    signed = _signed_member(raw, member.encode(), tee)
    _verify_p256(signer, sig, signed, f"{what} signature", "TCB signing key")
    return body


def past(next_update: str, now: datetime.datetime) -> bool:
    """True once *now* is past collateral's ``nextUpdate`` (or when that is unreadable)."""
    try:
        when = datetime.datetime.fromisoformat(next_update)
    except ValueError:
        return True  # fail closed: signed collateral without a readable date vouches for nothing
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return now > when


def check_masked(seen: bytes, expected: bytes, mask: bytes, what: str) -> None:
    """Intel's attribute rule: *seen* and *expected* agree on every bit *mask* selects
    (lengths are checked when the collateral is parsed)."""
    got = bytes(a & m for a, m in zip(seen, mask, strict=True))
    want = bytes(a & m for a, m in zip(expected, mask, strict=True))
    if got != want:
        raise DeniedError(f"{what}: expected {want.hex()} under mask, seen {got.hex()}")


@dataclass(frozen=True)
class QeIdentity:
    """Intel's identity of a quoting enclave (PCS ``.../qe/identity``)."""

    miscselect: int
    miscselect_mask: int
    attributes: bytes
    attributes_mask: bytes
    mrsigner: bytes
    isvprodid: int
    levels: tuple[tuple[int, str], ...]  # (ISVSVN at least, status), newest first
    next_update: str


def parse_qe_identity(
    raw: bytes, issuer_chain_pem: bytes, root_ca: bytes, tee: str, qe_id: str, *, id_required: bool
) -> QeIdentity:
    """Check Intel's signed QE identity (chain to the pinned root) and parse it; its ``id``
    must be *qe_id* (or absent unless *id_required*)."""
    what = f"{tee} QE identity"
    body = signed_collateral(raw, "enclaveIdentity", issuer_chain_pem, root_ca, what)
    try:
        seen_id = body.get("id") if id_required else body.get("id", qe_id)
        if seen_id != qe_id:
            raise BadInputError(f"{what} id: expected {qe_id!r}, seen {str(body.get('id'))[:10]!r}")
        identity = QeIdentity(
            miscselect=int(body["miscselect"], 16),
            miscselect_mask=int(body["miscselectMask"], 16),
            attributes=bytes.fromhex(body["attributes"]),
            attributes_mask=bytes.fromhex(body["attributesMask"]),
            mrsigner=bytes.fromhex(body["mrsigner"]),
            isvprodid=int(body["isvprodid"]),
            levels=tuple((int(lvl["tcb"]["isvsvn"]), str(lvl["tcbStatus"])) for lvl in body["tcbLevels"]),
            next_update=str(body.get("nextUpdate", "")),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BadInputError(f"{what}: expected enclaveIdentity with {qe_id} fields and tcbLevels") from exc
    if (len(identity.mrsigner), len(identity.attributes), len(identity.attributes_mask)) != (32, 16, 16):
        raise BadInputError(
            f"{what}: expected enclaveIdentity with a 32-byte mrsigner and 16-byte attributes and mask"
        )
    return identity


def qe_tcb_status(identity: QeIdentity, qe_report: bytes, now: datetime.datetime, tee: str) -> str:
    """Refuse a QE that is not the one Intel describes; its TCB status otherwise.

    The identity (MRSIGNER, ISVPRODID, masked MISCSELECT and ATTRIBUTES) is checked even
    when the collateral is past its ``nextUpdate``; the status is then ``unknown``.
    """
    what = f"{tee} QE identity"
    miscselect = int.from_bytes(qe_report[16:20], "little")
    attributes, mrsigner = qe_report[48:64], qe_report[128:160]
    isvprodid = int.from_bytes(qe_report[256:258], "little")
    isvsvn = int.from_bytes(qe_report[258:260], "little")
    if not hmac.compare_digest(mrsigner, identity.mrsigner):
        raise DeniedError(
            f"{what} MRSIGNER: expected Intel's {identity.mrsigner[:8].hex()}..., "
            f"seen {mrsigner[:8].hex()}..."
        )
    if isvprodid != identity.isvprodid:
        raise DeniedError(f"{what} ISVPRODID: expected {identity.isvprodid}, seen {isvprodid}")
    if miscselect & identity.miscselect_mask != identity.miscselect & identity.miscselect_mask:
        raise DeniedError(
            f"{what} MISCSELECT: expected {identity.miscselect:#x} under mask "
            f"{identity.miscselect_mask:#x}, seen {miscselect:#x}"
        )
    check_masked(attributes, identity.attributes, identity.attributes_mask, f"{what} ATTRIBUTES")
    if past(identity.next_update, now):
        return "unknown"
    for svn, status in identity.levels:
        if isvsvn >= svn:
            return status
    return "NotSupported"


# ---------------------------------------------------------------------------- verifier


@dataclass(frozen=True)
class Checked:
    """What a quote that passed :meth:`QuoteVerifier.check_quote` leaves for TCB evaluation."""

    chain: PckChain
    now: datetime.datetime
    qe_status: str

    @property
    def fmspc(self) -> str:
        return self.chain.sgx.fmspc if self.chain.sgx is not None else ""


class TcbCollateral(Protocol):
    """Intel's TCB info for one FMSPC, as the verifiers keep it."""

    @property
    def fmspc(self) -> str: ...

    @property
    def next_update(self) -> str: ...


TcbT = TypeVar("TcbT", bound=TcbCollateral)


class QuoteVerifier(Generic[TcbT]):
    """The checks every DCAP quote passes, whatever its TEE: header, PCK chain (and its
    validity at the clock's time), QE report, QE identity, the QE's binding of the
    attestation key, the quote's signature and its report data."""

    tee: str

    def __init__(
        self,
        root_ca: bytes,
        tcb_infos: Iterable[TcbT] = (),
        *,
        qe_identity: QeIdentity | None = None,
        clock: Clock = utc_now,
    ) -> None:
        """*clock* gives the time at which every certificate of a quote's PCK chain must be
        valid; with *qe_identity*, a QE other than Intel's is refused."""
        self._clock = clock
        self._qe_identity = qe_identity
        self._chains = PckChains(root_ca, self.tee)
        # signature-checked collateral by FMSPC; an FMSPC without one has status unknown
        self._tcb = {info.fmspc: info for info in tcb_infos}

    def collateral(self, checked: Checked) -> tuple[TcbT | None, bool]:
        """The TCB info of the quote's FMSPC, and whether it is past its ``nextUpdate``: then
        it vouches for nothing (status unknown, as without it, so a policy asking for
        UpToDate refuses)."""
        info = self._tcb.get(checked.fmspc)
        return info, info is not None and past(info.next_update, checked.now)

    @property
    def root_fingerprint(self) -> str:
        return self._chains.root_fingerprint

    def _check_chain(self, chain: PckChain, now: datetime.datetime) -> None:
        """More checks of a verified chain before the quote's (SGX: Intel's CRLs)."""

    def check_quote(
        self, quote: DcapQuote, tee_type: int, signature_name: str, report_data: bytes, expected: bytes
    ) -> Checked:
        check_header(quote, self.tee, tee_type)
        chain = self._chains.get(quote.pck_chain_pem)
        now = self._clock()
        # checked on every quote, cached chain or not: certificates expire while a broker runs
        chain.validity.check(now, f"{self.tee} PCK chain validity")
        self._check_chain(chain, now)
        qe_status = check_signatures(
            quote, chain.public_key, self.tee, signature_name, self._qe_identity, now
        )
        check_report_data(f"{self.tee} report data", report_data, expected)
        return Checked(chain, now, qe_status)
