"""AMD SEV-SNP: attestation report parser and (pure) verifier.

Evidence (RCAR ``tee`` = ``snp``) is a JSON object modelled on Trustee's SNP evidence::

    {"report": b64(1184-byte ATTESTATION_REPORT),
     "cert_chain": [{"cert_type": "VCEK"|"VLEK"|"ASK"|"ASVK"|"ARK", "data": b64 DER | PEM}, ...]}

``attestation_report`` is accepted for ``report``, ``data`` may be a byte array (Trustee's
serde form), and a chain entry may be a bare PEM string; the raw 1184 report bytes alone
are accepted too.  CoCo guests send ``attestation_report`` as the sev crate's JSON object
of named fields: :mod:`layerseal.attest.snp_json` rebuilds its bytes (certificate-table
entries without a certificate, CRL and OTHER, are skipped).  The VCEK/VLEK comes from the
evidence, else from VCEKs handed to the verifier (an offline cache read by
:mod:`layerseal.attest.trust`); nothing is fetched.

Checks, each named in its error: report layout and version; the AMD chain for the
processor generation (ARK self-signed and equal to the pinned ARK, ASK/ASVK signed by the
ARK, VCEK/VLEK signed by ASK/ASVK); the VCEK/VLEK TCB extensions against ``reported_tcb``
and the VCEK hwID against ``chip_id``; the report's ECDSA P-384 signature; report data.
Offsets are those of the SEV-SNP ABI specification (table "ATTESTATION_REPORT structure").
"""

from __future__ import annotations

import base64
import datetime
import hmac
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

from layerseal.attest import snp_json
from layerseal.attest.binding import check_report_data
from layerseal.attest.claims import Claims
from layerseal.attest.x509util import (
    Clock,
    Validity,
    common_name,
    fingerprint,
    load_cert,
    load_crl,
    load_pem_certs,
    utc_now,
    verify_issued_by,
    verify_signature,
)
from layerseal.errors import BadInputError, DeniedError
from layerseal.wire.b64 import b64decode_either
from layerseal.wire.jsonload import loads_object

TEE = "snp"
REPORT_SIZE = 0x4A0
SIGNED_SIZE = 0x2A0
GENERATIONS = ("milan", "genoa", "turin")
POLICY_DEBUG = 1 << 19

OID_BL_SPL = "1.3.6.1.4.1.3704.1.3.1"
OID_TEE_SPL = "1.3.6.1.4.1.3704.1.3.2"
OID_SNP_SPL = "1.3.6.1.4.1.3704.1.3.3"
OID_UCODE_SPL = "1.3.6.1.4.1.3704.1.3.8"
OID_FMC_SPL = "1.3.6.1.4.1.3704.1.3.9"
OID_HW_ID = "1.3.6.1.4.1.3704.1.4"
OID_PRODUCT_NAME = "1.3.6.1.4.1.3704.1.2"

_SIGNING_KEYS = {0: "vcek", 1: "vlek"}
_VEK_CACHE_SIZE = 256


# ---------------------------------------------------------------------------- report


@dataclass(frozen=True)
class Tcb:
    """A decoded TCB_VERSION; ``fmc`` exists on Turin only."""

    bootloader: int
    tee: int
    snp: int
    microcode: int
    fmc: int | None = None

    def as_dict(self) -> dict[str, int]:
        out = {"bootloader": self.bootloader, "tee": self.tee, "snp": self.snp, "microcode": self.microcode}
        if self.fmc is not None:
            out["fmc"] = self.fmc
        return out


def decode_tcb(raw: bytes, generation: str) -> Tcb:
    """TCB_VERSION bytes: Milan/Genoa ``bl tee 0 0 0 0 snp ucode``; Turin ``fmc bl tee snp 0 0 0 ucode``."""
    if generation == "turin":
        return Tcb(bootloader=raw[1], tee=raw[2], snp=raw[3], microcode=raw[7], fmc=raw[0])
    return Tcb(bootloader=raw[0], tee=raw[1], snp=raw[6], microcode=raw[7])


@dataclass(frozen=True)
class Report:
    """The fields of an ATTESTATION_REPORT layerseal uses (raw bytes kept for the signature)."""

    raw: bytes
    version: int
    guest_svn: int
    policy: int
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    current_tcb: bytes
    platform_info: int
    key_info: int
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    reported_tcb: bytes
    cpuid: tuple[int, int, int]
    chip_id: bytes
    committed_tcb: bytes
    launch_tcb: bytes
    signature_r: int
    signature_s: int

    @property
    def signing_key(self) -> str:
        kind = (self.key_info >> 2) & 0x7
        name = _SIGNING_KEYS.get(kind)
        if name is None:
            raise DeniedError(f"snp report signing key: expected 0 (VCEK) or 1 (VLEK), seen {kind}")
        return name

    @property
    def chip_id_masked(self) -> bool:
        return bool(self.key_info & 0x2)


def parse_report(raw: bytes) -> Report:
    """Parse a 1184-byte report (versions 2 and later)."""
    if len(raw) != REPORT_SIZE:
        raise BadInputError(f"snp report size: expected {REPORT_SIZE} bytes, seen {len(raw)}")
    version, guest_svn, policy = struct.unpack_from("<IIQ", raw, 0x00)
    if version < 2:
        raise BadInputError(f"snp report version: expected 2 or later, seen {version}")
    vmpl, signature_algo = struct.unpack_from("<II", raw, 0x30)
    (platform_info,) = struct.unpack_from("<Q", raw, 0x40)
    (key_info,) = struct.unpack_from("<I", raw, 0x48)
    return Report(
        raw=raw,
        version=version,
        guest_svn=guest_svn,
        policy=policy,
        family_id=raw[0x10:0x20],
        image_id=raw[0x20:0x30],
        vmpl=vmpl,
        signature_algo=signature_algo,
        current_tcb=raw[0x38:0x40],
        platform_info=platform_info,
        key_info=key_info,
        report_data=raw[0x50:0x90],
        measurement=raw[0x90:0xC0],
        host_data=raw[0xC0:0xE0],
        id_key_digest=raw[0xE0:0x110],
        author_key_digest=raw[0x110:0x140],
        report_id=raw[0x140:0x160],
        reported_tcb=raw[0x180:0x188],
        # CPUID family/model/stepping exist from version 3; zero before
        cpuid=(raw[0x188], raw[0x189], raw[0x18A]),
        chip_id=raw[0x1A0:0x1E0],
        committed_tcb=raw[0x1E0:0x1E8],
        launch_tcb=raw[0x1F0:0x1F8],
        signature_r=int.from_bytes(raw[0x2A0:0x2E8], "little"),
        signature_s=int.from_bytes(raw[0x2E8:0x330], "little"),
    )


def generation_of_cpuid(family: int, model: int) -> str | None:
    """The processor generation a version-3+ report's CPUID names (None when unknown)."""
    if family == 0x19 and model <= 0x0F:
        return "milan"
    if family == 0x19 and (0x10 <= model <= 0x1F or 0xA0 <= model <= 0xAF):
        return "genoa"
    if family == 0x1A and model <= 0x11:
        return "turin"
    return None


# ---------------------------------------------------------------------------- AMD chain


@dataclass(frozen=True)
class AmdChain:
    """AMD's pinned certificates for one processor generation."""

    generation: str
    ark: x509.Certificate
    ask: x509.Certificate
    asvk: x509.Certificate | None

    @property
    def ark_fingerprint(self) -> str:
        return fingerprint(self.ark)


def parse_amd_chain(generation: str, pem: bytes) -> AmdChain:
    """AMD's ``ask_ark[_asvk]`` PEM bundle (ASK, ARK, optional ASVK), its links checked."""
    if generation not in GENERATIONS:
        raise BadInputError(f"snp generation: expected one of {list(GENERATIONS)}, seen {generation!r}")
    certs = load_pem_certs(pem, f"snp {generation} AMD chain")
    if len(certs) not in (2, 3):
        raise BadInputError(f"snp {generation} AMD chain: expected ASK, ARK[, ASVK], seen {len(certs)} certs")
    ask, ark = certs[0], certs[1]
    asvk = certs[2] if len(certs) == 3 else None
    expected_ark = f"ARK-{generation.capitalize()}"
    if common_name(ark.subject) != expected_ark:
        raise BadInputError(
            f"snp {generation} ark: expected subject {expected_ark!r}, seen {common_name(ark.subject)!r}"
        )
    verify_issued_by(ark, ark, f"snp {generation} ark self-signature")
    verify_issued_by(ask, ark, f"snp {generation} ask signature")
    if asvk is not None:
        verify_issued_by(asvk, ark, f"snp {generation} asvk signature")
    return AmdChain(generation, ark, ask, asvk)


@dataclass(frozen=True)
class AmdCrl:
    """AMD's certificate revocation list for one generation (KDS ``/vcek/v1/<gen>/crl``),
    its signature by the pinned ARK checked."""

    generation: str
    revoked: frozenset[int]  # serial numbers (AMD revokes ASKs and ASVKs)
    this_update: datetime.datetime
    next_update: datetime.datetime | None


def parse_amd_crl(data: bytes, chains: Iterable[AmdChain], what: str = "snp CRL") -> AmdCrl:
    """A DER or PEM CRL issued and signed by one of *chains*' ARKs."""
    crl = load_crl(data, what)
    by_subject = {c.ark.subject: c for c in chains}
    chain = by_subject.get(crl.issuer)
    if chain is None:
        arks = ", ".join(repr(common_name(c.ark.subject)) for c in by_subject.values())
        raise BadInputError(f"{what}: expected an issuer among {arks}, seen {common_name(crl.issuer)!r}")
    signer = f"the pinned {common_name(chain.ark.subject)}"
    verify_signature(chain.ark.public_key(), crl.signature, crl.tbs_certlist_bytes, None, what, signer)
    return AmdCrl(
        chain.generation,
        frozenset(r.serial_number for r in crl),
        crl.last_update_utc,
        crl.next_update_utc,
    )


# ---------------------------------------------------------------------------- VCEK/VLEK


def _der_integer(value: bytes, what: str) -> int:
    if len(value) < 3 or value[0] != 0x02 or value[1] != len(value) - 2 or value[2] & 0x80:
        raise BadInputError(f"{what}: expected a DER non-negative INTEGER, seen {value[:8].hex()}")
    return int.from_bytes(value[2:], "big")


def _extension_bytes(cert: x509.Certificate, oid: str) -> bytes | None:
    try:
        ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(oid))
    except x509.ExtensionNotFound:
        return None
    value = ext.value
    if isinstance(value, x509.UnrecognizedExtension):
        return value.value
    return None


@dataclass(frozen=True)
class Vek:
    """A VCEK or VLEK with the facts layerseal checks against a report."""

    kind: str
    generation: str
    cert: x509.Certificate
    public_key: ec.EllipticCurvePublicKey
    tcb: Tcb
    hw_id: bytes | None

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.cert)


def _generation_of_vek(cert: x509.Certificate, kind: str) -> str:
    issuer = common_name(cert.issuer)
    # VCEKs are issued by SEV-<Gen>, VLEKs by SEV-VLEK-<Gen>
    expected_prefix = "SEV-VLEK-" if kind == "vlek" else "SEV-"
    gen = issuer[len(expected_prefix) :].lower() if issuer.startswith(expected_prefix) else ""
    if gen not in GENERATIONS:
        raise DeniedError(
            f"snp {kind} issuer: expected {expected_prefix}<Milan|Genoa|Turin>, seen {issuer[:40]!r}"
        )
    return gen


def parse_vek(cert: x509.Certificate, kind: str) -> Vek:
    """Read a VCEK/VLEK's generation, key and TCB extensions (no signature check)."""
    what = f"snp {kind}"
    generation = _generation_of_vek(cert, kind)
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise DeniedError(f"{what} key: expected EC P-384, seen {type(key).__name__}")

    def spl(oid: str, name: str) -> int:
        raw = _extension_bytes(cert, oid)
        if raw is None:
            raise DeniedError(f"{what} tcb: expected extension {name} ({oid}), seen none")
        value = _der_integer(raw, f"{what} {name}")
        if value > 255:
            raise DeniedError(f"{what} {name}: expected 0..255, seen {value}")
        return value

    tcb = Tcb(
        bootloader=spl(OID_BL_SPL, "blSPL"),
        tee=spl(OID_TEE_SPL, "teeSPL"),
        snp=spl(OID_SNP_SPL, "snpSPL"),
        microcode=spl(OID_UCODE_SPL, "ucodeSPL"),
        fmc=spl(OID_FMC_SPL, "fmcSPL") if generation == "turin" else None,
    )
    hw_id = None
    if kind == "vcek":
        raw = _extension_bytes(cert, OID_HW_ID)
        if raw is None:
            raise DeniedError(f"{what} hwID: expected extension {OID_HW_ID}, seen none")
        # older KDS certificates hold the raw bytes, newer ones a DER OCTET STRING
        if len(raw) in (66, 10) and raw[0] == 0x04 and raw[1] == len(raw) - 2:
            raw = raw[2:]
        hw_id = raw
    return Vek(kind, generation, cert, key, tcb, hw_id)


# ---------------------------------------------------------------------------- evidence


@dataclass(frozen=True)
class Evidence:
    report: bytes
    certs: tuple[tuple[str | None, x509.Certificate], ...]


def _bytes_field(value: Any, what: str) -> bytes:
    if isinstance(value, str):
        if value.lstrip().startswith("-----BEGIN"):
            return value.encode()
        return b64decode_either(value, what)
    if isinstance(value, list) and all(isinstance(b, int) and 0 <= b < 256 for b in value):
        return bytes(value)
    raise BadInputError(f"{what}: expected base64, PEM or a byte array, seen {type(value).__name__}")


def parse_evidence(evidence: bytes) -> Evidence:
    """Decode the JSON evidence (or accept a raw report)."""
    if len(evidence) == REPORT_SIZE and not evidence.lstrip().startswith(b"{"):
        return Evidence(evidence, ())
    if not evidence.lstrip().startswith(b"{"):
        raise BadInputError(
            f"snp evidence: expected a JSON object or a raw report of {REPORT_SIZE} bytes, "
            f"seen neither ({len(evidence)} bytes)"
        )
    obj = loads_object(evidence, "snp evidence")
    report_field = obj.get("report", obj.get("attestation_report"))
    if report_field is None:
        raise BadInputError("snp evidence: expected field 'report' (base64 of the report), seen none")
    if snp_json.is_report_object(report_field):
        report = snp_json.report_bytes(report_field)
    else:
        report = _bytes_field(report_field, "snp evidence report")
    chain = obj.get("cert_chain") or []
    if not isinstance(chain, list) or len(chain) > 8:
        raise BadInputError("snp evidence cert_chain: expected an array of at most 8 certificates")
    certs: list[tuple[str | None, x509.Certificate]] = []
    for i, entry in enumerate(chain):
        what = f"snp evidence cert_chain[{i}]"
        if isinstance(entry, dict):
            kind = entry.get("cert_type")
            if snp_json.skipped_cert_type(kind):
                continue
            cert = load_cert(_bytes_field(entry.get("data"), what), what)
            certs.append((str(kind).upper() if kind is not None else None, cert))
        else:
            certs.append((None, load_cert(_bytes_field(entry, what), what)))
    return Evidence(report, tuple(certs))


# ---------------------------------------------------------------------------- verifier


class SnpVerifier:
    """Verifies SEV-SNP evidence against AMD's pinned chains (one per processor generation)."""

    tee = TEE

    def __init__(
        self,
        chains: Iterable[AmdChain],
        cached_veks: Iterable[bytes] = (),
        *,
        crls: Iterable[AmdCrl] = (),
        clock: Clock = utc_now,
    ) -> None:
        """*clock* gives the time at which every certificate of a VEK's chain must be valid;
        *crls* (at most one per generation) revoke ASKs, ASVKs and VEKs, and must be current."""
        self._clock = clock
        self._chains: dict[str, AmdChain] = {c.generation: c for c in chains}
        self._crls: dict[str, AmdCrl] = {}
        for crl in crls:
            if crl.generation in self._crls:
                raise BadInputError(f"snp CRLs: expected one per generation, seen two for {crl.generation}")
            self._crls[crl.generation] = crl
        self._by_ark = {c.ark_fingerprint: c for c in self._chains.values()}
        # offline cache: VCEKs indexed by (hwID, reported TCB) as the report names them
        self._cache: dict[tuple[str, bytes, Tcb], x509.Certificate] = {}
        for der in cached_veks:
            cert = load_cert(der, "snp cached vcek")
            try:
                vek = parse_vek(cert, "vcek")
            except DeniedError:
                continue
            if vek.hw_id is not None:
                self._cache[(vek.generation, vek.hw_id, vek.tcb)] = cert
        # verifying a VEK's chain costs 1-2 RSA-4096 checks; reports from one host repeat it
        self._verified: OrderedDict[tuple[str, str], tuple[Vek, Validity, x509.Certificate]] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def generations(self) -> tuple[str, ...]:
        return tuple(self._chains)

    def verify(self, evidence: bytes, expected_report_data: bytes) -> Claims:
        ev = parse_evidence(evidence)
        report, vek = self.verify_report(ev.report, ev.certs)
        check_report_data("snp report data", report.report_data, expected_report_data)
        return claims_of(report, vek)

    def verify_report(
        self, raw: bytes, certs: tuple[tuple[str | None, x509.Certificate], ...] = ()
    ) -> tuple[Report, Vek]:
        """Check a report's VEK chain, TCB and signature, but not its report data.

        For evidence formats that wrap an SNP report (Azure's HCL report): the caller
        checks what the report data binds in its own way.
        """
        report = parse_report(raw)
        if report.signature_algo != 1:
            raise DeniedError(
                f"snp report signature_algo: expected 1 (ECDSA P-384 SHA-384), seen {report.signature_algo}"
            )
        kind = report.signing_key
        vek = self._vek(report, kind, certs)
        self._check_generation(report, vek)
        self._check_tcb(report, vek)
        self._check_signature(report, vek)
        return report, vek

    # -- certificates

    def _vek(self, report: Report, kind: str, certs: tuple[tuple[str | None, x509.Certificate], ...]) -> Vek:
        leaf: x509.Certificate | None = None
        intermediates: list[x509.Certificate] = []
        arks: list[x509.Certificate] = []
        leaf_cn = "SEV-VLEK" if kind == "vlek" else "SEV-VCEK"
        for label, cert in certs:
            cn = common_name(cert.subject)
            if label in ("VCEK", "VLEK") or (label is None and cn in ("SEV-VCEK", "SEV-VLEK")):
                if label not in (None, kind.upper()) or cn != leaf_cn:
                    continue
                leaf = leaf or cert
            elif label == "ARK" or (label is None and cn.startswith("ARK-")):
                arks.append(cert)
            else:
                intermediates.append(cert)
        if leaf is None:
            leaf = self._from_cache(report, kind)
        vek = parse_vek(leaf, kind)
        chain = self._chains.get(vek.generation)
        if chain is None:
            raise DeniedError(
                f"snp processor generation: expected one of {list(self._chains)}, seen {vek.generation} "
                f"({kind} issued by {common_name(leaf.issuer)!r})"
            )
        for ark in arks:
            if fingerprint(ark) != chain.ark_fingerprint:
                raise DeniedError(
                    f"snp ark: expected the pinned {common_name(chain.ark.subject)} {chain.ark_fingerprint}, "
                    f"seen {common_name(ark.subject)!r} {fingerprint(ark)}"
                )
        key = (vek.generation, vek.fingerprint)
        with self._lock:
            hit = self._verified.get(key)
            if hit is not None:
                self._verified.move_to_end(key)
        if hit is None:
            signer = self._verify_vek_chain(vek, chain, intermediates)
            hit = (vek, Validity.of((vek.cert, signer, chain.ark)), signer)
            with self._lock:
                self._verified[key] = hit
                if len(self._verified) > _VEK_CACHE_SIZE:
                    self._verified.popitem(last=False)
        # checked on every report, cached or not: certificates expire while a broker runs
        now = self._clock()
        hit[1].check(now, f"snp {kind} chain validity ({chain.generation})")
        crl = self._crls.get(chain.generation)
        if crl is not None:
            self._check_crl(crl, now, ((hit[2], "ask" if kind == "vcek" else "asvk"), (vek.cert, kind)))
        return hit[0]

    @staticmethod
    def _check_crl(
        crl: AmdCrl, now: datetime.datetime, certs: tuple[tuple[x509.Certificate, str], ...]
    ) -> None:
        # a configured CRL that is out of date vouches for nothing: refuse rather than ignore it
        if crl.next_update is not None and now > crl.next_update:
            raise DeniedError(
                f"snp CRL ({crl.generation}): expected one current at {now:%Y-%m-%dT%H:%M:%SZ}, "
                f"seen nextUpdate {crl.next_update:%Y-%m-%dT%H:%M:%SZ}"
            )
        for cert, name in certs:
            # AMD issues every VCEK with serial 0: only a listed non-zero serial can be meant
            if cert.serial_number and cert.serial_number in crl.revoked:
                raise DeniedError(
                    f"snp {name} ({common_name(cert.subject)}): expected a certificate not on AMD's "
                    f"{crl.generation} CRL, seen serial {cert.serial_number:#x} revoked"
                )

    def _from_cache(self, report: Report, kind: str) -> x509.Certificate:
        if kind == "vcek" and not report.chip_id_masked:
            for gen in self._chains:
                tcb = decode_tcb(report.reported_tcb, gen)
                hw = report.chip_id[:8] if gen == "turin" else report.chip_id
                cert = self._cache.get((gen, hw, tcb))
                if cert is not None:
                    return cert
        raise BadInputError(
            f"snp {kind}: expected one in the evidence cert_chain or the offline VCEK cache, seen none "
            f"(chip_id {report.chip_id[:8].hex()}..., reported_tcb {report.reported_tcb.hex()})"
        )

    @staticmethod
    def _verify_vek_chain(
        vek: Vek, chain: AmdChain, intermediates: list[x509.Certificate]
    ) -> x509.Certificate:
        """Check the VEK's signature chain up to the pinned ARK; returns the VEK's signer."""
        signer = chain.asvk if vek.kind == "vlek" else chain.ask
        signer_name = "asvk" if vek.kind == "vlek" else "ask"
        if signer is None:
            raise DeniedError(f"snp {signer_name}: expected one for {chain.generation}, seen none pinned")
        # an ASK/ASVK sent in the evidence is used only if the pinned ARK signed it
        for cert in intermediates:
            if cert.subject == vek.cert.issuer and fingerprint(cert) != fingerprint(signer):
                verify_issued_by(cert, chain.ark, f"snp {signer_name} signature ({chain.generation})")
                signer = cert
        verify_issued_by(vek.cert, signer, f"snp {vek.kind} signature ({chain.generation})")
        return signer

    @staticmethod
    def _check_generation(report: Report, vek: Vek) -> None:
        if report.version < 3:
            return
        family, model, _ = report.cpuid
        gen = generation_of_cpuid(family, model)
        if gen != vek.generation:
            raise DeniedError(
                f"snp processor generation: expected {vek.generation} (from the {vek.kind}), "
                f"seen CPUID family {family:#x} model {model:#x} ({gen or 'unknown'})"
            )

    @staticmethod
    def _check_tcb(report: Report, vek: Vek) -> None:
        reported = decode_tcb(report.reported_tcb, vek.generation)
        if reported != vek.tcb:
            raise DeniedError(
                f"snp {vek.kind} tcb: expected the certificate's {vek.tcb.as_dict()}, "
                f"seen reported_tcb {reported.as_dict()}"
            )
        if vek.hw_id is not None and not report.chip_id_masked:
            chip = report.chip_id[: len(vek.hw_id)]
            if len(vek.hw_id) not in (8, 64) or not hmac.compare_digest(chip, vek.hw_id):
                raise DeniedError(
                    f"snp vcek hwID: expected chip_id {report.chip_id[:8].hex()}..., "
                    f"seen {vek.hw_id[:8].hex()}... in the certificate"
                )

    @staticmethod
    def _check_signature(report: Report, vek: Vek) -> None:
        try:
            signature = utils.encode_dss_signature(report.signature_r, report.signature_s)
            vek.public_key.verify(signature, report.raw[:SIGNED_SIZE], ec.ECDSA(hashes.SHA384()))
        except (InvalidSignature, ValueError) as exc:
            raise DeniedError(
                f"snp report signature: expected valid under the {vek.kind} {vek.fingerprint[:23]}..., "
                "seen invalid"
            ) from exc


def claims_of(report: Report, vek: Vek) -> Claims:
    """The claims of a verified report."""
    debug = bool(report.policy & POLICY_DEBUG)
    measurement = report.measurement.hex()
    details = {
        "measurement": measurement,
        "host_data": report.host_data.hex(),
        "report_data": report.report_data.hex(),
        "policy": report.policy,
        "debug": debug,
        "guest_svn": report.guest_svn,
        "vmpl": report.vmpl,
        "version": report.version,
        "family_id": report.family_id.hex(),
        "image_id": report.image_id.hex(),
        "id_key_digest": report.id_key_digest.hex(),
        "author_key_digest": report.author_key_digest.hex(),
        "platform_info": report.platform_info,
        "chip_id": report.chip_id.hex(),
        "reported_tcb": decode_tcb(report.reported_tcb, vek.generation).as_dict(),
        "committed_tcb": decode_tcb(report.committed_tcb, vek.generation).as_dict(),
        "current_tcb": decode_tcb(report.current_tcb, vek.generation).as_dict(),
        "launch_tcb": decode_tcb(report.launch_tcb, vek.generation).as_dict(),
        "generation": vek.generation,
        "signing_key": vek.kind,
        "signer": vek.fingerprint,
    }
    return Claims(
        tee=TEE,
        measurement=measurement,
        svn=report.guest_svn,
        debug=debug,
        details=MappingProxyType(details),
    )


def evidence_json(report: bytes, certs: Iterable[tuple[str, bytes]] = ()) -> dict[str, Any]:
    """Build layerseal's SNP evidence object from report bytes and ``(cert_type, DER)`` pairs."""
    return {
        "report": base64.b64encode(report).decode(),
        "cert_chain": [{"cert_type": t, "data": base64.b64encode(d).decode()} for t, d in certs],
    }
