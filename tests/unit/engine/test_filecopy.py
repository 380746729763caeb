"""Tests for layerseal.engine.filecopy: pooled copies land where, and as, inline ones do."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from layerseal.engine.filecopy import FileCopier

BIG = 1 << 20  # past the size the pool takes


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def submit(copier: FileCopier, src: Path, dst_dir: int, where: tuple[str, ...], name: str) -> None:
    sfd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    copier.submit(sfd, dst_dir, where, name, os.fstat(sfd))


@pytest.mark.parametrize("threads", [1, 2])
def test_copies_land_in_their_directory_with_their_metadata(tmp_path: Path, threads: int) -> None:
    src = tmp_path / "src"
    src.mkdir()
    files = {}
    for i, size in enumerate([BIG + 5, 100, BIG * 2, 0]):
        f = src / f"f{i}"
        f.write_bytes(os.urandom(size))
        os.chmod(f, 0o640 + i)
        os.utime(f, ns=(1, 1_700_000_000_123_456_789 + i))
        files[f"f{i}"] = f
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    before = open_fds()
    copier = FileCopier(privileged=os.geteuid() == 0, threads=threads)
    try:
        # the descriptor number of a/ comes back for b/: the path tells them apart
        a = os.open(tmp_path / "a", os.O_RDONLY | os.O_DIRECTORY)
        submit(copier, files["f0"], a, ("a",), "f0")
        submit(copier, files["f1"], a, ("a",), "f1")
        os.close(a)
        b = os.open(tmp_path / "b", os.O_RDONLY | os.O_DIRECTORY)
        assert b == a
        submit(copier, files["f2"], b, ("b",), "f2")
        submit(copier, files["f3"], b, ("b",), "f3")
        os.close(b)
        copier.wait()
    finally:
        copier.close()
    assert open_fds() == before
    assert sorted(os.listdir(tmp_path / "a")) == ["f0", "f1"]
    assert sorted(os.listdir(tmp_path / "b")) == ["f2", "f3"]
    for name, where in (("f0", "a"), ("f1", "a"), ("f2", "b"), ("f3", "b")):
        copy, orig = tmp_path / where / name, files[name]
        assert copy.read_bytes() == orig.read_bytes()
        cst, ost = copy.stat(), orig.stat()
        assert stat.S_IMODE(cst.st_mode) == stat.S_IMODE(ost.st_mode)
        assert cst.st_mtime_ns == ost.st_mtime_ns
        assert cst.st_ino != ost.st_ino


def test_a_failed_pooled_copy_is_raised_by_wait_and_leaks_nothing(tmp_path: Path) -> None:
    src = tmp_path / "big"
    src.write_bytes(os.urandom(BIG))
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / "taken").write_bytes(b"already here")
    before = open_fds()
    copier = FileCopier(privileged=False, threads=2)
    try:
        d = os.open(tmp_path / "dst", os.O_RDONLY | os.O_DIRECTORY)
        try:
            submit(copier, src, d, ("dst",), "taken")  # created O_EXCL: fails on the pool
            submit(copier, src, d, ("dst",), "after")  # same batch: dropped after the failure
        finally:
            os.close(d)
        with pytest.raises(FileExistsError):
            copier.wait()
    finally:
        copier.close()
    assert open_fds() == before
    assert (tmp_path / "dst" / "taken").read_bytes() == b"already here"


def test_close_without_wait_drops_the_unsent_batch(tmp_path: Path) -> None:
    src = tmp_path / "big"
    src.write_bytes(os.urandom(BIG))
    (tmp_path / "dst").mkdir()
    before = open_fds()
    copier = FileCopier(privileged=False, threads=2)
    d = os.open(tmp_path / "dst", os.O_RDONLY | os.O_DIRECTORY)
    submit(copier, src, d, ("dst",), "f")
    os.close(d)
    copier.close()  # as after an error elsewhere in the stacking
    assert open_fds() == before
