"""Azure confidential VMs (SEV-SNP behind the paravisor's vTPM): evidence parser and pure verifier.

Evidence (RCAR ``tee`` = ``az-snp-vtpm``) is Trustee's az-snp-vtpm evidence, versions 1 and 2::

    {"version": 1 | 2,
     "tpm_quote": {"signature": hex, "message": hex TPMS_ATTEST, "pcrs": [hex SHA-256 PCR, ...]},
     "hcl_report": base64url(HCL report), "vcek": base64url(VCEK DER)}

The HCL report is the paravisor's ``HCLA`` header (0x20 bytes), the SNP report (1184 bytes),
then IGVM request data (five little-endian u32: data size, version, report type 2 = SNP,
hash type 1 = SHA-256, var-data size) and the var data: JSON holding the vTPM attestation
key (``keys``, kid ``HCLAkPub``) and, from version 2, ``user-data`` (the report data, hex).

The chain of trust and the checks, each named in its error: the SNP report verifies under
the VCEK and AMD's pinned chain (:class:`layerseal.attest.snp.SnpVerifier`) and was issued
at VMPL 0 (the paravisor's level, not the guest's); its report data starts with SHA-256 of
the var data; the attestation key there signed the TPM quote (RSASSA-PKCS1-v1_5 SHA-256);
the quote's PCR digest is SHA-256 of the PCR values sent; its extraData, and from version 2
the var data's user-data, carry the expected report data.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from layerseal.attest import snp
from layerseal.attest.binding import REPORT_DATA_SIZE  # 64 in SNP too; TPM2B_DATA holds at most 64
from layerseal.attest.bytereader import ByteReader
from layerseal.attest.claims import Claims
from layerseal.attest.x509util import load_cert
from layerseal.errors import BadInputError, DeniedError, LayersealError
from layerseal.wire.b64 import b64decode_either
from layerseal.wire.jsonload import loads_object

TEE = "az-snp-vtpm"
VERSIONS = (1, 2)

HCL_SIGNATURE = b"HCLA"
HCL_HEADER_SIZE = 0x20
HCL_REQUEST_OFFSET = HCL_HEADER_SIZE + snp.REPORT_SIZE  # the hw report slot is sized for SNP
HCL_VAR_DATA_OFFSET = HCL_REQUEST_OFFSET + 20
HCL_REPORT_TYPE_SNP = 2
HCL_HASH_SHA256 = 1
HCL_VMPL = 0
AK_KID = "HCLAkPub"
MIN_AK_BITS = 2048

TPM_GENERATED_VALUE = 0xFF544347
TPM_ST_ATTEST_QUOTE = 0x8018
TPM_ALG_SHA256 = 0x000B
PCR_SIZE = 32
MAX_PCRS = 24
MAX_QUOTE_MESSAGE = 1024
MAX_SIGNATURE = 1024
_MAX_EVIDENCE = 64 * 1024


# ---------------------------------------------------------------------------- TPM quote


@dataclass(frozen=True)
class PcrSelection:
    hash_alg: int
    indices: tuple[int, ...]


@dataclass(frozen=True)
class Attest:
    """A TPMS_ATTEST of type quote (TPM 2.0 Part 2, "TPMS_ATTEST", "TPMS_QUOTE_INFO")."""

    qualified_signer: bytes
    extra_data: bytes
    clock: int
    reset_count: int
    restart_count: int
    safe: bool
    firmware_version: int
    selections: tuple[PcrSelection, ...]
    pcr_digest: bytes


def parse_attest(message: bytes, tee: str = TEE) -> Attest:
    """Parse the quote's TPMS_ATTEST; every byte must belong to a field."""
    r = ByteReader(message, f"{tee} tpm quote", byteorder="big")
    magic = r.uint(4, "magic")
    if magic != TPM_GENERATED_VALUE:
        raise BadInputError(f"{tee} tpm quote magic: expected {TPM_GENERATED_VALUE:#x}, seen {magic:#x}")
    kind = r.uint(2, "type")
    if kind != TPM_ST_ATTEST_QUOTE:
        raise BadInputError(
            f"{tee} tpm quote type: expected {TPM_ST_ATTEST_QUOTE:#x} (quote), seen {kind:#x}"
        )
    signer = r.sized("qualifiedSigner", 2 + 64)
    extra = r.sized("extraData", REPORT_DATA_SIZE)
    clock = r.uint(8, "clockInfo.clock")
    reset_count = r.uint(4, "clockInfo.resetCount")
    restart_count = r.uint(4, "clockInfo.restartCount")
    safe = r.uint(1, "clockInfo.safe")
    firmware = r.uint(8, "firmwareVersion")
    count = r.uint(4, "pcrSelect.count")
    if count > 16:
        raise BadInputError(f"{tee} tpm quote pcrSelect.count: expected at most 16, seen {count}")
    selections = []
    for i in range(count):
        alg = r.uint(2, f"pcrSelect[{i}].hash")
        size = r.uint(1, f"pcrSelect[{i}].sizeofSelect")
        if size > 4:
            raise BadInputError(
                f"{tee} tpm quote pcrSelect[{i}].sizeofSelect: expected at most 4, seen {size}"
            )
        bitmap = r.take(size, f"pcrSelect[{i}].pcrSelect")
        # bit j of byte k selects PCR 8k+j; the TPM reports values in this order
        indices = tuple(8 * k + j for k, byte in enumerate(bitmap) for j in range(8) if byte >> j & 1)
        selections.append(PcrSelection(alg, indices))
    digest = r.sized("pcrDigest", 64)
    if r.pos != len(message):
        raise BadInputError(
            f"{tee} tpm quote message: expected {r.pos} bytes (one TPMS_ATTEST), seen {len(message)}"
        )
    return Attest(
        qualified_signer=signer,
        extra_data=extra,
        clock=clock,
        reset_count=reset_count,
        restart_count=restart_count,
        safe=bool(safe),
        firmware_version=firmware,
        selections=tuple(selections),
        pcr_digest=digest,
    )


def pcr_digest_of(pcrs: tuple[bytes, ...]) -> bytes:
    """The quote's pcrDigest for these SHA-256 PCR values: SHA-256 of their concatenation."""
    return hashlib.sha256(b"".join(pcrs)).digest()


# ---------------------------------------------------------------------------- HCL report


@dataclass(frozen=True)
class HclReport:
    """The paravisor's report: the hardware report (SNP report, or TD report then padding)
    and the var data its report data binds."""

    raw: bytes
    hw_report: bytes
    var_data: bytes


def parse_hcl_report(
    raw: bytes, tee: str = TEE, report_type: int = HCL_REPORT_TYPE_SNP, type_name: str = "SNP"
) -> HclReport:
    if len(raw) < HCL_VAR_DATA_OFFSET:
        raise BadInputError(
            f"{tee} hcl report size: expected at least {HCL_VAR_DATA_OFFSET} bytes, seen {len(raw)}"
        )
    if raw[:4] != HCL_SIGNATURE:
        raise BadInputError(f"{tee} hcl report signature: expected {HCL_SIGNATURE!r}, seen {raw[:4]!r}")
    _size, _version, seen_type, hash_type, var_size = struct.unpack_from("<5I", raw, HCL_REQUEST_OFFSET)
    if seen_type != report_type:
        raise BadInputError(f"{tee} hcl report type: expected {report_type} ({type_name}), seen {seen_type}")
    if hash_type != HCL_HASH_SHA256:
        raise BadInputError(
            f"{tee} hcl report hash type: expected {HCL_HASH_SHA256} (SHA-256), seen {hash_type}"
        )
    end = HCL_VAR_DATA_OFFSET + var_size
    if end > len(raw):
        raise BadInputError(
            f"{tee} hcl var data size: expected at most {len(raw) - HCL_VAR_DATA_OFFSET}, seen {var_size}"
        )
    return HclReport(
        raw=raw, hw_report=raw[HCL_HEADER_SIZE:HCL_REQUEST_OFFSET], var_data=raw[HCL_VAR_DATA_OFFSET:end]
    )


def _b64url(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise BadInputError(f"{what}: expected a base64url string, seen {type(value).__name__}")
    return b64decode_either(value, what)


def _hex(value: object, what: str, limit: int) -> bytes:
    if not isinstance(value, str) or len(value) > 2 * limit:
        raise BadInputError(
            f"{what}: expected a hex string of at most {limit} bytes, seen {type(value).__name__}"
        )
    try:
        return bytes.fromhex(value)
    except ValueError as exc:
        raise BadInputError(f"{what}: expected hex, seen invalid text") from exc


def bound_var_data(tee: str, hcl: HclReport, report_data: bytes, bound_by: str) -> dict[str, Any]:
    """The var data's JSON, once *report_data* (the hardware report's, named *bound_by*)
    starts with its SHA-256: this binds the attestation key in it."""
    var_hash = hashlib.sha256(hcl.var_data).digest()
    if not hmac.compare_digest(report_data[:32], var_hash):
        raise DeniedError(
            f"{tee} hcl var data binding: expected SHA-256 {report_data[:8].hex()}... "
            f"({bound_by}), seen {var_hash[:8].hex()}..."
        )
    return loads_object(hcl.var_data, f"{tee} hcl var data")


def _jwk_int(jwk: dict[str, Any], name: str, tee: str) -> int:
    return int.from_bytes(_b64url(jwk.get(name), f"{tee} hcl {AK_KID} {name}"), "big")


def attestation_key(var_data: dict[str, Any], tee: str = TEE) -> rsa.RSAPublicKey:
    """The vTPM attestation key: the RSA JWK with kid ``HCLAkPub`` in the var data's ``keys``."""
    keys = var_data.get("keys")
    found = (
        [k for k in keys if isinstance(k, dict) and k.get("kid") == AK_KID] if isinstance(keys, list) else []
    )
    if len(found) != 1:
        raise BadInputError(
            f"{tee} hcl {AK_KID}: expected one key with kid {AK_KID!r} in 'keys', seen {len(found)}"
        )
    jwk = found[0]
    if jwk.get("kty") != "RSA":
        raise BadInputError(f"{tee} hcl {AK_KID} kty: expected 'RSA', seen {str(jwk.get('kty'))[:20]!r}")
    try:
        key = rsa.RSAPublicNumbers(_jwk_int(jwk, "e", tee), _jwk_int(jwk, "n", tee)).public_key()
    except ValueError as exc:
        raise BadInputError(f"{tee} hcl {AK_KID}: expected an RSA public key, seen invalid numbers") from exc
    if key.key_size < MIN_AK_BITS:
        raise DeniedError(
            f"{tee} hcl {AK_KID} size: expected at least {MIN_AK_BITS} bits, seen {key.key_size}"
        )
    return key


def _regularized(data: bytes) -> bytes:
    # Trustee hands the az-snp-vtpm attester the bare SHA-384 (48 bytes) for the quote and
    # pads it to 64 for user-data; layerseal's expected report data is the padded form
    return data.ljust(REPORT_DATA_SIZE, b"\0")


# ---------------------------------------------------------------------------- evidence


@dataclass(frozen=True)
class TpmQuote:
    """The evidence's ``tpm_quote``: the signed TPMS_ATTEST and the PCR values it digests."""

    signature: bytes
    message: bytes
    pcrs: tuple[bytes, ...]


def parse_tpm_quote(obj: dict[str, Any], tee: str = TEE) -> TpmQuote:
    quote = obj.get("tpm_quote")
    if not isinstance(quote, dict):
        raise BadInputError(
            f"{tee} evidence tpm_quote: expected an object with signature/message/pcrs, seen none"
        )
    pcrs = quote.get("pcrs")
    if not isinstance(pcrs, list) or len(pcrs) > MAX_PCRS:
        raise BadInputError(
            f"{tee} evidence tpm_quote.pcrs: expected an array of at most {MAX_PCRS} hex strings"
        )
    values = tuple(_hex(p, f"{tee} evidence tpm_quote.pcrs[{i}]", PCR_SIZE) for i, p in enumerate(pcrs))
    for i, value in enumerate(values):
        if len(value) != PCR_SIZE:
            raise BadInputError(
                f"{tee} evidence tpm_quote.pcrs[{i}]: expected {PCR_SIZE} bytes, seen {len(value)}"
            )
    return TpmQuote(
        signature=_hex(quote.get("signature"), f"{tee} evidence tpm_quote.signature", MAX_SIGNATURE),
        message=_hex(quote.get("message"), f"{tee} evidence tpm_quote.message", MAX_QUOTE_MESSAGE),
        pcrs=values,
    )


@dataclass(frozen=True)
class Evidence:
    """Azure vTPM evidence; *hardware* is the hardware's own: the VCEK (DER) beside an SNP
    report, the TD quote beside a TD report."""

    version: int
    tpm: TpmQuote
    hcl_report: bytes
    hardware: bytes


def evidence_object(evidence: bytes, tee: str = TEE) -> dict[str, Any]:
    if len(evidence) > _MAX_EVIDENCE:
        raise BadInputError(f"{tee} evidence: expected at most {_MAX_EVIDENCE} bytes, seen {len(evidence)}")
    return loads_object(evidence, f"{tee} evidence")


def parse_evidence(evidence: bytes) -> Evidence:
    obj = evidence_object(evidence)
    version = obj.get("version")
    if isinstance(version, bool) or version not in VERSIONS:
        raise BadInputError(
            f"{TEE} evidence version: expected one of {list(VERSIONS)}, seen {str(version)[:20]!r}"
        )
    return Evidence(
        version=int(version),
        tpm=parse_tpm_quote(obj),
        hcl_report=_b64url(obj.get("hcl_report"), f"{TEE} evidence hcl_report"),
        hardware=_b64url(obj.get("vcek"), f"{TEE} evidence vcek"),
    )


def check_tpm_quote(
    tee: str,
    ak: rsa.RSAPublicKey,
    tpm: TpmQuote,
    var_data: dict[str, Any],
    expected_report_data: bytes,
    *,
    user_data: bool,
) -> Attest:
    """The attestation key signed the TPM quote, whose PCR digest is that of the PCR values
    sent, and the quote (and with *user_data* the var data's ``user-data``) carries the
    expected report data."""
    # the signature before the parser: a forged message is refused as unsigned, not probed
    try:
        ak.verify(tpm.signature, tpm.message, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature as exc:
        raise DeniedError(
            f"{tee} tpm quote signature: expected RSASSA-PKCS1-v1_5 SHA-256 by {AK_KID} "
            f"{_key_id(ak)[:23]}..., seen invalid"
        ) from exc
    attest = parse_attest(tpm.message, tee)
    check_pcrs(attest, tpm.pcrs, tee)
    expected = _regularized(expected_report_data)
    if not hmac.compare_digest(_regularized(attest.extra_data), expected):
        raise DeniedError(
            f"{tee} tpm quote extraData: expected the report data {expected[:8].hex()}..., "
            f"seen {attest.extra_data[:8].hex()}..."
        )
    if user_data:
        seen = _hex(var_data.get("user-data"), f"{tee} hcl user-data", REPORT_DATA_SIZE)
        if not hmac.compare_digest(_regularized(seen), expected):
            raise DeniedError(
                f"{tee} hcl user-data: expected the report data {expected[:8].hex()}..., "
                f"seen {seen[:8].hex()}..."
            )
    return attest


def check_pcrs(attest: Attest, pcrs: tuple[bytes, ...], tee: str = TEE) -> None:
    # the evidence carries one bank (SHA-256); a quote over more banks digests values not sent
    banks = [s.hash_alg for s in attest.selections]
    if banks != [TPM_ALG_SHA256]:
        raise DeniedError(
            f"{tee} tpm quote pcr selection: expected one SHA-256 bank ({TPM_ALG_SHA256:#06x}), "
            f"seen {[f'{b:#06x}' for b in banks]}"
        )
    selected = attest.selections[0].indices
    if len(selected) != len(pcrs):
        raise DeniedError(
            f"{tee} tpm quote pcrs: expected {len(selected)} values (the PCRs selected), seen {len(pcrs)}"
        )
    digest = pcr_digest_of(pcrs)
    if not hmac.compare_digest(digest, attest.pcr_digest):
        raise DeniedError(
            f"{tee} tpm quote pcr digest: expected {attest.pcr_digest[:8].hex()}... (signed), "
            f"seen SHA-256 of the pcrs {digest[:8].hex()}..."
        )


def vtpm_claims(
    tee: str,
    hw_claims: Claims,
    hw: str,
    attest: Attest,
    tpm: TpmQuote,
    ak: rsa.RSAPublicKey,
    extra: Mapping[str, Any] = MappingProxyType({}),
) -> Claims:
    """The hardware's claims under *tee*, with what both Azure verifiers add: report_data
    names what the evidence binds (the quote's, as Trustee's claims do; the hardware's moves
    to ``<hw>_report_data``), the PCRs, the attestation key, then *extra*."""
    details = dict(hw_claims.details)
    details[f"{hw}_report_data"] = details["report_data"]
    details["report_data"] = attest.extra_data.hex()
    indices = attest.selections[0].indices
    # "pcr07", not "7": policy claim paths refuse segments starting with a digit
    details["pcrs"] = {f"pcr{i:02d}": value.hex() for i, value in zip(indices, tpm.pcrs, strict=True)}
    details["ak"] = _key_id(ak)
    details.update(extra)
    return Claims(
        tee=tee,
        measurement=hw_claims.measurement,
        svn=hw_claims.svn,
        debug=hw_claims.debug,
        details=MappingProxyType(details),
    )


# ---------------------------------------------------------------------------- verifier


class AzSnpVtpmVerifier:
    """Verifies Azure SNP vTPM evidence; the SNP part through an :class:`snp.SnpVerifier`."""

    tee = TEE

    def __init__(self, snp_verifier: snp.SnpVerifier) -> None:
        # shared with the plain SNP verifier, so VCEK chains checked once serve both
        self._snp = snp_verifier

    def verify(self, evidence: bytes, expected_report_data: bytes) -> Claims:
        if len(expected_report_data) > REPORT_DATA_SIZE:
            raise BadInputError(
                f"{TEE} expected report data: expected at most {REPORT_DATA_SIZE} bytes, "
                f"seen {len(expected_report_data)}"
            )
        ev = parse_evidence(evidence)
        hcl = parse_hcl_report(ev.hcl_report)

        # 1. the SNP report is genuine and came from the paravisor (VMPL 0)
        vcek = load_cert(ev.hardware, f"{TEE} evidence vcek")
        try:
            report, vek = self._snp.verify_report(hcl.hw_report, (("VCEK", vcek),))
        except LayersealError as exc:
            raise type(exc)(f"{TEE} {exc}") from exc
        if report.vmpl != HCL_VMPL:
            raise DeniedError(
                f"{TEE} snp report vmpl: expected {HCL_VMPL} (the paravisor), seen {report.vmpl}"
            )

        # 2. the report data binds the var data, hence the attestation key in it
        var_data = bound_var_data(TEE, hcl, report.report_data, "snp report data")
        ak = attestation_key(var_data)

        # 3. the attestation key signed the quote over the PCRs and (from version 2 also the
        #    var data's user-data) the report data
        attest = check_tpm_quote(TEE, ak, ev.tpm, var_data, expected_report_data, user_data=ev.version >= 2)
        return _claims(ev, attest, var_data, ak, snp.claims_of(report, vek))


def _key_id(key: rsa.RSAPublicKey) -> str:
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def _claims(
    ev: Evidence, attest: Attest, var_data: dict[str, Any], ak: rsa.RSAPublicKey, snp_claims: Claims
) -> Claims:
    details: dict[str, Any] = {
        "tpm_quote": {
            "clock": attest.clock,
            "reset_count": attest.reset_count,
            "restart_count": attest.restart_count,
            "safe": attest.safe,
            # hex: a u64 may not fit the signed 64-bit integers of policies
            "firmware_version": f"{attest.firmware_version:016x}",
            "qualified_signer": attest.qualified_signer.hex(),
        }
    }
    config = var_data.get("vm-configuration")
    if isinstance(config, dict):
        details["vm_configuration"] = {
            str(k): v for k, v in config.items() if isinstance(v, (bool, int, str)) and len(str(k)) <= 64
        }
    details["evidence_version"] = ev.version
    return vtpm_claims(TEE, snp_claims, "snp", attest, ev.tpm, ak, details)
