"""Reproducible layer tars: sorted entries, fixed mtimes, numeric owners; gzip or zstd.

Writes to a file object as a stream, computing the diff_id (sha256 of the tar) on the
way, so layers of any size are built in constant memory.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import zstandard
from isal import igzip

from layerseal.errors import BadInputError
from layerseal.image import mediatypes as mt
from layerseal.image.digest import Digest

#: mtime given to every entry unless the caller keeps real ones (SOURCE_DATE_EPOCH style)
FIXED_MTIME = 0

MEDIA_TYPES = {"gzip": mt.OCI_LAYER_GZIP, "zstd": mt.OCI_LAYER_ZSTD, "none": mt.OCI_LAYER_TAR}


class _HashingWriter(io.RawIOBase):
    """Passes bytes to *inner* and hashes them (the uncompressed tar = diff_id)."""

    def __init__(self, inner: IO[bytes]) -> None:
        self.inner = inner
        self.hash = hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        data = bytes(b)
        self.hash.update(data)
        self.inner.write(data)
        return len(data)


@dataclass(frozen=True)
class FileEntry:
    """One entry of a generated layer (for tests, demos and ``layer add`` from memory)."""

    path: str
    data: bytes = b""
    mode: int = 0o644
    kind: str = "file"  # file | dir | symlink | hardlink
    target: str = ""


def _compressor(out: IO[bytes], compression: str) -> IO[bytes]:
    if compression == "gzip":
        gz: IO[bytes] = igzip.IGzipFile(fileobj=out, mode="wb", compresslevel=1, mtime=0)  # type: ignore[no-untyped-call,assignment]
        return gz
    if compression == "zstd":
        zw: IO[bytes] = zstandard.ZstdCompressor(level=3).stream_writer(out, closefd=False)
        return zw
    if compression == "none":
        return out
    raise BadInputError(f"compression: expected gzip, zstd or none, seen {compression!r}")


def _info(
    name: str, mode: int, kind: str, size: int = 0, target: str = "", mtime: float = FIXED_MTIME
) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.mode, ti.uid, ti.gid, ti.uname, ti.gname, ti.mtime = mode, 0, 0, "", "", int(mtime)
    ti.type = {
        "file": tarfile.REGTYPE,
        "dir": tarfile.DIRTYPE,
        "symlink": tarfile.SYMTYPE,
        "hardlink": tarfile.LNKTYPE,
    }[kind]
    ti.size = size if kind == "file" else 0
    ti.linkname = target
    return ti


def write_layer(out: IO[bytes], entries: Iterable[FileEntry], compression: str = "gzip") -> Digest:
    """Write a layer built from *entries* (sorted by path) to *out*; returns its diff_id."""
    comp = _compressor(out, compression)
    hashing = _HashingWriter(comp)
    with tarfile.open(fileobj=hashing, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for e in sorted(entries, key=lambda e: e.path):
            ti = _info(e.path.lstrip("/"), e.mode, e.kind, len(e.data), e.target)
            tar.addfile(ti, io.BytesIO(e.data) if e.kind == "file" else None)
    if comp is not out:
        comp.close()
    return Digest("sha256", hashing.hash.hexdigest())


def _walk(root: Path, prefix: str) -> Iterator[tuple[str, Path]]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = os.path.relpath(dirpath, root)
        base = prefix if rel == "." else f"{prefix}/{rel}" if prefix else rel
        if base:
            yield base, Path(dirpath)
        for name in sorted(filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]):
            yield (f"{base}/{name}" if base else name), Path(dirpath) / name


def write_layer_from_paths(
    out: IO[bytes], sources: Mapping[str, Path], compression: str = "gzip", keep_mtime: bool = False
) -> Digest:
    """Write a layer from files and directories on disk, each placed at its key in the image."""
    comp = _compressor(out, compression)
    hashing = _HashingWriter(comp)
    items: list[tuple[str, Path]] = []
    for dest, src in sources.items():
        if not src.exists() and not src.is_symlink():
            raise BadInputError(f"layer source {src}: expected a file or directory, seen nothing")
        prefix = dest.strip("/")
        if src.is_dir() and not src.is_symlink():
            items.extend(_walk(src, prefix))
        else:
            items.append((prefix or src.name, src))
    with tarfile.open(fileobj=hashing, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for name, path in sorted(items):
            st = path.lstat()
            mtime = st.st_mtime if keep_mtime else FIXED_MTIME
            if path.is_symlink():
                tar.addfile(_info(name, 0o777, "symlink", target=os.readlink(path), mtime=mtime))
            elif path.is_dir():
                tar.addfile(_info(name, st.st_mode & 0o7777, "dir", mtime=mtime))
            else:
                with open(path, "rb") as f:
                    tar.addfile(_info(name, st.st_mode & 0o7777, "file", st.st_size, mtime=mtime), f)
    if comp is not out:
        comp.close()
    return Digest("sha256", hashing.hash.hexdigest())
