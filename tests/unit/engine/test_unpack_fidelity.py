"""Issue 12, findings 3 and 4: unpack limits, and unpack fidelity equal to umoci.

Each test here failed before the fix; the tree-by-tree comparison with umoci itself is
tests/integration/test_umoci_fidelity.py.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard
from engine_tarkit import MTIME, Entry, chunked, compress, dir_, link, listing, make_tar, raw_tar, reg

from layerseal.engine.limits import ImageBudget, UnpackLimits, format_size, parse_size
from layerseal.engine.unpack import UnpackResult, remove_tree, stack_snapshots, unpack_layer
from layerseal.errors import BadInputError

ROOT = os.geteuid() == 0
MiB = 1 << 20


def unpack(data: bytes, target: Path, compression: str = "none", **kw: object) -> UnpackResult:
    return unpack_layer(
        chunked(compress(data, compression), 4096), compression, target, what="layer L1", **kw
    )  # type: ignore[arg-type]


def snapshot(tmp: Path, name: str, entries: list[Entry] | bytes) -> Path:
    target = tmp / "snaps" / name
    target.parent.mkdir(exist_ok=True)
    unpack(entries if isinstance(entries, bytes) else make_tar(entries), target)
    return target


def assert_gone(target: Path) -> None:
    assert not target.exists() or listing(target) == set()


# -- finding 3: limits ---------------------------------------------------------------------


def zeros_file_tar(name: str, size: int) -> Iterator[bytes]:
    """A tar holding one ``size``-byte file of zeros, produced piece by piece."""
    ti = tarfile.TarInfo(name)
    ti.size = size
    yield ti.tobuf(tarfile.PAX_FORMAT)
    block = bytes(MiB)
    for _ in range(size // MiB):
        yield block
    yield bytes(1024)


def test_limit_defaults_fit_real_images() -> None:
    assert UnpackLimits() == UnpackLimits(32 << 30, 64 << 30, 5_000_000)
    assert parse_size("32G") == 32 << 30
    assert parse_size("512MiB") == 512 << 20
    assert parse_size("1000") == 1000
    assert format_size(32 << 30) == "32 GiB"
    with pytest.raises(BadInputError, match="expected a byte count"):
        parse_size("lots")


def test_zstd_bomb_stops_at_the_layer_limit(tmp_path: Path) -> None:
    # 256 MiB of zeros compress to a few KiB: the unpack must stop at 8 MiB, naming the flag
    cctx = zstandard.ZstdCompressor()
    blob = cctx.compress(b"".join(zeros_file_tar("bomb", 256 * MiB)))
    assert len(blob) < 100_000
    with pytest.raises(BadInputError) as info:
        unpack_layer(
            [blob], "zstd", tmp_path / "snap", what="layer L1", limits=UnpackLimits(max_layer_size=8 * MiB)
        )
    msg = str(info.value)
    assert msg.startswith("layer L1: uncompressed size: expected at most 8 MiB (the per-layer limit")
    assert "--max-layer-size" in msg
    assert_gone(tmp_path / "snap")


def test_limit_is_checked_before_writing_past_it(tmp_path: Path) -> None:
    pulled = 0

    def source() -> Iterator[bytes]:
        nonlocal pulled
        for chunk in zeros_file_tar("big", 64 * MiB):
            pulled += len(chunk)
            yield chunk

    written: list[int] = []
    real_write = os.write

    def spy(fd: int, data: bytes) -> int:
        n = real_write(fd, data)
        written.append(n)
        return n

    mp = pytest.MonkeyPatch()
    mp.setattr(os, "write", spy)
    try:
        with pytest.raises(BadInputError, match="--max-layer-size"):
            unpack_layer(source(), "none", tmp_path / "snap", limits=UnpackLimits(max_layer_size=4 * MiB))
    finally:
        mp.undo()
    assert sum(written) <= 4 * MiB
    assert pulled <= 4 * MiB + MiB  # one chunk beyond the limit is seen, never written
    assert_gone(tmp_path / "snap")


def test_image_limit_spans_layers(tmp_path: Path) -> None:
    budget = ImageBudget(UnpackLimits(max_layer_size=100 * MiB, max_image_size=10 * MiB))
    layer = b"".join(zeros_file_tar("f", 6 * MiB))
    unpack_layer([layer], "none", tmp_path / "l1", what="layer 1", budget=budget)
    with pytest.raises(BadInputError) as info:
        unpack_layer([layer], "none", tmp_path / "l2", what="layer 2", budget=budget)
    assert str(info.value).startswith(
        "layer 2: uncompressed size: expected at most 10 MiB (the per-image limit"
    )
    assert "--max-image-size" in str(info.value)
    assert_gone(tmp_path / "l2")


def test_entry_limit(tmp_path: Path) -> None:
    tar = make_tar([reg(f"f{i}") for i in range(10)])
    with pytest.raises(BadInputError, match=r"layer L1: tar entries: expected at most 5 .*--max-entries"):
        unpack(tar, tmp_path / "snap", limits=UnpackLimits(max_entries=5))
    assert_gone(tmp_path / "snap")


def test_sparse_holes_count_against_the_limit(tmp_path: Path) -> None:
    # a few bytes of data declaring a 1 GiB file read back as 1 GiB of zeros
    tar = pax_sparse_10("huge", 1 << 30, [(0, 4)], b"data")
    with pytest.raises(BadInputError, match="--max-layer-size"):
        unpack(tar, tmp_path / "snap", limits=UnpackLimits(max_layer_size=64 * MiB))
    assert_gone(tmp_path / "snap")


# -- finding 4: fidelity -------------------------------------------------------------------


def test_directories_only_written_into_keep_the_lower_metadata(tmp_path: Path) -> None:
    l1 = snapshot(
        tmp_path,
        "l1",
        [
            dir_(".", 0o755, mtime=MTIME + 1), dir_("tmp", 0o1777, mtime=MTIME + 2),
            dir_("root", 0o700, mtime=MTIME + 3), dir_("home", 0o755, mtime=MTIME + 4),
            dir_("home/alice", 0o750, uid=1000, gid=1000, mtime=MTIME + 5),
        ],
    )  # fmt: skip
    # what `layer add` writes: files only, no entries for their directories
    l2 = snapshot(tmp_path, "l2", [reg("tmp/x"), reg("root/.profile"), reg("home/alice/notes", uid=1000)])
    rootfs = tmp_path / "rootfs"
    stack_snapshots([l1, l2], rootfs)
    for path, mode, mtime in [
        ("tmp", 0o1777, MTIME + 2),
        ("root", 0o700, MTIME + 3),
        ("home/alice", 0o750, MTIME + 5),
    ]:
        st_ = os.lstat(rootfs / path)
        assert (path, stat.S_IMODE(st_.st_mode), st_.st_mtime) == (path, mode, mtime)
    if ROOT:
        st_ = os.lstat(rootfs / "home/alice")
        assert (st_.st_uid, st_.st_gid) == (1000, 1000)
    # a layer without a './' entry leaves the root as the layers below made it
    root_st = os.lstat(rootfs)
    assert (stat.S_IMODE(root_st.st_mode), root_st.st_mtime) == (0o755, MTIME + 1)
    assert listing(rootfs) == {
        "tmp",
        "tmp/x",
        "root",
        "root/.profile",
        "home",
        "home/alice",
        "home/alice/notes",
    }


def test_layer_without_root_entry_keeps_root_metadata(tmp_path: Path) -> None:
    l1 = snapshot(tmp_path, "l1", [dir_(".", 0o700, mtime=MTIME + 7), reg("a")])
    l2 = snapshot(tmp_path, "l2", [reg("b")])
    stack_snapshots([l1, l2], tmp_path / "rootfs")
    st_ = os.lstat(tmp_path / "rootfs")
    assert (stat.S_IMODE(st_.st_mode), st_.st_mtime) == (0o700, MTIME + 7)


def test_explicit_upper_directory_still_wins(tmp_path: Path) -> None:
    l1 = snapshot(tmp_path, "l1", [dir_("d", 0o755, mtime=MTIME)])
    l2 = snapshot(tmp_path, "l2", [dir_("d", 0o700, mtime=MTIME + 9), reg("d/f")])
    stack_snapshots([l1, l2], tmp_path / "rootfs")
    st_ = os.lstat(tmp_path / "rootfs/d")
    assert (stat.S_IMODE(st_.st_mode), st_.st_mtime) == (0o700, MTIME + 9)


@pytest.mark.parametrize(
    "cut",
    [
        pytest.param(lambda t: t[:-100], id="padding-missing"),
        pytest.param(lambda t: t[: 512 + 5], id="data-cut-short"),
        pytest.param(lambda t: t + raw_tar([reg("next", b"z")], end=False)[:300], id="header-cut-short"),
        pytest.param(
            lambda t: t + raw_tar([reg("p", b"", pax={"comment": "x" * 600})], end=False)[:1536],
            id="pax-without-member",
        ),
    ],
)
def test_member_cut_short_still_fails_without_eof_blocks(tmp_path: Path, cut: object) -> None:
    tar = raw_tar([reg("a", b"x" * 700)], end=False)
    with pytest.raises(BadInputError, match=r"layer L1: tar (stream|entry)"):
        unpack(cut(tar), tmp_path / "snap")  # type: ignore[operator]
    assert_gone(tmp_path / "snap")


def test_layer_without_eof_blocks_accepted(tmp_path: Path) -> None:
    tar = raw_tar([dir_("d"), reg("d/a", b"x" * 700), reg("d/b", b"y" * 512)], end=False)
    result = unpack(tar, tmp_path / "snap", "gzip")
    assert (tmp_path / "snap/d/a").read_bytes() == b"x" * 700
    assert (tmp_path / "snap/d/b").read_bytes() == b"y" * 512
    assert result.entries == 3


def test_hard_link_to_a_file_of_an_earlier_layer(tmp_path: Path) -> None:
    l1 = snapshot(tmp_path, "l1", [dir_("usr"), dir_("usr/bin"), reg("usr/bin/perl", b"#!perl", 0o755)])
    l2 = snapshot(
        tmp_path,
        "l2",
        [link("usr/bin/perl5.36", "usr/bin/perl"), link("usr/bin/perl5", "usr/bin/perl5.36"), reg("other")],
    )
    rootfs = tmp_path / "rootfs"
    stack_snapshots([l1, l2], rootfs)
    ino = os.lstat(rootfs / "usr/bin/perl").st_ino
    assert os.lstat(rootfs / "usr/bin/perl5.36").st_ino == ino
    assert os.lstat(rootfs / "usr/bin/perl5").st_ino == ino
    assert (rootfs / "usr/bin/perl5").read_bytes() == b"#!perl"
    assert os.lstat(rootfs / "usr/bin/perl").st_nlink == 3


def test_hard_link_to_a_lower_file_this_layer_then_removes(tmp_path: Path) -> None:
    # tar order: the link first, then the whiteout of the target's directory; umoci keeps
    # the link (the inode lives on through it), so must we
    l1 = snapshot(tmp_path, "l1", [dir_("a"), reg("a/f", b"old", 0o640, mtime=MTIME + 1)])
    l2 = snapshot(tmp_path, "l2", [link("h", "a/f"), reg(".wh.a"), link("g", "h")])
    rootfs = tmp_path / "rootfs"
    stack_snapshots([l1, l2], rootfs)
    assert listing(rootfs) == {"h", "g"}
    assert (rootfs / "h").read_bytes() == b"old"
    st_ = os.lstat(rootfs / "h")
    assert (stat.S_IMODE(st_.st_mode), st_.st_mtime) == (0o640, MTIME + 1)
    assert os.lstat(rootfs / "g").st_ino == st_.st_ino
    # and a lower file replaced after the link keeps its old inode for the link
    l3 = snapshot(tmp_path, "l3", [link("k", "a/f"), reg("a/f", b"new")])
    stack_snapshots([l1, l3], tmp_path / "rootfs2")
    assert (tmp_path / "rootfs2/k").read_bytes() == b"old"
    assert (tmp_path / "rootfs2/a/f").read_bytes() == b"new"


def test_hard_link_to_nothing_is_refused_when_stacking(tmp_path: Path) -> None:
    l1 = snapshot(tmp_path, "l1", [reg("a")])
    l2 = snapshot(tmp_path, "l2", [link("h", "nothing")])
    with pytest.raises(BadInputError, match=r"'h' \(hard links stay inside the image\).*no such entry"):
        stack_snapshots([l1, l2], tmp_path / "rootfs")
    assert not (tmp_path / "rootfs").exists()
    l3 = snapshot(tmp_path, "l3", [link("h", "d")])
    l0 = snapshot(tmp_path, "l0", [dir_("d")])
    with pytest.raises(BadInputError, match=r"hard links stay inside the image.*a directory"):
        stack_snapshots([l0, l3], tmp_path / "rootfs")


def test_forged_lower_links_record_refused(tmp_path: Path) -> None:
    l1 = snapshot(tmp_path, "l1", [reg("a")])
    forged = tmp_path / "snaps" / "forged"
    forged.mkdir()
    (forged / ".wh..wh..lowerlinks").write_bytes(b"h\0../../etc/passwd\0")
    with pytest.raises(BadInputError, match="relative paths"):
        stack_snapshots([l1, forged], tmp_path / "rootfs")


# sparse files: GNU tar writes every format; Python's tarfile reads them back as reference


def make_sparse_source(path: Path, size: int, regions: list[tuple[int, bytes]]) -> None:
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, data in regions:
            f.seek(offset)
            f.write(data)


SPARSE_REGIONS = [(i * 3 * MiB + 4096 * (i % 3), os.urandom(5000 + i)) for i in range(30)]


@pytest.mark.skipif(shutil.which("tar") is None, reason="GNU tar writes the sparse formats")
@pytest.mark.parametrize(
    "fmt",
    [
        ["--format=gnu"],
        ["--format=posix", "--sparse-version=0.0"],
        ["--format=posix", "--sparse-version=0.1"],
        ["--format=posix", "--sparse-version=1.0"],
    ],
    ids=["old-gnu", "pax-0.0", "pax-0.1", "pax-1.0"],
)
def test_sparse_files_unpacked(tmp_path: Path, fmt: list[str]) -> None:
    src = tmp_path / "src"
    src.mkdir()
    size = 100 * MiB + 123  # ends in a hole
    make_sparse_source(src / "sparse.img", size, SPARSE_REGIONS)
    (src / "plain").write_bytes(b"after the sparse file")
    tar = subprocess.run(
        ["tar", "-C", str(src), "--sparse", *fmt, "-cf", "-", "sparse.img", "plain"],
        check=True,
        capture_output=True,
    ).stdout
    unpack(tar, tmp_path / "snap", "zstd")
    out = tmp_path / "snap" / "sparse.img"
    assert out.stat().st_size == size
    with open(out, "rb") as got, open(src / "sparse.img", "rb") as want:
        while block := want.read(MiB):
            assert got.read(MiB) == block
    assert (tmp_path / "snap" / "plain").read_bytes() == b"after the sparse file"
    assert out.stat().st_blocks * 512 < 10 * MiB  # the holes stayed holes


def pax_sparse_10(name: str, realsize: int, regions: list[tuple[int, int]], data: bytes) -> bytes:
    """A PAX 1.0 sparse member written by hand (map at the head of the data)."""
    smap = f"{len(regions)}\n" + "".join(f"{o}\n{n}\n" for o, n in regions)
    mapbytes = smap.encode().ljust(-(-len(smap) // 512) * 512, b"\0")
    body = mapbytes + data
    ti = tarfile.TarInfo(f"GNUSparseFile.0/{name}")
    ti.size = len(body)
    ti.pax_headers = {
        "GNU.sparse.major": "1",
        "GNU.sparse.minor": "0",
        "GNU.sparse.name": name,
        "GNU.sparse.realsize": str(realsize),
    }
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tf:
        tf.addfile(ti, io.BytesIO(body))
    return out.getvalue()


def test_sparse_map_is_bounded(tmp_path: Path) -> None:
    # a 1.0 map announcing a billion regions: refused at once, not read into memory
    smap = b"1000000000\n" + b"0\n1\n" * 100
    ti = tarfile.TarInfo("GNUSparseFile.0/x")
    ti.size = len(smap)
    ti.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.realsize": "10"}
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tf:
        tf.addfile(ti, io.BytesIO(smap))
    with pytest.raises(BadInputError, match=r"sparse map size.*at most 65536 regions"):
        unpack(out.getvalue(), tmp_path / "snap")
    # old GNU: extension headers without end
    head = bytearray(raw_tar([Entry("s", tarfile.GNUTYPE_SPARSE)], end=False)[:512])
    head[482] = 1  # isextended
    head[148:156] = b" " * 8
    head[148:156] = b"%06o\0 " % sum(head)
    ext = bytearray(512)
    for i in range(21):
        ext[i * 24 : i * 24 + 24] = b"00000000001\0" + b"00000000001\0"
    ext[504] = 1
    body = bytes(head) + bytes(ext) * 4000
    with pytest.raises(BadInputError, match=r"sparse map size"):
        unpack(body, tmp_path / "snap2")


@pytest.mark.parametrize(
    "regions",
    [[(10, 5), (12, 5)], [(20, 5), (0, 5)], [(0, 50)]],
    ids=["overlap", "unordered", "beyond-size"],
)
def test_bad_sparse_maps_refused(tmp_path: Path, regions: list[tuple[int, int]]) -> None:
    data = b"x" * sum(n for _, n in regions)
    with pytest.raises(BadInputError, match="sparse map"):
        unpack(pax_sparse_10("f", 40, regions, data), tmp_path / "snap")
    assert_gone(tmp_path / "snap")


def test_sparse_map_must_account_for_the_data(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match=r"sparse map.*regions holding"):
        unpack(pax_sparse_10("f", 40, [(0, 4)], b"x" * 10), tmp_path / "snap")


@pytest.fixture
def fast_tmp(tmp_path: Path) -> Iterator[Path]:
    """A memory-backed directory where there is one (mkdir costs ms on this VM's disk)."""
    if not os.path.isdir("/dev/shm"):
        yield tmp_path
        return
    with tempfile.TemporaryDirectory(dir="/dev/shm", prefix="layerseal-test-") as d:
        yield Path(d)


def test_deep_nesting(fast_tmp: Path) -> None:
    tmp_path = fast_tmp
    depth = 1100
    names = ["/".join(["d"] * i) for i in range(1, depth + 1)]
    lower = snapshot(tmp_path, "l1", [*(dir_(n, 0o750) for n in names), reg(names[-1] + "/leaf", b"deep")])
    upper = snapshot(tmp_path, "l2", [reg(names[-1] + "/new", b"new"), dir_("e"), reg("e/f")])
    rootfs = tmp_path / "rootfs"
    stack_snapshots([lower, upper], rootfs)
    fd = os.open(rootfs, os.O_RDONLY)
    try:
        for _ in range(depth):
            nfd = os.open("d", os.O_RDONLY, dir_fd=fd)
            assert stat.S_IMODE(os.fstat(nfd).st_mode) == 0o750
            os.close(fd)
            fd = nfd
        assert sorted(os.listdir(fd)) == ["leaf", "new"]
    finally:
        os.close(fd)
    # a whiteout of the deep tree, and removal of every tree, work at that depth too
    gone = snapshot(tmp_path, "l3", [reg(".wh.d")])
    stack_snapshots([lower, gone], tmp_path / "rootfs2")
    assert listing(tmp_path / "rootfs2") == set()
    for tree in (rootfs, lower, upper):
        remove_tree(tree)
        assert not tree.exists()


def test_pax_mtimes_exact_to_the_nanosecond(tmp_path: Path) -> None:
    tar = make_tar(
        [
            reg("a", pax={"mtime": "1700000000.123456789"}),
            reg("b", pax={"mtime": "1700000000.9876543219"}),  # truncated past 9 digits, as Go does
            dir_("d", pax={"mtime": "1700000001.5"}),
            reg("d/f"),
            Entry("s", tarfile.SYMTYPE, linkname="a", pax={"mtime": "1700000002.000000001"}),
        ]
    )
    unpack(tar, tmp_path / "snap")
    snap = tmp_path / "snap"
    assert os.lstat(snap / "a").st_mtime_ns == 1_700_000_000_123_456_789
    assert os.lstat(snap / "b").st_mtime_ns == 1_700_000_000_987_654_321
    assert os.lstat(snap / "d").st_mtime_ns == 1_700_000_001_500_000_000
    assert os.lstat(snap / "s").st_mtime_ns == 1_700_000_002_000_000_001
    stack_snapshots([snap], tmp_path / "rootfs")
    assert os.lstat(tmp_path / "rootfs/a").st_mtime_ns == 1_700_000_000_123_456_789


def test_bad_pax_mtime_refused(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match=r"tar entry 'a' refused \(pax mtime\)"):
        unpack(make_tar([reg("a", pax={"mtime": "12e5"})]), tmp_path / "snap")


def test_empty_valued_xattrs_dropped(tmp_path: Path) -> None:
    tar = make_tar([reg("f", b"x", pax={"SCHILY.xattr.user.empty": "", "SCHILY.xattr.user.k": "v"})])
    unpack(tar, tmp_path / "snap")
    names = os.listxattr(tmp_path / "snap/f")
    if "user.k" not in names:
        pytest.skip("filesystem without user xattrs")
    assert "user.empty" not in names


@pytest.mark.skipif(not ROOT or shutil.which("setpriv") is None, reason="needs root to drop DAC override")
def test_unprivileged_mode_0000_files_are_stacked(tmp_path: Path) -> None:
    # as the file's owner but without CAP_DAC_OVERRIDE, as an unprivileged engine runs
    script = textwrap.dedent(
        f"""
        import io, os, sys, tarfile
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import layerseal.engine.unpack as u
        from engine_tarkit import make_tar, reg, dir_
        u._privileged = lambda: False
        base = {str(tmp_path)!r}
        u.unpack_layer([make_tar([dir_("etc"), reg("etc/shadow", b"root:*:", 0o000),
                                  dir_("locked", 0o000), reg("locked/f", b"in", 0o000)])],
                       "none", base + "/l1")
        u.unpack_layer([make_tar([reg("etc/motd", b"hi")])], "none", base + "/l2")
        u.stack_snapshots([base + "/l1", base + "/l2"], base + "/rootfs")
        print(oct(os.stat(base + "/rootfs/etc/shadow").st_mode & 0o7777))
        """
    )
    proc = subprocess.run(
        ["setpriv", "--bounding-set=-dac_override,-dac_read_search", sys.executable, "-c", script],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "0o0"
    os.chmod(tmp_path / "rootfs/etc/shadow", 0o600)
    assert (tmp_path / "rootfs/etc/shadow").read_bytes() == b"root:*:"
    assert stat.S_IMODE(os.lstat(tmp_path / "rootfs/locked").st_mode) == 0o000
    # and the snapshots were left as they were
    assert stat.S_IMODE(os.lstat(tmp_path / "l1/etc/shadow").st_mode) == 0o000
    assert stat.S_IMODE(os.lstat(tmp_path / "l1/locked").st_mode) == 0o000
