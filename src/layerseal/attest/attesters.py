"""Choosing this enclave's evidence producer: ``--tee`` or detection, falling back to ``sim``.

``--tee auto`` (or none) detects, in this order: Gramine's ``/dev/attestation`` (SGX); an
Azure vTPM holding the paravisor's HCL report (``az-snp-vtpm``/``az-tdx-vtpm``; Azure hides
the SNP/TDX devices from the guest); configfs-tsm (its provider says SNP or TDX); the older
``/dev/sev-guest`` and ``/dev/tdx_guest`` devices; else ``sim``.  ``LAYERSEAL_TEE_SYSROOT``
moves every path under another root (tests serve fake kernel interfaces there) and
``LAYERSEAL_TPM_TCTI`` names the TPM (default ``device:/dev/tpmrm0``);
``LAYERSEAL_TSM_PRIVLEVEL`` asks configfs-tsm for another SNP VMPL than the kernel's floor.

Kept free of HTTP imports: the keyprovider calls it once per layer and starts in ~100 ms.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from layerseal.attest.claims import Attester
from layerseal.errors import BadInputError, LayersealError, NotFoundError

TEE_CHOICES = ("auto", "snp", "tdx", "az-snp-vtpm", "az-tdx-vtpm", "sgx", "sim")


@dataclass(frozen=True)
class Paths:
    """Where the guest's TEE interfaces live (under ``LAYERSEAL_TEE_SYSROOT`` when set)."""

    tsm: Path
    sev_guest: Path
    tdx_guest: Path
    attestation: Path
    tpm_device: Path
    tpm_tcti: str

    @classmethod
    def from_env(cls) -> Paths:
        root = Path(os.environ.get("LAYERSEAL_TEE_SYSROOT") or "/")
        tpm = root / "dev" / "tpmrm0"
        return cls(
            tsm=root / "sys" / "kernel" / "config" / "tsm",
            sev_guest=root / "dev" / "sev-guest",
            tdx_guest=root / "dev" / "tdx_guest",
            attestation=root / "dev" / "attestation",
            tpm_device=tpm,
            tpm_tcti=os.environ.get("LAYERSEAL_TPM_TCTI") or f"device:{tpm}",
        )


@dataclass(frozen=True)
class Probe:
    interface: str
    present: bool
    detail: str


@dataclass(frozen=True)
class Detection:
    tee: str
    why: str
    probes: tuple[Probe, ...]


def _probe_tsm(paths: Paths) -> tuple[Probe, str | None]:
    from layerseal.attest import configfs_tsm

    if not configfs_tsm.available(paths.tsm):
        return Probe("configfs-tsm", False, f"{paths.tsm}/report absent"), None
    try:
        name = configfs_tsm.provider(paths.tsm)
    except LayersealError as exc:
        return Probe("configfs-tsm", True, f"provider unreadable: {exc}"), None
    kind = configfs_tsm.PROVIDERS.get(name)
    return Probe("configfs-tsm", True, f"provider {name!r} ({kind or 'unsupported'})"), kind


def _probe_vtpm(paths: Paths) -> tuple[Probe, str | None]:
    if "LAYERSEAL_TPM_TCTI" not in os.environ and not paths.tpm_device.exists():
        return Probe("azure-vtpm", False, f"{paths.tpm_device} absent"), None
    from layerseal.attest import vtpm

    try:
        kind = vtpm.detect(paths.tpm_tcti)
    except LayersealError as exc:
        return Probe("azure-vtpm", False, f"TPM {paths.tpm_tcti}: {exc}"), None
    if kind is None:
        return Probe("azure-vtpm", False, f"TPM {paths.tpm_tcti} has no HCL report NV index"), None
    return Probe("azure-vtpm", True, f"TPM {paths.tpm_tcti}: HCL report of a {kind} VM"), kind


def detect(paths: Paths | None = None) -> Detection:
    """What this guest can attest as, and why (every interface probed, for ``tee info``)."""
    from layerseal.attest import gramine

    paths = paths or Paths.from_env()
    probes: list[Probe] = []
    chosen: tuple[str, str] | None = None

    kind = gramine.attestation_type(paths.attestation)
    probes.append(
        Probe(
            "gramine",
            kind is not None,
            f"attestation_type {kind!r}" if kind else f"{paths.attestation} absent",
        )
    )
    if kind is not None:
        chosen = ("sgx", f"Gramine's {paths.attestation} (attestation_type {kind!r})")

    vtpm_probe, vtpm_kind = _probe_vtpm(paths)
    probes.append(vtpm_probe)
    if chosen is None and vtpm_kind is not None:
        chosen = (vtpm_kind, vtpm_probe.detail)

    tsm_probe, tsm_kind = _probe_tsm(paths)
    probes.append(tsm_probe)
    if chosen is None and tsm_kind is not None:
        chosen = (tsm_kind, f"configfs-tsm {tsm_probe.detail}")

    for tee, device in (("snp", paths.sev_guest), ("tdx", paths.tdx_guest)):
        present = device.exists()
        detail = f"{device} {'present' if present else 'absent'}"
        if present and tee == "tdx":
            detail += _td_report_probe(device)
        probes.append(Probe(device.name, present, detail))
        if chosen is None and present:
            chosen = (tee, f"device {device}")
    if chosen is None:
        chosen = ("sim", "no TEE interface found")
    return Detection(chosen[0], chosen[1], tuple(probes))


def _td_report_probe(device: Path) -> str:
    from layerseal.attest import tdx_guest

    try:
        report = tdx_guest.td_report(bytes(64), device)
    except LayersealError as exc:
        return f"; TDX_CMD_GET_REPORT0 fails: {exc}"
    mrtd = report[tdx_guest.MRTD].hex()[:16]
    return f"; TDX_CMD_GET_REPORT0 answers (MRTD {mrtd}...; a quote needs configfs-tsm)"


def detect_tee() -> str:
    return detect().tee


def make_attester(
    tee: str | None,
    sim_platform: str | None,
    *,
    where: str = "--sim-platform or LAYERSEAL_SIM_PLATFORM",
    paths: Paths | None = None,
) -> Attester:
    """The attester for *tee* (detected when None or ``auto``); *where* names a sim platform's source."""
    paths = paths or Paths.from_env()
    kind = detect(paths).tee if tee in (None, "auto") else tee
    if kind == "sim":
        platform = sim_platform or os.environ.get("LAYERSEAL_SIM_PLATFORM")
        if not platform:
            raise BadInputError(
                f"sim TEE: expected a platform directory ({where}), seen none; "
                "create one with 'layerseal tee init --dir DIR'"
            )
        from layerseal.attest.sim_platform import SimAttester

        return SimAttester(Path(platform))
    if kind in ("snp", "tdx"):
        return _sevtdx_attester(kind, paths)
    if kind == "sgx":
        from layerseal.attest.gramine import GramineAttester

        return GramineAttester(paths.attestation)
    if kind in ("az-snp-vtpm", "az-tdx-vtpm"):
        from layerseal.attest.vtpm import VtpmAttester

        return VtpmAttester(kind, paths.tpm_tcti)
    raise BadInputError(f"tee: expected one of {list(TEE_CHOICES)}, seen {str(kind)[:40]!r}")


def _privlevel() -> int | None:
    """``LAYERSEAL_TSM_PRIVLEVEL``: the SNP VMPL to request (0..3); unset, the kernel's floor."""
    text = os.environ.get("LAYERSEAL_TSM_PRIVLEVEL", "").strip()
    if not text:
        return None
    if not text.isdigit() or int(text) > 3:
        raise BadInputError(f"LAYERSEAL_TSM_PRIVLEVEL: expected 0..3, seen {text[:10]!r}")
    return int(text)


def _sevtdx_attester(kind: str, paths: Paths) -> Attester:
    from layerseal.attest import configfs_tsm

    if configfs_tsm.available(paths.tsm):
        return configfs_tsm.TsmAttester(kind, root=paths.tsm, privlevel=_privlevel())
    if kind == "snp" and paths.sev_guest.exists():
        from layerseal.attest.sev_guest import SevGuestAttester

        return SevGuestAttester(paths.sev_guest)
    if kind == "tdx" and paths.tdx_guest.exists():
        raise NotFoundError(
            f"tdx: expected configfs-tsm ({paths.tsm}/report) to get a quote, seen only {paths.tdx_guest}; "
            "a quote through the host's quote generation service over vsock is not implemented"
        )
    device = paths.sev_guest if kind == "snp" else paths.tdx_guest
    raise NotFoundError(f"{kind}: expected {paths.tsm}/report or {device}, seen neither")
