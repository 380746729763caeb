"""Path-safe extraction of tar members into one layer's snapshot directory.

Every path is created one component at a time relative to directory descriptors opened
with ``O_NOFOLLOW`` (:mod:`layerseal.engine.fdtree`), so no symlink is ever followed while
writing (CVE-2007-4559 and the runc/umoci family of "symlink, then write through it"
escapes).  Whiteouts, hard links to lower layers and directories the layer only wrote into
are left as markers for stacking; the rules are listed in :mod:`layerseal.engine.unpack`.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
import tarfile
from dataclasses import dataclass, field
from typing import Any, NoReturn, cast

from layerseal.engine.fdtree import (
    IMPLICIT_MARKER,
    LOWER_LINKS,
    OPAQUE_MARKER,
    WHITEOUT_PREFIX,
    Blocked,
    describe,
    dirs_post_order,
    open_child_dir,
    remove_at,
    walk,
    write_all,
    xattr_allowed,
)
from layerseal.engine.limits import LayerBudget
from layerseal.engine.tarread import READ_CHUNK, BadTime, member_data, mtime_ns, stored_data, stored_size
from layerseal.errors import BadInputError, LayersealError, expected_seen

log = logging.getLogger(__name__)

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


@dataclass(eq=False)
class Extractor:
    """Writes tar members below ``root_fd`` under the rules in the module docstring."""

    root_fd: int
    what: str
    allow_devices: bool
    max_entry_size: int
    privileged: bool
    budget: LayerBudget
    # regular files written by this layer (path -> (dev, ino)): hard-link targets
    files: dict[tuple[str, ...], tuple[int, int]] = field(default_factory=dict, init=False)
    # hard links to a lower layer's file: path -> (target, (dev, ino) of the placeholder)
    lower_links: dict[tuple[str, ...], tuple[tuple[str, ...], tuple[int, int]]] = field(
        default_factory=dict, init=False
    )
    # SHA-256 of the content of regular files as written: (dev, ino) -> (size, digest), for
    # the snapshot's seal (snapshot.ContentHashes).  Every file given data here is recorded
    # when written (sparse ones dropped): a later file reusing a removed file's inode number
    # replaces its entry, and the empty files made otherwise (markers, placeholders) are
    # only matched by a stale entry of size 0, whose digest is theirs too
    content: dict[tuple[int, int], tuple[int, bytes]] = field(default_factory=dict, init=False)
    # directories to finish at the end; None = created implicitly as a parent
    dirs: dict[tuple[str, ...], tarfile.TarInfo | None] = field(default_factory=dict, init=False)
    entries: int = field(default=0, init=False)
    bytes_written: int = field(default=0, init=False)
    skipped: list[str] = field(default_factory=list, init=False)
    _cache: tuple[tuple[str, ...], int] | None = field(default=None, init=False)

    # -- errors ------------------------------------------------------------------------

    def refuse(self, entry: str, rule: str, expected: str, seen: str) -> NoReturn:
        raise BadInputError(
            expected_seen(f"{self.what}: tar entry {entry[:300]!r} refused ({rule})", expected, seen)
        )

    def _blocked(self, entry: str, b: Blocked) -> NoReturn:
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
                    child = open_child_dir(fd, name, sofar)
                except Blocked as b:
                    if b.kind != "missing":
                        self._blocked(entry, b)
                    os.mkdir(name, 0o700, dir_fd=fd)
                    self.dirs.setdefault(sofar, None)
                    child = open_child_dir(fd, name, sofar)
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
        remove_at(dir_fd, name)
        return False

    def create_file(self, dir_fd: int, name: str) -> int:
        """Create the empty file ``name`` (0o600, open for writing), replacing what is there.

        Most names are new: trying first spares the look-up :meth:`clear_slot` makes, and
        ``O_EXCL`` fails on any existing entry (a symlink included, never followed).
        """
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            return os.open(name, flags, 0o600, dir_fd=dir_fd)
        except FileExistsError:
            self.clear_slot(dir_fd, name, keep_dir=False)
        return os.open(name, flags, 0o600, dir_fd=dir_fd)

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
            if not xattr_allowed(name, self.privileged):
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
            return mtime_ns(ti)
        except BadTime as e:
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
            try:
                os.mkdir(base, 0o700, dir_fd=parent)  # the name is new, as most are
            except FileExistsError:
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
        os.close(self.create_file(parent, base))
        self._discard_data(tf, ti, entry)

    def _discard_data(self, tf: tarfile.TarFile, ti: tarfile.TarInfo, entry: str) -> None:
        if not ti.size or tf.extractfile(ti) is None:
            return
        seen = 0
        for chunk in member_data(tf, ti, ti.size):
            seen += len(chunk)
        if seen != ti.size:
            self.refuse(entry, "complete entry data", f"{ti.size} bytes", f"{seen} bytes (truncated)")

    def _regular(
        self, tf: tarfile.TarFile, ti: tarfile.TarInfo, entry: str, parts: tuple[str, ...], parent: int
    ) -> None:
        self.files.pop(parts, None)
        fd = self.create_file(parent, parts[-1])
        digest: bytes | None = None
        try:
            if ti.sparse is not None:
                written = self._sparse(tf, ti, entry, fd)
            else:
                written = 0
                h = hashlib.sha256()
                if ti.size:  # a regular member: extractfile() would never be None
                    for chunk in member_data(tf, ti, ti.size):
                        written += len(chunk)
                        h.update(chunk)
                        write_all(fd, chunk)
                digest = h.digest()
                if written != ti.size:
                    self.refuse(
                        entry, "complete entry data", f"{ti.size} bytes", f"{written} bytes (truncated)"
                    )
            self.bytes_written += written
            self.apply_fd_meta(fd, ti, entry)
            st = os.fstat(fd)
        finally:
            os.close(fd)
        ident = (st.st_dev, st.st_ino)
        self.files[parts] = ident
        if digest is None:
            self.content.pop(ident, None)
        else:
            self.content[ident] = (st.st_size, digest)

    def _sparse(self, tf: tarfile.TarFile, ti: tarfile.TarInfo, entry: str, fd: int) -> int:
        """Write a sparse entry's data regions at their offsets; the rest stays holes."""
        regions: list[tuple[int, int]] = cast(Any, ti).sparse or []
        stored = stored_size(ti)
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
        src = stored_data(tf, ti)
        written = 0
        for offset, length in regions:
            pos, left = offset, length
            while left:
                chunk = src.read(min(left, READ_CHUNK)) if src is not None else b""
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
        try:
            os.symlink(target, base, dir_fd=parent)
        except FileExistsError:
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
            tparent = walk(self.root_fd, tparts[:-1])
        except Blocked as b:
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
                    entry, rule, want, f"{ti.linkname!r}, which is {describe(st.st_mode)} of this layer"
                )
            if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != ident:
                self.refuse(entry, rule, want, f"{ti.linkname!r}, since replaced by {describe(st.st_mode)}")
            self.clear_slot(parent, parts[-1], keep_dir=False)
            os.link(tparts[-1], parts[-1], src_dir_fd=tparent, dst_dir_fd=parent, follow_symlinks=False)
        finally:
            os.close(tparent)
        self.files[parts] = ident

    def _link_lower(self, parts: tuple[str, ...], parent: int, target: tuple[str, ...]) -> None:
        """Leave an empty placeholder, linked to the lower layer's file when stacking."""
        self.files.pop(parts, None)
        fd = self.create_file(parent, parts[-1])
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
                pfd = walk(self.root_fd, parts[:-1])
            except Blocked:
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
            data = "".join(records).encode("utf-8", "surrogateescape")
            try:
                write_all(fd, data)
                st = os.fstat(fd)
            finally:
                os.close(fd)
            self.content[(st.st_dev, st.st_ino)] = (len(data), hashlib.sha256(data).digest())
        dirs_post_order(self.root_fd, self.dirs, self._finish_dir)

    def _finish_dir(self, fd: int, parts: tuple[str, ...], ti: tarfile.TarInfo | None) -> None:
        if ti is None:
            # only written into: stacking keeps the metadata of the directory below, if any
            os.close(os.open(IMPLICIT_MARKER, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600, dir_fd=fd))
            os.fchmod(fd, 0o755)
        else:
            self.apply_fd_meta(fd, ti, ti.name)

    def close(self) -> None:
        self._invalidate()
