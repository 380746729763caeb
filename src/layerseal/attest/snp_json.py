"""The sev crate's JSON form of an SNP attestation report, turned back into its 1184 bytes.

CoCo guests (guest-components' SNP attester) send ``{"attestation_report": {...named
fields...}, "cert_chain": [...]}``: the report is serde's rendering of the ``sev`` crate's
``AttestationReport``, not its bytes.  The signature covers bytes 0..0x2A0, so the bytes
are rebuilt exactly as the crate's encoder writes them (reserved bytes zero) and the
ordinary verifier then checks them.  Two renderings exist:

* sev >= 6 (v2, v3 and v5 layouts): ``key_info``, ``cpuid_fam_id/mod_id/step`` (null in
  v2), ``current``/``committed`` ``{major, minor, build}``, ``launch_mit_vector`` and
  ``current_mit_vector`` (v5, null before), TCBs as ``{fmc, bootloader, tee, snp,
  microcode}`` laid out per processor generation (Turin: ``fmc bl tee snp 0 0 0 ucode``,
  earlier: ``bl tee 0 0 0 0 snp ucode``), signature ``{r, s}`` of 72 bytes each.
* sev <= 5: the raw struct with ``_author_key_en``, ``_reserved_0..4``,
  ``current_build/minor/major``, TCBs as ``{bootloader, tee, _reserved, snp, microcode}``
  and signature ``{r, s, _reserved}``; reserved bytes are kept as sent.

Byte arrays are JSON arrays of numbers; the policy, platform info and key info are
integers.  Pure: no I/O.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

from layerseal.errors import BadInputError

REPORT_SIZE = 0x4A0
_WHAT = "snp evidence attestation_report"


def is_report_object(value: Any) -> bool:
    """Whether an evidence ``attestation_report`` field is the sev crate's JSON object."""
    return isinstance(value, Mapping)


def skipped_cert_type(value: Any) -> bool:
    """Certificate-table entries that hold no certificate (sev ``CertType`` Empty, CRL, OTHER(uuid))."""
    return isinstance(value, Mapping) or (isinstance(value, str) and value.upper() in ("EMPTY", "CRL"))


def _field(obj: Mapping[str, Any], name: str, where: str = _WHAT) -> Any:
    if name not in obj:
        raise BadInputError(f"{where}: expected field {name!r}, seen none")
    return obj[name]


def _uint(obj: Mapping[str, Any], name: str, bits: int, where: str = _WHAT, *, optional: bool = False) -> int:
    value = obj.get(name) if optional else _field(obj, name, where)
    if value is None and optional:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < (1 << bits):
        raise BadInputError(f"{where}.{name}: expected an integer 0..2^{bits}-1, seen {str(value)[:40]!r}")
    return value


def _bytes(obj: Mapping[str, Any], name: str, size: int, where: str = _WHAT) -> bytes:
    value = _field(obj, name, where)
    if (
        not isinstance(value, list)
        or len(value) != size
        or not all(isinstance(b, int) and not isinstance(b, bool) and 0 <= b < 256 for b in value)
    ):
        seen = f"{len(value)} items" if isinstance(value, list) else type(value).__name__
        raise BadInputError(f"{where}.{name}: expected an array of {size} bytes, seen {seen}")
    return bytes(value)


def _object(obj: Mapping[str, Any], name: str, where: str = _WHAT) -> Mapping[str, Any]:
    value = _field(obj, name, where)
    if not isinstance(value, Mapping):
        raise BadInputError(f"{where}.{name}: expected an object, seen {type(value).__name__}")
    return value


def _tcb(obj: Mapping[str, Any], name: str, turin: bool) -> bytes:
    tcb = _object(obj, name)
    where = f"{_WHAT}.{name}"
    bl, tee, snp, ucode = (_uint(tcb, f, 8, where) for f in ("bootloader", "tee", "snp", "microcode"))
    if turin:
        return bytes([_uint(tcb, "fmc", 8, where, optional=True), bl, tee, snp, 0, 0, 0, ucode])
    # before Turin the crate writes no fmc byte, whatever the object says
    return bytes([bl, tee, 0, 0, 0, 0, snp, ucode])


def _legacy_tcb(obj: Mapping[str, Any], name: str) -> bytes:
    tcb = _object(obj, name)
    where = f"{_WHAT}.{name}"
    bl, tee, snp, ucode = (_uint(tcb, f, 8, where) for f in ("bootloader", "tee", "snp", "microcode"))
    return bytes([bl, tee]) + _bytes(tcb, "_reserved", 4, where) + bytes([snp, ucode])


def _version(obj: Mapping[str, Any], name: str) -> bytes:
    ver = _object(obj, name)
    where = f"{_WHAT}.{name}"
    return bytes(
        [_uint(ver, "build", 8, where), _uint(ver, "minor", 8, where), _uint(ver, "major", 8, where)]
    )


def _is_turin(family: int, model: int) -> bool:
    # sev's Generation::identify_cpu: family 0x1A is Turin (and Venice, laid out alike)
    return family == 0x1A


def _turin_like_v2(chip_id: bytes) -> bool:
    # sev: a v2 report has no CPUID; a Turin chip_id uses only its first 8 bytes
    if chip_id == bytes(64):
        raise BadInputError(
            f"{_WHAT}: expected a chip_id (a version-2 report's generation is read from it), seen it masked"
        )
    return chip_id[8:] == bytes(56)


def _signature(obj: Mapping[str, Any], legacy: bool) -> bytes:
    sig = _object(obj, "signature")
    where = f"{_WHAT}.signature"
    body = _bytes(sig, "r", 72, where) + _bytes(sig, "s", 72, where)
    if legacy:
        return body + _bytes(sig, "_reserved", 512 - 144, where)
    return body + bytes(512 - 144)


def _head(obj: Mapping[str, Any], version: int) -> bytes:
    """Bytes 0x00..0x38: version, guest_svn, policy, family_id, image_id, vmpl, sig_algo."""
    return (
        struct.pack("<IIQ", version, _uint(obj, "guest_svn", 32), _uint(obj, "policy", 64))
        + _bytes(obj, "family_id", 16)
        + _bytes(obj, "image_id", 16)
        + struct.pack("<II", _uint(obj, "vmpl", 32), _uint(obj, "sig_algo", 32))
    )


def _digests(obj: Mapping[str, Any]) -> bytes:
    """Bytes 0x50..0x180: report_data up to report_id_ma."""
    sizes = (
        ("report_data", 64),
        ("measurement", 48),
        ("host_data", 32),
        ("id_key_digest", 48),
        ("author_key_digest", 48),
        ("report_id", 32),
        ("report_id_ma", 32),
    )
    return b"".join(_bytes(obj, name, size) for name, size in sizes)


def _modern(obj: Mapping[str, Any], version: int) -> bytes:
    chip_id = _bytes(obj, "chip_id", 64)
    if version == 2:
        turin = _turin_like_v2(chip_id)
        cpuid = bytes(24)
    else:
        family = _uint(obj, "cpuid_fam_id", 8)
        model = _uint(obj, "cpuid_mod_id", 8)
        turin = _is_turin(family, model)
        cpuid = bytes([family, model, _uint(obj, "cpuid_step", 8)]) + bytes(21)
    if version >= 5:
        # the crate writes a null vector as zero
        launch = _uint(obj, "launch_mit_vector", 64, optional=True)
        mit = struct.pack("<QQ", launch, _uint(obj, "current_mit_vector", 64, optional=True))
        mit += bytes(152)
    else:
        mit = bytes(168)
    out = (
        _head(obj, version)
        + _tcb(obj, "current_tcb", turin)
        + struct.pack("<QI", _uint(obj, "plat_info", 64), _uint(obj, "key_info", 32))
        + bytes(4)
        + _digests(obj)
        + _tcb(obj, "reported_tcb", turin)
        + cpuid
        + chip_id
        + _tcb(obj, "committed_tcb", turin)
        + _version(obj, "current")
        + b"\0"
        + _version(obj, "committed")
        + b"\0"
        + _tcb(obj, "launch_tcb", turin)
        + mit
        + _signature(obj, legacy=False)
    )
    return out


def _legacy(obj: Mapping[str, Any], version: int) -> bytes:
    key_info = _uint(obj, "_author_key_en", 32)
    return (
        _head(obj, version)
        + _legacy_tcb(obj, "current_tcb")
        + struct.pack("<QI", _uint(obj, "plat_info", 64), key_info)
        + struct.pack("<I", _uint(obj, "_reserved_0", 32))
        + _digests(obj)
        + _legacy_tcb(obj, "reported_tcb")
        + _bytes(obj, "_reserved_1", 24)
        + _bytes(obj, "chip_id", 64)
        + _legacy_tcb(obj, "committed_tcb")
        + bytes(
            [_uint(obj, n, 8) for n in ("current_build", "current_minor", "current_major", "_reserved_2")]
        )
        + bytes(
            [
                _uint(obj, n, 8)
                for n in ("committed_build", "committed_minor", "committed_major", "_reserved_3")
            ]
        )
        + _legacy_tcb(obj, "launch_tcb")
        + _bytes(obj, "_reserved_4", 168)
        + _signature(obj, legacy=True)
    )


def report_bytes(obj: Mapping[str, Any]) -> bytes:
    """The 1184 report bytes the sev crate's JSON object stands for (signed part exact)."""
    version = _uint(obj, "version", 32)
    if version < 2:
        raise BadInputError(f"{_WHAT}.version: expected 2 or later, seen {version}")
    raw = _legacy(obj, version) if "_reserved_0" in obj else _modern(obj, version)
    if len(raw) != REPORT_SIZE:  # pragma: no cover - the layout above sums to 0x4A0
        raise AssertionError(f"rebuilt SNP report is {len(raw)} bytes")
    return raw


def report_object(raw: bytes) -> dict[str, Any]:
    """The sev (>= 6) JSON object of a report: what a CoCo guest sends (for tests and tools)."""
    if len(raw) != REPORT_SIZE:
        raise BadInputError(f"snp report size: expected {REPORT_SIZE} bytes, seen {len(raw)}")
    version, guest_svn, policy = struct.unpack_from("<IIQ", raw, 0)
    family, model, step = raw[0x188], raw[0x189], raw[0x18A]
    turin = _is_turin(family, model) if version >= 3 else _turin_like_v2(raw[0x1A0:0x1E0])

    def tcb(at: int) -> dict[str, Any]:
        b = raw[at : at + 8]
        if turin:
            return {"fmc": b[0], "bootloader": b[1], "tee": b[2], "snp": b[3], "microcode": b[7]}
        return {"fmc": None, "bootloader": b[0], "tee": b[1], "snp": b[6], "microcode": b[7]}

    def ver(at: int) -> dict[str, int]:
        return {"major": raw[at + 2], "minor": raw[at + 1], "build": raw[at]}

    def arr(start: int, size: int) -> list[int]:
        return list(raw[start : start + size])

    out: dict[str, Any] = {
        "version": version,
        "guest_svn": guest_svn,
        "policy": policy,
        "family_id": arr(0x10, 16),
        "image_id": arr(0x20, 16),
        "vmpl": struct.unpack_from("<I", raw, 0x30)[0],
        "sig_algo": struct.unpack_from("<I", raw, 0x34)[0],
        "current_tcb": tcb(0x38),
        "plat_info": struct.unpack_from("<Q", raw, 0x40)[0],
        "key_info": struct.unpack_from("<I", raw, 0x48)[0],
        "report_data": arr(0x50, 64),
        "measurement": arr(0x90, 48),
        "host_data": arr(0xC0, 32),
        "id_key_digest": arr(0xE0, 48),
        "author_key_digest": arr(0x110, 48),
        "report_id": arr(0x140, 32),
        "report_id_ma": arr(0x160, 32),
        "reported_tcb": tcb(0x180),
        "cpuid_fam_id": family if version >= 3 else None,
        "cpuid_mod_id": model if version >= 3 else None,
        "cpuid_step": step if version >= 3 else None,
        "chip_id": arr(0x1A0, 64),
        "committed_tcb": tcb(0x1E0),
        "current": ver(0x1E8),
        "committed": ver(0x1EC),
        "launch_tcb": tcb(0x1F0),
        "signature": {"r": arr(0x2A0, 72), "s": arr(0x2E8, 72)},
    }
    if version >= 5:  # sev < 6.3 has no such fields, later ones write null before v5
        out["launch_mit_vector"], out["current_mit_vector"] = struct.unpack_from("<QQ", raw, 0x1F8)
    return out
