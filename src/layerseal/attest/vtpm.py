"""Azure confidential VMs: evidence from the paravisor's vTPM, through tpm2-tools.

On an Azure SNP or TDX CVM the guest sees no ``/dev/sev-guest``/``/dev/tdx_guest``; the
paravisor (HCL) keeps the hardware report in vTPM NV index ``0x01400001`` (the HCL report:
header, SNP report or TD report, then var data holding the vTPM attestation key and, once
the guest wrote 64 bytes to NV index ``0x01400002``, that ``user-data``).  The attester:

1. writes the report data to ``0x01400002`` (when defined), so the paravisor refreshes the
   HCL report with it as ``user-data``;
2. reads the HCL report from ``0x01400001`` and checks its type (2 SNP, 4 TDX);
3. quotes all SHA-256 PCRs with the attestation key (persistent ``0x81000003``), the
   report data as qualifying data (``extraData``);
4. adds what the verifier needs to check the hardware report without network: the VCEK
   for SNP (Azure's IMDS ``/metadata/THIM/amd/certification``, or the PEM/DER file
   ``LAYERSEAL_AZ_VCEK``), and for TDX the TD quote made from the TD report by IMDS
   ``/acc/tdquote``.

TPM commands are tpm2-tools' (``tpm2_nvread``, ``tpm2_nvwrite``, ``tpm2_quote``,
``tpm2_getcap``), run with ``TPM2TOOLS_TCTI`` set to the TCTI given.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import struct
import subprocess
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

from layerseal.attest import az_snp_vtpm
from layerseal.attest.binding import REPORT_DATA_SIZE
from layerseal.errors import BadInputError, NotFoundError, TransportError
from layerseal.fileio import read_bytes
from layerseal.wire.b64 import b64decode_either

HCL_REPORT_INDEX = 0x01400001
REPORT_DATA_INDEX = 0x01400002
AK_HANDLE = 0x81000003
HCL_TYPES = {2: "az-snp-vtpm", 4: "az-tdx-vtpm"}
IMDS = "http://169.254.169.254"
TD_REPORT_SIZE = 1024
_TIMEOUT = 30


def _tool(args: list[str], tcti: str, what: str, *, stdin: bytes | None = None) -> bytes:
    exe = shutil.which(args[0])
    if exe is None:
        raise NotFoundError(
            f"vtpm {what}: expected {args[0]} (Debian package tpm2-tools) installed, seen none"
        )
    try:
        done = subprocess.run(
            [exe, *args[1:]],
            input=stdin,
            capture_output=True,
            timeout=_TIMEOUT,
            env={**os.environ, "TPM2TOOLS_TCTI": tcti},
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise TransportError(
            f"vtpm {what} ({tcti}): expected an answer within {_TIMEOUT}s, seen none"
        ) from exc
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.decode(errors="replace").splitlines() if ln.startswith("ERROR")]
        last = lines[-1] if lines else f"exit status {done.returncode}"
        raise TransportError(f"vtpm {what} ({tcti}): expected success, seen {last[:200]}")
    return done.stdout


def nv_indices(tcti: str) -> set[int]:
    """The NV indices defined in the TPM (``tpm2_getcap handles-nv-index``)."""
    out = _tool(["tpm2_getcap", "handles-nv-index"], tcti, "NV index list").decode()
    return {
        int(line.strip().lstrip("- "), 16) for line in out.splitlines() if line.strip().startswith("- 0x")
    }


def read_hcl_report(tcti: str) -> bytes:
    return _tool(["tpm2_nvread", f"{HCL_REPORT_INDEX:#010x}"], tcti, "HCL report read")


def hcl_kind(hcl: bytes) -> str:
    """``az-snp-vtpm`` or ``az-tdx-vtpm`` from the HCL report's type."""
    if len(hcl) < az_snp_vtpm.HCL_VAR_DATA_OFFSET or hcl[:4] != az_snp_vtpm.HCL_SIGNATURE:
        raise BadInputError(f"vtpm HCL report: expected 'HCLA' and {az_snp_vtpm.HCL_VAR_DATA_OFFSET}+ bytes")
    report_type = struct.unpack_from("<I", hcl, az_snp_vtpm.HCL_REQUEST_OFFSET + 8)[0]
    kind = HCL_TYPES.get(report_type)
    if kind is None:
        raise BadInputError(f"vtpm HCL report type: expected 2 (SNP) or 4 (TDX), seen {report_type}")
    return kind


def detect(tcti: str) -> str | None:
    """The Azure CVM kind when the TPM holds an HCL report, else None."""
    if HCL_REPORT_INDEX not in nv_indices(tcti):
        return None
    return hcl_kind(read_hcl_report(tcti))


def quote(tcti: str, report_data: bytes, ak: int = AK_HANDLE) -> dict[str, Any]:
    """``{"signature", "message", "pcrs"}`` (hex) of a quote over all SHA-256 PCRs."""
    with tempfile.TemporaryDirectory(prefix="layerseal-quote-") as tmp:
        d = Path(tmp)
        _tool(
            [
                "tpm2_quote",
                "-c", f"{ak:#010x}",
                "-l", "sha256:all",
                "-q", report_data.hex(),
                "-g", "sha256",
                "-m", str(d / "msg"),
                "-s", str(d / "sig"),
                "-f", "plain",
                "-o", str(d / "pcrs"),
                "-F", "values",
            ],
            tcti,
            "quote",
        )  # fmt: skip
        pcrs = (d / "pcrs").read_bytes()
        return {
            "signature": (d / "sig").read_bytes().hex(),
            "message": (d / "msg").read_bytes().hex(),
            "pcrs": [pcrs[i : i + 32].hex() for i in range(0, len(pcrs), 32)],
        }


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _imds(path: str, body: bytes | None = None) -> Any:
    base = os.environ.get("LAYERSEAL_AZ_IMDS") or IMDS
    if not base.startswith("http://"):
        raise BadInputError(f"LAYERSEAL_AZ_IMDS: expected an http:// URL, seen {base[:40]!r}")
    request = urllib.request.Request(f"{base}{path}", data=body, headers={"Metadata": "true"})  # noqa: S310
    if body is not None:
        request.add_header("Content-Type", "application/json")
    # link-local: no proxy may see or answer it
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=_TIMEOUT) as resp:
            return json.loads(resp.read(1 << 20))
    except (OSError, ValueError) as exc:
        raise TransportError(f"vtpm IMDS {path}: expected a JSON answer, seen {exc}") from exc


def vcek_der() -> bytes:
    from cryptography.hazmat.primitives import serialization

    from layerseal.attest.x509util import load_cert, load_pem_certs

    path = os.environ.get("LAYERSEAL_AZ_VCEK")
    if path:
        data = read_bytes(
            path, f"LAYERSEAL_AZ_VCEK {path}", expected="a VCEK certificate file", error=NotFoundError
        )
        cert = (
            load_pem_certs(data, f"vtpm VCEK {path}")[0] if b"-----BEGIN" in data else load_cert(data, path)
        )
    else:
        doc = _imds("/metadata/THIM/amd/certification")
        pem = doc.get("vcekCert") if isinstance(doc, dict) else None
        if not isinstance(pem, str):
            raise TransportError("vtpm IMDS THIM: expected 'vcekCert' (PEM), seen none")
        cert = load_pem_certs(pem.encode(), "vtpm IMDS vcekCert")[0]
    return cert.public_bytes(serialization.Encoding.DER)


def td_quote(hcl: bytes) -> bytes:
    td_report = hcl[az_snp_vtpm.HCL_HEADER_SIZE : az_snp_vtpm.HCL_HEADER_SIZE + TD_REPORT_SIZE]
    doc = _imds("/acc/tdquote", json.dumps({"report": _b64url(td_report)}).encode())
    q = doc.get("quote") if isinstance(doc, dict) else None
    if not isinstance(q, str):
        raise TransportError("vtpm IMDS /acc/tdquote: expected 'quote' (base64url), seen none")
    return b64decode_either(q, "vtpm IMDS /acc/tdquote quote")


class VtpmAttester:
    """Evidence of an Azure SNP or TDX CVM (``az-snp-vtpm`` v2, ``az-tdx-vtpm`` v1)."""

    def __init__(self, tee: str, tcti: str, *, ak: int = AK_HANDLE) -> None:
        if tee not in HCL_TYPES.values():
            raise BadInputError(f"vtpm tee: expected one of {sorted(HCL_TYPES.values())}, seen {tee!r}")
        self.tee = tee
        self.tcti = tcti
        self.ak = ak

    def hcl_report(self, report_data: bytes) -> bytes:
        self.write_report_data(report_data)
        return read_hcl_report(self.tcti)

    def write_report_data(self, report_data: bytes) -> None:
        """Hand the report data to the paravisor, which puts it in the HCL report's user-data."""
        if REPORT_DATA_INDEX in nv_indices(self.tcti):
            _tool(
                ["tpm2_nvwrite", f"{REPORT_DATA_INDEX:#010x}", "-i-"],
                self.tcti,
                "report data write",
                stdin=report_data,
            )

    def evidence(self, report_data: bytes, *, hcl: bytes | None = None) -> dict[str, Any]:
        """The evidence; *hcl* replaces the NV read (tests: swtpm's NV indices hold 2 KiB, an HCL
        report 2.6 KiB)."""
        if len(report_data) != REPORT_DATA_SIZE:
            raise BadInputError(
                f"vtpm report data: expected {REPORT_DATA_SIZE} bytes, seen {len(report_data)}"
            )
        if hcl is None:
            hcl = self.hcl_report(report_data)
        else:
            self.write_report_data(report_data)
        kind = hcl_kind(hcl)
        if kind != self.tee:
            raise BadInputError(f"vtpm HCL report: expected one of a {self.tee} VM, seen one of a {kind} VM")
        tpm_quote = quote(self.tcti, report_data, self.ak)
        if self.tee == "az-snp-vtpm":
            return {
                "version": 2,
                "tpm_quote": tpm_quote,
                "hcl_report": _b64url(hcl),
                "vcek": _b64url(vcek_der()),
            }
        return {
            "version": 1,
            "tpm_quote": tpm_quote,
            "hcl_report": _b64url(hcl),
            "td_quote": _b64url(td_quote(hcl)),
        }
