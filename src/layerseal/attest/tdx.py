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
import itertools
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from layerseal.attest import dcap
from layerseal.attest.claims import Claims
from layerseal.errors import BadInputError, DeniedError

TEE = "tdx"
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


# the TD report body of a quote, in order: (field, size); TD 1.5 bodies (648 bytes) end
# with the last two, TD 1.0 ones (584 bytes) stop before them
_TD_LAYOUT = (
    ("tee_tcb_svn", 16), ("mr_seam", 48), ("mr_signer_seam", 48), ("seam_attributes", 8),
    ("td_attributes", 8), ("xfam", 8), ("mr_td", 48), ("mr_config_id", 48), ("mr_owner", 48),
    ("mr_owner_config", 48), ("rtmr0", 48), ("rtmr1", 48), ("rtmr2", 48), ("rtmr3", 48),
    ("report_data", 64), ("tee_tcb_svn2", 16), ("mr_servicetd", 48),
)  # fmt: skip
_TD_SLICES = tuple(
    slice(end - size, end)
    for end, (_, size) in zip(itertools.accumulate(n for _, n in _TD_LAYOUT), _TD_LAYOUT, strict=True)
)


def _td_report(body: bytes) -> TdReport:
    # positional, in TdReport's field order: ten fields, the four RTMRs, then the rest
    values = [body[where] for where in _TD_SLICES if where.stop <= len(body)]
    args: list[Any] = [*values[:10], tuple(values[10:14]), *values[14:]]
    return TdReport(*args)


@dataclass(frozen=True)
class Quote(dcap.DcapQuote):
    """A parsed DCAP TDX quote."""

    body_type: int
    td: TdReport


def parse_quote(data: bytes) -> Quote:
    """Parse a version 4 or 5 TDX quote with QE-report certification data."""
    fields, rd = dcap.header(data, TEE, (4, 5))
    if fields["version"] == 4:
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
    signature_data = dcap.signature_data(data, rd, "quote signature", wrapped=True)
    return Quote(**fields, body_type=body_type, td=_td_report(body), **signature_data)


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


class TdxVerifier(dcap.QuoteVerifier[TcbInfo]):
    """Verifies TDX quotes whose PCK chain ends at the pinned Intel SGX Root CA."""

    tee = TEE

    def verify(self, evidence: bytes, expected_report_data: bytes) -> Claims:
        quote = parse_quote(quote_bytes(evidence))
        checked = self.check_quote(
            quote, TDX_TEE_TYPE, "quote signature", quote.td.report_data, expected_report_data
        )
        sgx = checked.chain.sgx
        info, expired = self.collateral(checked)
        usable = info is not None and not expired and sgx is not None
        status = tcb_status(info, sgx, quote.td.tee_tcb_svn) if usable and info and sgx else "unknown"
        module_status = tdx_module_status(info, quote.td) if usable and info else "unknown"
        if status == "UpToDate" and module_status not in ("UpToDate", "unknown"):
            status = module_status  # an out-of-date module makes the whole TCB so, as Intel's QVL merges them
        return claims_of(
            quote,
            checked.fmspc,
            status,
            collateral_expired=expired,
            qe_status=checked.qe_status,
            module_status=module_status,
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
