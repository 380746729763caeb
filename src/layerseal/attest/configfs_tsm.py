"""Guest evidence through Linux configfs-tsm (``/sys/kernel/config/tsm/report``), SNP and TDX.

The kernel ABI (``Documentation/ABI/testing/configfs-tsm``): ``mkdir report/NAME`` makes a
report entry; writing ``inblob`` (the 64 report-data bytes) or ``privlevel`` bumps
``generation``; reading ``outblob`` makes the report (SNP: the 1184-byte attestation report;
TDX: a DCAP quote, which the kernel gets from the host's quoting service), ``auxblob`` holds
the SNP certificate table (VCEK/VLEK, ASK, ARK) and ``provider`` names the driver
(``sev_guest``, ``tdx_guest``).  An entry may be shared with another process, so the
generation is read before and after the blobs: a change means someone else wrote
``inblob`` meanwhile and the report may carry their data; the attester then retries.
Each attester call uses its own entry and removes it afterwards.
"""

from __future__ import annotations

import base64
import errno
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from layerseal.attest import snp, snp_certs
from layerseal.attest.binding import REPORT_DATA_SIZE
from layerseal.errors import BadInputError, NotFoundError, TransportError

DEFAULT_ROOT = Path("/sys/kernel/config/tsm")
PROVIDERS = {"sev_guest": "snp", "tdx_guest": "tdx"}
MAX_ATTEMPTS = 3
MAX_BLOB = 1 << 20


@dataclass(frozen=True)
class TsmReport:
    provider: str
    outblob: bytes
    auxblob: bytes | None
    generation: int


def _read(path: Path, what: str) -> bytes:
    try:
        with open(path, "rb", buffering=0) as fh:
            data = fh.read(MAX_BLOB + 1)
    except OSError as exc:
        raise TransportError(f"configfs-tsm {what} {path}: expected readable, seen {exc.strerror}") from exc
    if len(data) > MAX_BLOB:
        raise TransportError(f"configfs-tsm {what} {path}: expected at most {MAX_BLOB} bytes, seen more")
    return data


def _write(path: Path, data: bytes, what: str) -> None:
    try:
        with open(path, "wb", buffering=0) as fh:
            written = fh.write(data)
    except OSError as exc:
        raise TransportError(f"configfs-tsm {what} {path}: expected writable, seen {exc.strerror}") from exc
    if written != len(data):
        raise TransportError(
            f"configfs-tsm {what} {path}: expected {len(data)} bytes written, seen {written}"
        )


def _generation(entry: Path) -> int:
    text = _read(entry / "generation", "generation").decode(errors="replace").strip()
    if not text.isdigit():
        raise TransportError(f"configfs-tsm generation {entry}: expected a number, seen {text[:20]!r}")
    return int(text)


class _Entry:
    """A report entry of our own, removed on exit (configfs frees it on rmdir)."""

    def __init__(self, root: Path) -> None:
        self.path = root / "report" / f"layerseal-{os.getpid()}-{secrets.token_hex(4)}"

    def __enter__(self) -> Path:
        try:
            os.mkdir(self.path)
        except FileNotFoundError as exc:
            raise NotFoundError(
                f"configfs-tsm {self.path.parent}: expected a report directory, seen none"
            ) from exc
        except OSError as exc:
            raise TransportError(
                f"configfs-tsm entry {self.path}: expected created, seen {exc.strerror}"
            ) from exc
        return self.path

    def __exit__(self, *exc: object) -> None:
        try:
            os.rmdir(self.path)
        except OSError as err:
            if err.errno != errno.ENOENT:
                raise TransportError(
                    f"configfs-tsm entry {self.path}: expected removed, seen {err.strerror}"
                ) from err


def available(root: Path = DEFAULT_ROOT) -> bool:
    return (root / "report").is_dir()


def provider(root: Path = DEFAULT_ROOT) -> str:
    """The provider's name (``sev_guest``, ``tdx_guest``...), read from a throwaway entry."""
    with _Entry(root) as entry:
        return _read(entry / "provider", "provider").decode(errors="replace").strip()


def get_report(report_data: bytes, *, root: Path = DEFAULT_ROOT, privlevel: int | None = None) -> TsmReport:
    """A report carrying *report_data*, retried when another writer changed the entry."""
    if len(report_data) != REPORT_DATA_SIZE:
        raise BadInputError(
            f"configfs-tsm inblob: expected {REPORT_DATA_SIZE} bytes, seen {len(report_data)}"
        )
    with _Entry(root) as entry:
        name = _read(entry / "provider", "provider").decode(errors="replace").strip()
        seen: list[str] = []
        for _ in range(MAX_ATTEMPTS):
            start = _generation(entry)
            if privlevel is not None:
                _write(entry / "privlevel", f"{privlevel}\n".encode(), "privlevel")
            _write(entry / "inblob", report_data, "inblob")
            expected = start + (2 if privlevel is not None else 1)
            before = _generation(entry)
            outblob = _read(entry / "outblob", "outblob")
            auxblob = _read(entry / "auxblob", "auxblob") if (entry / "auxblob").exists() else None
            after = _generation(entry)
            if before == after == expected:
                return TsmReport(name, outblob, auxblob, after)
            seen.append(f"{expected}->{before}->{after}")
        raise TransportError(
            f"configfs-tsm generation {entry}: expected no other writer during {MAX_ATTEMPTS} attempts, "
            f"seen generations {', '.join(seen)}"
        )


class TsmAttester:
    """SNP or TDX evidence through configfs-tsm, in the format the broker's verifier reads."""

    def __init__(self, tee: str, *, root: Path = DEFAULT_ROOT, privlevel: int | None = None) -> None:
        if tee not in PROVIDERS.values():
            raise BadInputError(
                f"configfs-tsm tee: expected one of {sorted(PROVIDERS.values())}, seen {tee!r}"
            )
        self.tee = tee
        self.root = root
        self.privlevel = privlevel

    def evidence(self, report_data: bytes) -> dict[str, Any]:
        report = get_report(report_data, root=self.root, privlevel=self.privlevel)
        kind = PROVIDERS.get(report.provider)
        if kind != self.tee:
            raise BadInputError(
                f"configfs-tsm provider: expected {self.tee} ({_driver(self.tee)}), seen {report.provider!r}"
            )
        if self.tee == "snp":
            certs = snp_certs.parse_table(report.auxblob, "configfs-tsm auxblob") if report.auxblob else []
            if len(report.outblob) < snp.REPORT_SIZE:
                raise TransportError(
                    f"configfs-tsm outblob: expected a {snp.REPORT_SIZE}-byte SNP report, "
                    f"seen {len(report.outblob)} bytes"
                )
            return snp.evidence_json(report.outblob[: snp.REPORT_SIZE], certs)
        return {"quote": base64.b64encode(report.outblob).decode(), "cc_eventlog": None}


def _driver(tee: str) -> str:
    return next(name for name, kind in PROVIDERS.items() if kind == tee)
