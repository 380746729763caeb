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
import datetime
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from cryptography import x509

from layerseal.attest import dcap
from layerseal.attest.claims import Claims
from layerseal.attest.x509util import Clock, common_name, load_crl, utc_now, utc_stamp, verify_signature
from layerseal.errors import BadInputError, DeniedError

TEE = "sgx"
REPORT_BODY_SIZE = 384
SGX_TEE_TYPE = 0
ATTRIBUTE_DEBUG = 0x02
ATTRIBUTE_MODE64 = 0x04
MAX_CHAIN_PEM = 16 * 1024


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
class Quote(dcap.DcapQuote):
    """A parsed SGX DCAP quote."""

    qe_svn: int
    pce_svn: int
    body: ReportBody


def parse_quote(data: bytes) -> Quote:
    """Parse a version 3 quote, or a version 4 one (QE report wrapped in certification data 6)."""
    fields, rd = dcap.header(data, TEE, (3, 4))
    qe_svn, pce_svn = struct.unpack_from("<HH", data, 8)
    body = report_body(rd.take(REPORT_BODY_SIZE, "ISV enclave report body"))
    wrapped = fields["version"] == 4
    signature_data = dcap.signature_data(
        data, rd, "ISV report signature", wrapped=wrapped, chain_limit=MAX_CHAIN_PEM
    )
    return Quote(**fields, qe_svn=qe_svn, pce_svn=pce_svn, body=body, **signature_data)


def quote_bytes(evidence: bytes) -> bytes:
    """The quote inside ``{"quote": b64}`` evidence, or the raw quote."""
    return dcap.quote_bytes(
        evidence, TEE, invalid_json='expected JSON {"quote": base64} or a raw quote, seen neither'
    )


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
    crl = load_crl(data, what)
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
    info = dcap.signed_collateral(raw, "tcbInfo", issuer_chain_pem, root_ca, what)
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


def parse_qe_identity(raw: bytes, issuer_chain_pem: bytes, root_ca: bytes) -> dcap.QeIdentity:
    """Check Intel's signed SGX QE identity (id ``QE``) and parse it."""
    return dcap.parse_qe_identity(raw, issuer_chain_pem, root_ca, TEE, "QE", id_required=False)


def tcb_status(info: SgxTcbInfo, sgx: dcap.SgxExtension) -> str:
    """The status of the first level (newest first) the PCK's CPUSVN components and PCESVN meet."""
    for level in info.levels:
        meets = all(have >= need for have, need in zip(sgx.sgx_tcb_svns, level.sgx_svns, strict=True))
        if meets and sgx.pce_svn >= level.pce_svn:
            return level.status
    return "NotSupported"


# ---------------------------------------------------------------------------- verifier


class SgxVerifier(dcap.QuoteVerifier[SgxTcbInfo]):
    """Verifies SGX DCAP quotes whose PCK chain ends at the pinned Intel SGX Root CA; the
    CRLs given are checked against every chain."""

    tee = TEE

    def __init__(
        self,
        root_ca: bytes,
        *,
        crls: Iterable[Crl] = (),
        tcb_infos: Iterable[SgxTcbInfo] = (),
        qe_identity: dcap.QeIdentity | None = None,
        clock: Clock = utc_now,
    ) -> None:
        super().__init__(root_ca, tcb_infos, qe_identity=qe_identity, clock=clock)
        self._crls = tuple(crls)

    def verify(self, evidence: bytes, expected_report_data: bytes) -> Claims:
        quote = parse_quote(quote_bytes(evidence))
        checked = self.check_quote(
            quote, SGX_TEE_TYPE, "ISV report signature", quote.body.report_data, expected_report_data
        )
        info, expired = self.collateral(checked)
        status = "unknown"
        if info is not None and not expired and checked.chain.sgx is not None:
            status = tcb_status(info, checked.chain.sgx)
        return claims_of(
            quote, checked.fmspc, status, qe_status=checked.qe_status, collateral_expired=expired
        )

    def _check_chain(self, chain: dcap.PckChain, now: datetime.datetime) -> None:
        self._check_crls(chain, now)

    def _check_crls(self, chain: dcap.PckChain, now: datetime.datetime) -> None:
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
                until = utc_stamp(next_update) if next_update else "none"
                window = f"{utc_stamp(crl.crl.last_update_utc)}..{until}"
                raise DeniedError(
                    f"{what}: expected one current at {utc_stamp(now)}, seen one valid {window}"
                )
            for cert in chain.certs:
                if cert.issuer == crl.issuer and crl.crl.get_revoked_certificate_by_serial_number(
                    cert.serial_number
                ):
                    raise DeniedError(
                        f"{what}: expected {common_name(cert.subject)!r} not revoked, "
                        f"seen serial {cert.serial_number:x} revoked"
                    )


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
