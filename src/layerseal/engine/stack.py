"""Stacking layer snapshots into a rootfs, lowest layer first, applying their whiteouts.

Reads what :mod:`layerseal.engine.extract` leaves in a snapshot (format and rules in
:mod:`layerseal.engine.unpack`).  File data is reflinked where the filesystem shares
extents, else copied keeping holes; ownership, modes, times and allowed xattrs follow
the snapshot; hard links within a layer and to lower layers stay links.

Known limits: stacking never follows a lower layer's symlink, so an upper layer whose
directory ``lib/`` meets a lower symlink ``lib -> usr/lib`` replaces the symlink (as
overlayfs does; containerd would resolve it).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from layerseal.engine import fdtree
from layerseal.engine.filecopy import FileCopier, copy_xattrs
from layerseal.errors import BadInputError, LayersealError, MisuseError, expected_seen

log = logging.getLogger(__name__)
_COPY_CHUNK = 256 * 1024


def _clear_xattrs(fd: int, privileged: bool) -> None:
    """Drop a directory's xattrs before an upper layer's entry describes it anew (as umoci)."""
    try:
        names = os.listxattr(fd)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EPERM):
            return
        raise
    for name in names:
        if fdtree.xattr_allowed(name, privileged) and not name.startswith("security."):
            with contextlib.suppress(OSError):
                os.removexattr(fd, name)


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
    where = f"{what}: snapshot {label} {fdtree.LOWER_LINKS}"
    fields = data.decode("utf-8", "surrogateescape").split("\0")
    if fields[-1] != "" or len(fields) % 2 != 1:
        raise BadInputError(expected_seen(where, "path/target records", "garbage"))
    out = []
    for i in range(0, len(fields) - 1, 2):
        pair = tuple(tuple(f.split("/")) for f in fields[i : i + 2])
        if any(p in ("", ".", "..") for side in pair for p in side):
            raise BadInputError(expected_seen(where, "relative paths", repr(fields[i : i + 2])))
        out.append((pair[0], pair[1]))
    return out


class _Stacker:
    """Merges snapshot trees into ``root_fd``, lower first, applying whiteouts.

    The merge walks each snapshot with one pair of descriptors, going up by ``..``, so
    depth costs neither Python stack nor open files.  A directory a layer only wrote into
    (marked :data:`~layerseal.engine.fdtree.IMPLICIT_MARKER`) keeps the metadata of the
    one below, as it does when umoci unpacks the layers into one tree.
    """

    def __init__(self, root_fd: int, what: str, privileged: bool, copier: FileCopier) -> None:
        self.root_fd = root_fd
        self.copier = copier
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
            self.copier.wait()  # the links below, and the next layer, need the copies in place
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
            fd = os.open(fdtree.LOWER_LINKS, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=src_root)
        except FileNotFoundError:
            return []
        try:
            chunks = []
            while chunk := os.read(fd, _COPY_CHUNK):
                chunks.append(chunk)
        finally:
            os.close(fd)
        return _parse_lower_links(b"".join(chunks), self._label, self.what)

    def _lower_file(self, parts: tuple[str, ...], target: tuple[str, ...]) -> int:
        rule = "hard links stay inside the image"
        want = f"{'/'.join(target)!r} to be a file of a lower layer"
        try:
            tparent = fdtree.walk(self.root_fd, target[:-1])
        except fdtree.Blocked as b:
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
            parent = fdtree.walk(self.root_fd, parts[:-1])
        except fdtree.Blocked as b:  # cannot happen for a snapshot unpack_layer wrote
            self._refuse(parts, "hard link placeholder", "its directory", f"{'/'.join(b.sofar)!r}: {b.kind}")
        try:
            fdtree.remove_at(parent, parts[-1])
            try:
                # the /proc link names the held inode itself, wherever it is now
                os.link(f"/proc/self/fd/{fd}", parts[-1], dst_dir_fd=parent, follow_symlinks=True)
            except FileNotFoundError:
                # this layer removed the file's last name after linking it: umoci's tree
                # then holds the link alone, so a copy of the file is equal to it
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    self._refuse(
                        parts,
                        "hard links stay inside the image",
                        "a regular file",
                        fdtree.describe(st.st_mode),
                    )
                first = copies.get((st.st_dev, st.st_ino))
                if first is not None:  # the links to one removed file stay one inode
                    fparent = fdtree.walk(self.root_fd, first[:-1])
                    try:
                        os.link(
                            first[-1], parts[-1], src_dir_fd=fparent, dst_dir_fd=parent, follow_symlinks=False
                        )
                    finally:
                        os.close(fparent)
                    return
                sfd = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
                try:
                    self.copier.copy(sfd, parent, parts[-1], st)
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
        # directory's mode to put back, where it was lent to its unprivileged owner; whether
        # the rootfs directory was made for this layer (so holds nothing to replace)
        lent: list[int | None] = [None]
        fresh = [False]
        try:
            todo = [self._enter(src, dst, (), () in self.dirs, os.fstat(src))]
            while todo:
                if todo[-1]:
                    name = todo[-1].pop()
                    here = (*parts, name)
                    st = os.stat(name, dir_fd=src, follow_symlinks=False)
                    if not stat.S_ISDIR(st.st_mode):
                        self._entry(src, dst, here, st, fresh[-1])
                        continue
                    existed = self._dst_dir(dst, name, fresh[-1])
                    mode = None
                    if not self.privileged and st.st_mode & 0o500 != 0o500:
                        mode = stat.S_IMODE(st.st_mode)
                        fdtree.grant_owner(src, name)
                    sfd = os.open(name, fdtree.DIR_FLAGS, dir_fd=src)
                    os.close(src)
                    src = sfd
                    dfd = os.open(name, fdtree.DIR_FLAGS, dir_fd=dst)
                    os.close(dst)
                    dst = dfd
                    parts.append(name)
                    lent.append(mode)
                    fresh.append(not existed)
                    todo.append(self._enter(src, dst, here, existed, st))
                    continue
                todo.pop()
                mode = lent.pop()
                fresh.pop()
                if not parts:
                    break
                up = os.open("..", fdtree.DIR_FLAGS, dir_fd=src)
                try:
                    if mode is not None:
                        os.fchmod(src, mode)
                finally:
                    os.close(src)
                    src = up
                up = os.open("..", fdtree.DIR_FLAGS, dir_fd=dst)
                os.close(dst)
                dst = up
                parts.pop()
        finally:
            os.close(src)
            os.close(dst)

    def _dst_dir(self, dst: int, name: str, fresh: bool) -> bool:
        """Make ``name`` a directory in the rootfs; return whether one was there already."""
        if fresh:
            os.mkdir(name, 0o700, dir_fd=dst)
            return False
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
        if not (existed and fdtree.IMPLICIT_MARKER in names):
            self.dirs[parts] = st
            if existed:
                _clear_xattrs(dst, self.privileged)
            copy_xattrs(src, dst, self.privileged)
        if fdtree.OPAQUE_MARKER in names:
            fdtree.empty_dir(dst)
        for name in names:
            if not name.startswith(fdtree.WHITEOUT_PREFIX) or name == fdtree.OPAQUE_MARKER:
                continue
            victim = name[len(fdtree.WHITEOUT_PREFIX) :]
            if victim.startswith(fdtree.WHITEOUT_PREFIX):
                continue
            if victim in ("", ".", ".."):
                self._refuse(
                    (*parts, name),
                    "whiteout must name one entry",
                    "'.wh.' followed by a file name",
                    repr(name),
                )
            fdtree.remove_at(dst, victim)
        return [n for n in reversed(names) if not n.startswith(fdtree.WHITEOUT_PREFIX)]

    def _entry(self, src: int, dst: int, parts: tuple[str, ...], st: os.stat_result, fresh: bool) -> None:
        name = parts[-1]
        mode = st.st_mode
        if not fresh:
            fdtree.remove_at(dst, name)
        if stat.S_ISREG(mode):
            self._file(src, dst, parts, st)
        elif stat.S_ISLNK(mode):
            os.symlink(os.readlink(name, dir_fd=src), name, dir_fd=dst)
            if self.privileged:
                os.chown(name, st.st_uid, st.st_gid, dir_fd=dst, follow_symlinks=False)
                copy_xattrs(f"/proc/self/fd/{src}/{name}", f"/proc/self/fd/{dst}/{name}", True)
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
                first_parent = fdtree.walk(self.root_fd, first[:-1])
            except fdtree.Blocked:
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
        if st.st_nlink == 1:
            self.copier.submit(sfd, dst, parts[:-1], name, st)
            return
        try:  # now: the file's other names in this layer are linked to this copy
            self.copier.copy(sfd, dst, name, st)
        finally:
            os.close(sfd)
        self._links[key] = parts

    def finish(self) -> None:
        fdtree.dirs_post_order(self.root_fd, self.dirs, self._finish_dir)

    def _finish_dir(self, fd: int, parts: tuple[str, ...], st: os.stat_result) -> None:
        if self.privileged:
            os.fchown(fd, st.st_uid, st.st_gid)
        os.fchmod(fd, stat.S_IMODE(st.st_mode))
        os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))


def stack_snapshots(snapshots: Sequence[Path], rootfs: Path, *, what: str, privileged: bool) -> None:
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
            seen = "a non-empty directory" if stat.S_ISDIR(st.st_mode) else fdtree.describe(st.st_mode)
            raise MisuseError(expected_seen(f"{what}: {str(rootfs)!r}", "a new or empty directory", seen))
    tmp = Path(tempfile.mkdtemp(prefix=f".{rootfs.name}.", suffix=".tmp", dir=rootfs.parent))
    try:
        root_fd = os.open(tmp, fdtree.DIR_FLAGS)
        try:
            copier = FileCopier(privileged)
            try:
                stacker = _Stacker(root_fd, what, privileged, copier)
                for snap in snapshots:
                    src_root = os.open(snap, fdtree.DIR_FLAGS)
                    try:
                        stacker.layer(src_root, str(snap))
                    finally:
                        os.close(src_root)
                stacker.finish()
            finally:
                copier.close()  # before the tree may be removed: no copy is still writing
        finally:
            os.close(root_fd)
        os.rename(tmp, rootfs)
    except BaseException as e:
        fdtree.remove_tree(tmp)
        if isinstance(e, OSError):
            raise LayersealError(expected_seen(f"{what}: building {str(rootfs)!r}", "success", str(e))) from e
        raise
