"""Fake guest TEE interfaces as real FUSE file systems, behaving as the kernel (or Gramine) does.

* :class:`FakeTsm` is ``/sys/kernel/config/tsm``: ``mkdir report/NAME`` makes a report entry
  whose attributes behave as ``drivers/virt/coco/tsm`` documents them (ABI
  ``configfs-tsm``): ``inblob`` (write-only, at most 64 bytes), ``privlevel`` (0..3, not
  below ``privlevel_floor``), ``generation`` (bumped by every write to either), ``provider``,
  ``outblob`` and ``auxblob`` (read-only; the report is made when ``outblob`` or ``auxblob``
  is first read after a change).  ``concurrent_writes`` makes "another process" write
  ``inblob`` just before the next N reads of ``outblob``.
* :class:`FakeGramine` is ``/dev/attestation``: ``attestation_type``, ``user_report_data``
  (write 64 bytes) and ``quote`` (read: a quote over the last report data).

The reports served are the real captured ones: the fake cannot sign, so the report data
they carry is the captured one, whatever was written (as a replayed report would be).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mfusepy

Reporter = Callable[[bytes, int], tuple[bytes, bytes | None]]  # (inblob, privlevel) -> (outblob, auxblob)


def _attrs(mode: int, size: int = 0) -> dict[str, Any]:
    now = time.time()
    nlink = 2 if stat.S_ISDIR(mode) else 1
    return {
        "st_mode": mode,
        "st_nlink": nlink,
        "st_size": size,
        "st_uid": os.getuid(),
        "st_gid": os.getgid(),
        "st_atime": now,
        "st_mtime": now,
        "st_ctime": now,
    }


@dataclass
class _Entry:
    inblob: bytes = b""
    privlevel: int = 0
    generation: int = 0
    made_at: int = -1
    outblob: bytes = b""
    auxblob: bytes | None = None
    pending: dict[int, bytearray] = field(default_factory=dict)


_TSM_FILES = {
    "inblob": 0o100200,
    "outblob": 0o100444,
    "auxblob": 0o100444,
    "generation": 0o100444,
    "provider": 0o100444,
    "privlevel": 0o100644,
    "privlevel_floor": 0o100444,
}


class FakeTsm(mfusepy.Operations):  # type: ignore[misc]
    """configfs-tsm served from *reporter*; *provider* is ``sev_guest`` or ``tdx_guest``."""

    use_ns = True

    def __init__(self, provider: str, reporter: Reporter, *, privlevel_floor: int = 0) -> None:
        self.provider = provider
        self.reporter = reporter
        self.privlevel_floor = privlevel_floor
        self.entries: dict[str, _Entry] = {}
        self.concurrent_writes = 0
        self.reports_made = 0
        self._mutex = threading.Lock()
        self.has_auxblob = provider == "sev_guest"

    def _split(self, path: str) -> tuple[str, ...]:
        return tuple(p for p in path.split("/") if p)

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        parts = self._split(path)
        if len(parts) <= 1 and parts in ((), ("report",)):
            return _attrs(stat.S_IFDIR | 0o755)
        if len(parts) == 2 and parts[1] in self.entries:
            return _attrs(stat.S_IFDIR | 0o755)
        if len(parts) == 3 and parts[1] in self.entries and parts[2] in self._files():
            return _attrs(_TSM_FILES[parts[2]], 4096)
        raise mfusepy.FuseOSError(errno.ENOENT)

    def _files(self) -> list[str]:
        return [f for f in _TSM_FILES if f != "auxblob" or self.has_auxblob]

    def readdir(self, path: str, fh: int) -> list[str]:
        parts = self._split(path)
        if parts == ():
            return [".", "..", "report"]
        if parts == ("report",):
            return [".", "..", *self.entries]
        if len(parts) == 2 and parts[1] in self.entries:
            return [".", "..", *self._files()]
        raise mfusepy.FuseOSError(errno.ENOENT)

    def mkdir(self, path: str, mode: int) -> int:
        parts = self._split(path)
        if len(parts) != 2 or parts[0] != "report":
            raise mfusepy.FuseOSError(errno.EPERM)
        with self._mutex:
            if parts[1] in self.entries:
                raise mfusepy.FuseOSError(errno.EEXIST)
            self.entries[parts[1]] = _Entry(privlevel=self.privlevel_floor)
        return 0

    def rmdir(self, path: str) -> int:
        parts = self._split(path)
        with self._mutex:
            if len(parts) != 2 or self.entries.pop(parts[1], None) is None:
                raise mfusepy.FuseOSError(errno.ENOENT)
        return 0

    def _entry(self, path: str) -> tuple[_Entry, str]:
        parts = self._split(path)
        if len(parts) != 3 or parts[1] not in self.entries or parts[2] not in self._files():
            raise mfusepy.FuseOSError(errno.ENOENT)
        return self.entries[parts[1]], parts[2]

    def open(self, path: str, flags: int) -> int:
        _, name = self._entry(path)
        writing = flags & (os.O_WRONLY | os.O_RDWR)
        if writing and _TSM_FILES[name] & 0o200 == 0:
            raise mfusepy.FuseOSError(errno.EACCES)
        if not writing and _TSM_FILES[name] & 0o400 == 0:
            raise mfusepy.FuseOSError(errno.EACCES)
        return 0

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        self._entry(path)
        return 0

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        entry, name = self._entry(path)
        with self._mutex:
            if name == "inblob":
                if offset + len(data) > 64:
                    raise mfusepy.FuseOSError(errno.EINVAL)
                entry.inblob = (
                    (entry.inblob[:offset] + data).ljust(64, b"\0") if offset else data.ljust(64, b"\0")
                )
            elif name == "privlevel":
                try:
                    level = int(data.decode().strip())
                except ValueError:
                    raise mfusepy.FuseOSError(errno.EINVAL) from None
                if not self.privlevel_floor <= level <= 3:
                    raise mfusepy.FuseOSError(errno.EINVAL)
                entry.privlevel = level
            else:
                raise mfusepy.FuseOSError(errno.EACCES)
            entry.generation += 1
        return len(data)

    def _content(self, entry: _Entry, name: str) -> bytes:
        if name == "generation":
            return f"{entry.generation}\n".encode()
        if name == "provider":
            return f"{self.provider}\n".encode()
        if name == "privlevel":
            return f"{entry.privlevel}\n".encode()
        if name == "privlevel_floor":
            return f"{self.privlevel_floor}\n".encode()
        if name == "outblob" and self.concurrent_writes > 0:
            self.concurrent_writes -= 1
            entry.inblob = os.urandom(64)  # another process sharing the entry
            entry.generation += 1
        if entry.made_at != entry.generation:
            entry.outblob, entry.auxblob = self.reporter(entry.inblob, entry.privlevel)
            entry.made_at = entry.generation
            self.reports_made += 1
        return entry.outblob if name == "outblob" else entry.auxblob or b""

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        entry, name = self._entry(path)
        with self._mutex:
            if offset == 0 or fh not in entry.pending:
                entry.pending[fh] = bytearray(self._content(entry, name))
            return bytes(entry.pending[fh][offset : offset + size])

    def release(self, path: str, fh: int) -> int:
        with contextlib.suppress(mfusepy.FuseOSError):
            entry, _ = self._entry(path)
            entry.pending.pop(fh, None)
        return 0


class FakeGramine(mfusepy.Operations):  # type: ignore[misc]
    """Gramine's ``/dev/attestation`` serving *quote* (a captured DCAP quote)."""

    use_ns = True

    def __init__(self, quote: bytes, attestation_type: str = "dcap") -> None:
        self.quote = quote
        self.attestation_type = attestation_type
        self.user_report_data = bytes(64)
        self.quotes_made = 0
        self.files = {
            "attestation_type": 0o100444,
            "user_report_data": 0o100666,
            "target_info": 0o100666,
            "my_target_info": 0o100444,
            "report": 0o100444,
            "quote": 0o100444,
        }

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        name = path.strip("/")
        if name == "":
            return _attrs(stat.S_IFDIR | 0o755)
        if name in self.files:
            return _attrs(self.files[name], 64 if name == "user_report_data" else 4096)
        raise mfusepy.FuseOSError(errno.ENOENT)

    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", "..", *self.files]

    def open(self, path: str, flags: int) -> int:
        if path.strip("/") not in self.files:
            raise mfusepy.FuseOSError(errno.ENOENT)
        return 0

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        return 0

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        if path.strip("/") != "user_report_data" or offset + len(data) > 64:
            raise mfusepy.FuseOSError(errno.EINVAL)
        self.user_report_data = (self.user_report_data[:offset] + data).ljust(64, b"\0")[:64]
        return len(data)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        name = path.strip("/")
        if name == "attestation_type":
            content = self.attestation_type.encode()
        elif name == "user_report_data":
            content = self.user_report_data
        elif name == "quote":
            if self.attestation_type != "dcap":
                raise mfusepy.FuseOSError(errno.EACCES)
            if offset == 0:
                self.quotes_made += 1
            content = self.quote
        else:
            raise mfusepy.FuseOSError(errno.EACCES)
        return content[offset : offset + size]


@contextlib.contextmanager
def mounted(ops: mfusepy.Operations, mountpoint: Path) -> Iterator[Path]:
    """Serve *ops* at *mountpoint* (a new directory) until the block ends."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    thread = threading.Thread(
        target=lambda: mfusepy.FUSE(
            ops,
            str(mountpoint),
            foreground=True,
            nothreads=True,
            direct_io=True,
            attr_timeout=0,
            entry_timeout=0,
        ),
        daemon=True,
    )
    thread.start()
    deadline = time.monotonic() + 10
    while not os.path.ismount(mountpoint):
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"fake TEE FUSE mount at {mountpoint} did not come up")
        time.sleep(0.02)
    try:
        yield mountpoint
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False, capture_output=True)
        thread.join(timeout=10)


class FakeSevGuest:
    """The kernel side of ``/dev/sev-guest``'s ``SNP_GET_REPORT``/``SNP_GET_EXT_REPORT``, as an
    ioctl function: reads the request through the pointers it carries and writes
    ``MSG_REPORT_RSP`` and the certificate table where they point, with the kernel's errors
    (``EINVAL`` for a bad message version, VMPL or unaligned buffer; ``EIO`` with
    ``vmm_error`` 1 and the size needed for a buffer too small; ``ENOTTY`` without the
    extended request).  Serves a captured *report* and *table*."""

    def __init__(self, report: bytes, table: bytes, *, extended: bool = True) -> None:
        self.report = report
        self.table = table
        self.extended = extended
        self.calls: list[tuple[str, int]] = []
        self.user_data: list[bytes] = []

    def __call__(self, fd: int, request: int, arg: Any) -> int:
        import ctypes

        from layerseal.attest import sev_guest as sg

        if request not in (sg.SNP_GET_REPORT, sg.SNP_GET_EXT_REPORT):
            raise OSError(errno.ENOTTY, os.strerror(errno.ENOTTY))
        if request == sg.SNP_GET_EXT_REPORT and not self.extended:
            raise OSError(errno.ENOTTY, os.strerror(errno.ENOTTY))
        if arg.msg_version != sg.MSG_VERSION or not arg.req_data or not arg.resp_data:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        if request == sg.SNP_GET_EXT_REPORT:
            ext = sg.ExtReportReq.from_address(arg.req_data)
            base = ext.data
            self.calls.append(("ext", int(ext.certs_len)))
            if ext.certs_len % sg.PAGE or ext.certs_address % sg.PAGE:
                raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
            if ext.certs_len < len(self.table):
                ext.certs_len = -(-len(self.table) // sg.PAGE) * sg.PAGE
                arg.exitinfo2 = sg.VMM_ERR_INVALID_LEN << 32
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            ctypes.memmove(ext.certs_address, self.table, len(self.table))
            ext.certs_len = len(self.table)
        else:
            base = sg.ReportReq.from_address(arg.req_data)
            self.calls.append(("plain", 0))
        if base.vmpl > 3:
            arg.exitinfo2 = 0x16  # firmware: invalid parameter
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        self.user_data.append(bytes(base.user_data))
        rsp = struct.pack("<II24x", 0, len(self.report)) + self.report
        ctypes.memmove(arg.resp_data, rsp, len(rsp))
        return 0
