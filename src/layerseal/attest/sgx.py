"""Intel SGX: DCAP ECDSA quote (version 3, and version 4 with tee_type 0) parser and pure verifier.

Evidence (RCAR ``tee`` = ``sgx``) is ``{"quote": b64(quote)}`` (Trustee's SGX evidence shape;
other members are ignored) or the raw quote bytes.

Checks, each named in its error: header (version, ECDSA P-256 attestation key, tee type 0,
Intel QE vendor); the PCK chain carried in certification data type 5 ends at the pinned
Intel SGX Root CA (the TDX one: same root, same chain code), each link signed by the next,
every certificate valid at the clock's time; the CRLs given (Intel's Root CA and PCK
Processor/Platform CA CRLs) are signed by their issuer in that chain, current at the
clock's time, and revoke none of its certificates; the QE report is signed by the PCK key
and binds the attestation key (``SHA-256(key || qe_auth_data)``); the ISV enclave report
is signed by the attestation key over header and body; report data.  With Intel's QE
identity (id ``QE``) the QE must be Intel's; with SGX TCB info the PCK's TCB gives
``tcb_status`` (``unknown`` without it or once past its ``nextUpdate``).

Claims: ``measurement`` is MRENCLAVE, ``svn`` ISVSVN, ``debug`` the DEBUG attribute; policies
also see ``sgx.mrsigner``, ``sgx.isv_prod_id``, ``sgx.mode64`` and the rest below.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import hmac
import json
import struct
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from layerseal.attest import tdx
from layerseal.attest.bytereader import ByteReader
from layerseal.attest.claims import Claims
from layerseal.attest.x509util import (
    Clock,
    Validity,
    common_name,
    fingerprint,
    load_cert,
    utc_now,
    verify_signature,
)
from layerseal.errors import BadInputError, DeniedError

TEE = "sgx"
HEADER_SIZE = 48
REPORT_BODY_SIZE = 384
SGX_TEE_TYPE = 0
ATTRIBUTE_DEBUG = 0x02
ATTRIBUTE_MODE64 = 0x04
MAX_CHAIN_PEM = 16 * 1024
_CHAIN_CACHE_SIZE = 256


@dataclass(frozen=True)
class ReportBody:
    """The SGX enclave report body (``sgx_report_body_t``, 384 bytes)."""

    cpu_svn: bytes
    misc_select: int
    isv_ext_prod_id: bytes
    attributes: bytes
    mr_enclave: bytes
    mr_signer: bytes
    config_id: bytes
    isv_prod_id: int
    isv_svn: int
    config_svn: int
    isv_family_id: bytes
    report_data: bytes

    @property
    def flags(self) -> int:
        return int.from_bytes(self.attributes[:8], "little")

    @property
    def debug(self) -> bool:
        return bool(self.flags & ATTRIBUTE_DEBUG)

    @property
    def mode64(self) -> bool:
        return bool(self.flags & ATTRIBUTE_MODE64)


def report_body(raw: bytes) -> ReportBody:
    if len(raw) != REPORT_BODY_SIZE:
        raise BadInputError(f"sgx report body: expected {REPORT_BODY_SIZE} bytes, seen {len(raw)}")
    return ReportBody(
        cpu_svn=raw[0:16],
        misc_select=int.from_bytes(raw[16:20], "little"),
        isv_ext_prod_id=raw[32:48],
        attributes=raw[48:64],
        mr_enclave=raw[64:96],
        mr_signer=raw[128:160],
        config_id=raw[192:256],
        isv_prod_id=int.from_bytes(raw[256:258], "little"),
        isv_svn=int.from_bytes(raw[258:260], "little"),
        config_svn=int.from_bytes(raw[260:262], "little"),
        isv_family_id=raw[304:320],
        report_data=raw[320:384],
    )


@dataclass(frozen=True)
class Quote:
    """A parsed SGX DCAP quote; ``signed`` is what the attestation key signs (header + body)."""

    version: int
    att_key_type: int
    tee_type: int
    qe_svn: int
    pce_svn: int
    qe_vendor_id: bytes
    body: ReportBody
    signed: bytes
    signature: bytes
    attestation_key: bytes
    qe_report: bytes
    qe_report_signature: bytes
    qe_auth_data: bytes
    pck_chain_pem: bytes


def parse_quote(data: bytes) -> Quote:
    """Parse a version 3 quote, or a version 4 one (QE report wrapped in certification data 6)."""
    if len(data) < HEADER_SIZE:
        raise BadInputError(f"sgx quote size: expected at least {HEADER_SIZE} bytes, seen {len(data)}")
    version, att_key_type, tee_type, qe_svn, pce_svn = struct.unpack_from("<HHIHH", data, 0)
    if version not in (3, 4):
        raise BadInputError(f"sgx quote version: expected 3 or 4, seen {version}")
    rd = ByteReader(data, "sgx quote", offset=HEADER_SIZE)
    body = rd.take(REPORT_BODY_SIZE, "ISV enclave report body")
    signed = data[: rd.pos]
    sig_len = rd.uint(4, "signature data length")
    sig_end = rd.pos + sig_len
    if sig_end > len(data) or any(data[sig_end:]):
        raise BadInputError(
            f"sgx quote signature data: expected {sig_len} bytes then zero padding, "
            f"seen {len(data) - rd.pos} bytes"
        )
    rd = ByteReader(data[:sig_end], "sgx quote", offset=rd.pos)
    signature = rd.take(64, "ISV report signature")
    attestation_key = rd.take(64, "attestation key")
    if version == 4:
        cert_type = rd.uint(2, "certification data type")
        if cert_type != tdx.CERT_DATA_QE_REPORT:
            raise BadInputError(
                f"sgx quote certification data type: expected {tdx.CERT_DATA_QE_REPORT} (QE report), "
                f"seen {cert_type}"
            )
        rd.uint(4, "certification data size")
    qe_report = rd.take(tdx.QE_REPORT_SIZE, "QE report")
    qe_report_signature = rd.take(64, "QE report signature")
    qe_auth_data = rd.take(rd.uint(2, "QE auth data size"), "QE auth data")
    inner_type = rd.uint(2, "PCK certification data type")
    if inner_type != tdx.CERT_DATA_PCK_CHAIN:
        raise BadInputError(
            f"sgx quote PCK certification data type: expected {tdx.CERT_DATA_PCK_CHAIN} (PEM chain), "
            f"seen {inner_type}"
        )
    pck_chain = rd.sized("PCK chain", MAX_CHAIN_PEM, size_bytes=4)
    if any(data[rd.pos : sig_end]):
        # every byte of the signature data belongs to a field: a wrong size is not shrugged off
        raise BadInputError(
            f"sgx quote PCK chain: expected the signature data to end with it, "
            f"seen {sig_end - rd.pos} more bytes"
        )
    return Quote(
        version=version,
        att_key_type=att_key_type,
        tee_type=tee_type,
        qe_svn=qe_svn,
        pce_svn=pce_svn,
        qe_vendor_id=data[12:28],
        body=report_body(body),
        signed=signed,
        signature=signature,
        attestation_key=attestation_key,
        qe_report=qe_report,
        qe_report_signature=qe_report_signature,
        qe_auth_data=qe_auth_data,
        pck_chain_pem=pck_chain.rstrip(b"\0"),
    )


def quote_bytes(evidence: bytes) -> bytes:
    """The quote inside ``{"quote": b64}`` evidence, or the raw quote."""
    if evidence.lstrip()[:1] != b"{":
        return evidence
    try:
        obj = json.loads(evidence)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadInputError(
            'sgx evidence: expected JSON {"quote": base64} or a raw quote, seen neither'
        ) from exc
    quote = obj.get("quote") if isinstance(obj, dict) else None
    if not isinstance(quote, str):
        raise BadInputError("sgx evidence: expected field 'quote' (base64 string), seen none")
    padded = quote + "=" * (-len(quote) % 4)
    for altchars in (None, b"-_"):
        try:
            return base64.b64decode(padded, altchars=altchars, validate=True)
        except (binascii.Error, ValueError):
            continue
    raise BadInputError("sgx evidence quote: expected base64, seen invalid text")


def evidence_json(quote: bytes) -> dict[str, Any]:
    """The evidence object the SGX attester sends."""
    return {"quote": base64.b64encode(quote).decode()}


# ---------------------------------------------------------------------------- collateral


@dataclass(frozen=True)
class Crl:
    """One of Intel's PCS CRLs (``/sgx/certification/v4/pckcrl``, ``rootcacrl``), parsed."""

    issuer: x509.Name
    crl: x509.CertificateRevocationList

    @property
    def issuer_name(self) -> str:
        return common_name(self.issuer)


def parse_crl(data: bytes, what: str = "sgx CRL") -> Crl:
    """A DER or PEM CRL; its signature is checked against the quote's chain at verification."""
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            crl = x509.load_pem_x509_crl(data)
        else:
            crl = x509.load_der_x509_crl(data)
    except ValueError as exc:
        raise BadInputError(f"{what}: expected a DER or PEM X.509 CRL, seen unparsable data") from exc
    return Crl(crl.issuer, crl)


@dataclass(frozen=True)
class SgxTcbLevel:
    sgx_svns: tuple[int, ...]
    pce_svn: int
    status: str


@dataclass(frozen=True)
class SgxTcbInfo:
    """Intel's SGX TCB info for one FMSPC (signature already checked)."""

    fmspc: str
    levels: tuple[SgxTcbLevel, ...]
    next_update: str


def parse_tcb_info(raw: bytes, issuer_chain_pem: bytes, root_ca: bytes) -> SgxTcbInfo:
    """Check Intel's signed SGX TCB info (v2 or v3; chain to the pinned root) and parse its levels."""
    what = "sgx TCB info"
    info = tdx._signed_collateral(raw, "tcbInfo", issuer_chain_pem, root_ca, what)
    try:
        if info.get("id", "SGX") != "SGX":
            raise BadInputError(f"{what} id: expected 'SGX', seen {str(info.get('id'))[:10]!r}")
        levels = []
        for lvl in info["tcbLevels"]:
            tcb = lvl["tcb"]
            if "sgxtcbcomponents" in tcb:  # v3
                svns = tuple(int(c["svn"]) for c in tcb["sgxtcbcomponents"])
            else:  # v2: sgxtcbcomp01svn ... sgxtcbcomp16svn
                svns = tuple(int(tcb[f"sgxtcbcomp{i:02d}svn"]) for i in range(1, 17))
            if len(svns) != 16:
                raise ValueError("16 SGX TCB components")
            levels.append(SgxTcbLevel(svns, int(tcb["pcesvn"]), str(lvl["tcbStatus"])))
        return SgxTcbInfo(str(info["fmspc"]).lower(), tuple(levels), str(info.get("nextUpdate", "")))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BadInputError(f"{what}: expected tcbInfo with fmspc and 16-component tcbLevels") from exc


def parse_qe_identity(raw: bytes, issuer_chain_pem: bytes, root_ca: bytes) -> tdx.QeIdentity:
    """Check Intel's signed SGX QE identity (id ``QE``) and parse it."""
    what = "sgx QE identity"
    body = tdx._signed_collateral(raw, "enclaveIdentity", issuer_chain_pem, root_ca, what)
    try:
        if body.get("id", "QE") != "QE":
            raise BadInputError(f"{what} id: expected 'QE', seen {str(body.get('id'))[:10]!r}")
        identity = tdx.QeIdentity(
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
        raise BadInputError(f"{what}: expected enclaveIdentity with QE fields and tcbLevels") from exc
    if (len(identity.mrsigner), len(identity.attributes), len(identity.attributes_mask)) != (32, 16, 16):
        raise BadInputError(f"{what}: expected a 32-byte mrsigner and 16-byte attributes and mask")
    return identity


def tcb_status(info: SgxTcbInfo, sgx: tdx.SgxExtension) -> str:
    """The status of the first level (newest first) the PCK's CPUSVN components and PCESVN meet."""
    for level in info.levels:
        meets = all(have >= need for have, need in zip(sgx.sgx_tcb_svns, level.sgx_svns, strict=True))
        if meets and sgx.pce_svn >= level.pce_svn:
            return level.status
    return "NotSupported"


# ---------------------------------------------------------------------------- verifier


@dataclass(frozen=True)
class _Chain:
    certs: tuple[x509.Certificate, ...]
    public_key: ec.EllipticCurvePublicKey
    sgx: tdx.SgxExtension | None
    validity: Validity


def _stamp(t: datetime.datetime) -> str:
    return t.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class SgxVerifier:
    """Verifies SGX DCAP quotes whose PCK chain ends at the pinned Intel SGX Root CA."""

    tee = TEE

    def __init__(
        self,
        root_ca: bytes,
        *,
        crls: Iterable[Crl] = (),
        tcb_infos: Iterable[SgxTcbInfo] = (),
        qe_identity: tdx.QeIdentity | None = None,
        clock: Clock = utc_now,
    ) -> None:
        self._root = load_cert(root_ca, "sgx pinned root")
        self._root_fingerprint = fingerprint(self._root)
        self._crls = tuple(crls)
        self._tcb = {info.fmspc: info for info in tcb_infos}
        self._qe_identity = qe_identity
        self._clock = clock
        self._chains: OrderedDict[bytes, _Chain] = OrderedDict()
        self._lock = threading.Lock()

    def verify(self, evidence: bytes, expected_report_data: bytes) -> Claims:
        quote = parse_quote(quote_bytes(evidence))
        if quote.att_key_type != tdx.ATT_KEY_ECDSA_P256:
            raise DeniedError(
                f"sgx quote attestation key type: expected 2 (ECDSA P-256), seen {quote.att_key_type}"
            )
        if quote.tee_type != SGX_TEE_TYPE:
            raise DeniedError(f"sgx quote tee type: expected 0x0 (SGX), seen {quote.tee_type:#x}")
        if quote.qe_vendor_id != tdx.INTEL_QE_VENDOR_ID:
            raise DeniedError(
                f"sgx quote QE vendor: expected Intel {tdx.INTEL_QE_VENDOR_ID.hex()}, "
                f"seen {quote.qe_vendor_id.hex()}"
            )
        chain = self._chain(quote.pck_chain_pem)
        now = self._clock()
        chain.validity.check(now, "sgx PCK chain validity")
        self._check_crls(chain, now)
        try:
            chain.public_key.verify(
                tdx._raw_signature(quote.qe_report_signature), quote.qe_report, ec.ECDSA(hashes.SHA256())
            )
        except (InvalidSignature, ValueError) as exc:
            raise DeniedError(
                "sgx QE report signature: expected valid under the PCK key, seen invalid"
            ) from exc
        qe_status = "unknown"
        if self._qe_identity is not None:
            qe_status = _qe_status(self._qe_identity, quote.qe_report, now)
        binding = hashlib.sha256(quote.attestation_key + quote.qe_auth_data).digest()
        seen = quote.qe_report[320:384]
        if not hmac.compare_digest(seen, binding + bytes(32)):
            raise DeniedError(
                f"sgx QE report data: expected SHA-256(attestation key || auth data) {binding[:8].hex()}..., "
                f"seen {seen[:8].hex()}..."
            )
        try:
            key = ec.EllipticCurvePublicKey.from_encoded_point(
                ec.SECP256R1(), b"\x04" + quote.attestation_key
            )
            key.verify(tdx._raw_signature(quote.signature), quote.signed, ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, ValueError) as exc:
            raise DeniedError(
                "sgx ISV report signature: expected valid under the attestation key, seen invalid"
            ) from exc
        if not hmac.compare_digest(quote.body.report_data, expected_report_data):
            raise DeniedError(
                "sgx report data: expected SHA-384 of this session's nonce and tee-pubkey "
                f"({expected_report_data[:8].hex()}...), seen {quote.body.report_data[:8].hex()}..."
            )
        fmspc = chain.sgx.fmspc if chain.sgx is not None else ""
        info = self._tcb.get(fmspc)
        expired = info is not None and tdx._past(info.next_update, now)
        status = "unknown"
        if info is not None and not expired and chain.sgx is not None:
            status = tcb_status(info, chain.sgx)
        return claims_of(quote, fmspc, status, qe_status=qe_status, collateral_expired=expired)

    def _check_crls(self, chain: _Chain, now: datetime.datetime) -> None:
        by_subject = {cert.subject: cert for cert in chain.certs}
        for crl in self._crls:
            issuer = by_subject.get(crl.issuer)
            if issuer is None:
                continue  # another CA's list (Platform CA CRL for a Processor CA chain)
            what = f"sgx CRL {crl.issuer_name!r}"
            verify_signature(
                issuer.public_key(),
                crl.crl.signature,
                crl.crl.tbs_certlist_bytes,
                crl.crl.signature_hash_algorithm,
                f"{what} signature",
                repr(crl.issuer_name),
            )
            next_update = crl.crl.next_update_utc
            if now < crl.crl.last_update_utc or next_update is None or now > next_update:
                window = (
                    f"{_stamp(crl.crl.last_update_utc)}..{_stamp(next_update) if next_update else 'none'}"
                )
                raise DeniedError(f"{what}: expected one current at {_stamp(now)}, seen one valid {window}")
            for cert in chain.certs:
                if cert.issuer == crl.issuer and crl.crl.get_revoked_certificate_by_serial_number(
                    cert.serial_number
                ):
                    raise DeniedError(
                        f"{what}: expected {common_name(cert.subject)!r} not revoked, "
                        f"seen serial {cert.serial_number:x} revoked"
                    )

    def _chain(self, chain_pem: bytes) -> _Chain:
        key = hashlib.sha256(chain_pem).digest()
        with self._lock:
            hit = self._chains.get(key)
            if hit is not None:
                self._chains.move_to_end(key)
                return hit
        certs, public = tdx.verified_pck_chain(chain_pem, self._root, self._root_fingerprint, "sgx")
        made = _Chain(tuple(certs), public, tdx.sgx_extension(certs[0]), Validity.of(certs))
        with self._lock:
            self._chains[key] = made
            if len(self._chains) > _CHAIN_CACHE_SIZE:
                self._chains.popitem(last=False)
        return made


def _qe_status(identity: tdx.QeIdentity, qe_report: bytes, now: datetime.datetime) -> str:
    # the TDX check is Intel's QE rule for both; its messages are renamed to this TEE
    try:
        return tdx.qe_tcb_status(identity, qe_report, now)
    except DeniedError as exc:
        raise DeniedError(str(exc).replace("tdx QE identity", "sgx QE identity", 1)) from exc


def claims_of(
    quote: Quote, fmspc: str, status: str, *, qe_status: str = "unknown", collateral_expired: bool = False
) -> Claims:
    body = quote.body
    details: dict[str, Any] = {
        "quote_version": quote.version,
        "mrenclave": body.mr_enclave.hex(),
        "mrsigner": body.mr_signer.hex(),
        "isv_prod_id": body.isv_prod_id,
        "isv_svn": body.isv_svn,
        "attributes": body.attributes.hex(),
        "debug": body.debug,
        "mode64": body.mode64,
        "misc_select": body.misc_select,
        "cpu_svn": body.cpu_svn.hex(),
        "config_id": body.config_id.hex(),
        "config_svn": body.config_svn,
        "isv_ext_prod_id": body.isv_ext_prod_id.hex(),
        "isv_family_id": body.isv_family_id.hex(),
        "report_data": body.report_data.hex(),
        "qe_svn": quote.qe_svn,
        "pce_svn": quote.pce_svn,
        "fmspc": fmspc,
        "tcb_status": status,
        "qe_tcb_status": qe_status,
        "collateral_expired": collateral_expired,
    }
    return Claims(
        tee=TEE,
        measurement=body.mr_enclave.hex(),
        svn=body.isv_svn,
        debug=body.debug,
        details=MappingProxyType(details),
    )
