"""Directory trees handled through descriptors, never following a symlink, and the names
of a snapshot's markers.

Shared by extraction (:mod:`layerseal.engine.extract`) and stacking
(:mod:`layerseal.engine.stack`): every path is opened one component at a time relative to
a directory descriptor with ``O_NOFOLLOW``; trees are walked and removed without
recursion, holding one descriptor per tree (going up by ``..``), so depth costs neither
Python stack nor open files.  The snapshot format the markers belong to is described in
:mod:`layerseal.engine.unpack`.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

_T = TypeVar("_T")

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
#: in a snapshot directory the layer never described (only wrote into): keep what lies below
IMPLICIT_MARKER = ".wh..wh..implicit"
#: at a snapshot's root: hard links to files of lower layers ("path\0target\0" records)
LOWER_LINKS = ".wh..wh..lowerlinks"
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def running_as_root() -> bool:
    return os.geteuid() == 0


class Blocked(Exception):
    """A path component is missing, a symlink, or not a directory (internal)."""

    def __init__(self, sofar: tuple[str, ...], kind: str) -> None:
        super().__init__(kind)
        self.sofar = sofar
        self.kind = kind


def describe(st_mode: int) -> str:
    if stat.S_ISLNK(st_mode):
        return "a symlink"
    if stat.S_ISREG(st_mode):
        return "a regular file"
    if stat.S_ISDIR(st_mode):
        return "a directory"
    return "a special file"


def open_child_dir(dir_fd: int, name: str, sofar: tuple[str, ...]) -> int:
    """Open ``name`` under ``dir_fd`` as a directory without following a symlink."""
    try:
        return os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        raise Blocked(sofar, "missing") from None
    except OSError as e:
        if e.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(name, dir_fd=dir_fd)
            raise Blocked(sofar, f"a symlink to {target!r}") from None
        raise Blocked(sofar, describe(st.st_mode)) from None


def walk(root_fd: int, parts: tuple[str, ...]) -> int:
    """Open the directory ``parts`` below ``root_fd`` (no symlinks); caller closes."""
    fd = os.dup(root_fd)
    try:
        for i, name in enumerate(parts):
            child = open_child_dir(fd, name, parts[: i + 1])
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def grant_owner(dir_fd: int, name: str) -> None:
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
    privileged = running_as_root()
    if not privileged:
        grant_owner(parent_fd, name)
    fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
    try:
        pending = [_clear_files(fd)]
        path: list[str] = []
        while pending:
            if pending[-1]:
                child = pending[-1].pop()
                if not privileged:
                    grant_owner(fd, child)
                sub = os.open(child, DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = sub
                path.append(child)
                pending.append(_clear_files(fd))
                continue
            pending.pop()
            if path:
                up = os.open("..", DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = up
                os.rmdir(path.pop(), dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=parent_fd)


def remove_at(dir_fd: int, name: str) -> bool:
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
    parent_fd = os.open(path.parent, DIR_FLAGS)
    try:
        remove_at(parent_fd, path.name)
    finally:
        os.close(parent_fd)


def empty_dir(dir_fd: int) -> None:
    for name in os.listdir(dir_fd):
        remove_at(dir_fd, name)


def write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def xattr_allowed(name: str, privileged: bool) -> bool:
    if ".overlay." in name or name.startswith(("trusted.overlay", "user.overlay")):
        return False
    return name.startswith("user.") or privileged


def dirs_post_order(
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
        up = os.open("..", DIR_FLAGS, dir_fd=fd)
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
                    child = open_child_dir(fd, name, parts)
                except Blocked:
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
