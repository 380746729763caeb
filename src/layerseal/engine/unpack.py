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

Policy choices:
- any ``..`` component and any absolute name (entry or hard-link target) is refused;
- device nodes and fifos are created only when ``allow_devices`` (default: running as
  root); otherwise they are skipped, logged, and listed in ``UnpackResult.skipped``;
- ownership is restored (numeric uid/gid, never names) only as root; without root the
  setuid/setgid bits are dropped; xattrs in ``user.*`` are always restored, other
  namespaces only as root, ``*.overlay.*`` never (they would steer overlayfs);
  an xattr the filesystem refuses is skipped and listed;
- directories' modes and mtimes are applied at the end, deepest first, so a read-only
  directory in the tar does not block its own children;
- pax/GNU long-name headers are capped at 1 MiB and sparse entries refused, since
  tarfile would buffer them whole.

Known limits: stacking never follows a lower layer's symlink, so an upper layer whose
directory ``lib/`` meets a lower symlink ``lib -> usr/lib`` replaces the symlink (as
overlayfs does; containerd would resolve it).  Without root, entries the owner cannot
read (mode 0o000 files, 0o300 directories) cannot be stacked.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NoReturn, Self, cast

from layerseal.engine.decompress import decompressor
from layerseal.errors import BadInputError, LayersealError, MisuseError, expected_seen
from layerseal.image.digest import Digest

log = logging.getLogger(__name__)

# raised by tarfile on an all-zero header block: the only clean end of an archive
_EOF_HEADER_ERROR: type[Exception] = tarfile.EOFHeaderError  # type: ignore[attr-defined]

DEFAULT_MAX_ENTRY_SIZE = 64 << 30
WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
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
    """A ``read(n)`` view of the decompressed chunk iterator that hashes every byte."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._it = chunks
        self._buf = memoryview(b"")
        self._h = hashlib.sha256()
        self.size = 0

    def _take(self, data: memoryview) -> bytes:
        out = bytes(data)
        self._h.update(out)
        self.size += len(out)
        return out

    def read(self, n: int = -1) -> bytes:
        while not self._buf:
            chunk = next(self._it, None)
            if chunk is None:
                return b""
            self._buf = memoryview(chunk)
        if n < 0 or n >= len(self._buf):
            out, self._buf = self._buf, memoryview(b"")
        else:
            out, self._buf = self._buf[:n], self._buf[n:]
        return self._take(out)

    def drain(self) -> None:
        # the diff_id covers the whole stream, including what follows the end-of-archive blocks
        while self.read(_READ_CHUNK):
            pass

    def digest(self) -> Digest:
        return Digest("sha256", self._h.hexdigest())


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


class _CheckedTarInfo(tarfile.TarInfo):
    """Bounds what tarfile buffers while parsing headers, and records why parsing stopped.

    tarfile ends an archive silently on a truncated or garbage header; only an all-zero
    block (EOFHeaderError) is a clean end, which unpack_layer checks afterwards.
    """

    @classmethod
    def fromtarfile(cls, tf: tarfile.TarFile) -> Self:
        try:
            return super().fromtarfile(tf)
        except tarfile.HeaderError as e:
            setattr(tf, "_layerseal_end", e)  # noqa: B010
            raise

    def _proc_member(self, tf: tarfile.TarFile) -> Self:
        if self.type in _META_TYPES and self.size > MAX_META_SIZE:
            raise _HeaderRefused(
                self.offset, "metadata header size", f"at most {MAX_META_SIZE} bytes", f"{self.size} bytes"
            )
        if self.type == tarfile.GNUTYPE_SPARSE:
            # old GNU sparse maps grow without bound; container layer writers never emit them
            raise _HeaderRefused(self.offset, "no sparse files", "a plain file", "a GNU sparse file")
        result: Self = super()._proc_member(tf)  # type: ignore[misc]
        if len(tf.pax_headers) > MAX_GLOBAL_PAX_KEYS:
            raise _HeaderRefused(
                self.offset,
                "global pax headers",
                f"at most {MAX_GLOBAL_PAX_KEYS} keys",
                f"{len(tf.pax_headers)}",
            )
        return result

    def _proc_gnusparse_10(
        self, next: tarfile.TarInfo, pax_headers: dict[str, str], tf: tarfile.TarFile
    ) -> None:
        raise _HeaderRefused(self.offset, "no sparse files", "a plain file", "a pax 1.0 sparse file")


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


def _remove_at(dir_fd: int, name: str) -> bool:
    """Remove ``name`` (tree or not) under ``dir_fd``; return whether it was a directory."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(st.st_mode):
        if not _privileged():
            sub = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
            try:
                _make_writable(sub)
            finally:
                os.close(sub)
        shutil.rmtree(name, dir_fd=dir_fd)
        return True
    os.unlink(name, dir_fd=dir_fd)
    return False


def _make_writable(dir_fd: int) -> None:
    # without root a read-only directory (as a layer may ask for) cannot be emptied
    os.chmod(dir_fd, stat.S_IMODE(os.fstat(dir_fd).st_mode) | stat.S_IRWXU)
    for entry in os.scandir(dir_fd):
        if entry.is_dir(follow_symlinks=False):
            sub = os.open(entry.name, _DIR_FLAGS, dir_fd=dir_fd)
            try:
                _make_writable(sub)
            finally:
                os.close(sub)


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


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _xattr_allowed(name: str, privileged: bool) -> bool:
    if ".overlay." in name or name.startswith(("trusted.overlay", "user.overlay")):
        return False
    return name.startswith("user.") or privileged


def _ns(seconds: float) -> int:
    return round(seconds * 1_000_000_000)


class _Extractor:
    """Writes tar members below ``root_fd`` under the rules in the module docstring."""

    def __init__(
        self, root_fd: int, what: str, allow_devices: bool, max_entry_size: int, privileged: bool
    ) -> None:
        self.root_fd = root_fd
        self.what = what
        self.allow_devices = allow_devices
        self.max_entry_size = max_entry_size
        self.privileged = privileged
        # regular files written by this layer (path -> (dev, ino)): the only hard-link targets
        self.files: dict[tuple[str, ...], tuple[int, int]] = {}
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
        self._invalidate()
        fd = os.dup(self.root_fd)
        try:
            for i, name in enumerate(parts):
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

    def apply_fd_meta(self, fd: int, ti: tarfile.TarInfo, entry: str) -> None:
        # order matters: chown clears setuid bits and file capabilities, so it goes first;
        # xattrs precede chmod since setting them needs write permission without root
        if self.privileged:
            os.fchown(fd, ti.uid, ti.gid)
        self._xattrs(fd, ti, entry)
        os.fchmod(fd, self._mode(ti))
        t = _ns(ti.mtime)
        os.utime(fd, ns=(t, t))

    # -- members -----------------------------------------------------------------------

    def add(self, tf: tarfile.TarFile, ti: tarfile.TarInfo) -> None:
        entry = ti.name
        self.entries += 1
        if ti.size < 0 or ti.size > self.max_entry_size:
            self.refuse(entry, "entry size limit", f"at most {self.max_entry_size} bytes", f"{ti.size} bytes")
        if ti.sparse is not None:
            self.refuse(entry, "no sparse files", "a plain file", "a pax sparse file")
        if ti.size and not ti.isreg():
            self.refuse(entry, "only regular files carry data", "size 0", f"size {ti.size}")
        parts = self.normalise(entry, entry, "entry name")
        if any(p.startswith(WHITEOUT_PREFIX * 2) for p in parts[:-1]):
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
        if not ti.size:
            return
        src = tf.extractfile(ti)
        if src is None:
            return
        seen = 0
        while chunk := src.read(_READ_CHUNK):
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
            written = 0
            src = tf.extractfile(ti)
            if src is not None and ti.size:
                while chunk := src.read(_READ_CHUNK):
                    written += len(chunk)
                    if written > ti.size:
                        break
                    _write_all(fd, chunk)
            if written != ti.size:
                self.refuse(entry, "complete entry data", f"{ti.size} bytes", f"{written} bytes (truncated)")
            self.bytes_written += written
            self.apply_fd_meta(fd, ti, entry)
            st = os.fstat(fd)
        finally:
            os.close(fd)
        self.files[parts] = (st.st_dev, st.st_ino)

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
        t = _ns(ti.mtime)
        os.utime(base, ns=(t, t), dir_fd=parent, follow_symlinks=False)

    def _hardlink(self, ti: tarfile.TarInfo, entry: str, parts: tuple[str, ...], parent: int) -> None:
        tparts = self.normalise(entry, ti.linkname, "hard link target")
        rule = "hard links stay inside the layer"
        want = "a regular file extracted earlier from this layer"
        if not tparts or tparts == parts:
            self.refuse(entry, rule, want, repr(ti.linkname))
        ident = self.files.get(tparts)
        if ident is None:
            self.refuse(entry, rule, want, f"{ti.linkname!r}, which is not one")
        try:
            tparent = _walk(self.root_fd, tparts[:-1])
        except _Blocked as b:
            self.refuse(entry, rule, want, f"{ti.linkname!r} behind {'/'.join(b.sofar)!r}, {b.kind}")
        try:
            st = os.stat(tparts[-1], dir_fd=tparent, follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != ident:
                self.refuse(entry, rule, want, f"{ti.linkname!r}, since replaced by {_describe(st.st_mode)}")
            self.clear_slot(parent, parts[-1], keep_dir=False)
            os.link(tparts[-1], parts[-1], src_dir_fd=tparent, dst_dir_fd=parent, follow_symlinks=False)
        finally:
            os.close(tparent)
        self.files[parts] = ident

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
        t = _ns(ti.mtime)
        os.utime(base, ns=(t, t), dir_fd=parent, follow_symlinks=False)

    # -- the end -----------------------------------------------------------------------

    def finish(self) -> None:
        self._invalidate()
        self.dirs.setdefault((), None)
        for parts in sorted(self.dirs, key=len, reverse=True):
            ti = self.dirs[parts]
            try:
                fd = _walk(self.root_fd, parts)
            except _Blocked:
                continue  # replaced by a later entry: nothing to finish
            try:
                if ti is None:
                    os.fchmod(fd, 0o755)
                else:
                    self.apply_fd_meta(fd, ti, ti.name)
            finally:
                os.close(fd)

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
) -> UnpackResult:
    """Stream a (compressed) layer tar into the empty or new directory ``target``.

    Returns the diff_id (sha256 of the uncompressed tar) with counts; the caller compares
    it with the image config.  On any error ``target`` is left empty (or removed if this
    call created it) and the error names ``what`` and the tar entry.
    """
    privileged = _privileged()
    if allow_devices is None:
        allow_devices = privileged
    limit = DEFAULT_MAX_ENTRY_SIZE if max_entry_size is None else max_entry_size
    decompress = decompressor(compression, what=what)
    target = Path(target)
    created = _prepare_target(target, what)
    root_fd = os.open(target, _DIR_FLAGS)
    try:
        reader = _HashingReader(decompress(chunks))
        ex = _Extractor(root_fd, what, allow_devices, limit, privileged)
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
            if not isinstance(end, _EOF_HEADER_ERROR):
                raise BadInputError(
                    expected_seen(
                        f"{what}: tar stream",
                        "an end-of-archive block of zeros",
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
            _make_writable(root_fd)
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


def _copy_data(src: int, dst: int) -> None:
    # a reflinked rootfs costs no space beside its snapshot, and writes to it copy on write,
    # so a container can never change the cached snapshot through it
    try:
        fcntl.ioctl(dst, _FICLONE, src)
        return
    except OSError as e:
        if e.errno not in _NO_REFLINK:
            raise
    try:
        while os.sendfile(dst, src, None, 1 << 30):
            pass
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOSYS):
            raise
        while chunk := os.read(src, _READ_CHUNK):
            _write_all(dst, chunk)


class _Stacker:
    """Merges snapshot trees into ``root_fd``, lower first, applying whiteouts."""

    def __init__(self, root_fd: int, what: str, privileged: bool) -> None:
        self.root_fd = root_fd
        self.what = what
        self.privileged = privileged
        self.dirs: dict[tuple[str, ...], os.stat_result] = {}
        self._links: dict[tuple[int, int], tuple[str, ...]] = {}
        self._label = ""

    def layer(self, src_root: int, label: str) -> None:
        self._label = label
        self._links = {}  # hard links never span layers
        self.dirs[()] = os.fstat(src_root)
        self._merge(src_root, self.root_fd, ())

    def _refuse(self, parts: tuple[str, ...], rule: str, expected: str, seen: str) -> NoReturn:
        path = "/".join(parts)
        raise BadInputError(
            expected_seen(f"{self.what}: snapshot {self._label} entry {path!r} ({rule})", expected, seen)
        )

    def _merge(self, src: int, dst: int, parts: tuple[str, ...]) -> None:
        names = sorted(os.listdir(src))
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
        for name in names:
            if name.startswith(WHITEOUT_PREFIX):
                continue
            self._entry(src, dst, (*parts, name))

    def _entry(self, src: int, dst: int, parts: tuple[str, ...]) -> None:
        name = parts[-1]
        st = os.stat(name, dir_fd=src, follow_symlinks=False)
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            try:
                cur = os.stat(name, dir_fd=dst, follow_symlinks=False)
                if not stat.S_ISDIR(cur.st_mode):
                    os.unlink(name, dir_fd=dst)
                    os.mkdir(name, 0o700, dir_fd=dst)
            except FileNotFoundError:
                os.mkdir(name, 0o700, dir_fd=dst)
            sfd = os.open(name, _DIR_FLAGS, dir_fd=src)
            try:
                dfd = os.open(name, _DIR_FLAGS, dir_fd=dst)
                try:
                    _copy_xattrs(sfd, dfd, self.privileged)
                    self._merge(sfd, dfd, parts)
                finally:
                    os.close(dfd)
            finally:
                os.close(sfd)
            self.dirs[parts] = st
            return
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
        sfd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=src)
        try:
            dfd = os.open(
                name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dst
            )
            try:
                _copy_data(sfd, dfd)
                if self.privileged:
                    os.fchown(dfd, st.st_uid, st.st_gid)
                _copy_xattrs(sfd, dfd, self.privileged)
                os.fchmod(dfd, stat.S_IMODE(st.st_mode))
                os.utime(dfd, ns=(st.st_atime_ns, st.st_mtime_ns))
            finally:
                os.close(dfd)
        finally:
            os.close(sfd)
        if st.st_nlink > 1:
            self._links[key] = parts

    def finish(self) -> None:
        for parts in sorted(self.dirs, key=len, reverse=True):
            st = self.dirs[parts]
            try:
                fd = _walk(self.root_fd, parts)
            except _Blocked:
                continue  # whited out or replaced by an upper layer
            try:
                if self.privileged:
                    os.fchown(fd, st.st_uid, st.st_gid)
                os.fchmod(fd, stat.S_IMODE(st.st_mode))
                os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
            finally:
                os.close(fd)


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
