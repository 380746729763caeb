"""Intel TDX: DCAP quote (versions 4 and 5) parser and (pure) verifier.

Evidence (RCAR ``tee`` = ``tdx``) is Trustee's TDX evidence ``{"quote": b64(quote), ...}``
(other fields such as ``cc_eventlog`` are ignored) or the raw quote bytes.

Checks, each named in its error: header (version, ECDSA P-256 attestation key, TDX tee
type, Intel QE vendor); the PCK chain carried in certification data type 5 ends at the
pinned Intel SGX Root CA, each link signed by the next; the QE report is signed by the
PCK key and binds the attestation key (``SHA-256(key || qe_auth_data)``); the quote is
signed by the attestation key over header and body; report data; every certificate of
the PCK chain valid at the clock's time; with Intel's QE identity, the QE is Intel's
(MRSIGNER, ISVPRODID, masked MISCSELECT/ATTRIBUTES; ``qe_tcb_status`` from its ISVSVN);
with TCB info v3, the TDX module is Intel's (MRSIGNERSEAM, SEAMATTRIBUTES) and its
identity's levels give ``tdx_module_tcb_status``.
TCB status needs Intel collateral (TCB info), which this verifier is given or not:
without it, or once it is past its ``nextUpdate`` (``collateral_expired``),
``tcb_status`` is ``unknown`` and policies decide.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import hmac
import itertools
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
from cryptography.hazmat.primitives.asymmetric import ec, utils

from layerseal.attest.bytereader import ByteReader
from layerseal.attest.claims import Claims
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
from layerseal.image import jsonutil

TEE = "tdx"
HEADER_SIZE = 48
TDX_TEE_TYPE = 0x81
ATT_KEY_ECDSA_P256 = 2
INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")
QE_REPORT_SIZE = 384
CERT_DATA_QE_REPORT = 6
CERT_DATA_PCK_CHAIN = 5
_BODY_SIZES = {2: 584, 3: 648}  # v5 body types: TD 1.0 report, TD 1.5 report
TD_ATTRIBUTES_DEBUG = 1
SGX_EXTENSION_OID = "1.2.840.113741.1.13.1"
_SGX_OID_PREFIX = bytes.fromhex("2a864886f84d010d01")  # DER body of 1.2.840.113741.1.13.1
_CHAIN_CACHE_SIZE = 256


@dataclass(frozen=True)
class TdReport:
    """The TD report body inside a quote (TD 1.0 fields, plus TD 1.5 ones when present)."""

    tee_tcb_svn: bytes
    mr_seam: bytes
    mr_signer_seam: bytes
    seam_attributes: bytes
    td_attributes: bytes
    xfam: bytes
    mr_td: bytes
    mr_config_id: bytes
    mr_owner: bytes
    mr_owner_config: bytes
    rtmrs: tuple[bytes, bytes, bytes, bytes]
    report_data: bytes
    tee_tcb_svn2: bytes | None = None
    mr_servicetd: bytes | None = None

    @property
    def debug(self) -> bool:
        return bool(int.from_bytes(self.td_attributes, "little") & TD_ATTRIBUTES_DEBUG)


def _td_report(body: bytes) -> TdReport:
    r = body
    return TdReport(
        tee_tcb_svn=r[0:16],
        mr_seam=r[16:64],
        mr_signer_seam=r[64:112],
        seam_attributes=r[112:120],
        td_attributes=r[120:128],
        xfam=r[128:136],
        mr_td=r[136:184],
        mr_config_id=r[184:232],
        mr_owner=r[232:280],
        mr_owner_config=r[280:328],
        rtmrs=(r[328:376], r[376:424], r[424:472], r[472:520]),
        report_data=r[520:584],
        tee_tcb_svn2=r[584:600] if len(r) >= 648 else None,
        mr_servicetd=r[600:648] if len(r) >= 648 else None,
    )


@dataclass(frozen=True)
class Quote:
    """A parsed DCAP TDX quote; ``signed`` is the byte range the attestation key signs."""

    version: int
    att_key_type: int
    tee_type: int
    qe_vendor_id: bytes
    body_type: int
    td: TdReport
    signed: bytes
    signature: bytes
    attestation_key: bytes
    qe_report: bytes
    qe_report_signature: bytes
    qe_auth_data: bytes
    pck_chain_pem: bytes


def parse_quote(data: bytes) -> Quote:
    """Parse a version 4 or 5 TDX quote with QE-report certification data."""
    if len(data) < HEADER_SIZE:
        raise BadInputError(f"tdx quote size: expected at least {HEADER_SIZE} bytes, seen {len(data)}")
    version, att_key_type, tee_type = struct.unpack_from("<HHI", data, 0)
    if version not in (4, 5):
        raise BadInputError(f"tdx quote version: expected 4 or 5, seen {version}")
    rd = ByteReader(data, "tdx quote", offset=HEADER_SIZE)
    if version == 4:
        body_type = 2
        body = rd.take(_BODY_SIZES[2], "body")
    else:
        body_type = rd.uint(2, "body type")
        size = rd.uint(4, "body size")
        if _BODY_SIZES.get(body_type) != size:
            raise BadInputError(
                f"tdx quote body: expected type 2 (584 bytes) or 3 (648 bytes), seen type {body_type} "
                f"({size} bytes)"
            )
        body = rd.take(size, "body")
    signed = data[: rd.pos]
    sig_len = rd.uint(4, "signature data length")
    sig_end = rd.pos + sig_len
    if sig_end > len(data) or any(data[sig_end:]):
        # quotes are often zero-padded to a buffer size; anything else is unsigned garbage
        raise BadInputError(
            f"tdx quote signature data: expected {sig_len} bytes then zero padding, "
            f"seen {len(data) - rd.pos} bytes"
        )
    rd = ByteReader(data[:sig_end], "tdx quote", offset=rd.pos)
    signature = rd.take(64, "quote signature")
    attestation_key = rd.take(64, "attestation key")
    cert_type = rd.uint(2, "certification data type")
    if cert_type != CERT_DATA_QE_REPORT:
        raise BadInputError(
            f"tdx quote certification data type: expected {CERT_DATA_QE_REPORT} (QE report), seen {cert_type}"
        )
    rd.uint(4, "certification data size")
    qe_report = rd.take(QE_REPORT_SIZE, "QE report")
    qe_report_signature = rd.take(64, "QE report signature")
    qe_auth_data = rd.take(rd.uint(2, "QE auth data size"), "QE auth data")
    inner_type = rd.uint(2, "PCK certification data type")
    if inner_type != CERT_DATA_PCK_CHAIN:
        raise BadInputError(
            f"tdx quote PCK certification data type: expected {CERT_DATA_PCK_CHAIN} (PEM chain), "
            f"seen {inner_type}"
        )
    pck_chain = rd.take(rd.uint(4, "PCK chain size"), "PCK chain")
    return Quote(
        version=version,
        att_key_type=att_key_type,
        tee_type=tee_type,
        qe_vendor_id=data[12:28],
        body_type=body_type,
        td=_td_report(body),
        signed=signed,
        signature=signature,
        attestation_key=attestation_key,
        qe_report=qe_report,
        qe_report_signature=qe_report_signature,
        qe_auth_data=qe_auth_data,
        pck_chain_pem=pck_chain.rstrip(b"\0"),
    )


def _raw_signature(raw: bytes) -> bytes:
    return utils.encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))


def _p256_key(raw: bytes) -> ec.EllipticCurvePublicKey:
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + raw)
    except ValueError as exc:
        raise DeniedError("tdx attestation key: expected a P-256 point, seen an invalid one") from exc


def _der_items(data: bytes, what: str) -> list[tuple[int, bytes]]:
    """The TLVs of a DER sequence body (short and long lengths; no indefinite form)."""
    items: list[tuple[int, bytes]] = []
    i = 0
    while i < len(data):
        if i + 2 > len(data):
            raise BadInputError(f"{what}: expected a DER element, seen a truncated one")
        tag, length = data[i], data[i + 1]
        i += 2
        if length & 0x80:
            n = length & 0x7F
            if n == 0 or n > 3 or i + n > len(data):
                raise BadInputError(f"{what}: expected a DER length, seen an invalid one")
            length = int.from_bytes(data[i : i + n], "big")
            i += n
        if i + length > len(data):
            raise BadInputError(f"{what}: expected {length} bytes of DER content, seen fewer")
        items.append((tag, data[i : i + length]))
        i += length
    return items


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
    outer = _der_items(ext.value.value, what)
    if len(outer) != 1 or outer[0][0] != 0x30:
        raise BadInputError(f"{what}: expected one SEQUENCE, seen {len(outer)} elements")
    fields: dict[bytes, bytes] = {}
    for tag, body in _der_items(outer[0][1], what):
        pair = _der_items(body, what) if tag == 0x30 else []
        if len(pair) == 2 and pair[0][0] == 0x06 and pair[0][1].startswith(_SGX_OID_PREFIX):
            fields[pair[0][1][len(_SGX_OID_PREFIX) :]] = pair[1][1]
    fmspc = fields.get(b"\x04")
    tcb = fields.get(b"\x02")
    if fmspc is None or tcb is None:
        raise BadInputError(f"{what}: expected FMSPC and TCB fields, seen {len(fields)} fields")
    comps: dict[int, int] = {}
    for tag, body in _der_items(tcb, what):
        pair = _der_items(body, what) if tag == 0x30 else []
        # an empty OID names no component: skipped, so the count check below refuses it
        if len(pair) == 2 and pair[0][0] == 0x06 and pair[0][1] and pair[1][0] == 0x02:
            comps[pair[0][1][-1]] = int.from_bytes(pair[1][1], "big")
    if any(i not in comps for i in range(1, 18)):
        raise BadInputError(f"{what}: expected TCB components 1..16 and PCESVN, seen {sorted(comps)}")
    return SgxExtension(fmspc.hex(), tuple(comps[i] for i in range(1, 17)), comps[17])


# ---------------------------------------------------------------------------- TCB collateral


@dataclass(frozen=True)
class TcbLevel:
    sgx_svns: tuple[int, ...]
    pce_svn: int
    tdx_svns: tuple[int, ...]
    status: str


@dataclass(frozen=True)
class ModuleIdentity:
    """A TDX module identity of TCB info v3: ``tdxModule`` (id "") or one of
    ``tdxModuleIdentities`` (``TDX_03``...), with its TCB levels by ISVSVN."""

    id: str
    mrsigner: bytes
    attributes: bytes
    attributes_mask: bytes
    levels: tuple[tuple[int, str], ...] = ()


@dataclass(frozen=True)
class TcbInfo:
    """Intel's TDX TCB info for one FMSPC (signature already checked)."""

    fmspc: str
    levels: tuple[TcbLevel, ...]
    issue_date: str
    next_update: str
    tdx_module: ModuleIdentity | None = None
    module_identities: tuple[ModuleIdentity, ...] = ()


def _signed_member(text: bytes, name: bytes) -> bytes:
    """The exact bytes of a top-level JSON object member, as Intel signed them."""
    key = b'"' + name + b'":'
    start = text.find(key)
    if start < 0:
        raise BadInputError(f"tdx collateral: expected member {name.decode()!r}, seen none")
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
    raise BadInputError(f"tdx collateral: expected a complete {name.decode()!r} object, seen truncated JSON")


def _signed_collateral(raw: bytes, member: str, issuer_chain_pem: bytes, root_ca: bytes, what: str) -> Any:
    """Intel PCS collateral ``{"<member>": {...}, "signature": hex}``: the issuer chain ends at
    the pinned root, each link signed by the next, and the member's exact bytes are signed."""
    root = load_cert(root_ca, "tdx pinned root")
    certs = load_pem_certs(issuer_chain_pem, f"{what} issuer chain")
    if not certs or fingerprint(certs[-1]) != fingerprint(root):
        raise DeniedError(
            f"{what} issuer chain root: expected the pinned {fingerprint(root)}, "
            f"seen {fingerprint(certs[-1]) if certs else 'no certificate'}"
        )
    for child, issuer in itertools.pairwise(certs):
        verify_issued_by(child, issuer, f"{what} chain link {common_name(child.subject)!r}")
    try:
        doc = json.loads(raw)
        sig = bytes.fromhex(doc["signature"])
        body = doc[member]
    except (ValueError, KeyError, TypeError) as exc:
        raise BadInputError(f'{what}: expected {{"{member}": {{...}}, "signature": hex}}') from exc
    signer = certs[0].public_key()
    if not isinstance(signer, ec.EllipticCurvePublicKey) or len(sig) != 64:
        raise DeniedError(f"{what} signature: expected a 64-byte ECDSA P-256 signature, seen another")
    try:
        signer.verify(_raw_signature(sig), _signed_member(raw, member.encode()), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise DeniedError(
            f"{what} signature: expected valid under the TCB signing key, seen invalid"
        ) from exc
    return body


def parse_tcb_info(raw: bytes, issuer_chain_pem: bytes, root_ca: bytes) -> TcbInfo:
    """Check Intel's signed TDX TCB info (chain to the pinned root) and parse its levels."""
    return tcb_info_from_json(_signed_collateral(raw, "tcbInfo", issuer_chain_pem, root_ca, "tdx TCB info"))


@dataclass(frozen=True)
class QeIdentity:
    """Intel's identity of the TDX quoting enclave (PCS ``/tdx/certification/v4/qe/identity``)."""

    miscselect: int
    miscselect_mask: int
    attributes: bytes
    attributes_mask: bytes
    mrsigner: bytes
    isvprodid: int
    levels: tuple[tuple[int, str], ...]  # (ISVSVN at least, status), newest first
    next_update: str


def parse_qe_identity(raw: bytes, issuer_chain_pem: bytes, root_ca: bytes) -> QeIdentity:
    """Check Intel's signed QE identity (chain to the pinned root) and parse it."""
    what = "tdx QE identity"
    body = _signed_collateral(raw, "enclaveIdentity", issuer_chain_pem, root_ca, what)
    try:
        if body.get("id") != "TD_QE":
            raise BadInputError(f"{what} id: expected 'TD_QE', seen {str(body.get('id'))[:10]!r}")
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
        if (len(identity.mrsigner), len(identity.attributes), len(identity.attributes_mask)) != (32, 16, 16):
            raise ValueError("QE identity: expected a 32-byte mrsigner and 16-byte attributes and mask")
        return identity
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BadInputError(f"{what}: expected enclaveIdentity with TD_QE fields and tcbLevels") from exc


def qe_tcb_status(identity: QeIdentity, qe_report: bytes, now: datetime.datetime) -> str:
    """Refuse a QE that is not the one Intel describes; its TCB status otherwise.

    The identity (MRSIGNER, ISVPRODID, masked MISCSELECT and ATTRIBUTES) is checked even
    when the collateral is past its ``nextUpdate``; the status is then ``unknown``.
    """
    miscselect = int.from_bytes(qe_report[16:20], "little")
    attributes, mrsigner = qe_report[48:64], qe_report[128:160]
    isvprodid = int.from_bytes(qe_report[256:258], "little")
    isvsvn = int.from_bytes(qe_report[258:260], "little")
    if not hmac.compare_digest(mrsigner, identity.mrsigner):
        raise DeniedError(
            f"tdx QE identity MRSIGNER: expected Intel's {identity.mrsigner[:8].hex()}..., "
            f"seen {mrsigner[:8].hex()}..."
        )
    if isvprodid != identity.isvprodid:
        raise DeniedError(f"tdx QE identity ISVPRODID: expected {identity.isvprodid}, seen {isvprodid}")
    if miscselect & identity.miscselect_mask != identity.miscselect & identity.miscselect_mask:
        raise DeniedError(
            f"tdx QE identity MISCSELECT: expected {identity.miscselect:#x} under mask "
            f"{identity.miscselect_mask:#x}, seen {miscselect:#x}"
        )
    _check_masked(attributes, identity.attributes, identity.attributes_mask, "tdx QE identity ATTRIBUTES")
    if _past(identity.next_update, now):
        return "unknown"
    for svn, status in identity.levels:
        if isvsvn >= svn:
            return status
    return "NotSupported"


def tcb_info_from_json(info: Any) -> TcbInfo:
    """Parse the ``tcbInfo`` object (no signature check: :func:`parse_tcb_info` does that)."""
    try:
        if info.get("id", "TDX") != "TDX":
            raise BadInputError(f"tdx TCB info id: expected 'TDX', seen {str(info.get('id'))[:10]!r}")
        levels = tuple(
            TcbLevel(
                sgx_svns=tuple(int(c["svn"]) for c in lvl["tcb"]["sgxtcbcomponents"]),
                pce_svn=int(lvl["tcb"]["pcesvn"]),
                tdx_svns=tuple(int(c["svn"]) for c in lvl["tcb"]["tdxtcbcomponents"]),
                status=str(lvl["tcbStatus"]),
            )
            for lvl in info["tcbLevels"]
        )
        module = info.get("tdxModule")
        return TcbInfo(
            str(info["fmspc"]).lower(),
            levels,
            str(info.get("issueDate", "")),
            str(info.get("nextUpdate", "")),
            _module_identity(module, "") if module is not None else None,
            tuple(_module_identity(m, str(m["id"])) for m in info.get("tdxModuleIdentities") or ()),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BadInputError("tdx TCB info: expected tcbInfo with fmspc and tcbLevels") from exc


def _module_identity(obj: Any, ident: str) -> ModuleIdentity:
    identity = ModuleIdentity(
        ident.upper(),
        bytes.fromhex(obj["mrsigner"]),
        bytes.fromhex(obj["attributes"]),
        bytes.fromhex(obj["attributesMask"]),
        tuple((int(lvl["tcb"]["isvsvn"]), str(lvl["tcbStatus"])) for lvl in obj.get("tcbLevels") or ()),
    )
    if (len(identity.mrsigner), len(identity.attributes), len(identity.attributes_mask)) != (48, 8, 8):
        raise ValueError("module identity: expected a 48-byte mrsigner and 8-byte attributes and mask")
    return identity


def tdx_module_status(info: TcbInfo, td: TdReport) -> str:
    """Refuse a TDX module other than the one Intel's TCB info describes; its TCB status otherwise.

    TEE_TCB_SVN[1] is the module's major version and [0] its SVN.  Version 0, or TCB info
    without per-version identities, is checked against ``tdxModule`` alone; otherwise the
    ``TDX_<version>`` identity must exist and its levels give the status.
    """
    if info.tdx_module is None:
        return "unknown"  # TCB info before v3 describes no module
    version, svn = td.tee_tcb_svn[1], td.tee_tcb_svn[0]
    identity, status = info.tdx_module, "UpToDate"
    if version and info.module_identities:
        wanted = f"TDX_{version:02X}"
        found = next((m for m in info.module_identities if m.id == wanted), None)
        if found is None:
            listed = ", ".join(m.id for m in info.module_identities)
            raise DeniedError(f"tdx module identity: expected {wanted} among Intel's ({listed}), seen none")
        identity = found
        status = next((st for level_svn, st in identity.levels if svn >= level_svn), "NotSupported")
    what = f"tdx module {identity.id or 'identity'}"
    if not hmac.compare_digest(td.mr_signer_seam, identity.mrsigner):
        raise DeniedError(
            f"{what} MRSIGNERSEAM: expected {identity.mrsigner[:8].hex()}..., "
            f"seen {td.mr_signer_seam[:8].hex()}..."
        )
    _check_masked(td.seam_attributes, identity.attributes, identity.attributes_mask, f"{what} SEAMATTRIBUTES")
    return status


def _check_masked(seen: bytes, expected: bytes, mask: bytes, what: str) -> None:
    """Intel's attribute rule: *seen* and *expected* agree on every bit *mask* selects
    (lengths are checked when the collateral is parsed)."""
    got = bytes(a & m for a, m in zip(seen, mask, strict=True))
    want = bytes(a & m for a, m in zip(expected, mask, strict=True))
    if got != want:
        raise DeniedError(f"{what}: expected {want.hex()} under mask, seen {got.hex()}")


def tcb_status(info: TcbInfo, sgx: SgxExtension, tee_tcb_svn: bytes) -> str:
    """The status of the first TCB level the platform meets (Intel's ordering: newest first).

    Compares the PCK's SGX component SVNs and PCESVN, then TEE_TCB_SVN byte by byte with the
    level's TDX components; TDX module identities (``tdxModuleIdentities``) are not evaluated.
    A platform below every level is ``NotSupported`` (QVL's "TCB not supported").
    """
    for level in info.levels:
        if len(level.sgx_svns) != 16 or len(level.tdx_svns) != 16:
            continue
        if any(have < need for have, need in zip(sgx.sgx_tcb_svns, level.sgx_svns, strict=True)):
            continue
        if sgx.pce_svn < level.pce_svn:
            continue
        if any(have < need for have, need in zip(tee_tcb_svn, level.tdx_svns, strict=True)):
            continue
        return level.status
    return "NotSupported"


@dataclass(frozen=True)
class _Pck:
    cert: x509.Certificate
    public_key: ec.EllipticCurvePublicKey
    sgx: SgxExtension | None
    validity: Validity


class TdxVerifier:
    """Verifies TDX quotes whose PCK chain ends at the pinned Intel SGX Root CA."""

    tee = TEE

    def __init__(
        self,
        root_ca: bytes,
        tcb_infos: Iterable[TcbInfo] = (),
        *,
        qe_identity: QeIdentity | None = None,
        clock: Clock = utc_now,
    ) -> None:
        """*clock* gives the time at which every certificate of a quote's PCK chain must be
        valid; with *qe_identity*, a QE other than Intel's is refused."""
        self._clock = clock
        self._qe_identity = qe_identity
        self._root = load_cert(root_ca, "tdx pinned root")
        self._root_fingerprint = fingerprint(self._root)
        # signature-checked collateral by FMSPC; an FMSPC without one has status unknown
        self._tcb = {info.fmspc: info for info in tcb_infos}
        self._pcks: OrderedDict[bytes, _Pck] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def root_fingerprint(self) -> str:
        return self._root_fingerprint

    def verify(self, evidence: bytes, expected_report_data: bytes) -> Claims:
        quote = parse_quote(quote_bytes(evidence))
        if quote.att_key_type != ATT_KEY_ECDSA_P256:
            raise DeniedError(
                f"tdx quote attestation key type: expected 2 (ECDSA P-256), seen {quote.att_key_type}"
            )
        if quote.tee_type != TDX_TEE_TYPE:
            raise DeniedError(
                f"tdx quote tee type: expected {TDX_TEE_TYPE:#x} (TDX), seen {quote.tee_type:#x}"
            )
        if quote.qe_vendor_id != INTEL_QE_VENDOR_ID:
            raise DeniedError(
                f"tdx quote QE vendor: expected Intel {INTEL_QE_VENDOR_ID.hex()}, "
                f"seen {quote.qe_vendor_id.hex()}"
            )
        pck = self._pck(quote.pck_chain_pem)
        now = self._clock()
        # checked on every quote, cached chain or not: certificates expire while a broker runs
        pck.validity.check(now, "tdx PCK chain validity")
        try:
            pck.public_key.verify(
                _raw_signature(quote.qe_report_signature), quote.qe_report, ec.ECDSA(hashes.SHA256())
            )
        except (InvalidSignature, ValueError) as exc:
            raise DeniedError(
                "tdx QE report signature: expected valid under the PCK key, seen invalid"
            ) from exc
        qe_status = "unknown"
        if self._qe_identity is not None:
            qe_status = qe_tcb_status(self._qe_identity, quote.qe_report, now)
        binding = hashlib.sha256(quote.attestation_key + quote.qe_auth_data).digest()
        seen = quote.qe_report[320:384]
        if not hmac.compare_digest(seen, binding + bytes(32)):
            raise DeniedError(
                f"tdx QE report data: expected SHA-256(attestation key || auth data) {binding[:8].hex()}..., "
                f"seen {seen[:8].hex()}..."
            )
        try:
            _p256_key(quote.attestation_key).verify(
                _raw_signature(quote.signature), quote.signed, ec.ECDSA(hashes.SHA256())
            )
        except (InvalidSignature, ValueError) as exc:
            raise DeniedError(
                "tdx quote signature: expected valid under the attestation key, seen invalid"
            ) from exc
        if not hmac.compare_digest(quote.td.report_data, expected_report_data):
            raise DeniedError(
                "tdx report data: expected SHA-384 of this session's nonce and tee-pubkey "
                f"({expected_report_data[:8].hex()}...), seen {quote.td.report_data[:8].hex()}..."
            )
        fmspc = pck.sgx.fmspc if pck.sgx is not None else ""
        info = self._tcb.get(fmspc)
        # collateral past its nextUpdate no longer vouches for anything: status unknown, as
        # without collateral, so that a policy asking for UpToDate refuses
        expired = info is not None and collateral_expired(info, now)
        usable = info is not None and not expired and pck.sgx is not None
        status = tcb_status(info, pck.sgx, quote.td.tee_tcb_svn) if usable and info and pck.sgx else "unknown"
        module_status = tdx_module_status(info, quote.td) if usable and info else "unknown"
        if status == "UpToDate" and module_status not in ("UpToDate", "unknown"):
            status = module_status  # an out-of-date module makes the whole TCB so, as Intel's QVL merges them
        return claims_of(
            quote, fmspc, status, collateral_expired=expired, qe_status=qe_status, module_status=module_status
        )

    def _pck(self, chain_pem: bytes) -> _Pck:
        key = hashlib.sha256(chain_pem).digest()
        with self._lock:
            hit = self._pcks.get(key)
            if hit is not None:
                self._pcks.move_to_end(key)
                return hit
        certs, public = verified_pck_chain(chain_pem, self._root, self._root_fingerprint, "tdx")
        leaf = certs[0]
        pck = _Pck(leaf, public, sgx_extension(leaf), Validity.of(certs))
        with self._lock:
            self._pcks[key] = pck
            if len(self._pcks) > _CHAIN_CACHE_SIZE:
                self._pcks.popitem(last=False)
        return pck


def verified_pck_chain(
    chain_pem: bytes, root: x509.Certificate, root_fingerprint: str, tee: str
) -> tuple[list[x509.Certificate], ec.EllipticCurvePublicKey]:
    """The certificates of a PCK chain (PCK, intermediate CA(s), root) and the PCK's P-256 key,
    once the root is the pinned one and every link verifies (shared by tdx and sgx)."""
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


def quote_bytes(evidence: bytes) -> bytes:
    """The quote inside Trustee-style JSON evidence ``{"quote": b64}``, or the raw quote."""
    if evidence.lstrip()[:1] != b"{":
        return evidence
    obj = jsonutil.loads(evidence, "tdx evidence")
    quote = obj.get("quote") if isinstance(obj, dict) else None
    if not isinstance(quote, str):
        raise BadInputError("tdx evidence: expected field 'quote' (base64 string), seen none")
    padded = quote + "=" * (-len(quote) % 4)
    for altchars in (None, b"-_"):
        try:
            return base64.b64decode(padded, altchars=altchars, validate=True)
        except (binascii.Error, ValueError):
            continue
    raise BadInputError("tdx evidence quote: expected base64, seen invalid text")


def _past(next_update: str, now: datetime.datetime) -> bool:
    try:
        when = datetime.datetime.fromisoformat(next_update)
    except ValueError:
        return True  # fail closed: signed collateral without a readable date vouches for nothing
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return now > when


def collateral_expired(info: TcbInfo, now: datetime.datetime) -> bool:
    """True once *now* is past the collateral's ``nextUpdate`` (or when that is unreadable)."""
    return _past(info.next_update, now)


def claims_of(
    quote: Quote,
    fmspc: str,
    status: str,
    *,
    collateral_expired: bool = False,
    qe_status: str = "unknown",
    module_status: str = "unknown",
) -> Claims:
    td = quote.td
    details: dict[str, Any] = {
        "quote_version": quote.version,
        "mr_td": td.mr_td.hex(),
        "rtmr0": td.rtmrs[0].hex(),
        "rtmr1": td.rtmrs[1].hex(),
        "rtmr2": td.rtmrs[2].hex(),
        "rtmr3": td.rtmrs[3].hex(),
        "mr_config_id": td.mr_config_id.hex(),
        "mr_owner": td.mr_owner.hex(),
        "mr_owner_config": td.mr_owner_config.hex(),
        "mr_seam": td.mr_seam.hex(),
        "mr_signer_seam": td.mr_signer_seam.hex(),
        "td_attributes": td.td_attributes.hex(),
        "xfam": td.xfam.hex(),
        "tee_tcb_svn": td.tee_tcb_svn.hex(),
        "report_data": td.report_data.hex(),
        "debug": td.debug,
        "fmspc": fmspc,
        "tcb_status": status,
        "collateral_expired": collateral_expired,
        "qe_tcb_status": qe_status,
        "tdx_module_tcb_status": module_status,
    }
    if td.tee_tcb_svn2 is not None and td.mr_servicetd is not None:
        details["tee_tcb_svn2"] = td.tee_tcb_svn2.hex()
        details["mr_servicetd"] = td.mr_servicetd.hex()
    # TDX has no guest SVN; the TD's version lives in its measurements (MRTD, RTMRs)
    return Claims(
        tee=TEE, measurement=td.mr_td.hex(), svn=0, debug=td.debug, details=MappingProxyType(details)
    )
