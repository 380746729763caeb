"""Tests for layerseal.engine.snapshot: a diff_id-keyed store with atomic commit."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from engine_tarkit import chunked, compress, dir_, listing, make_tar, reg, sym

from layerseal.engine.snapshot import SnapshotStore
from layerseal.errors import BadInputError, IntegrityError
from layerseal.image.digest import Digest

TAR = make_tar([reg("etc/os-release", b"ID=test\n"), sym("link", "/etc/os-release")])
DIFF_ID = Digest.of(TAR)


def test_path_is_keyed_by_diff_id(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "snaps")
    assert store.path(DIFF_ID) == tmp_path / "snaps" / "sha256" / DIFF_ID.hex
    assert not store.exists(DIFF_ID)


def test_create_commits_on_success(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    with store.create(DIFF_ID) as work:
        assert work.is_dir() and listing(work) == set()
        assert not store.exists(DIFF_ID)  # invisible until complete
        (work / "f").write_bytes(b"x")
    assert store.exists(DIFF_ID)
    assert (store.path(DIFF_ID) / "f").read_bytes() == b"x"
    assert not work.exists()
    assert os.listdir(tmp_path / "sha256") == [DIFF_ID.hex]


def test_create_removes_work_dir_on_failure(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    with pytest.raises(RuntimeError, match="boom"), store.create(DIFF_ID) as work:
        (work / "partial").write_bytes(b"x")
        raise RuntimeError("boom")
    assert not store.exists(DIFF_ID)
    assert os.listdir(tmp_path / "sha256") == []


def test_unpack_verifies_diff_id(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    result = store.unpack(DIFF_ID, chunked(compress(TAR, "gzip")), "gzip", what="layer 0")
    assert result.diff_id == DIFF_ID
    assert (store.path(DIFF_ID) / "etc/os-release").read_bytes() == b"ID=test\n"
    assert os.readlink(store.path(DIFF_ID) / "link") == "/etc/os-release"


def test_unpack_wrong_diff_id_commits_nothing(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    wrong = Digest.of(b"something else")
    with pytest.raises(IntegrityError, match=rf"layer 0 diff_id: expected {wrong}, seen {DIFF_ID}"):
        store.unpack(wrong, [TAR], "none", what="layer 0")
    assert not store.exists(wrong)
    assert os.listdir(tmp_path / "sha256") == []


def test_unpack_bad_layer_commits_nothing(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    bad = make_tar([reg("ok", b"1"), sym("up", ".."), reg("up/escape")])
    with pytest.raises(BadInputError, match="up/escape"):
        store.unpack(Digest.of(bad), [bad], "none")
    assert os.listdir(tmp_path / "sha256") == []
    assert sorted(os.listdir(tmp_path)) == ["sha256"]


def test_concurrent_commit_keeps_the_first(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    with store.create(DIFF_ID) as second:
        with store.create(DIFF_ID) as first:
            (first / "who").write_bytes(b"first")
        (second / "who").write_bytes(b"second")
    assert (store.path(DIFF_ID) / "who").read_bytes() == b"first"
    assert os.listdir(tmp_path / "sha256") == [DIFF_ID.hex]


def test_remove(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    store.unpack(DIFF_ID, [TAR], "none")
    store.remove(DIFF_ID)
    assert not store.exists(DIFF_ID)
    assert os.listdir(tmp_path / "sha256") == []
    store.remove(DIFF_ID)  # idempotent
    assert not store.exists(DIFF_ID)


def test_remove_read_only_snapshot(tmp_path: Path) -> None:
    tar = make_tar([dir_("ro", 0o500), reg("ro/f", b"x", 0o400)])
    store = SnapshotStore(tmp_path)
    store.unpack(Digest.of(tar), [tar], "none")
    store.remove(Digest.of(tar))
    assert os.listdir(tmp_path / "sha256") == []


def test_symlink_is_not_a_snapshot(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    (tmp_path / "sha256").mkdir()
    (tmp_path / "elsewhere").mkdir()
    store.path(DIFF_ID).symlink_to(tmp_path / "elsewhere")
    assert not store.exists(DIFF_ID)


def test_snapshot_root_is_private(tmp_path: Path) -> None:
    import stat as _stat

    loose = tmp_path / "snaps"
    loose.mkdir(mode=0o755)
    loose.chmod(0o755)
    SnapshotStore(loose)
    assert _stat.S_IMODE(loose.stat().st_mode) == 0o700
    fresh = SnapshotStore(tmp_path / "new" / "snaps")
    assert _stat.S_IMODE(fresh.root.stat().st_mode) == 0o700
