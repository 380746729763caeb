"""The TD report through ``/dev/tdx_guest`` (``TDX_CMD_GET_REPORT0``), for diagnostics.

``include/uapi/linux/tdx-guest.h``: ``struct tdx_report_req {u8 reportdata[64]; u8
tdreport[1024];}``, ``_IOWR('T', 1, ...)``.  The TD report is MAC'd for this platform
only: a remote verifier needs a quote, which the kernel gets through configfs-tsm
(:mod:`layerseal.attest.configfs_tsm`).  Asking the host's quote generation service over
vsock directly is not implemented, so ``layerseal tee info`` uses this only to say the
device answers.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from layerseal.attest.binding import REPORT_DATA_SIZE
from layerseal.errors import BadInputError, NotFoundError, TransportError

DEFAULT_DEVICE = Path("/dev/tdx_guest")
TD_REPORT_SIZE = 1024
REPORT_DATA_OFFSET = 128  # REPORTMACSTRUCT.reportdata
MRTD = slice(512 + 136, 512 + 184)  # TDINFO.mrtd


class TdxReportReq(ctypes.Structure):
    _fields_ = [("reportdata", ctypes.c_uint8 * 64), ("tdreport", ctypes.c_uint8 * TD_REPORT_SIZE)]


TDX_CMD_GET_REPORT0 = (3 << 30) | (ctypes.sizeof(TdxReportReq) << 16) | (ord("T") << 8) | 1

Ioctl = Callable[[int, int, TdxReportReq], Any]


def _kernel_ioctl(fd: int, request: int, arg: TdxReportReq) -> Any:
    return fcntl.ioctl(fd, request, arg, True)


def td_report(report_data: bytes, device: Path = DEFAULT_DEVICE, *, ioctl: Ioctl = _kernel_ioctl) -> bytes:
    """The 1024-byte TDREPORT carrying *report_data*."""
    if len(report_data) != REPORT_DATA_SIZE:
        raise BadInputError(
            f"tdx_guest report data: expected {REPORT_DATA_SIZE} bytes, seen {len(report_data)}"
        )
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise NotFoundError(f"tdx_guest {device}: expected the device, seen none") from exc
    except OSError as exc:
        raise TransportError(f"tdx_guest {device}: expected to open it, seen {exc.strerror}") from exc
    try:
        req = TdxReportReq((ctypes.c_uint8 * 64)(*report_data))
        ioctl(fd, TDX_CMD_GET_REPORT0, req)
    except OSError as exc:
        raise TransportError(
            f"tdx_guest {device} TDX_CMD_GET_REPORT0: expected a TD report, seen {exc.strerror}"
        ) from exc
    finally:
        os.close(fd)
    report = bytes(req.tdreport)
    if report[REPORT_DATA_OFFSET : REPORT_DATA_OFFSET + REPORT_DATA_SIZE] != report_data:
        raise TransportError(
            f"tdx_guest {device}: expected the TD report to carry the report data, seen other"
        )
    return report
