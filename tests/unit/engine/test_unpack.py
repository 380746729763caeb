"""Tests for layerseal.engine.unpack: safe layer extraction and snapshot stacking."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
import tarfile
import tempfile
import tracemalloc
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from engine_tarkit import (
    MTIME,
    SNAPSHOT_MARKERS,
    Entry,
    chunked,
    compress,
    dir_,
    link,
    listing,
    make_tar,
    raw_tar,
    reg,
    sha256_hex,
    sym,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from layerseal.engine.unpack import UnpackResult, stack_snapshots, unpack_layer
from layerseal.errors import BadInputError, LayersealError, MisuseError

ROOT = os.geteuid() == 0


def xattrs_supported(path: Path) -> bool:
    probe = path / ".probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, "user.probe", b"1")
    except OSError:
        return False
    finally:
        probe.unlink()
    return True


@pytest.fixture
def area(tmp_path: Path) -> Path:
    """tmp_path with a sentinel directory next to where snapshots go."""
    (tmp_path / "sentinel").mkdir()
    (tmp_path / "sentinel" / "keep").write_bytes(b"untouched")
    return tmp_path


def assert_nothing_escaped(area: Path) -> None:
    assert listing(area / "sentinel") == {"keep"}
    assert (area / "sentinel" / "keep").read_bytes() == b"untouched"
    assert sorted(os.listdir(area)) == ["sentinel"]  # no partial snapshot, no temp dir


def unpack(data: bytes, target: Path, compression: str = "none", **kw: object) -> UnpackResult:
    return unpack_layer(chunked(compress(data, compression), 777), compression, target, what="layer L1", **kw)  # type: ignore[arg-type]


# -- extraction --------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_unpack_tree_and_diff_id(area: Path, compression: str) -> None:
    tar = make_tar(
        [
            dir_(".", 0o755),
            dir_("etc", 0o750, mtime=MTIME + 5),
            reg("etc/hosts", b"127.0.0.1 localhost\n", 0o640, mtime=MTIME + 1),
            reg("bin/tool", b"\x7fELF", 0o755),  # parent directory not in the tar
            sym("etc/localtime", "/usr/share/zoneinfo/UTC"),
            sym("rel", "../../../../outside"),  # may point anywhere: never followed
            link("etc/hosts2", "etc/hosts"),
            reg("empty"),
        ]
    )
    target = area / "snap"
    result = unpack(tar, target, compression)

    assert result.diff_id.algorithm == "sha256"
    assert result.diff_id.hex == sha256_hex(tar)
    assert result.entries == 8
    assert result.bytes_written == len(b"127.0.0.1 localhost\n") + 4
    assert (target / "etc/hosts").read_bytes() == b"127.0.0.1 localhost\n"
    assert stat.S_IMODE((target / "etc/hosts").stat().st_mode) == 0o640
    assert (target / "etc/hosts").stat().st_mtime == MTIME + 1
    assert stat.S_IMODE((target / "etc").stat().st_mode) == 0o750
    assert (target / "etc").stat().st_mtime == MTIME + 5  # set after its children were written
    assert stat.S_IMODE((target / "bin").stat().st_mode) == 0o755
    assert os.readlink(target / "etc/localtime") == "/usr/share/zoneinfo/UTC"
    assert os.readlink(target / "rel") == "../../../../outside"
    assert os.lstat(target / "rel").st_mtime == MTIME
    assert (target / "etc/hosts2").stat().st_ino == (target / "etc/hosts").stat().st_ino
    assert (target / "empty").read_bytes() == b""
    assert listing(target) == {
        "etc", "etc/hosts", "etc/hosts2", "etc/localtime", "bin", "bin/tool", "rel", "empty"
    }  # fmt: skip
    assert listing(area / "sentinel") == {"keep"}


def test_diff_id_covers_trailing_padding(area: Path) -> None:
    tar = make_tar([reg("a", b"x")]) + b"\0" * 10240
    assert unpack(tar, area / "snap").diff_id.hex == sha256_hex(tar)


def test_target_must_be_empty(area: Path) -> None:
    target = area / "snap"
    target.mkdir()
    (target / "x").write_bytes(b"")
    with pytest.raises(MisuseError, match="expected an empty directory"):
        unpack(make_tar([reg("a")]), target)
    assert listing(target) == {"x"}


def test_existing_empty_target_is_used_and_emptied_on_error(area: Path) -> None:
    target = area / "snap"
    target.mkdir()
    with pytest.raises(BadInputError):
        unpack(make_tar([reg("a", b"1"), reg("/etc/x")]), target)
    assert target.is_dir() and listing(target) == set()


def test_read_only_directory_still_receives_its_children(area: Path) -> None:
    tar = make_tar([dir_("ro", 0o555), reg("ro/f", b"data", 0o444)])
    unpack(tar, area / "snap")
    assert (area / "snap/ro/f").read_bytes() == b"data"
    assert stat.S_IMODE((area / "snap/ro").stat().st_mode) == 0o555


def test_later_entry_replaces_earlier(area: Path) -> None:
    tar = make_tar(
        [
            reg("a", b"old"),
            reg("a", b"new"),
            dir_("d"),
            reg("d/x"),
            reg("d", b"file now"),
            sym("s", "x"),
            dir_("s"),
        ]
    )
    unpack(tar, area / "snap")
    assert (area / "snap/a").read_bytes() == b"new"
    assert (area / "snap/d").read_bytes() == b"file now"
    assert (area / "snap/s").is_dir() and not (area / "snap/s").is_symlink()


def test_whiteouts_are_recorded_not_applied(area: Path) -> None:
    tar = make_tar(
        [dir_("a"), reg("a/.wh.gone"), reg("a/kept"), dir_("b"), reg("b/.wh..wh..opq"), reg(".wh.top")]
    )
    unpack(tar, area / "snap")
    assert listing(area / "snap") == {"a", "a/.wh.gone", "a/kept", "b", "b/.wh..wh..opq", ".wh.top"}
    assert (area / "snap/a/.wh.gone").stat().st_size == 0


def test_aufs_metadata_is_skipped(area: Path) -> None:
    tar = make_tar([dir_(".wh..wh.plnk"), reg(".wh..wh.plnk/123.456", b"x"), reg("f")])
    result = unpack(tar, area / "snap")
    assert listing(area / "snap") == {"f"}
    assert ".wh..wh.plnk/123.456" in result.skipped


@pytest.mark.skipif(not ROOT, reason="ownership and device nodes need root")
def test_root_restores_owner_setuid_and_devices(area: Path) -> None:
    tar = make_tar(
        [
            reg("suid", b"x", 0o4755, uid=1234, gid=5678),
            Entry("null", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3),
            Entry("pipe", tarfile.FIFOTYPE, mode=0o600),
        ]
    )
    unpack(tar, area / "snap")
    st_ = (area / "snap/suid").stat()
    assert (st_.st_uid, st_.st_gid) == (1234, 5678)
    assert stat.S_IMODE(st_.st_mode) == 0o4755
    null = os.lstat(area / "snap/null")
    assert stat.S_ISCHR(null.st_mode) and os.major(null.st_rdev) == 1 and os.minor(null.st_rdev) == 3
    assert stat.S_IMODE(null.st_mode) == 0o666
    assert stat.S_ISFIFO(os.lstat(area / "snap/pipe").st_mode)


@pytest.mark.skipif(ROOT, reason="checks the unprivileged rules")
def test_non_root_drops_setuid_and_keeps_own_uid(area: Path) -> None:
    unpack(make_tar([reg("suid", b"x", 0o6755, uid=0, gid=0)]), area / "snap")
    st_ = (area / "snap/suid").stat()
    assert stat.S_IMODE(st_.st_mode) == 0o755
    assert st_.st_uid == os.geteuid()


def test_devices_skipped_when_not_allowed(area: Path) -> None:
    tar = make_tar(
        [Entry("null", tarfile.CHRTYPE, devmajor=1, devminor=3), Entry("p", tarfile.FIFOTYPE), reg("f")]
    )
    result = unpack(tar, area / "snap", allow_devices=False)
    assert listing(area / "snap") == {"f"}
    assert set(result.skipped) == {"null", "p"}


def test_xattrs_user_namespace_restored(area: Path) -> None:
    if not xattrs_supported(area):
        pytest.skip("filesystem without user xattrs")
    tar = make_tar(
        [
            reg(
                "f", b"x", pax={"SCHILY.xattr.user.note": "hello", "SCHILY.xattr.trusted.overlay.opaque": "y"}
            ),
            dir_("d", pax={"SCHILY.xattr.user.d": "dir"}),
        ]
    )
    result = unpack(tar, area / "snap")
    assert os.getxattr(area / "snap/f", "user.note") == b"hello"
    assert os.getxattr(area / "snap/d", "user.d") == b"dir"
    # overlayfs control attributes are never restored from a tar
    assert "trusted.overlay.opaque" not in os.listxattr(area / "snap/f")
    assert any("trusted.overlay.opaque" in s for s in result.skipped)


# -- malicious layers ---------------------------------------------------------------------


def malicious(area: Path) -> list[tuple[str, list[Entry], str, str]]:
    sentinel = str(area / "sentinel")
    return [
        ("traversal", [reg("../../etc/x", b"pwn")], "../../etc/x", r"no '\.\.' in entry name"),
        ("traversal-inner", [dir_("a"), reg("a/../../sentinel/x", b"pwn")], "a/../../sentinel/x", r"'\.\.'"),
        ("absolute", [reg("/etc/x", b"pwn")], "/etc/x", "no absolute entry name"),
        (
            "abs-symlink-write",
            [sym("evil", sentinel), reg("evil/pwned", b"pwn")],
            "evil/pwned",
            "no writes through symlinks.*expected 'evil' to be a directory, seen a symlink to",
        ),
        (
            "rel-symlink-write",
            [sym("up", "../sentinel"), reg("up/pwned", b"pwn")],
            "up/pwned",
            "no writes through symlinks",
        ),
        (
            "nested-symlink-write",
            [dir_("a"), sym("a/b", "../../sentinel"), dir_("a/b/c"), reg("a/b/c/pwned")],
            "a/b/c",
            "no writes through symlinks.*'a/b'",
        ),
        (
            # aims at the test area, never at the real filesystem, should the guard ever break
            "symlink-then-deeper-write",
            [sym("d", str(area)), reg("d/sentinel/pwned")],
            "d/sentinel/pwned",
            "no writes through symlinks",
        ),
        ("hardlink-abs", [link("pw", "/etc/passwd")], "pw", "no absolute hard link target"),
        ("hardlink-up", [link("pw", "../sentinel/keep")], "pw", r"no '\.\.' in hard link target"),
        (
            "hardlink-to-symlink",
            [sym("s", sentinel + "/keep"), link("h", "s")],
            "h",
            "hard links stay inside the image.*regular file",
        ),
        (
            "hardlink-through-symlink",
            [reg("f"), sym("d", "."), link("h", "d/f")],
            "h",
            "hard links stay inside the image",
        ),
        ("whiteout-dotdot", [dir_("a"), reg("a/.wh..")], "a/.wh..", "whiteout must name one entry"),
        ("whiteout-dotdot-path", [reg(".wh.../sentinel/keep")], ".wh.../sentinel/keep", r"'\.\.'|whiteout"),
        ("whiteout-as-dir", [reg(".wh.x/y")], ".wh.x/y", "whiteout markers are not directories"),
        ("nul-in-name", [reg("x", pax={"path": "a\x00b"})], "a", "NUL"),
        ("file-as-parent", [reg("f"), reg("f/x")], "f/x", "parent must be a directory"),
        ("data-on-symlink", [Entry("s", tarfile.SYMTYPE, data=b"x" * 10, linkname="t")], "s", "carry data"),
    ]


CASES = [c[0] for c in malicious(Path("/x"))]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_malicious_layer_refused(area: Path, case: str, compression: str) -> None:
    _, entries, entry, pattern = next(c for c in malicious(area) if c[0] == case)
    tar = raw_tar([reg("ok", b"written before the bad entry"), *entries])
    with pytest.raises(BadInputError) as info:
        unpack(tar, area / "snap", compression)
    msg = str(info.value)
    assert msg.startswith("layer L1")
    if case != "nul-in-name":
        assert repr(entry)[1:-1] in msg
    assert re.search(pattern, msg), msg
    assert "expected" in msg and "seen" in msg
    assert_nothing_escaped(area)


def test_huge_size_header_refused(area: Path) -> None:
    tar = raw_tar([Entry("big", data=b"", size=1 << 40)], end=False)
    with pytest.raises(BadInputError, match=r"layer L1: tar entry 'big' refused \(entry size limit\)"):
        unpack(tar, area / "snap")
    assert_nothing_escaped(area)


def test_max_entry_size_enforced(area: Path) -> None:
    tar = make_tar([reg("small", b"x" * 100), reg("large", b"x" * 2000)])
    with pytest.raises(BadInputError, match=r"'large'.*expected at most 1000 bytes, seen 2000 bytes"):
        unpack(tar, area / "snap", max_entry_size=1000)
    assert_nothing_escaped(area)


def test_size_header_beyond_stream_is_truncation(area: Path) -> None:
    tar = raw_tar([reg("a", b"ok"), Entry("cut", data=b"y" * 600, size=1 << 20)], end=False)
    with pytest.raises(BadInputError, match=r"'cut'.*truncated"):
        unpack(tar, area / "snap")
    assert_nothing_escaped(area)


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_truncated_compressed_layer_refused(area: Path, compression: str) -> None:
    blob = compress(make_tar([reg("a", os.urandom(50_000)), reg("b", os.urandom(50_000))]), compression)
    with pytest.raises(BadInputError, match=rf"layer L1 \({compression}\).*truncated"):
        unpack_layer(chunked(blob[: len(blob) // 2]), compression, area / "snap", what="layer L1")
    assert_nothing_escaped(area)


def test_corrupt_zstd_refused(area: Path) -> None:
    blob = bytearray(compress(make_tar([reg("a", b"hello" * 1000)]), "zstd"))
    blob[4:12] = b"\xff" * 8
    with pytest.raises(BadInputError, match=r"layer L1 \(zstd\)"):
        unpack_layer([bytes(blob)], "zstd", area / "snap", what="layer L1")
    assert_nothing_escaped(area)


def test_tar_without_end_marker_accepted(area: Path) -> None:
    # stops exactly at a header boundary after a whole member: Go's archive/tar and umoci
    # accept this (umoci 0.4.7's `insert` writes such layers); see test_unpack_fidelity for
    # the members cut short that are still refused
    tar = raw_tar([reg("a", b"x" * 512), reg("b", b"y" * 10)], end=False)
    result = unpack(tar, area / "snap")
    assert (area / "snap/b").read_bytes() == b"y" * 10
    assert result.diff_id.hex == sha256_hex(tar)


def test_garbage_header_refused(area: Path) -> None:
    tar = raw_tar([reg("a", b"x")], end=False) + b"\x01" * 512 + b"\0" * 1024
    with pytest.raises(BadInputError, match="layer L1: tar stream"):
        unpack(tar, area / "snap")
    assert_nothing_escaped(area)


def test_not_a_tar_refused(area: Path) -> None:
    with pytest.raises(BadInputError, match="layer L1: tar stream: expected a valid tar archive"):
        unpack(b"hello, not a tar" * 100, area / "snap")
    assert_nothing_escaped(area)


def test_failure_after_read_only_dir_still_cleans_up(area: Path) -> None:
    tar = raw_tar([dir_("ro", 0o500), reg("ro/f", b"x"), reg("/abs")])
    with pytest.raises(BadInputError):
        unpack(tar, area / "snap")
    assert_nothing_escaped(area)


# -- memory --------------------------------------------------------------------------------


def big_layer(size: int, digest: hashlib._Hash) -> Iterator[bytes]:
    """A gzip'd tar holding one ``size``-byte file, produced piece by piece."""
    comp = zlib.compressobj(1, zlib.DEFLATED, 31)
    block = bytes(range(256)) * 4096  # 1 MiB, reused: the generator allocates nothing big

    def emit(data: bytes) -> Iterator[bytes]:
        digest.update(data)
        out = comp.compress(data)
        if out:
            yield out

    ti = tarfile.TarInfo("big.bin")
    ti.size = size
    ti.mode = 0o644
    yield from emit(ti.tobuf(tarfile.PAX_FORMAT))
    for _ in range(size // len(block)):
        yield from emit(block)
    yield from emit(b"\0" * 1024)
    yield comp.flush()


def test_streaming_unpack_uses_constant_memory(area: Path) -> None:
    size = 64 << 20
    expected = hashlib.sha256()
    tracemalloc.start()
    try:
        result = unpack_layer(big_layer(size, expected), "gzip", area / "snap", what="big layer")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.diff_id.hex == expected.hexdigest()
    assert result.bytes_written == size
    assert (area / "snap/big.bin").stat().st_size == size
    assert peak < 8 << 20, f"peak traced memory {peak} bytes"


# -- property: safe trees round-trip ------------------------------------------------------

NAMES = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-.", min_size=1, max_size=12).filter(
    lambda n: n not in (".", "..") and not n.startswith(".wh.")
)
LEAF = st.one_of(
    st.tuples(
        st.just("file"), st.binary(max_size=3000), st.sampled_from([0o644, 0o600, 0o755, 0o444, 0o700])
    ),
    st.tuples(st.just("symlink"), st.text(alphabet="abc/._-", min_size=1, max_size=30), st.just(0o777)),
)
TREE = st.recursive(
    st.dictionaries(NAMES, LEAF, max_size=4),
    lambda children: st.dictionaries(
        NAMES,
        st.one_of(LEAF, st.tuples(st.just("dir"), children, st.sampled_from([0o755, 0o700, 0o555]))),
        max_size=4,
    ),
    max_leaves=12,
)


def tree_entries(tree: dict[str, tuple[str, object, int]], prefix: str = "") -> Iterator[Entry]:
    for name, (kind, payload, mode) in sorted(tree.items()):
        path = prefix + name
        if kind == "file":
            yield reg(path, payload, mode)  # type: ignore[arg-type]
        elif kind == "symlink":
            yield sym(path, payload)  # type: ignore[arg-type]
        else:
            yield dir_(path, mode)
            yield from tree_entries(payload, path + "/")  # type: ignore[arg-type]


def walk(root: Path) -> dict[str, tuple[str, object, int]]:
    out: dict[str, tuple[str, object, int]] = {}
    for name in os.listdir(root):
        p = root / name
        if name in SNAPSHOT_MARKERS:
            continue
        st_ = os.lstat(p)
        assert st_.st_mtime == MTIME
        if stat.S_ISLNK(st_.st_mode):
            out[name] = ("symlink", os.readlink(p), 0o777)
        elif stat.S_ISDIR(st_.st_mode):
            out[name] = ("dir", walk(p), stat.S_IMODE(st_.st_mode))
        else:
            out[name] = ("file", p.read_bytes(), stat.S_IMODE(st_.st_mode))
    return out


@settings(max_examples=60, deadline=None)
@given(tree=TREE, compression=st.sampled_from(["none", "gzip", "zstd"]))
def test_safe_trees_round_trip(tree: dict[str, tuple[str, object, int]], compression: str) -> None:
    tar = make_tar(list(tree_entries(tree)))
    with tempfile.TemporaryDirectory() as tmp:
        result = unpack(tar, Path(tmp) / "snap", compression)
        assert result.diff_id.hex == sha256_hex(tar)
        got = walk(Path(tmp) / "snap")
        os.chmod(tmp, 0o700)
        if not ROOT:  # read-only dirs must be writable again to clean up
            for dirpath, dirnames, _ in os.walk(tmp):
                for d in dirnames:
                    if not os.path.islink(os.path.join(dirpath, d)):
                        os.chmod(os.path.join(dirpath, d), 0o700)
    assert got == tree


# -- stacking ------------------------------------------------------------------------------


def snapshot(area: Path, name: str, entries: list[Entry]) -> Path:
    target = area / "snaps" / name
    target.parent.mkdir(exist_ok=True)
    unpack(make_tar(entries), target)
    return target


def test_stack_applies_whiteouts_and_opaque_dirs(area: Path) -> None:
    l1 = snapshot(
        area,
        "l1",
        [
            dir_("a"), reg("a/f1", b"1"), reg("a/f2", b"2"),
            dir_("b"), reg("b/lower", b"lower"), dir_("b/sub"), reg("b/sub/deep"),
            reg("c", b"c1"), dir_("d"), reg("d/x"), reg("e", b"file"),
        ],
    )  # fmt: skip
    l2 = snapshot(
        area,
        "l2",
        [
            dir_("a"), reg("a/.wh.f1"),
            dir_("b", 0o700), reg("b/.wh..wh..opq"), reg("b/upper", b"upper"),
            reg(".wh.c"), reg(".wh.d"), reg(".wh.missing"),
            dir_("e"), reg("e/now-a-dir"),
            dir_("g"), reg("g/.wh.same"), reg("g/same", b"same layer"),
        ],
    )  # fmt: skip
    l3 = snapshot(area, "l3", [reg("c", b"c3"), dir_("a"), reg("a/f2", b"2 again")])
    rootfs = area / "rootfs"
    stack_snapshots([l1, l2, l3], rootfs)

    assert listing(rootfs) == {
        "a", "a/f2", "b", "b/upper", "c", "e", "e/now-a-dir", "g", "g/same",
    }  # fmt: skip
    assert (rootfs / "a/f2").read_bytes() == b"2 again"
    assert (rootfs / "b/upper").read_bytes() == b"upper"
    assert (rootfs / "c").read_bytes() == b"c3"
    assert (rootfs / "g/same").read_bytes() == b"same layer"  # whiteouts hide lower layers only
    assert stat.S_IMODE((rootfs / "b").stat().st_mode) == 0o700  # upper directory's metadata wins
    assert [p for p in os.listdir(area) if p.startswith(".rootfs")] == []
    # snapshots are untouched by stacking
    assert (l1 / "a/f1").exists() and (l2 / "a/.wh.f1").exists()


def test_stack_preserves_metadata_links_and_symlinks(area: Path) -> None:
    l1 = snapshot(
        area,
        "l1",
        [
            dir_("ro", 0o555, mtime=MTIME + 9), reg("ro/f", b"data", 0o640, mtime=MTIME + 3),
            link("ro/g", "ro/f"), sym("abs", "/etc/passwd"), dir_(".", 0o755),
        ],
    )  # fmt: skip
    l2 = snapshot(area, "l2", [dir_("ro", 0o555, mtime=MTIME + 9), reg("ro/new", b"n")])
    rootfs = area / "rootfs"
    stack_snapshots([l1, l2], rootfs)
    assert (rootfs / "ro/f").read_bytes() == b"data"
    assert stat.S_IMODE((rootfs / "ro/f").stat().st_mode) == 0o640
    assert (rootfs / "ro/f").stat().st_mtime == MTIME + 3
    assert (rootfs / "ro/g").stat().st_ino == (rootfs / "ro/f").stat().st_ino
    assert (rootfs / "ro/f").stat().st_ino != (l1 / "ro/f").stat().st_ino  # a copy, not the cache
    assert (rootfs / "ro/new").read_bytes() == b"n"
    assert stat.S_IMODE((rootfs / "ro").stat().st_mode) == 0o555
    assert (rootfs / "ro").stat().st_mtime == MTIME + 9
    assert os.readlink(rootfs / "abs") == "/etc/passwd"
    assert stat.S_IMODE(rootfs.stat().st_mode) == 0o755


def test_stack_failure_leaves_nothing(area: Path) -> None:
    l1 = snapshot(area, "l1", [reg("a", b"1")])
    rootfs = area / "rootfs"
    with pytest.raises(LayersealError, match="rootfs"):
        stack_snapshots([l1, area / "snaps" / "does-not-exist"], rootfs)
    assert not rootfs.exists()
    assert sorted(os.listdir(area)) == ["sentinel", "snaps"]


def test_stack_refuses_a_forged_dotdot_whiteout(area: Path) -> None:
    l1 = snapshot(area, "l1", [dir_("a"), reg("a/x")])
    forged = area / "snaps" / "forged"
    (forged / "a").mkdir(parents=True)
    # a name unpack_layer would never write: '.wh...' would whiteout the parent
    (forged / "a" / ".wh...").write_bytes(b"")
    rootfs = area / "rootfs"
    with pytest.raises(BadInputError, match=r"whiteout must name one entry"):
        stack_snapshots([l1, forged], rootfs)
    assert not rootfs.exists()
    assert sorted(os.listdir(area)) == ["sentinel", "snaps"]
    assert (l1 / "a/x").exists()


def test_stack_into_non_empty_dir_refused(area: Path) -> None:
    l1 = snapshot(area, "l1", [reg("a")])
    (area / "rootfs").mkdir()
    (area / "rootfs" / "old").write_bytes(b"")
    with pytest.raises(MisuseError, match="expected a new or empty directory"):
        stack_snapshots([l1], area / "rootfs")
    assert listing(area / "rootfs") == {"old"}


def test_stack_into_existing_empty_dir(area: Path) -> None:
    l1 = snapshot(area, "l1", [reg("a", b"x")])
    (area / "rootfs").mkdir()
    stack_snapshots([l1], area / "rootfs")
    assert (area / "rootfs/a").read_bytes() == b"x"


@pytest.mark.skipif(not ROOT, reason="device nodes need root")
def test_stack_copies_devices_and_owners(area: Path) -> None:
    l1 = snapshot(
        area,
        "l1",
        [Entry("null", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3), reg("o", uid=7, gid=8)],
    )
    stack_snapshots([l1], area / "rootfs")
    st_ = os.lstat(area / "rootfs/null")
    assert stat.S_ISCHR(st_.st_mode) and st_.st_rdev == os.makedev(1, 3)
    assert (os.lstat(area / "rootfs/o").st_uid, os.lstat(area / "rootfs/o").st_gid) == (7, 8)


def test_stack_copies_user_xattrs(area: Path) -> None:
    if not xattrs_supported(area):
        pytest.skip("filesystem without user xattrs")
    l1 = snapshot(area, "l1", [reg("f", b"x", pax={"SCHILY.xattr.user.k": "v"})])
    stack_snapshots([l1], area / "rootfs")
    try:
        assert os.getxattr(area / "rootfs/f", "user.k") == b"v"
    except OSError as e:  # pragma: no cover - only on filesystems that lose xattrs
        assert e.errno != errno.ENODATA
        raise


def test_unprivileged_rules_without_root(area: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the rules that depend on privilege, checked even when the suite runs as root
    import layerseal.engine.unpack as unpack_mod

    monkeypatch.setattr(unpack_mod, "_privileged", lambda: False)
    tar = make_tar(
        [
            reg("suid", b"x", 0o6755, uid=4321, gid=4321),
            Entry("null", tarfile.CHRTYPE, devmajor=1, devminor=3),
            reg("cap", b"x", pax={"SCHILY.xattr.security.capability": "\x01\x00\x00\x02"}),
        ]
    )
    result = unpack(tar, area / "snap")
    st_ = (area / "snap/suid").stat()
    assert stat.S_IMODE(st_.st_mode) == 0o755
    assert st_.st_uid == os.geteuid()
    assert not (area / "snap/null").exists()
    assert "null" in result.skipped
    assert "cap: xattr security.capability" in result.skipped


def test_empty_layer_has_the_well_known_diff_id(area: Path) -> None:
    result = unpack(b"\0" * 1024, area / "snap", "gzip")
    assert str(result.diff_id) == "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"
    assert result.entries == 0
    assert listing(area / "snap") == set()


def test_oversized_pax_header_refused(area: Path) -> None:
    # tarfile would buffer the whole pax record block in memory
    tar = raw_tar([Entry("pax", tarfile.XHDTYPE, data=b"9 a=b\n" * 200_000, mode=0o644), reg("f")])
    with pytest.raises(
        BadInputError, match=r"layer L1: tar header at offset 0 refused \(metadata header size\)"
    ):
        unpack(tar, area / "snap")
    assert_nothing_escaped(area)


def test_stack_copies_big_files_on_helper_threads_faithfully(area: Path) -> None:
    """Files past the parallel-copy size: content, metadata and hard links as with inline copies,
    whiteouts of a lower big file, and a lower-layer hard link to one (which must wait for it)."""
    big = [os.urandom((1 << 20) + i * 4099) for i in range(8)]
    l1 = snapshot(
        area,
        "l1",
        [
            dir_("d", 0o750, mtime=MTIME + 7),
            *[reg(f"d/big{i}", b, 0o600 + i, mtime=MTIME + i) for i, b in enumerate(big)],
            link("d/big0-link", "d/big0"),
            reg("gone", big[1]),
            reg("ro", big[2], 0o400),
        ],
    )  # fmt: skip
    l2 = snapshot(
        area, "l2", [reg(".wh.gone"), reg("d/big3", b"small now"), link("up-link", "d/big5")]
    )  # fmt: skip
    rootfs = area / "rootfs"
    stack_snapshots([l1, l2], rootfs)
    for i, b in enumerate(big):
        if i == 3:
            continue
        st = (rootfs / f"d/big{i}").stat()
        assert (rootfs / f"d/big{i}").read_bytes() == b
        assert (stat.S_IMODE(st.st_mode), st.st_mtime) == (0o600 + i, MTIME + i)
        assert st.st_ino != (l1 / f"d/big{i}").stat().st_ino
    assert (rootfs / "d/big3").read_bytes() == b"small now"
    assert (rootfs / "d/big0-link").stat().st_ino == (rootfs / "d/big0").stat().st_ino
    assert (rootfs / "up-link").read_bytes() == big[5]
    assert not (rootfs / "gone").exists()
    assert stat.S_IMODE((rootfs / "ro").stat().st_mode) == 0o400
    assert (rootfs / "d").stat().st_mtime == MTIME + 7
