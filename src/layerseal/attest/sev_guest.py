"""SEV-SNP evidence through ``/dev/sev-guest`` ioctls, for kernels without configfs-tsm.

``SNP_GET_EXT_REPORT`` (``include/uapi/linux/sev-guest.h``) sends a ``snp_ext_report_req``
(the 64 report-data bytes, the VMPL, and a page-aligned buffer for the host's certificate
table) and answers ``MSG_REPORT_RSP`` (status, report size, the 1184-byte report).  A
buffer too small for the certificates fails with ``EIO`` and ``vmm_error`` 1
(``SNP_GUEST_VMM_ERR_INVALID_LEN``), ``certs_len`` then holding the size needed: the
attester retries once with that.  Without the extended request (``ENOTTY``), plain
``SNP_GET_REPORT`` gives the report alone; the broker then needs the VCEK in its cache.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

from layerseal.attest import snp, snp_certs
from layerseal.attest.binding import REPORT_DATA_SIZE
from layerseal.errors import BadInputError, NotFoundError, TransportError

DEFAULT_DEVICE = Path("/dev/sev-guest")
MSG_VERSION = 1
VMM_ERR_INVALID_LEN = 1
RESPONSE_SIZE = 4000
REPORT_OFFSET = 0x20
PAGE = mmap.PAGESIZE
CERTS_MAX = 0x4000 * 4  # SEV_FW_BLOB_MAX_SIZE


class ReportReq(ctypes.Structure):
    _fields_ = [("user_data", ctypes.c_uint8 * 64), ("vmpl", ctypes.c_uint32), ("rsvd", ctypes.c_uint8 * 28)]


class ExtReportReq(ctypes.Structure):
    _fields_ = [("data", ReportReq), ("certs_address", ctypes.c_uint64), ("certs_len", ctypes.c_uint32)]


class GuestRequest(ctypes.Structure):
    _fields_ = [
        ("msg_version", ctypes.c_uint8),
        ("req_data", ctypes.c_uint64),
        ("resp_data", ctypes.c_uint64),
        ("exitinfo2", ctypes.c_uint64),
    ]

    @property
    def fw_error(self) -> int:
        return int(self.exitinfo2) & 0xFFFFFFFF

    @property
    def vmm_error(self) -> int:
        return int(self.exitinfo2) >> 32


def _iowr(nr: int) -> int:
    return (3 << 30) | (ctypes.sizeof(GuestRequest) << 16) | (ord("S") << 8) | nr


SNP_GET_REPORT = _iowr(0)
SNP_GET_EXT_REPORT = _iowr(2)

Ioctl = Callable[[int, int, GuestRequest], Any]


class _GuestRequestError(OSError):
    """An ioctl's OSError with the request block the kernel filled in."""

    def __init__(self, exc: OSError, arg: GuestRequest) -> None:
        super().__init__(exc.errno, exc.strerror)
        self.arg = arg


def _kernel_ioctl(fd: int, request: int, arg: GuestRequest) -> Any:
    return fcntl.ioctl(fd, request, arg, True)


class SevGuestAttester:
    tee = snp.TEE

    def __init__(self, device: Path = DEFAULT_DEVICE, *, vmpl: int = 0, ioctl: Ioctl = _kernel_ioctl) -> None:
        self.device = device
        self.vmpl = vmpl
        self._ioctl = ioctl

    def _call(
        self, fd: int, request: int, req: ctypes.Structure, resp: ctypes.Array[ctypes.c_uint8]
    ) -> GuestRequest:
        arg = GuestRequest(MSG_VERSION, ctypes.addressof(req), ctypes.addressof(resp), 0)
        try:
            self._ioctl(fd, request, arg)
        except OSError as exc:
            # the kernel's fw_error/vmm_error explain an EIO: keep them with the error
            raise _GuestRequestError(exc, arg) from exc
        return arg

    def report(self, report_data: bytes) -> tuple[bytes, list[tuple[str, bytes]]]:
        """The report and the host's certificates (none with the plain request)."""
        if len(report_data) != REPORT_DATA_SIZE:
            raise BadInputError(
                f"sev-guest report data: expected {REPORT_DATA_SIZE} bytes, seen {len(report_data)}"
            )
        try:
            fd = os.open(self.device, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            raise NotFoundError(f"sev-guest {self.device}: expected the device, seen none") from exc
        except OSError as exc:
            raise TransportError(
                f"sev-guest {self.device}: expected to open it, seen {exc.strerror}"
            ) from exc
        try:
            base = ReportReq((ctypes.c_uint8 * 64)(*report_data), self.vmpl)
            resp = (ctypes.c_uint8 * RESPONSE_SIZE)()
            certs: list[tuple[str, bytes]] = []
            try:
                table = self._ext(fd, base, resp)
                if table:
                    certs = snp_certs.parse_table(table, "sev-guest certificate table")
            except OSError as exc:
                if exc.errno not in (errno.ENOTTY, errno.EOPNOTSUPP):
                    raise self._error(exc, "SNP_GET_EXT_REPORT") from exc
                try:
                    self._call(fd, SNP_GET_REPORT, base, resp)
                except OSError as exc2:
                    raise self._error(exc2, "SNP_GET_REPORT") from exc2
        finally:
            os.close(fd)
        return _report_of(bytes(resp)), certs

    def _ext(self, fd: int, base: ReportReq, resp: ctypes.Array[ctypes.c_uint8]) -> bytes:
        size = 4 * PAGE
        for _ in range(2):
            # page-aligned, as the kernel requires of the certificate buffer
            buf = mmap.mmap(-1, size)
            holder = ctypes.c_char.from_buffer(buf)
            req = ExtReportReq(base, ctypes.addressof(holder), size)
            try:
                self._call(fd, SNP_GET_EXT_REPORT, req, resp)
                return bytes(buf[: min(int(req.certs_len), size)])
            except OSError as exc:
                arg = exc.arg if isinstance(exc, _GuestRequestError) else None
                needed = int(req.certs_len)
                too_small = (
                    exc.errno == errno.EIO and arg is not None and arg.vmm_error == VMM_ERR_INVALID_LEN
                )
                if not too_small or needed <= size or needed > CERTS_MAX:
                    raise
                size = -(-needed // PAGE) * PAGE
            finally:
                del holder
                buf.close()
        raise TransportError(f"sev-guest {self.device}: expected the certificate table to fit {size} bytes")

    def _error(self, exc: OSError, what: str) -> TransportError:
        arg = exc.arg if isinstance(exc, _GuestRequestError) else None
        codes = f" (fw_error {arg.fw_error:#x}, vmm_error {arg.vmm_error:#x})" if arg is not None else ""
        return TransportError(
            f"sev-guest {self.device} {what}: expected a report, seen {exc.strerror}{codes}"
        )

    def evidence(self, report_data: bytes) -> dict[str, Any]:
        report, certs = self.report(report_data)
        return snp.evidence_json(report, certs)


def _report_of(resp: bytes) -> bytes:
    status, size = struct.unpack_from("<II", resp, 0)
    if status != 0:
        raise TransportError(f"sev-guest MSG_REPORT_RSP status: expected 0, seen {status:#x}")
    if size < snp.REPORT_SIZE or REPORT_OFFSET + size > len(resp):
        raise TransportError(f"sev-guest MSG_REPORT_RSP report size: expected {snp.REPORT_SIZE}, seen {size}")
    return resp[REPORT_OFFSET : REPORT_OFFSET + snp.REPORT_SIZE]
