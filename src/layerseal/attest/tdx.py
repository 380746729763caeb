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

import datetime
import hmac
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from layerseal.attest import dcap
from layerseal.attest.binding import check_report_data
from layerseal.attest.bytereader import ByteReader
from layerseal.attest.claims import Claims
from layerseal.attest.x509util import Clock, utc_now
from layerseal.errors import BadInputError, DeniedError

TEE = "tdx"
HEADER_SIZE = 48
TDX_TEE_TYPE = 0x81
_BODY_SIZES = {2: 584, 3: 648}  # v5 body types: TD 1.0 report, TD 1.5 report
TD_ATTRIBUTES_DEBUG = 1


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
class Quote(dcap.DcapQuote):
    """A parsed DCAP TDX quote."""

    body_type: int
    td: TdReport


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
    return Quote(
        version=version,
        att_key_type=att_key_type,
        tee_type=tee_type,
        qe_vendor_id=data[12:28],
        body_type=body_type,
        td=_td_report(body),
        **dcap.signature_data(data, rd, "quote signature", wrapped=True),
    )


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


def parse_tcb_info(raw: bytes, issuer_chain_pem: bytes, root_ca: bytes) -> TcbInfo:
    """Check Intel's signed TDX TCB info (chain to the pinned root) and parse its levels."""
    return tcb_info_from_json(
        dcap.signed_collateral(raw, "tcbInfo", issuer_chain_pem, root_ca, "tdx TCB info")
    )


def parse_qe_identity(raw: bytes, issuer_chain_pem: bytes, root_ca: bytes) -> dcap.QeIdentity:
    """Check Intel's signed TDX QE identity (id ``TD_QE``; chain to the pinned root) and parse it."""
    return dcap.parse_qe_identity(raw, issuer_chain_pem, root_ca, TEE, "TD_QE", id_required=True)


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
    dcap.check_masked(
        td.seam_attributes, identity.attributes, identity.attributes_mask, f"{what} SEAMATTRIBUTES"
    )
    return status


def tcb_status(info: TcbInfo, sgx: dcap.SgxExtension, tee_tcb_svn: bytes) -> str:
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


class TdxVerifier:
    """Verifies TDX quotes whose PCK chain ends at the pinned Intel SGX Root CA."""

    tee = TEE

    def __init__(
        self,
        root_ca: bytes,
        tcb_infos: Iterable[TcbInfo] = (),
        *,
        qe_identity: dcap.QeIdentity | None = None,
        clock: Clock = utc_now,
    ) -> None:
        """*clock* gives the time at which every certificate of a quote's PCK chain must be
        valid; with *qe_identity*, a QE other than Intel's is refused."""
        self._clock = clock
        self._qe_identity = qe_identity
        self._pcks = dcap.PckChains(root_ca, TEE)
        # signature-checked collateral by FMSPC; an FMSPC without one has status unknown
        self._tcb = {info.fmspc: info for info in tcb_infos}

    @property
    def root_fingerprint(self) -> str:
        return self._pcks.root_fingerprint

    def verify(self, evidence: bytes, expected_report_data: bytes) -> Claims:
        quote = parse_quote(quote_bytes(evidence))
        dcap.check_header(quote, TEE, TDX_TEE_TYPE)
        pck = self._pcks.get(quote.pck_chain_pem)
        now = self._clock()
        # checked on every quote, cached chain or not: certificates expire while a broker runs
        pck.validity.check(now, "tdx PCK chain validity")
        qe_status = dcap.check_signatures(
            quote, pck.public_key, TEE, "quote signature", self._qe_identity, now
        )
        check_report_data("tdx report data", quote.td.report_data, expected_report_data)
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


def quote_bytes(evidence: bytes) -> bytes:
    """The quote inside Trustee-style JSON evidence ``{"quote": b64}``, or the raw quote."""
    return dcap.quote_bytes(evidence, TEE)


def collateral_expired(info: TcbInfo, now: datetime.datetime) -> bool:
    """True once *now* is past the collateral's ``nextUpdate`` (or when that is unreadable)."""
    return dcap.past(info.next_update, now)


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
