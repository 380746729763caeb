"""Copying snapshot files into the rootfs: data (reflink, holes kept, or in-kernel copy),
then ownership, xattrs, mode and times, on a few threads.

Where the filesystem cannot share extents (tmpfs, ext4) every byte must be copied; the
kernel copies (``sendfile``, ``copy_file_range``) release the GIL, so a small pool copies
the larger files, in batches per directory, while the stacking thread walks on and copies
the small ones itself.  :meth:`FileCopier.wait` is the barrier stacking keeps wherever a
later step needs the copies in place (the next layer, hard links to lower files, the end).
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

from layerseal.engine import fdtree

#: copying threads; 1 copies on the caller's thread
COPY_THREADS = min(4, os.cpu_count() or 1)
#: smaller files are copied on the caller's thread: their cost is system calls that a
#: pool would only take turns with (measured: +10% CPU, no time gained, for 1-20 KiB files)
_POOL_MIN_SIZE = 256 * 1024
_BATCH_FILES = 64
_BATCH_BYTES = 8 << 20
#: batches handed over and not yet done: bounds the descriptors held (2 a file)
_MAX_PENDING = 8
_COPY_CHUNK = 256 * 1024

_FICLONE = 0x40049409  # _IOW(0x94, 9, int): share the source's extents (XFS reflink=1, btrfs)
# errnos meaning "no reflink here": fall back to copying
_NO_REFLINK = {errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY, errno.ENOSYS, errno.EPERM}
# of those, the ones that hold for the whole filesystem, not just this file
_NO_REFLINK_FS = {errno.EOPNOTSUPP, errno.EXDEV, errno.ENOTTY, errno.ENOSYS}


def copy_xattrs(src: int | str, dst: int | str, privileged: bool) -> None:
    # an fd cannot be combined with follow_symlinks=False; a path here ends in a symlink
    fs, fd_ = isinstance(src, int), isinstance(dst, int)
    try:
        names = os.listxattr(src, follow_symlinks=fs)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EPERM):
            return
        raise
    for name in names:
        if not fdtree.xattr_allowed(name, privileged):
            continue
        try:
            os.setxattr(dst, name, os.getxattr(src, name, follow_symlinks=fs), follow_symlinks=fd_)
        except OSError as e:
            if e.errno not in (errno.ENOTSUP, errno.EPERM, errno.EACCES):
                raise


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


class FileCopier:
    """Creates copies of open snapshot files in rootfs directories (see the module doc)."""

    def __init__(self, privileged: bool, threads: int | None = None) -> None:
        self.privileged = privileged
        threads = COPY_THREADS if threads is None else threads
        self._pool = ThreadPoolExecutor(threads, "layerseal-copy") if threads > 1 else None
        self._batch: _Batch | None = None
        self._pending: deque[Future[None]] = deque()
        self._no_reflink: set[int] = set()  # st_dev of sources whose filesystem cannot reflink

    def copy(self, sfd: int, dst_dir: int, name: str, st: os.stat_result) -> None:
        """Create ``name`` in ``dst_dir`` as a copy of ``sfd`` (described by ``st``), now."""
        dfd = os.open(
            name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dst_dir
        )
        try:
            self._copy_data(sfd, dfd, st)
            if self.privileged:
                os.fchown(dfd, st.st_uid, st.st_gid)
            copy_xattrs(sfd, dfd, self.privileged)
            os.fchmod(dfd, stat.S_IMODE(st.st_mode))
            os.utime(dfd, ns=(st.st_atime_ns, st.st_mtime_ns))
        finally:
            os.close(dfd)

    def submit(self, sfd: int, dst_dir: int, where: tuple[str, ...], name: str, st: os.stat_result) -> None:
        """As :meth:`copy`, done by :meth:`wait` at the latest; ``sfd`` is closed here.

        ``where`` is the directory's path in the rootfs: the batch's own descriptor is
        reused for files of the same directory (descriptor numbers are not: they recur).
        """
        if self._pool is None or st.st_size < _POOL_MIN_SIZE:
            try:
                self.copy(sfd, dst_dir, name, st)
            finally:
                os.close(sfd)
            return
        if self._batch is not None and self._batch.where != where:
            self._flush()
        if self._batch is None:
            try:
                # the batch's own descriptor of the directory: the caller walks on with its own
                self._batch = _Batch(where, os.dup(dst_dir))
            except BaseException:
                os.close(sfd)
                raise
        self._batch.files.append((sfd, name, st))
        self._batch.size += st.st_size
        if len(self._batch.files) >= _BATCH_FILES or self._batch.size >= _BATCH_BYTES:
            self._flush()

    def _flush(self) -> None:
        while len(self._pending) >= _MAX_PENDING:
            self._pending.popleft().result()
        batch, self._batch = self._batch, None
        if batch is None or self._pool is None:
            return
        try:
            self._pending.append(self._pool.submit(self._run, batch))
        except BaseException:
            batch.close()
            raise

    def _run(self, batch: _Batch) -> None:
        try:
            for i, (sfd, name, st) in enumerate(batch.files):
                self.copy(sfd, batch.own_fd, name, st)
                os.close(sfd)
                batch.files[i] = (-1, name, st)
        finally:
            batch.close()

    def wait(self) -> None:
        """Finish every copy handed over; raise the first error one of them met."""
        self._flush()
        first: BaseException | None = None
        while self._pending:
            try:
                self._pending.popleft().result()
            except BaseException as e:
                first = first or e
        if first is not None:
            raise first

    def close(self) -> None:
        """Let the copies under way end, drop the rest; raises nothing of theirs."""
        if self._batch is not None:
            self._batch.close()
            self._batch = None
        while self._pending:
            self._pending.popleft().exception()
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def _copy_data(self, src: int, dst: int, st: os.stat_result) -> None:
        # a reflinked rootfs costs no space beside its snapshot (holes included), and writes to
        # it copy on write, so a container can never change the cached snapshot through it
        if st.st_dev not in self._no_reflink:
            try:
                fcntl.ioctl(dst, _FICLONE, src)
                return
            except OSError as e:
                if e.errno not in _NO_REFLINK:
                    raise
                if e.errno in _NO_REFLINK_FS:
                    self._no_reflink.add(st.st_dev)
        if st.st_blocks * 512 < st.st_size:
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
            # the snapshot is not written while it is stacked: its size is known, so the
            # read that would find the end is spared
            left = st.st_size
            while left > 0 and (n := os.sendfile(dst, src, None, min(left, 1 << 30))):
                left -= n
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.ENOSYS):
                raise
            while chunk := os.read(src, _COPY_CHUNK):
                fdtree.write_all(dst, chunk)


class _Batch:
    """Files to copy into one directory: (descriptor, name, stat) each, the directory's path
    in the rootfs and the batch's own descriptor of it."""

    def __init__(self, where: tuple[str, ...], own_fd: int) -> None:
        self.where = where
        self.own_fd = own_fd
        self.files: list[tuple[int, str, os.stat_result]] = []
        self.size = 0

    def close(self) -> None:
        for sfd, _, _ in self.files:
            if sfd >= 0:
                os.close(sfd)
        os.close(self.own_fd)
