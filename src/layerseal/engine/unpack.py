"""Safe unpacking of layer tars into per-layer snapshots, and stacking them into a rootfs.

``tarfile`` is used only to parse headers: every path is created here, one component
at a time, relative to directory file descriptors opened with ``O_NOFOLLOW``, so no
symlink is ever followed while writing (CVE-2007-4559 and the runc/umoci family of
"symlink, then write through it" escapes).

Snapshot format (what :func:`unpack_layer` leaves in its target, what
:func:`stack_snapshots` reads): the layer's tree as-is, with every whiteout kept as the
empty regular file named like the tar entry (``.wh.NAME``, ``.wh..wh..opq``, mode 0600).
The ``.wh.`` prefix is reserved by the OCI image spec, so no real file can collide, and
the markers need no privilege (overlayfs' 0/0 char devices would need root).  Stacking
applies them: for each layer, lower to upper, a directory's opaque marker first empties
the directory built so far, then each ``.wh.NAME`` removes ``NAME``, then the layer's own
entries are merged in.  Whiteouts thus only hide lower layers, as the spec requires.
Two more markers, in AUFS' ``.wh..wh.`` namespace that no layer entry can create (such
entries are skipped): ``.wh..wh..implicit`` in a directory the layer only wrote into
(stacking then keeps the metadata of the directory below, as umoci does), and
``.wh..wh..lowerlinks`` at the root, listing hard links to files of lower layers (left
as empty placeholders in the snapshot, linked when stacking).

Policy choices:
- any ``..`` component and any absolute name (entry or hard-link target) is refused;
- device nodes and fifos are created only when ``allow_devices`` (default: running as
  root); otherwise they are skipped, logged, and listed in ``UnpackResult.skipped``;
- ownership is restored (numeric uid/gid, never names) only as root; without root the
  setuid/setgid bits are dropped; xattrs in ``user.*`` are always restored, other
  namespaces only as root, ``*.overlay.*`` never (they would steer overlayfs);
  an xattr the filesystem refuses is skipped and listed;
- directories' modes and mtimes are applied at the end, children first, so a read-only
  directory in the tar does not block its own children;
- pax/GNU long-name headers are capped at 1 MiB, sparse maps at 65536 regions (tarfile
  would read them whole); sparse files are written with holes;
- every uncompressed byte and entry is charged to :mod:`layerseal.engine.limits` before
  it is written;
- what Go's archive/tar (so umoci) accepts is accepted: no end-of-archive blocks after a
  whole member, empty PAX records ignored, PAX mtimes exact to the ns.

Trees are walked, merged and removed without recursion, holding one directory descriptor
per tree (going up by ``..``), so depth costs neither Python stack nor open files.

Known limits: stacking never follows a lower layer's symlink, so an upper layer whose
directory ``lib/`` meets a lower symlink ``lib -> usr/lib`` replaces the symlink (as
overlayfs does; containerd would resolve it).
"""

from __future__ import annotations

import contextlib
import copy
import errno
import fcntl
import hashlib
import logging
import os
import re
import stat
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NoReturn, Self, TypeVar, cast

from layerseal.engine.decompress import decompressor
from layerseal.engine.limits import ImageBudget, LayerBudget, UnpackLimits
from layerseal.errors import BadInputError, LayersealError, MisuseError, expected_seen
from layerseal.image.digest import Digest
from layerseal.streams import Background

log = logging.getLogger(__name__)
_T = TypeVar("_T")

# the clean ends of an archive: an all-zero header block, or the end of the data exactly
# where a header would start (no end-of-archive blocks: Go's archive/tar and umoci accept
# that; tarfile.next() has already checked that the last member's data and padding are whole)
_CLEAN_ENDS: tuple[type[Exception], ...] = (
    cast(Any, tarfile).EOFHeaderError,
    cast(Any, tarfile).EmptyHeaderError,
)

DEFAULT_MAX_ENTRY_SIZE = 64 << 30
WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
#: in a snapshot directory the layer never described (only wrote into): keep what lies below
IMPLICIT_MARKER = ".wh..wh..implicit"
#: at a snapshot's root: hard links to files of lower layers ("path\0target\0" records)
LOWER_LINKS = ".wh..wh..lowerlinks"
#: a sparse map is held in memory while its file is written: bound it
MAX_SPARSE_REGIONS = 1 << 16
_READ_CHUNK = 256 * 1024
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# errnos that mean "this archive asks for something impossible" rather than a host failure
_INPUT_ERRNOS = {
    errno.ENAMETOOLONG,
    errno.ELOOP,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.EEXIST,
    errno.EINVAL,
    errno.ENOENT,
    errno.EPERM,
    errno.EMLINK,
}


@dataclass(frozen=True)
class UnpackResult:
    """What one layer unpack produced.

    ``diff_id`` is the sha256 of the uncompressed tar stream (all of it, trailing padding
    included); ``skipped`` names entries or attributes deliberately not restored.
    """

    diff_id: Digest
    entries: int
    bytes_written: int
    skipped: tuple[str, ...] = ()


def _privileged() -> bool:
    return os.geteuid() == 0


class _HashingReader:
    """A ``read(n)`` view of the decompressed chunk iterator that hashes every byte.

    Each chunk is hashed whole as it arrives, on a helper thread (hashlib releases the
    GIL), while this thread parses and writes it; the digest is read only after
    :meth:`drain` consumed the stream, so it covers exactly the bytes read.  Reads hand
    out memoryviews of the (immutable) chunks: no copy until a consumer needs one.
    """

    def __init__(self, chunks: Iterator[bytes], budget: LayerBudget) -> None:
        self._it = chunks
        self._buf = memoryview(b"")
        self._h = hashlib.sha256()
        self._hash_bg = Background(self._h.update)
        self._budget = budget
        self.size = 0

    def _fill(self) -> bool:
        while not self._buf:
            chunk = next(self._it, None)
            if chunk is None:
                return False
            # charged as it arrives, before any of it can be written
            self._budget.charge_bytes(len(chunk))
            self._hash_bg.update(chunk)
            self._buf = memoryview(chunk)
        return True

    def read(self, n: int = -1) -> memoryview:
        if not self._fill():
            return memoryview(b"")
        if n < 0 or n >= len(self._buf):
            out, self._buf = self._buf, memoryview(b"")
        else:
            out, self._buf = self._buf[:n], self._buf[n:]
        self.size += len(out)
        return out

    def drain(self) -> None:
        # the diff_id covers the whole stream, including what follows the end-of-archive blocks
        while self.read(_READ_CHUNK):
            pass

    def digest(self) -> Digest:
        self._hash_bg.wait()
        return Digest("sha256", self._h.hexdigest())


_TAR_STREAM: Any = getattr(tarfile, "_Stream", None)


def _member_data(tf: tarfile.TarFile, ti: tarfile.TarInfo, size: int) -> Iterator[bytes | memoryview]:
    """The *size* data bytes of the member whose header ``tf.next()`` just returned.

    Read straight from the layer's :class:`_HashingReader` as memoryviews, which
    ``os.write`` takes without a copy, instead of through ``extractfile`` (three copies
    per byte: the stream's join, the file object's buffer, the result).  The tar stream's
    read-ahead is consumed first and its position advanced as tarfile would, so its next
    header read finds the member's padding, as after ``extractfile``.  Falls back to
    ``extractfile`` when the stream is not the plain one this relies on.  Yields fewer
    than *size* bytes only when the data ends early.
    """
    stream: Any = tf.fileobj
    reader = getattr(stream, "fileobj", None)
    if (
        _TAR_STREAM is None
        or type(stream) is not _TAR_STREAM
        or getattr(stream, "comptype", None) != "tar"
        or not isinstance(reader, _HashingReader)
        or not isinstance(getattr(stream, "buf", None), bytes)
        or getattr(stream, "pos", None) != ti.offset_data
    ):
        src = tf.extractfile(ti)
        left = size
        while left and src is not None and (chunk := src.read(min(left, _READ_CHUNK))):
            left -= len(chunk)
            yield chunk
        return
    left = size
    if stream.buf:
        head = stream.buf[:left]
        stream.buf = stream.buf[len(head) :]
        stream.pos += len(head)
        left -= len(head)
        yield head
    while left:
        view = reader.read(min(left, _READ_CHUNK))
        if not view:
            return
        stream.pos += len(view)
        left -= len(view)
        yield view


class _HeaderRefused(Exception):
    """A tar header refused before tarfile finished parsing it (wrapped with the layer name)."""

    def __init__(self, offset: int, rule: str, expected: str, seen: str) -> None:
        super().__init__(f"tar header at offset {offset} refused ({rule}): expected {expected}, seen {seen}")


_META_TYPES = {
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
}
#: tarfile reads pax / long-name headers wholly into memory: bound them
MAX_META_SIZE = 1 << 20
MAX_GLOBAL_PAX_KEYS = 1024


_nti = cast(Any, tarfile).nti


def _old_gnu_sparse_entries(buf: bytes | bytearray, pos: int, count: int) -> list[tuple[int, int]]:
    """The (offset, length) entries of an old GNU sparse block, up to the first empty one."""
    out = []
    for _ in range(count):
        if buf[pos] == 0:  # where GNU tar, BSD tar and Go stop reading entries
            break
        out.append((_nti(buf[pos : pos + 12]), _nti(buf[pos + 12 : pos + 24])))
        pos += 24
    return out


class _CheckedTarInfo(tarfile.TarInfo):
    """Bounds what tarfile buffers while parsing headers, and records why parsing stopped.

    tarfile ends an archive silently on a truncated or garbage header; only an all-zero
    block (EOFHeaderError) or the end of data exactly at a header boundary is a clean end,
    which unpack_layer checks afterwards.  Sparse maps are parsed here with a bound on
    their length (tarfile's own loops read them whole, and 1.0 maps without end); each
    sparse entry records ``layerseal_stored``, the bytes of data the archive holds for it.
    PAX records with an empty value are ignored, as Go's archive/tar (umoci) does.
    """

    layerseal_stored: int

    @classmethod
    def fromtarfile(cls, tf: tarfile.TarFile) -> Self:
        try:
            return super().fromtarfile(tf)
        except tarfile.HeaderError as e:
            setattr(tf, "_layerseal_end", e)  # noqa: B010
            raise

    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> Self:
        obj = super().frombuf(buf, encoding, errors)
        if obj.type == tarfile.GNUTYPE_SPARSE:
            entries = _old_gnu_sparse_entries(buf, 386, 4)
            setattr(obj, "_sparse_structs", (entries, bool(buf[482]), _nti(buf[483:495])))  # noqa: B010
        return obj

    def _proc_member(self, tf: tarfile.TarFile) -> Self:
        if self.type in _META_TYPES and self.size > MAX_META_SIZE:
            raise _HeaderRefused(
                self.offset, "metadata header size", f"at most {MAX_META_SIZE} bytes", f"{self.size} bytes"
            )
        result: Self = super()._proc_member(tf)  # type: ignore[misc]
        if len(tf.pax_headers) > MAX_GLOBAL_PAX_KEYS:
            raise _HeaderRefused(
                self.offset,
                "global pax headers",
                f"at most {MAX_GLOBAL_PAX_KEYS} keys",
                f"{len(tf.pax_headers)}",
            )
        return result

    def _proc_builtin(self, tf: tarfile.TarFile) -> Self:
        self.layerseal_stored = self.size
        result: Self = super()._proc_builtin(tf)  # type: ignore[misc]
        return result

    def _proc_sparse(self, tf: tarfile.TarFile) -> Self:
        entries, extended, realsize = getattr(self, "_sparse_structs")  # noqa: B009
        del self._sparse_structs  # type: ignore[attr-defined]
        while extended:
            self._check_regions(len(entries))
            buf = cast(Any, tf.fileobj).read(tarfile.BLOCKSIZE)
            if len(buf) < tarfile.BLOCKSIZE:
                raise cast(Any, tarfile).TruncatedHeaderError("truncated old GNU sparse header")
            entries += _old_gnu_sparse_entries(buf, 0, 21)
            extended = bool(buf[504])
        self._check_regions(len(entries))
        cast(Any, self).sparse = entries
        self.layerseal_stored = self.size
        self.offset_data = cast(Any, tf.fileobj).tell()
        tf.offset = self.offset_data + self._block(self.size)  # type: ignore[attr-defined]
        self.size = realsize
        return self

    def _check_regions(self, n: int) -> None:
        if n > MAX_SPARSE_REGIONS:
            raise _HeaderRefused(
                self.offset, "sparse map size", f"at most {MAX_SPARSE_REGIONS} regions", f"{n} or more"
            )

    def _proc_gnusparse_00(self, next: tarfile.TarInfo, *args: Any) -> None:
        # 3.11 passes (pax_headers, raw buffer), later versions the list of raw records
        raw = args[-1]
        n = raw.count(b" GNU.sparse.offset=") if isinstance(raw, bytes | bytearray) else len(raw) // 2
        self._check_regions(n)
        super()._proc_gnusparse_00(next, *args)  # type: ignore[misc]

    def _proc_gnusparse_01(self, next: tarfile.TarInfo, pax_headers: dict[str, str]) -> None:
        self._check_regions(pax_headers["GNU.sparse.map"].count(",") // 2)
        try:
            super()._proc_gnusparse_01(next, pax_headers)  # type: ignore[misc]
        except ValueError:
            raise _HeaderRefused(
                self.offset,
                "sparse map",
                "comma-separated numbers",
                repr(pax_headers["GNU.sparse.map"][:100]),
            ) from None

    def _proc_gnusparse_10(
        self, next: tarfile.TarInfo, pax_headers: dict[str, str], tf: tarfile.TarFile
    ) -> None:
        # the map heads the entry's data: a count, then offset and length per region, one
        # decimal number a line, padded to whole blocks
        fileobj = cast(Any, tf.fileobj)
        start = fileobj.tell()
        buf = b""
        count: int | None = None
        values: list[int] = []
        while count is None or len(values) < 2 * count:
            nl = buf.find(b"\n")
            if nl < 0:
                if len(buf) > 20:
                    raise _HeaderRefused(self.offset, "sparse map", "decimal numbers", repr(buf[:40]))
                more = fileobj.read(tarfile.BLOCKSIZE)
                if not more:
                    raise _HeaderRefused(self.offset, "sparse map", "a complete map", "the end of data")
                buf += more
                continue
            field, buf = buf[:nl], buf[nl + 1 :]
            if not field.isdigit() or len(field) > 20:
                raise _HeaderRefused(self.offset, "sparse map", "decimal numbers", repr(field[:40]))
            if count is None:
                count = int(field)
                self._check_regions(count)
            else:
                values.append(int(field))
        next.offset_data = fileobj.tell()
        stored = cast(_CheckedTarInfo, next).layerseal_stored - (next.offset_data - start)
        cast(_CheckedTarInfo, next).layerseal_stored = stored
        cast(Any, next).sparse = list(zip(values[::2], values[1::2], strict=True))

    def _apply_pax_info(self, pax_headers: dict[str, str], encoding: str, errors: str) -> None:
        # Go's archive/tar keeps the ustar value when a record is empty (and so drops
        # empty-valued xattrs): do the same, so that trees match umoci's
        kept = {k: v for k, v in pax_headers.items() if v != ""}
        super()._apply_pax_info(kept, encoding, errors)  # type: ignore[misc]


class _Blocked(Exception):
    """A path component is missing, a symlink, or not a directory (internal)."""

    def __init__(self, sofar: tuple[str, ...], kind: str) -> None:
        super().__init__(kind)
        self.sofar = sofar
        self.kind = kind


def _describe(st_mode: int) -> str:
    if stat.S_ISLNK(st_mode):
        return "a symlink"
    if stat.S_ISREG(st_mode):
        return "a regular file"
    if stat.S_ISDIR(st_mode):
        return "a directory"
    return "a special file"


def _open_child_dir(dir_fd: int, name: str, sofar: tuple[str, ...]) -> int:
    """Open ``name`` under ``dir_fd`` as a directory without following a symlink."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        raise _Blocked(sofar, "missing") from None
    except OSError as e:
        if e.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(name, dir_fd=dir_fd)
            raise _Blocked(sofar, f"a symlink to {target!r}") from None
        raise _Blocked(sofar, _describe(st.st_mode)) from None


def _walk(root_fd: int, parts: tuple[str, ...]) -> int:
    """Open the directory ``parts`` below ``root_fd`` (no symlinks); caller closes."""
    fd = os.dup(root_fd)
    try:
        for i, name in enumerate(parts):
            child = _open_child_dir(fd, name, parts[: i + 1])
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _grant_owner(dir_fd: int, name: str) -> None:
    """Give the owner rwx on the directory ``name`` (without root, a 0o000 or 0o500
    directory a layer asked for can be neither listed nor emptied otherwise)."""
    fd = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        if mode & stat.S_IRWXU != stat.S_IRWXU:
            # an O_PATH descriptor cannot be fchmod'ed; its /proc link names the very inode
            os.chmod(f"/proc/self/fd/{fd}", mode | stat.S_IRWXU)
    finally:
        os.close(fd)


def _clear_files(dir_fd: int) -> list[str]:
    """Unlink every non-directory in ``dir_fd``; return the names of its subdirectories."""
    subdirs = []
    with os.scandir(dir_fd) as it:
        names = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
    for name, is_dir in names:
        if is_dir:
            subdirs.append(name)
        else:
            os.unlink(name, dir_fd=dir_fd)
    return subdirs


def _rmtree_at(parent_fd: int, name: str) -> None:
    """Remove the directory tree ``name`` below ``parent_fd`` without recursion.

    One descriptor at a time: a tree thousands of directories deep needs neither a deep
    Python stack (shutil.rmtree recurses) nor as many open files.
    """
    privileged = _privileged()
    if not privileged:
        _grant_owner(parent_fd, name)
    fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    try:
        pending = [_clear_files(fd)]
        path: list[str] = []
        while pending:
            if pending[-1]:
                child = pending[-1].pop()
                if not privileged:
                    _grant_owner(fd, child)
                sub = os.open(child, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = sub
                path.append(child)
                pending.append(_clear_files(fd))
                continue
            pending.pop()
            if path:
                up = os.open("..", _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = up
                os.rmdir(path.pop(), dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=parent_fd)


def _remove_at(dir_fd: int, name: str) -> bool:
    """Remove ``name`` (tree or not) under ``dir_fd``; return whether it was a directory."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(st.st_mode):
        _rmtree_at(dir_fd, name)
        return True
    os.unlink(name, dir_fd=dir_fd)
    return False


def remove_tree(path: Path) -> None:
    """Remove ``path`` (a directory tree, a file or a symlink) if present; never follows symlinks."""
    parent_fd = os.open(path.parent, _DIR_FLAGS)
    try:
        _remove_at(parent_fd, path.name)
    finally:
        os.close(parent_fd)


def _empty_dir(dir_fd: int) -> None:
    for name in os.listdir(dir_fd):
        _remove_at(dir_fd, name)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _xattr_allowed(name: str, privileged: bool) -> bool:
    if ".overlay." in name or name.startswith(("trusted.overlay", "user.overlay")):
        return False
    return name.startswith("user.") or privileged


class _BadTime(ValueError):
    """A PAX mtime that is not ``seconds[.fraction]`` (Go's archive/tar refuses it too)."""


_PAX_TIME = re.compile(r"([+-]?[0-9]+)(?:\.([0-9]*))?", re.ASCII)


def _mtime_ns(ti: tarfile.TarInfo) -> int:
    """The entry's mtime in ns, exact: tarfile turns a PAX mtime into a float, which
    drifts by up to ~256 ns today, so the record itself is parsed (as Go's archive/tar
    does: at most 9 fraction digits, truncated; a negative time counts down)."""
    text = ti.pax_headers.get("mtime")
    if text is None:
        return int(ti.mtime) * 1_000_000_000
    m = _PAX_TIME.fullmatch(text)
    if m is None or len(m.group(1)) > 12:
        raise _BadTime(text)
    secs = m.group(1)
    ns = int(((m.group(2) or "") + "000000000")[:9])
    return int(secs) * 1_000_000_000 + (-ns if secs.startswith("-") else ns)


def _dirs_post_order(
    root_fd: int, targets: Mapping[tuple[str, ...], _T], fn: Callable[[int, tuple[str, ...], _T], None]
) -> None:
    """Call ``fn(fd, parts, value)`` for every directory in ``targets``, children first.

    Paths are opened one component at a time without following symlinks; a path that is
    no longer a directory is skipped.  Only one descriptor is held (the walk goes up by
    ``..``, opened before ``fn`` may make a directory unsearchable), so trees thousands
    of levels deep need no more open files than flat ones.
    """
    path: list[str] = []
    wanted: list[bool] = []
    fd = os.dup(root_fd)

    def ascend(fd: int) -> int:
        up = os.open("..", _DIR_FLAGS, dir_fd=fd)
        try:
            if wanted[-1]:
                parts = tuple(path)
                fn(fd, parts, targets[parts])
        except BaseException:
            os.close(up)  # fd stays the caller's to close
            raise
        os.close(fd)
        path.pop()
        wanted.pop()
        return up

    try:
        for parts in sorted(targets):
            if not parts:
                continue
            if parts[: len(path)] == tuple(path):
                common = len(path)  # the usual case in sorted order: a descendant
            else:
                common = 0
                while common < min(len(path), len(parts)) and path[common] == parts[common]:
                    common += 1
            while len(path) > common:
                fd = ascend(fd)
            for name in parts[len(path) :]:
                try:
                    child = _open_child_dir(fd, name, parts)
                except _Blocked:
                    break
                os.close(fd)
                fd = child
                path.append(name)
                wanted.append(False)
            else:
                wanted[-1] = True
        while path:
            fd = ascend(fd)
        if () in targets:
            fn(fd, (), targets[()])
    finally:
        os.close(fd)


class _Extractor:
    """Writes tar members below ``root_fd`` under the rules in the module docstring."""

    def __init__(
        self,
        root_fd: int,
        what: str,
        allow_devices: bool,
        max_entry_size: int,
        privileged: bool,
        budget: LayerBudget,
    ) -> None:
        self.root_fd = root_fd
        self.what = what
        self.allow_devices = allow_devices
        self.max_entry_size = max_entry_size
        self.privileged = privileged
        self.budget = budget
        # regular files written by this layer (path -> (dev, ino)): hard-link targets
        self.files: dict[tuple[str, ...], tuple[int, int]] = {}
        # hard links to a lower layer's file: path -> (target, (dev, ino) of the placeholder)
        self.lower_links: dict[tuple[str, ...], tuple[tuple[str, ...], tuple[int, int]]] = {}
        # directories to finish at the end; None = created implicitly as a parent
        self.dirs: dict[tuple[str, ...], tarfile.TarInfo | None] = {}
        self.entries = 0
        self.bytes_written = 0
        self.skipped: list[str] = []
        self._cache: tuple[tuple[str, ...], int] | None = None

    # -- errors ------------------------------------------------------------------------

    def refuse(self, entry: str, rule: str, expected: str, seen: str) -> NoReturn:
        raise BadInputError(
            expected_seen(f"{self.what}: tar entry {entry[:300]!r} refused ({rule})", expected, seen)
        )

    def _blocked(self, entry: str, b: _Blocked) -> NoReturn:
        where = "/".join(b.sofar)
        if b.kind.startswith("a symlink"):
            self.refuse(entry, "no writes through symlinks", f"{where!r} to be a directory", b.kind)
        self.refuse(entry, "parent must be a directory", f"{where!r} to be a directory", b.kind)

    # -- names -------------------------------------------------------------------------

    def normalise(self, entry: str, name: str, field: str) -> tuple[str, ...]:
        if "\x00" in name:
            self.refuse(entry, f"no NUL in {field}", "a name without NUL bytes", repr(name[:300]))
        if name.startswith("/"):
            self.refuse(entry, f"no absolute {field}", "a path relative to the layer root", repr(name[:300]))
        parts = tuple(p for p in name.split("/") if p not in ("", "."))
        if ".." in parts:
            self.refuse(entry, f"no '..' in {field}", "a path without '..' components", repr(name[:300]))
        return parts

    # -- directories -------------------------------------------------------------------

    def _invalidate(self) -> None:
        if self._cache is not None:
            os.close(self._cache[1])
            self._cache = None

    def parent_fd(self, entry: str, parts: tuple[str, ...]) -> int:
        """Directory fd for ``parts`` (created as needed); owned by the cache, do not close."""
        if not parts:
            return self.root_fd
        if self._cache is not None and self._cache[0] == parts:
            return self._cache[1]
        # continue from the cached directory when it is an ancestor: a deep tree is then
        # walked once, not once per level
        start = 0
        if self._cache is not None and parts[: len(self._cache[0])] == self._cache[0]:
            start = len(self._cache[0])
            fd = os.dup(self._cache[1])
        else:
            fd = os.dup(self.root_fd)
        self._invalidate()
        try:
            for i in range(start, len(parts)):
                name = parts[i]
                sofar = parts[: i + 1]
                if name.startswith(WHITEOUT_PREFIX):
                    self.refuse(
                        entry, "whiteout markers are not directories", "a plain directory name", repr(name)
                    )
                try:
                    child = _open_child_dir(fd, name, sofar)
                except _Blocked as b:
                    if b.kind != "missing":
                        self._blocked(entry, b)
                    os.mkdir(name, 0o700, dir_fd=fd)
                    self.dirs.setdefault(sofar, None)
                    child = _open_child_dir(fd, name, sofar)
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        self._cache = (parts, fd)
        return fd

    def clear_slot(self, dir_fd: int, name: str, keep_dir: bool) -> bool:
        """Make room for a new entry; return True if a directory stays to be reused."""
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return True
            self._invalidate_below(dir_fd)
        # replacing, not following: unlink removes a symlink itself, never its target
        _remove_at(dir_fd, name)
        return False

    def _invalidate_below(self, dir_fd: int) -> None:
        # a removed tree may contain the cached directory; only drop the cache if it is not dir_fd
        if self._cache is not None and self._cache[1] != dir_fd:
            self._invalidate()

    # -- metadata ----------------------------------------------------------------------

    def _mode(self, ti: tarfile.TarInfo) -> int:
        mode = ti.mode & 0o7777
        return mode if self.privileged else mode & ~(stat.S_ISUID | stat.S_ISGID)

    def _xattrs(self, target: int | str, ti: tarfile.TarInfo, entry: str) -> None:
        for key, value in ti.pax_headers.items():
            if not key.startswith("SCHILY.xattr."):
                continue
            name = key[len("SCHILY.xattr.") :]
            if not _xattr_allowed(name, self.privileged):
                self.skipped.append(f"{entry}: xattr {name}")
                continue
            try:
                os.setxattr(
                    target,
                    name,
                    value.encode("utf-8", "surrogateescape"),
                    follow_symlinks=isinstance(target, int),
                )
            except OSError as e:
                if e.errno not in (errno.ENOTSUP, errno.EPERM, errno.EACCES, errno.EINVAL, errno.ERANGE):
                    raise
                self.skipped.append(f"{entry}: xattr {name} ({e.strerror})")

    def mtime(self, ti: tarfile.TarInfo, entry: str) -> int:
        try:
            return _mtime_ns(ti)
        except _BadTime as e:
            self.refuse(entry, "pax mtime", "seconds[.fraction]", repr(str(e)[:100]))

    def apply_fd_meta(self, fd: int, ti: tarfile.TarInfo, entry: str) -> None:
        # order matters: chown clears setuid bits and file capabilities, so it goes first;
        # xattrs precede chmod since setting them needs write permission without root
        if self.privileged:
            os.fchown(fd, ti.uid, ti.gid)
        self._xattrs(fd, ti, entry)
        os.fchmod(fd, self._mode(ti))
        t = self.mtime(ti, entry)
        os.utime(fd, ns=(t, t))

    # -- members -----------------------------------------------------------------------

    def add(self, tf: tarfile.TarFile, ti: tarfile.TarInfo) -> None:
        entry = ti.name
        self.budget.charge_entry()
        self.entries += 1
        if ti.size < 0 or ti.size > self.max_entry_size:
            self.refuse(entry, "entry size limit", f"at most {self.max_entry_size} bytes", f"{ti.size} bytes")
        if ti.size and not ti.isreg():
            self.refuse(entry, "only regular files carry data", "size 0", f"size {ti.size}")
        parts = self.normalise(entry, entry, "entry name")
        if parts and "/" + WHITEOUT_PREFIX * 2 in "/" + "/".join(parts[:-1]):
            # inside AUFS metadata directories (.wh..wh.plnk/...): meaningless for OCI layers
            self.skipped.append(entry)
            self._discard_data(tf, ti, entry)
            return
        try:
            self._add(tf, ti, entry, parts)
        except tarfile.TarError as e:
            raise BadInputError(
                expected_seen(
                    f"{self.what}: tar entry {entry[:300]!r}",
                    "complete entry data",
                    f"{e} (truncated or corrupt)",
                )
            ) from e
        except OSError as e:
            msg = expected_seen(f"{self.what}: tar entry {entry[:300]!r}", "it to be written", str(e))
            if e.errno in _INPUT_ERRNOS:
                raise BadInputError(msg) from e
            raise LayersealError(msg) from e

    def _add(self, tf: tarfile.TarFile, ti: tarfile.TarInfo, entry: str, parts: tuple[str, ...]) -> None:
        if not parts:
            if not ti.isdir():
                self.refuse(entry, "the layer root is a directory", "a directory entry", f"type {ti.type!r}")
            self.dirs[()] = ti
            return
        base = parts[-1]
        if base.startswith(WHITEOUT_PREFIX):
            self._whiteout(tf, ti, entry, parts)
            return
        parent = self.parent_fd(entry, parts[:-1])
        if ti.isdir():
            if not self.clear_slot(parent, base, keep_dir=True):
                os.mkdir(base, 0o700, dir_fd=parent)
            self.dirs[parts] = ti
        elif ti.isreg():
            self._regular(tf, ti, entry, parts, parent)
        elif ti.issym():
            self._symlink(ti, entry, base, parent)
        elif ti.islnk():
            self._hardlink(ti, entry, parts, parent)
        elif ti.ischr() or ti.isblk() or ti.isfifo():
            self._special(ti, entry, base, parent)
        else:
            self.refuse(
                entry,
                "supported entry types",
                "file, dir, symlink, link, device or fifo",
                f"type {ti.type!r}",
            )

    def _whiteout(self, tf: tarfile.TarFile, ti: tarfile.TarInfo, entry: str, parts: tuple[str, ...]) -> None:
        base = parts[-1]
        victim = base[len(WHITEOUT_PREFIX) :]
        if base != OPAQUE_MARKER:
            if victim.startswith(WHITEOUT_PREFIX):
                # other AUFS metadata (.wh..wh.plnk, .wh..wh.aufs): meaningless for OCI layers
                self.skipped.append(entry)
                self._discard_data(tf, ti, entry)
                return
            if victim in ("", ".", ".."):
                self.refuse(
                    entry, "whiteout must name one entry", "'.wh.' followed by a file name", repr(base)
                )
        parent = self.parent_fd(entry, parts[:-1])
        self.clear_slot(parent, base, keep_dir=False)
        fd = os.open(
            base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=parent
        )
        os.close(fd)
        self._discard_data(tf, ti, entry)

    def _discard_data(self, tf: tarfile.TarFile, ti: tarfile.TarInfo, entry: str) -> None:
        if not ti.size or tf.extractfile(ti) is None:
            return
        seen = 0
        for chunk in _member_data(tf, ti, ti.size):
            seen += len(chunk)
        if seen != ti.size:
            self.refuse(entry, "complete entry data", f"{ti.size} bytes", f"{seen} bytes (truncated)")

    def _regular(
        self, tf: tarfile.TarFile, ti: tarfile.TarInfo, entry: str, parts: tuple[str, ...], parent: int
    ) -> None:
        base = parts[-1]
        self.clear_slot(parent, base, keep_dir=False)
        self.files.pop(parts, None)
        fd = os.open(
            base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=parent
        )
        try:
            if ti.sparse is not None:
                written = self._sparse(tf, ti, entry, fd)
            else:
                written = 0
                if ti.size:  # a regular member: extractfile() would never be None
                    for chunk in _member_data(tf, ti, ti.size):
                        written += len(chunk)
                        _write_all(fd, chunk)
                if written != ti.size:
                    self.refuse(
                        entry, "complete entry data", f"{ti.size} bytes", f"{written} bytes (truncated)"
                    )
            self.bytes_written += written
            self.apply_fd_meta(fd, ti, entry)
            st = os.fstat(fd)
        finally:
            os.close(fd)
        self.files[parts] = (st.st_dev, st.st_ino)

    def _sparse(self, tf: tarfile.TarFile, ti: tarfile.TarInfo, entry: str, fd: int) -> int:
        """Write a sparse entry's data regions at their offsets; the rest stays holes."""
        regions: list[tuple[int, int]] = cast(Any, ti).sparse or []
        stored = cast(_CheckedTarInfo, ti).layerseal_stored
        rule = "sparse map"
        end = total = 0
        for offset, length in regions:
            # the checks of Go's archive/tar (and BSD tar)
            if offset < 0 or length < 0 or offset < end or offset + length > ti.size:
                self.refuse(
                    entry,
                    rule,
                    f"ordered, non-overlapping regions within the file's {ti.size} bytes",
                    f"region at {offset} of {length} bytes",
                )
            end = offset + length
            total += length
        if total != stored:
            self.refuse(entry, rule, f"regions holding the entry's {stored} data bytes", f"{total} bytes")
        if ti.size > stored:
            self.budget.charge_bytes(ti.size - stored)  # holes read back as zeros: they count
        raw = copy.copy(ti)
        raw.sparse = None
        raw.size = stored
        src = tf.extractfile(raw)
        written = 0
        for offset, length in regions:
            pos, left = offset, length
            while left:
                chunk = src.read(min(left, _READ_CHUNK)) if src is not None else b""
                if not chunk:
                    self.refuse(
                        entry, "complete entry data", f"{stored} bytes", f"{written} bytes (truncated)"
                    )
                view = memoryview(chunk)
                while view:
                    n = os.pwrite(fd, view, pos)
                    view, pos = view[n:], pos + n
                left -= len(chunk)
                written += len(chunk)
        os.ftruncate(fd, ti.size)
        return written

    def _symlink(self, ti: tarfile.TarInfo, entry: str, base: str, parent: int) -> None:
        target = ti.linkname
        # the target may point anywhere: it is never followed here, only recorded
        if not target or "\x00" in target:
            self.refuse(entry, "symlink target", "a non-empty target without NUL", repr(target[:300]))
        self.clear_slot(parent, base, keep_dir=False)
        os.symlink(target, base, dir_fd=parent)
        if self.privileged:
            os.chown(base, ti.uid, ti.gid, dir_fd=parent, follow_symlinks=False)
            if any(k.startswith("SCHILY.xattr.") for k in ti.pax_headers):
                self._xattrs(f"/proc/self/fd/{parent}/{base}", ti, entry)
        t = self.mtime(ti, entry)
        os.utime(base, ns=(t, t), dir_fd=parent, follow_symlinks=False)

    def _hardlink(self, ti: tarfile.TarInfo, entry: str, parts: tuple[str, ...], parent: int) -> None:
        tparts = self.normalise(entry, ti.linkname, "hard link target")
        rule = "hard links stay inside the image"
        want = "a regular file extracted earlier from this layer, or a path of a lower layer"
        if not tparts or tparts == parts:
            self.refuse(entry, rule, want, repr(ti.linkname))
        ident = self.files.get(tparts)
        if ident is None:
            lower = self.lower_links.get(tparts)
            if lower is not None:
                self._link_lower(parts, parent, lower[0])
                return
        try:
            tparent = _walk(self.root_fd, tparts[:-1])
        except _Blocked as b:
            if ident is None and b.kind == "missing":
                self._link_lower(parts, parent, tparts)  # the target lies in a lower layer
                return
            self.refuse(entry, rule, want, f"{ti.linkname!r} behind {'/'.join(b.sofar)!r}, {b.kind}")
        try:
            try:
                st = os.stat(tparts[-1], dir_fd=tparent, follow_symlinks=False)
            except FileNotFoundError:
                if ident is not None:
                    raise
                self._link_lower(parts, parent, tparts)
                return
            if ident is None:
                self.refuse(
                    entry, rule, want, f"{ti.linkname!r}, which is {_describe(st.st_mode)} of this layer"
                )
            if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != ident:
                self.refuse(entry, rule, want, f"{ti.linkname!r}, since replaced by {_describe(st.st_mode)}")
            self.clear_slot(parent, parts[-1], keep_dir=False)
            os.link(tparts[-1], parts[-1], src_dir_fd=tparent, dst_dir_fd=parent, follow_symlinks=False)
        finally:
            os.close(tparent)
        self.files[parts] = ident

    def _link_lower(self, parts: tuple[str, ...], parent: int, target: tuple[str, ...]) -> None:
        """Leave an empty placeholder, linked to the lower layer's file when stacking."""
        self.clear_slot(parent, parts[-1], keep_dir=False)
        self.files.pop(parts, None)
        fd = os.open(
            parts[-1],
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=parent,
        )
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
        self.lower_links[parts] = (target, (st.st_dev, st.st_ino))

    def _special(self, ti: tarfile.TarInfo, entry: str, base: str, parent: int) -> None:
        if not self.allow_devices:
            log.warning("%s: skipping device/fifo entry %r (devices not allowed)", self.what, entry)
            self.skipped.append(entry)
            return
        kind = stat.S_IFIFO if ti.isfifo() else stat.S_IFCHR if ti.ischr() else stat.S_IFBLK
        self.clear_slot(parent, base, keep_dir=False)
        os.mknod(base, kind | 0o600, os.makedev(ti.devmajor, ti.devminor), dir_fd=parent)
        # the node was just made by us in a directory we hold open: following is safe here
        if self.privileged:
            os.chown(base, ti.uid, ti.gid, dir_fd=parent, follow_symlinks=False)
        os.chmod(base, self._mode(ti), dir_fd=parent)
        t = self.mtime(ti, entry)
        os.utime(base, ns=(t, t), dir_fd=parent, follow_symlinks=False)

    # -- the end -----------------------------------------------------------------------

    def finish(self) -> None:
        self._invalidate()
        self.dirs.setdefault((), None)
        records = []
        for parts, (target, ident) in self.lower_links.items():
            try:
                pfd = _walk(self.root_fd, parts[:-1])
            except _Blocked:
                continue
            try:
                st = os.stat(parts[-1], dir_fd=pfd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            finally:
                os.close(pfd)
            if (st.st_dev, st.st_ino) == ident:  # not replaced by a later entry
                records.append("/".join(parts) + "\0" + "/".join(target) + "\0")
        if records:
            fd = os.open(
                LOWER_LINKS, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600, dir_fd=self.root_fd
            )
            try:
                _write_all(fd, "".join(records).encode("utf-8", "surrogateescape"))
            finally:
                os.close(fd)
        _dirs_post_order(self.root_fd, self.dirs, self._finish_dir)

    def _finish_dir(self, fd: int, parts: tuple[str, ...], ti: tarfile.TarInfo | None) -> None:
        if ti is None:
            # only written into: stacking keeps the metadata of the directory below, if any
            os.close(os.open(IMPLICIT_MARKER, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600, dir_fd=fd))
            os.fchmod(fd, 0o755)
        else:
            self.apply_fd_meta(fd, ti, ti.name)

    def close(self) -> None:
        self._invalidate()


def _prepare_target(target: Path, what: str) -> bool:
    """Make sure ``target`` is an empty real directory; return True if created here."""
    try:
        st = target.lstat()
    except FileNotFoundError:
        target.mkdir(mode=0o700)
        return True
    if not stat.S_ISDIR(st.st_mode):
        raise MisuseError(
            expected_seen(f"{what}: unpack target {str(target)!r}", "a directory", _describe(st.st_mode))
        )
    if any(target.iterdir()):
        raise MisuseError(
            expected_seen(f"{what}: unpack target {str(target)!r}", "an empty directory", "entries")
        )
    return False


def unpack_layer(
    chunks: Iterable[bytes],
    compression: str,
    target: Path,
    *,
    what: str = "layer",
    allow_devices: bool | None = None,
    max_entry_size: int | None = None,
    limits: UnpackLimits | None = None,
    budget: ImageBudget | None = None,
) -> UnpackResult:
    """Stream a (compressed) layer tar into the empty or new directory ``target``.

    Returns the diff_id (sha256 of the uncompressed tar) with counts; the caller compares
    it with the image config.  On any error ``target`` is left empty (or removed if this
    call created it) and the error names ``what`` and the tar entry.

    Uncompressed bytes and entries are charged to ``budget`` (the image's, shared by its
    layers) or else to a budget of this layer alone under ``limits``; passing a limit
    stops the unpack before the data past it is written.
    """
    privileged = _privileged()
    if allow_devices is None:
        allow_devices = privileged
    limit = DEFAULT_MAX_ENTRY_SIZE if max_entry_size is None else max_entry_size
    decompress = decompressor(compression, what=what)
    target = Path(target)
    created = _prepare_target(target, what)
    layer_budget = (budget or ImageBudget(limits)).layer(what)
    root_fd = os.open(target, _DIR_FLAGS)
    try:
        reader = _HashingReader(decompress(chunks), layer_budget)
        ex = _Extractor(root_fd, what, allow_devices, limit, privileged, layer_budget)
        try:
            with tarfile.open(
                fileobj=cast(IO[bytes], reader),
                mode="r|",
                tarinfo=_CheckedTarInfo,
                encoding="utf-8",
                errors="surrogateescape",
            ) as tf:
                while (ti := tf.next()) is not None:
                    ex.add(tf, ti)
                    cast(Any, tf).members.clear()  # stream mode keeps every header otherwise
                end = getattr(tf, "_layerseal_end", None)
            if not isinstance(end, _CLEAN_ENDS):
                raise BadInputError(
                    expected_seen(
                        f"{what}: tar stream",
                        "an end-of-archive block of zeros, or the end of data after a whole member",
                        f"{end or 'end of data'} after {reader.size} bytes (truncated or corrupt)",
                    )
                )
            ex.finish()
        finally:
            ex.close()
        reader.drain()
    except tarfile.TarError as e:
        _cleanup(root_fd, target, created)
        raise BadInputError(expected_seen(f"{what}: tar stream", "a valid tar archive", f"{e}")) from e
    except _HeaderRefused as e:
        _cleanup(root_fd, target, created)
        raise BadInputError(f"{what}: {e}") from e
    except BaseException:
        _cleanup(root_fd, target, created)
        raise
    os.close(root_fd)
    if ex.skipped:
        log.warning("%s: %d entries or attributes skipped", what, len(ex.skipped))
    return UnpackResult(reader.digest(), ex.entries, ex.bytes_written, tuple(ex.skipped))


def _cleanup(root_fd: int, target: Path, created: bool) -> None:
    try:
        if not _privileged():
            os.fchmod(root_fd, stat.S_IMODE(os.fstat(root_fd).st_mode) | stat.S_IRWXU)
        _empty_dir(root_fd)
    finally:
        os.close(root_fd)
    if created:
        target.rmdir()


# -- stacking ------------------------------------------------------------------------------


def _copy_xattrs(src: int | str, dst: int | str, privileged: bool) -> None:
    # an fd cannot be combined with follow_symlinks=False; a path here ends in a symlink
    fs, fd_ = isinstance(src, int), isinstance(dst, int)
    try:
        names = os.listxattr(src, follow_symlinks=fs)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EPERM):
            return
        raise
    for name in names:
        if not _xattr_allowed(name, privileged):
            continue
        try:
            os.setxattr(dst, name, os.getxattr(src, name, follow_symlinks=fs), follow_symlinks=fd_)
        except OSError as e:
            if e.errno not in (errno.ENOTSUP, errno.EPERM, errno.EACCES):
                raise


_FICLONE = 0x40049409  # _IOW(0x94, 9, int): share the source's extents (XFS reflink=1, btrfs)
# errnos meaning "no reflink here": fall back to copying
_NO_REFLINK = {errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY, errno.ENOSYS, errno.EPERM}


def _clear_xattrs(fd: int, privileged: bool) -> None:
    """Drop a directory's xattrs before an upper layer's entry describes it anew (as umoci)."""
    try:
        names = os.listxattr(fd)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EPERM):
            return
        raise
    for name in names:
        if _xattr_allowed(name, privileged) and not name.startswith("security."):
            with contextlib.suppress(OSError):
                os.removexattr(fd, name)


def _copy_sparse(src: int, dst: int, size: int) -> None:
    """Copy only the data extents of a file with holes, so the copy keeps its holes."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(src, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno != errno.ENXIO:  # ENXIO: only a hole remains
                raise
            break
        end = os.lseek(src, start, os.SEEK_HOLE)
        while start < end:
            n = os.copy_file_range(src, dst, min(end - start, 1 << 30), start, start)
            if n == 0:
                break
            start += n
        pos = end
    os.ftruncate(dst, size)


def _copy_data(src: int, dst: int, st: os.stat_result | None = None) -> None:
    # a reflinked rootfs costs no space beside its snapshot (holes included), and writes to it
    # copy on write, so a container can never change the cached snapshot through it
    try:
        fcntl.ioctl(dst, _FICLONE, src)
        return
    except OSError as e:
        if e.errno not in _NO_REFLINK:
            raise
    if st is not None and st.st_blocks * 512 < st.st_size:
        try:
            _copy_sparse(src, dst, st.st_size)
            return
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.ENOSYS, errno.EXDEV, errno.EOPNOTSUPP):
                raise
            os.lseek(src, 0, os.SEEK_SET)
            os.ftruncate(dst, 0)
            os.lseek(dst, 0, os.SEEK_SET)
    try:
        while os.sendfile(dst, src, None, 1 << 30):
            pass
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOSYS):
            raise
        while chunk := os.read(src, _READ_CHUNK):
            _write_all(dst, chunk)


def _open_for_copy(name: str, dir_fd: int, privileged: bool) -> int:
    """Open a snapshot file for reading, even one its owner may not read (mode 0o000).

    Without root, a layer's ``/etc/shadow`` (0o000 on RHEL/UBI) is unreadable to the very
    user who wrote it: the owner lends itself read access for the copy and takes it back.
    """
    try:
        return os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except PermissionError:
        if privileged:
            raise
    pfd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        mode = stat.S_IMODE(os.fstat(pfd).st_mode)
        link = f"/proc/self/fd/{pfd}"  # this very inode, whatever happens to the name
        os.chmod(link, mode | stat.S_IRUSR)
        try:
            return os.open(link, os.O_RDONLY | os.O_CLOEXEC)
        finally:
            os.chmod(link, mode)
    finally:
        os.close(pfd)


def _parse_lower_links(data: bytes, label: str, what: str) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    fields = data.decode("utf-8", "surrogateescape").split("\0")
    if fields[-1] != "" or len(fields) % 2 != 1:
        raise BadInputError(
            expected_seen(f"{what}: snapshot {label} {LOWER_LINKS}", "path/target records", "garbage")
        )
    out = []
    for i in range(0, len(fields) - 1, 2):
        pair = tuple(tuple(f.split("/")) for f in fields[i : i + 2])
        if any(p in ("", ".", "..") for side in pair for p in side):
            raise BadInputError(
                expected_seen(
                    f"{what}: snapshot {label} {LOWER_LINKS}", "relative paths", repr(fields[i : i + 2])
                )
            )
        out.append((pair[0], pair[1]))
    return out


class _Stacker:
    """Merges snapshot trees into ``root_fd``, lower first, applying whiteouts.

    The merge walks each snapshot with one pair of descriptors, going up by ``..``, so
    depth costs neither Python stack nor open files.  A directory a layer only wrote into
    (marked :data:`IMPLICIT_MARKER`) keeps the metadata of the one below, as it does when
    umoci unpacks the layers into one tree.
    """

    def __init__(self, root_fd: int, what: str, privileged: bool) -> None:
        self.root_fd = root_fd
        self.what = what
        self.privileged = privileged
        self.dirs: dict[tuple[str, ...], os.stat_result] = {}
        self._links: dict[tuple[int, int], tuple[str, ...]] = {}
        self._label = ""

    def layer(self, src_root: int, label: str) -> None:
        self._label = label
        self._links = {}  # the snapshot's own hard links join files of this layer only
        # hard links to lower files name them as the layers below left them: hold each
        # (O_PATH) before this layer's own changes, which may replace or remove it
        held: list[tuple[tuple[str, ...], int]] = []
        try:
            for parts, target in self._lower_links(src_root):
                held.append((parts, self._lower_file(parts, target)))
            self._merge(src_root)
            copies: dict[tuple[int, int], tuple[str, ...]] = {}
            for parts, fd in held:
                self._link_lower(parts, fd, copies)
        finally:
            for _, fd in held:
                os.close(fd)

    def _refuse(self, parts: tuple[str, ...], rule: str, expected: str, seen: str) -> NoReturn:
        path = "/".join(parts)
        raise BadInputError(
            expected_seen(f"{self.what}: snapshot {self._label} entry {path!r} ({rule})", expected, seen)
        )

    # -- hard links to lower layers ----------------------------------------------------

    def _lower_links(self, src_root: int) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
        try:
            fd = os.open(LOWER_LINKS, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=src_root)
        except FileNotFoundError:
            return []
        try:
            chunks = []
            while chunk := os.read(fd, _READ_CHUNK):
                chunks.append(chunk)
        finally:
            os.close(fd)
        return _parse_lower_links(b"".join(chunks), self._label, self.what)

    def _lower_file(self, parts: tuple[str, ...], target: tuple[str, ...]) -> int:
        rule = "hard links stay inside the image"
        want = f"{'/'.join(target)!r} to be a file of a lower layer"
        try:
            tparent = _walk(self.root_fd, target[:-1])
        except _Blocked as b:
            self._refuse(parts, rule, want, f"{'/'.join(b.sofar)!r} is {b.kind}")
        try:
            fd = os.open(target[-1], os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=tparent)
        except FileNotFoundError:
            self._refuse(parts, rule, want, "no such entry in any lower layer")
        finally:
            os.close(tparent)
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            os.close(fd)
            self._refuse(parts, rule, want, "a directory")
        return fd

    def _link_lower(
        self, parts: tuple[str, ...], fd: int, copies: dict[tuple[int, int], tuple[str, ...]]
    ) -> None:
        try:
            parent = _walk(self.root_fd, parts[:-1])
        except _Blocked as b:  # cannot happen for a snapshot unpack_layer wrote
            self._refuse(parts, "hard link placeholder", "its directory", f"{'/'.join(b.sofar)!r}: {b.kind}")
        try:
            _remove_at(parent, parts[-1])
            try:
                # the /proc link names the held inode itself, wherever it is now
                os.link(f"/proc/self/fd/{fd}", parts[-1], dst_dir_fd=parent, follow_symlinks=True)
            except FileNotFoundError:
                # this layer removed the file's last name after linking it: umoci's tree
                # then holds the link alone, so a copy of the file is equal to it
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    self._refuse(
                        parts, "hard links stay inside the image", "a regular file", _describe(st.st_mode)
                    )
                first = copies.get((st.st_dev, st.st_ino))
                if first is not None:  # the links to one removed file stay one inode
                    fparent = _walk(self.root_fd, first[:-1])
                    try:
                        os.link(
                            first[-1], parts[-1], src_dir_fd=fparent, dst_dir_fd=parent, follow_symlinks=False
                        )
                    finally:
                        os.close(fparent)
                    return
                sfd = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
                try:
                    self._copy_file(sfd, parent, parts[-1], st)
                finally:
                    os.close(sfd)
                copies[(st.st_dev, st.st_ino)] = parts
        finally:
            os.close(parent)

    # -- the merge ---------------------------------------------------------------------

    def _merge(self, src_root: int) -> None:
        src = os.dup(src_root)
        try:
            dst = os.dup(self.root_fd)
        except BaseException:
            os.close(src)
            raise
        parts: list[str] = []
        # per level: the names still to merge (reversed, popped in order); the snapshot
        # directory's mode to put back, where it was lent to its unprivileged owner
        lent: list[int | None] = [None]
        try:
            todo = [self._enter(src, dst, (), () in self.dirs, os.fstat(src))]
            while todo:
                if todo[-1]:
                    name = todo[-1].pop()
                    here = (*parts, name)
                    st = os.stat(name, dir_fd=src, follow_symlinks=False)
                    if not stat.S_ISDIR(st.st_mode):
                        self._entry(src, dst, here, st)
                        continue
                    existed = self._dst_dir(dst, name)
                    mode = None
                    if not self.privileged and st.st_mode & 0o500 != 0o500:
                        mode = stat.S_IMODE(st.st_mode)
                        _grant_owner(src, name)
                    sfd = os.open(name, _DIR_FLAGS, dir_fd=src)
                    os.close(src)
                    src = sfd
                    dfd = os.open(name, _DIR_FLAGS, dir_fd=dst)
                    os.close(dst)
                    dst = dfd
                    parts.append(name)
                    lent.append(mode)
                    todo.append(self._enter(src, dst, here, existed, st))
                    continue
                todo.pop()
                mode = lent.pop()
                if not parts:
                    break
                up = os.open("..", _DIR_FLAGS, dir_fd=src)
                try:
                    if mode is not None:
                        os.fchmod(src, mode)
                finally:
                    os.close(src)
                    src = up
                up = os.open("..", _DIR_FLAGS, dir_fd=dst)
                os.close(dst)
                dst = up
                parts.pop()
        finally:
            os.close(src)
            os.close(dst)

    def _dst_dir(self, dst: int, name: str) -> bool:
        """Make ``name`` a directory in the rootfs; return whether one was there already."""
        try:
            cur = os.stat(name, dir_fd=dst, follow_symlinks=False)
        except FileNotFoundError:
            os.mkdir(name, 0o700, dir_fd=dst)
            return False
        if stat.S_ISDIR(cur.st_mode):
            return True
        os.unlink(name, dir_fd=dst)
        os.mkdir(name, 0o700, dir_fd=dst)
        return False

    def _enter(
        self, src: int, dst: int, parts: tuple[str, ...], existed: bool, st: os.stat_result
    ) -> list[str]:
        """Apply a snapshot directory's whiteouts and own metadata; return its entries to merge."""
        names = sorted(os.listdir(src))
        if not (existed and IMPLICIT_MARKER in names):
            self.dirs[parts] = st
            if existed:
                _clear_xattrs(dst, self.privileged)
            _copy_xattrs(src, dst, self.privileged)
        if OPAQUE_MARKER in names:
            _empty_dir(dst)
        for name in names:
            if not name.startswith(WHITEOUT_PREFIX) or name == OPAQUE_MARKER:
                continue
            victim = name[len(WHITEOUT_PREFIX) :]
            if victim.startswith(WHITEOUT_PREFIX):
                continue
            if victim in ("", ".", ".."):
                self._refuse(
                    (*parts, name),
                    "whiteout must name one entry",
                    "'.wh.' followed by a file name",
                    repr(name),
                )
            _remove_at(dst, victim)
        return [n for n in reversed(names) if not n.startswith(WHITEOUT_PREFIX)]

    def _entry(self, src: int, dst: int, parts: tuple[str, ...], st: os.stat_result) -> None:
        name = parts[-1]
        mode = st.st_mode
        _remove_at(dst, name)
        if stat.S_ISREG(mode):
            self._file(src, dst, parts, st)
        elif stat.S_ISLNK(mode):
            os.symlink(os.readlink(name, dir_fd=src), name, dir_fd=dst)
            if self.privileged:
                os.chown(name, st.st_uid, st.st_gid, dir_fd=dst, follow_symlinks=False)
                _copy_xattrs(f"/proc/self/fd/{src}/{name}", f"/proc/self/fd/{dst}/{name}", True)
            os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dst, follow_symlinks=False)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode):
            os.mknod(name, stat.S_IFMT(mode) | 0o600, st.st_rdev, dir_fd=dst)
            if self.privileged:
                os.chown(name, st.st_uid, st.st_gid, dir_fd=dst, follow_symlinks=False)
            os.chmod(name, stat.S_IMODE(mode), dir_fd=dst)
            os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dst, follow_symlinks=False)
        else:
            log.warning("%s: skipping socket %r in snapshot %s", self.what, "/".join(parts), self._label)

    def _file(self, src: int, dst: int, parts: tuple[str, ...], st: os.stat_result) -> None:
        name = parts[-1]
        key = (st.st_dev, st.st_ino)
        first = self._links.get(key) if st.st_nlink > 1 else None
        if first is not None:
            try:
                first_parent = _walk(self.root_fd, first[:-1])
            except _Blocked:
                first = None
            else:
                try:
                    os.link(first[-1], name, src_dir_fd=first_parent, dst_dir_fd=dst, follow_symlinks=False)
                    return
                except FileNotFoundError:
                    first = None
                finally:
                    os.close(first_parent)
        sfd = _open_for_copy(name, src, self.privileged)
        try:
            self._copy_file(sfd, dst, name, st)
        finally:
            os.close(sfd)
        if st.st_nlink > 1:
            self._links[key] = parts

    def _copy_file(self, sfd: int, dst: int, name: str, st: os.stat_result) -> None:
        dfd = os.open(
            name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dst
        )
        try:
            _copy_data(sfd, dfd, st)
            if self.privileged:
                os.fchown(dfd, st.st_uid, st.st_gid)
            _copy_xattrs(sfd, dfd, self.privileged)
            os.fchmod(dfd, stat.S_IMODE(st.st_mode))
            os.utime(dfd, ns=(st.st_atime_ns, st.st_mtime_ns))
        finally:
            os.close(dfd)

    def finish(self) -> None:
        _dirs_post_order(self.root_fd, self.dirs, self._finish_dir)

    def _finish_dir(self, fd: int, parts: tuple[str, ...], st: os.stat_result) -> None:
        if self.privileged:
            os.fchown(fd, st.st_uid, st.st_gid)
        os.fchmod(fd, stat.S_IMODE(st.st_mode))
        os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))


def stack_snapshots(snapshots: Sequence[Path], rootfs: Path, *, what: str = "rootfs") -> None:
    """Build ``rootfs`` from snapshot directories, lowest layer first.

    Built in a temporary sibling directory and renamed into place when complete, so on
    any error ``rootfs`` is as before (absent, or the empty directory it was) and no
    temporary directory remains.
    """
    rootfs = Path(rootfs)
    try:
        st = rootfs.lstat()
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISDIR(st.st_mode) or any(rootfs.iterdir()):
            seen = "a non-empty directory" if stat.S_ISDIR(st.st_mode) else _describe(st.st_mode)
            raise MisuseError(expected_seen(f"{what}: {str(rootfs)!r}", "a new or empty directory", seen))
    privileged = _privileged()
    tmp = Path(tempfile.mkdtemp(prefix=f".{rootfs.name}.", suffix=".tmp", dir=rootfs.parent))
    try:
        root_fd = os.open(tmp, _DIR_FLAGS)
        try:
            stacker = _Stacker(root_fd, what, privileged)
            for snap in snapshots:
                src_root = os.open(snap, _DIR_FLAGS)
                try:
                    stacker.layer(src_root, str(snap))
                finally:
                    os.close(src_root)
            stacker.finish()
        finally:
            os.close(root_fd)
        os.rename(tmp, rootfs)
    except BaseException as e:
        remove_tree(tmp)
        if isinstance(e, OSError):
            raise LayersealError(expected_seen(f"{what}: building {str(rootfs)!r}", "success", str(e))) from e
        raise
