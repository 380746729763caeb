"""Helpers for the engine tests: build layer tars in memory, compress and chunk them."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

MTIME = 1_700_000_000


@dataclass
class Entry:
    name: str
    type: bytes = tarfile.REGTYPE
    data: bytes = b""
    mode: int = 0o644
    linkname: str = ""
    mtime: int = MTIME
    uid: int = 0
    gid: int = 0
    devmajor: int = 0
    devminor: int = 0
    pax: dict[str, str] = field(default_factory=dict)
    size: int | None = None  # lie about the size (data is written as given)


def reg(name: str, data: bytes = b"", mode: int = 0o644, **kw: object) -> Entry:
    return Entry(name, tarfile.REGTYPE, data, mode, **kw)  # type: ignore[arg-type]


def dir_(name: str, mode: int = 0o755, **kw: object) -> Entry:
    return Entry(name, tarfile.DIRTYPE, mode=mode, **kw)  # type: ignore[arg-type]


def sym(name: str, target: str) -> Entry:
    return Entry(name, tarfile.SYMTYPE, mode=0o777, linkname=target)


def link(name: str, target: str) -> Entry:
    return Entry(name, tarfile.LNKTYPE, linkname=target)


def tarinfo(e: Entry) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(e.name)
    ti.type = e.type
    ti.mode = e.mode
    ti.mtime = e.mtime
    ti.uid, ti.gid = e.uid, e.gid
    ti.linkname = e.linkname
    ti.devmajor, ti.devminor = e.devmajor, e.devminor
    ti.size = len(e.data) if e.size is None else e.size
    ti.pax_headers = dict(e.pax)
    return ti


def make_tar(entries: list[Entry]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for e in entries:
            tf.addfile(tarinfo(e), io.BytesIO(e.data) if e.type == tarfile.REGTYPE else None)
    return buf.getvalue()


def raw_tar(entries: list[Entry], *, end: bool = True) -> bytes:
    """Header + data blocks written by hand (for names tarfile.addfile would not allow)."""
    out = bytearray()
    for e in entries:
        ti = tarinfo(e)
        out += ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        out += e.data
        if len(e.data) % 512:
            out += b"\0" * (512 - len(e.data) % 512)
    if end:
        out += b"\0" * 1024
    return bytes(out)


def compress(data: bytes, compression: str) -> bytes:
    if compression == "gzip":
        return gzip.compress(data, mtime=0)
    if compression == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    return data


def chunked(data: bytes, size: int = 1000) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


#: bookkeeping files a snapshot holds besides the layer's tree (see engine.unpack)
SNAPSHOT_MARKERS = (".wh..wh..implicit", ".wh..wh..lowerlinks")


def listing(root: Path) -> set[str]:
    """Every path below root (relative, symlinks not followed), snapshot markers left out."""
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            if n not in SNAPSHOT_MARKERS:
                out.add(os.path.relpath(os.path.join(dirpath, n), root))
    return out
