"""Tests for layerseal.engine.snapshot: key-derived names, sealed trees, locks and gc."""

from __future__ import annotations

import fcntl
import os
import stat
import threading
from pathlib import Path

import pytest
from engine_tarkit import dir_, link, make_tar, reg, sym

from layerseal.engine.snapshot import SnapshotStore, tree_digest
from layerseal.engine.unpack import unpack_layer
from layerseal.errors import IntegrityError
from layerseal.image.digest import Digest
from layerseal.image.encryption import PrivateOptions

TAR = make_tar([reg("etc/os-release", b"ID=test\n"), sym("link", "/etc/os-release")])
DIFF_ID = Digest.of(TAR)
BLOB = Digest.of(b"the encrypted blob")


def opts(symkey: bytes = b"k" * 32, nonce: bytes = b"n" * 16) -> PrivateOptions:
    return PrivateOptions(symkey=symkey, nonce=nonce, digest=BLOB)


def build_from(tar: bytes, calls: list[int] | None = None):  # type: ignore[no-untyped-def]
    def build(tree: Path) -> None:
        if calls is not None:
            calls.append(1)
        unpack_layer([tar], "none", tree)

    return build


def test_encrypted_names_need_the_layer_key(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "c")
    a = store.key_for(BLOB, DIFF_ID, opts())
    assert a.name.startswith("e-") and DIFF_ID.hex not in a.name and BLOB.hex not in a.name
    assert store.key_for(BLOB, DIFF_ID, opts()).name == a.name  # the same key finds it again
    assert store.key_for(BLOB, DIFF_ID, opts(symkey=b"K" * 32)).name != a.name
    assert store.key_for(BLOB, DIFF_ID, opts(nonce=b"N" * 16)).name != a.name
    assert store.key_for(Digest.of(b"other blob"), DIFF_ID, opts()).name != a.name
    plain = store.key_for(BLOB, DIFF_ID, None)
    assert plain.name == f"p-sha256-{DIFF_ID.hex}" and plain.name != a.name
    assert "seal_key" not in repr(a) and "k" * 32 not in repr(a)


def test_build_then_reuse(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "c")
    key = store.key_for(BLOB, DIFF_ID, opts())
    calls: list[int] = []
    lease = store.acquire(key, build_from(TAR, calls))
    assert not lease.reused and (lease.tree / "etc/os-release").read_bytes() == b"ID=test\n"
    lease.close()
    lease = store.acquire(key, build_from(TAR, calls))
    assert lease.reused and not lease.discarded and calls == [1]
    lease.close()
    assert os.listdir(tmp_path / "c" / "work") == []


def test_built_snapshot_is_committed_before_use(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "c")
    key = store.key_for(BLOB, DIFF_ID, opts())
    lease = store.acquire(key, build_from(TAR))
    assert store.names() == [key.name] and lease.tree == store.path(key.name) / "tree"
    assert os.listdir(tmp_path / "c" / "work") == []
    lease.close()


def test_failed_build_leaves_nothing(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "c")
    key = store.key_for(BLOB, DIFF_ID, opts())

    def bad(tree: Path) -> None:
        unpack_layer([TAR], "none", tree)
        raise IntegrityError("layer 0: diff_id: expected x, seen y")

    with pytest.raises(IntegrityError):
        store.acquire(key, bad)
    assert store.names() == [] and os.listdir(tmp_path / "c" / "work") == []


@pytest.mark.parametrize("edit", ["content", "mode", "mtime", "add", "remove", "symlink", "xattr", "seal"])
def test_any_change_is_discarded_and_rebuilt(tmp_path: Path, edit: str) -> None:
    store = SnapshotStore(tmp_path / "c")
    key = store.key_for(BLOB, DIFF_ID, opts())
    store.acquire(key, build_from(TAR)).close()
    tree = store.path(key.name) / "tree"
    victim = tree / "etc/os-release"
    if edit == "content":
        victim.chmod(0o644)
        victim.write_bytes(b"ID=evil\n")
    elif edit == "mode":
        victim.chmod(0o4755)
    elif edit == "mtime":
        os.utime(victim, (1, 1))
    elif edit == "add":
        (tree / "etc/ld.so.preload").write_bytes(b"/evil.so")
    elif edit == "remove":
        victim.unlink()
    elif edit == "symlink":
        (tree / "link").unlink()
        (tree / "link").symlink_to("/etc/shadow")
    elif edit == "xattr":
        os.setxattr(victim, "user.evil", b"1")
    else:
        (store.path(key.name) / "seal.json").write_text('{"version": 1}')
    calls: list[int] = []
    lease = store.acquire(key, build_from(TAR, calls))
    assert (lease.reused, lease.discarded, calls) == (False, True, [1])
    lease.close()
    assert victim.read_bytes() == b"ID=test\n" and os.readlink(tree / "link") == "/etc/os-release"
    assert not (tree / "etc/ld.so.preload").exists()


def test_a_seal_made_with_another_key_is_refused(tmp_path: Path) -> None:
    """Copying another snapshot's tree and seal under this name does not pass verification."""
    store = SnapshotStore(tmp_path / "c")
    mine, theirs = store.key_for(BLOB, DIFF_ID, opts()), store.key_for(BLOB, DIFF_ID, opts(symkey=b"T" * 32))
    evil = make_tar([reg("etc/os-release", b"ID=evil\n"), sym("link", "/etc/os-release")])
    store.acquire(theirs, build_from(evil)).close()
    os.rename(store.path(theirs.name), store.path(mine.name))
    lease = store.acquire(mine, build_from(TAR))
    assert lease.discarded and (lease.tree / "etc/os-release").read_bytes() == b"ID=test\n"
    lease.close()


def test_plain_snapshot_is_sealed_with_the_cache_secret(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "c")
    key = store.key_for(BLOB, DIFF_ID, None)
    store.acquire(key, build_from(TAR)).close()
    assert stat.S_IMODE((tmp_path / "c" / "secret").stat().st_mode) == 0o600
    (store.path(key.name) / "tree" / "etc/os-release").chmod(0o644)
    (store.path(key.name) / "tree" / "etc/os-release").write_bytes(b"x")
    lease = store.acquire(key, build_from(TAR))
    assert lease.discarded
    lease.close()
    # another cache (another secret) does not accept this cache's seals
    other = SnapshotStore(tmp_path / "d")
    os.rename(store.path(key.name), other.path(key.name))
    lease = other.acquire(other.key_for(BLOB, DIFF_ID, None), build_from(TAR))
    assert lease.discarded
    lease.close()


def test_tree_digest_covers_hard_link_groups(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    unpack_layer([make_tar([reg("x", b"1"), link("y", "x")])], "none", a)
    unpack_layer([make_tar([reg("x", b"1"), reg("y", b"1")])], "none", b)
    os.utime(b / "y", ns=(os.stat(a / "y").st_atime_ns, os.stat(a / "y").st_mtime_ns))
    os.utime(b / "x", ns=(os.stat(a / "x").st_atime_ns, os.stat(a / "x").st_mtime_ns))
    os.utime(b, ns=(os.stat(a).st_atime_ns, os.stat(a).st_mtime_ns))
    assert tree_digest(a) != tree_digest(b)
    assert tree_digest(a) == tree_digest(a)


def test_tree_digest_handles_deep_trees(tmp_path: Path) -> None:
    deep = tmp_path / "t"
    path = deep
    for _ in range(600):  # deeper than Python's recursion would allow
        path = path / "d"
    path.mkdir(parents=True)
    (path / "f").write_bytes(b"bottom")
    before = tree_digest(deep)
    (path / "f").write_bytes(b"Bottom")
    assert tree_digest(deep) != before
    (path / "f").unlink()  # pytest's recursive cleanup would overflow on this depth
    while path != tmp_path:
        path.rmdir()
        path = path.parent


def test_concurrent_builders_build_once(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "c")
    key = store.key_for(BLOB, DIFF_ID, opts())
    calls: list[int] = []
    reused: list[bool] = []

    def run() -> None:
        lease = store.acquire(key, build_from(TAR, calls))
        reused.append(lease.reused)
        lease.close()

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == [1] and sorted(reused) == [False, True, True, True]


def test_runs_holding_leases_while_taking_more_do_not_deadlock(tmp_path: Path) -> None:
    """Two runs (two stores: separate lock files descriptors, as two processes) cross over."""
    a, b = SnapshotStore(tmp_path / "c"), SnapshotStore(tmp_path / "c")
    other_tar = make_tar([reg("other", b"2")])
    kx = a.key_for(BLOB, DIFF_ID, opts())
    ky = a.key_for(Digest.of(b"blob 2"), Digest.of(other_tar), opts(symkey=b"2" * 32))
    held = [a.acquire(kx, build_from(TAR)), b.acquire(ky, build_from(other_tar))]
    reused: list[bool] = []

    def cross(store: SnapshotStore, key: object, tar: bytes) -> None:
        lease = store.acquire(key, build_from(tar))  # type: ignore[arg-type]
        reused.append(lease.reused)
        lease.close()

    threads = [
        threading.Thread(target=cross, args=(a, ky, other_tar), daemon=True),
        threading.Thread(target=cross, args=(b, kx, TAR), daemon=True),
    ]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=20)
        assert not any(t.is_alive() for t in threads), "deadlock: each run waits for the other's lease"
        assert reused == [True, True]
    finally:
        for lease in held:
            lease.close()


def test_gc_keeps_snapshots_in_use_and_referenced(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "c")
    used = store.key_for(BLOB, DIFF_ID, opts())
    other_tar = make_tar([dir_("d"), reg("d/f", b"2")])
    other = store.key_for(Digest.of(b"blob 2"), Digest.of(other_tar), opts(symkey=b"2" * 32))
    store.acquire(used, build_from(TAR)).close()
    lease = store.acquire(used, build_from(TAR))  # reused: held shared, as during a rootfs build
    assert lease.reused
    store.acquire(other, build_from(other_tar)).close()
    report = store.gc("default", {BLOB, Digest.of(b"blob 2")}, max_idle=None)
    assert (report.removed, report.kept, report.busy) == (0, 1, 1)
    report = store.gc("default", set(), max_idle=None)  # nothing referenced: all but the leased one go
    assert (report.removed, report.busy) == (1, 1) and store.names() == [used.name]
    lease.close()
    report = store.gc("default", {BLOB}, max_idle=0)  # idle for 0 s or more: gone
    assert report.removed == 1 and store.names() == []
    assert os.listdir(tmp_path / "c" / "locks") == []


def test_gc_judges_only_what_its_own_store_used(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "c")
    key = store.key_for(BLOB, DIFF_ID, opts())
    store.acquire(key, build_from(TAR), user="a").close()
    store.acquire(key, build_from(TAR), user="b").close()
    assert store.users_of(key.name) == {"a": {BLOB}, "b": {BLOB}}
    report = store.gc("c", set(), max_idle=0)  # store c never used it: not its to judge
    assert (report.removed, report.kept) == (0, 1)
    report = store.gc("a", set(), max_idle=None)  # a no longer needs it; b still may
    assert (report.removed, report.kept) == (0, 1) and store.users_of(key.name) == {"b": {BLOB}}
    report = store.gc("b", set(), max_idle=None)
    assert report.removed == 1 and store.names() == []


def test_leftovers_only_of_dead_builders(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "c")
    dead = tmp_path / "c" / "work" / "e-dead.1.x"
    live = tmp_path / "c" / "work" / "e-live.2.x"
    for d in (dead, live):
        d.mkdir()
        (d / "f").write_bytes(b"partial")
    fd = os.open(store.lock_path("e-live"), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        assert store.remove_leftovers() == 1
        assert not dead.exists() and live.exists()
    finally:
        os.close(fd)
    assert store.remove_leftovers() == 1 and not live.exists()


def test_cache_root_is_private(tmp_path: Path) -> None:
    loose = tmp_path / "snaps"
    loose.mkdir(mode=0o755)
    loose.chmod(0o755)
    SnapshotStore(loose)
    assert stat.S_IMODE(loose.stat().st_mode) == 0o700
    for sub in ("snap", "work", "locks"):
        assert stat.S_IMODE((loose / sub).stat().st_mode) == 0o700


def test_bundles_of_dead_runs_are_removed_live_ones_kept(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "c")
    with store.bundle_dir() as live:
        (live / "rootfs").mkdir()
        (live / "rootfs" / "secret").write_bytes(b"plaintext")
        assert stat.S_IMODE(live.stat().st_mode) == 0o700
        assert store.remove_leftovers() == 0 and live.exists()  # its run holds the lock
    # the run ended without removing it (killed, or --keep-bundle): the next sweep does
    assert store.remove_leftovers() == 1 and not live.exists()
    assert os.listdir(tmp_path / "c" / "locks") == []


def test_tree_digest_is_the_same_whichever_thread_hashes_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small files are hashed inline, big ones on the pool: one digest either way (seals stay valid)."""
    import layerseal.engine.snapshot as snapshot_module

    tree = tmp_path / "t"
    entries = [
        reg("small", b"s" * 100),
        reg("big", os.urandom(300_000)),
        link("big2", "big"),
        link("s2", "small"),
    ]
    unpack_layer([make_tar(entries)], "none", tree)
    os.setxattr(tree / "small", "user.a", b"1")
    os.setxattr(tree / "big", "user.b", b"")
    inline = tree_digest(tree)
    monkeypatch.setattr(snapshot_module, "_HASH_INLINE", 0)
    assert tree_digest(tree) == inline
    monkeypatch.setattr(snapshot_module, "_HASH_INLINE", 1 << 30)
    assert tree_digest(tree) == inline
    (tree / "small").write_bytes(b"t" * 100)
    assert tree_digest(tree) != inline


def test_hashes_from_the_unpack_give_the_digest_read_from_disk(tmp_path: Path) -> None:
    # replaced files (inode numbers reused), hard links, markers, a lower-layer link, an
    # unreadable file and one larger than the inline hashing size
    tar = make_tar(
        [
            dir_("d"),
            reg("d/a", b"first"),
            reg("d/a", b"second, longer"),
            reg("d/big", os.urandom(200_000)),
            link("d/hard", "d/big"),
            reg("d/.wh.gone"),
            reg("d/.wh..wh..opq"),
            link("d/low", "lower/file"),
            reg("d/secret", b"nobody reads me", mode=0o000),
            sym("d/s", "a"),
            reg("e/f", b"in an implicit directory"),
            reg("d/a", b"third"),
        ]
    )
    result = unpack_layer([tar], "none", tmp_path / "t")
    assert result.content
    assert tree_digest(tmp_path / "t", result.content) == tree_digest(tmp_path / "t")
    # an entry whose size no longer matches the file is not used
    stale = {k: (size + 1, b"x" * 32) for k, (size, _) in result.content.items()}
    assert tree_digest(tmp_path / "t", stale) == tree_digest(tmp_path / "t")
