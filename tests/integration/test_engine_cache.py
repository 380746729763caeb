"""The decrypted-layer cache as an attacker and a full disk see it (issue 12, findings 1, 2, 6).

Every test drives the real ``layerseal`` CLI over real OCI layouts; the disk-full tests
mount a real small tmpfs (root only).
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.images import KeyPair, make_image, make_keys, manifest_of
from layerseal.cli.main import main
from layerseal.image import mediatypes as mt
from layerseal.image.config import ImageConfig
from layerseal.image.digest import Digest
from layerseal.image.manifest import Manifest
from layerseal.layout.oci import LayoutDestination, LayoutReference
from support.layerseal_cli import pull_argv, pull_in_parallel

pytestmark = pytest.mark.integration


def encrypted_image(tmp_path: Path, *, big: int = 50_000, layers: int = 1) -> tuple[str, KeyPair, str]:
    """An image whose every layer is encrypted for a fresh EC key; returns (ref, key, diff_id of layer 0)."""
    make_image(f"oci:{tmp_path}/plain:v1", compressions=("gzip",) * layers, big=big)
    key = make_keys(tmp_path / "keys", "ec256")
    ref = f"oci:{tmp_path}/enc:v1"
    assert main(["copy", "-q", "--encryption-key", f"jwe:{key.public}", f"oci:{tmp_path}/plain:v1", ref]) == 0
    _, manifest = manifest_of(tmp_path / "enc", "v1")
    config = json.loads(
        (tmp_path / "enc" / "blobs" / "sha256" / str(manifest["config"]["digest"])[7:]).read_bytes()
    )  # type: ignore[index]
    return ref, key, config["rootfs"]["diff_ids"][0]


def _one_file_tar(name: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _plain_layer_image(ref: str, tar: bytes, config: dict[str, object], layers: int) -> None:
    """Write an image at *ref* listing the plain layer *tar* *layers* times, with the amd64/linux *config*."""
    dst = LayoutDestination(LayoutReference.parse(ref))
    try:
        layer = dst.put_blob([tar], mt.OCI_LAYER_TAR)
        cdesc = dst.put_blob(
            [ImageConfig({"architecture": "amd64", "os": "linux", **config}).to_bytes()], mt.OCI_CONFIG
        )
        dst.put_manifest(Manifest(config=cdesc, layers=(layer,) * layers).to_bytes(), mt.OCI_MANIFEST)
    finally:
        dst.close()


def thief_image(ref: str, claimed_diff_id: str) -> None:
    """One unrelated *plain* layer; the config claims the diff_id of someone else's encrypted layer."""
    config: dict[str, object] = {
        "config": {"Cmd": ["/bin/cat", "/layer0.txt"]},
        "rootfs": {"type": "layers", "diff_ids": [claimed_diff_id]},
    }
    _plain_layer_image(ref, _one_file_tar("thief.txt", b"thief\n"), config, 1)


def pull(
    capsys: pytest.CaptureFixture[str], *args: str, snapshots: Path, store: Path
) -> tuple[int, str, str]:
    capsys.readouterr()
    status = main(["pull", "--store", str(store), "--snapshots", str(snapshots), *args])
    out, err = capsys.readouterr()
    return status, out, err


def _keyed(key: KeyPair, ref: str, rootfs: Path) -> tuple[str, ...]:
    """The pull arguments that open *ref* with *key* into *rootfs*."""
    return ("--decryption-key", str(key.private), ref, "--rootfs", str(rootfs))


def _pull_with_key(
    capsys: pytest.CaptureFixture[str], key: KeyPair, ref: str, rootfs: Path, *, snapshots: Path, store: Path
) -> tuple[int, str, str]:
    return pull(capsys, *_keyed(key, ref, rootfs), snapshots=snapshots, store=store)


def _pull_json_with_key(
    capsys: pytest.CaptureFixture[str], key: KeyPair, ref: str, rootfs: Path, *, snapshots: Path, store: Path
) -> dict[str, object]:
    """Pull *ref* with *key* into *rootfs*; it must succeed; its ``--json`` report."""
    return _pull_json(capsys, *_keyed(key, ref, rootfs), snapshots=snapshots, store=store)


def files_under(root: Path) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = Path(dirpath) / n
            if p.is_file() and not p.is_symlink():
                out[str(p.relative_to(root))] = p.read_bytes()
    return out


# -- finding 1: key-less reuse ---------------------------------------------------------------


def test_thief_image_claiming_an_encrypted_diff_id_gets_no_plaintext(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ref, key, diff_id = encrypted_image(tmp_path)
    store, snaps = tmp_path / "store", tmp_path / "snaps"
    status, _, err = _pull_with_key(capsys, key, ref, tmp_path / "victim", snapshots=snaps, store=store)
    assert status == 0, err
    secret = (tmp_path / "victim" / "layer0.txt").read_bytes()
    thief_image(f"oci:{tmp_path}/thief:v1", diff_id)
    status, _, err = pull(
        capsys, f"oci:{tmp_path}/thief:v1", "--rootfs", str(tmp_path / "stolen"), snapshots=snaps, store=store
    )
    assert status == 3, err  # the thief's own layer does not match the diff_id it claims
    assert f"expected {diff_id}" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "stolen").exists()
    # and no plaintext anywhere the thief's pull wrote
    assert not any(secret in data for data in files_under(tmp_path / "store").values())


def test_snapshot_cannot_be_located_without_the_layer_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Snapshot names derive from the layer key: neither the diff_id nor the blob digest finds them."""
    ref, key, diff_id = encrypted_image(tmp_path)
    snaps = tmp_path / "snaps"
    status, _, err = _pull_with_key(
        capsys, key, ref, tmp_path / "r", snapshots=snaps, store=tmp_path / "store"
    )
    assert status == 0, err
    _, manifest = manifest_of(tmp_path / "enc", "v1")
    blob = str(manifest["layers"][0]["digest"])  # type: ignore[index]
    names = [p.name for p in (snaps / "snap").iterdir()] + [p.name for p in (snaps / "locks").iterdir()]
    assert names and not any(Digest.parse(diff_id).hex in n or blob[7:] in n for n in names)


def test_revoked_key_gets_no_cached_snapshot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ref, key, _ = encrypted_image(tmp_path)
    store, snaps = tmp_path / "store", tmp_path / "snaps"
    status, _, err = _pull_with_key(capsys, key, ref, tmp_path / "r1", snapshots=snaps, store=store)
    assert status == 0, err
    other = make_keys(tmp_path / "other", "ec256")  # the key this run is given no longer opens the layer
    status, _, err = _pull_with_key(capsys, other, ref, tmp_path / "r2", snapshots=snaps, store=store)
    # a key the caller gave that opens nothing is bad input (2); a broker's refusal (5) is
    # test_revoked_key_refuses_a_cached_snapshot
    assert status == 2 and "no key for 1 of 1" in err
    assert not (tmp_path / "r2").exists()


def _plain_image(ref: str, layers: int) -> None:
    """One small plain layer, listed *layers* times."""
    tar = _one_file_tar("shared.txt", b"shared\n")
    diff_id = str(Digest.of(tar))
    _plain_layer_image(ref, tar, {"rootfs": {"type": "layers", "diff_ids": [diff_id] * layers}}, layers)


def test_plain_layers_are_shared_by_diff_id(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store, snaps = tmp_path / "store", tmp_path / "snaps"
    _plain_image(f"oci:{tmp_path}/one:v1", 1)
    _plain_image(f"oci:{tmp_path}/twice:v1", 2)  # the same layer listed twice: built once, no deadlock
    first = _pull_json(
        capsys, f"oci:{tmp_path}/one:v1", "--rootfs", str(tmp_path / "r1"), snapshots=snaps, store=store
    )
    second = _pull_json(
        capsys, f"oci:{tmp_path}/twice:v1", "--rootfs", str(tmp_path / "r2"), snapshots=snaps, store=store
    )
    assert [layer["snapshotReused"] for layer in first["layers"]] == [False]  # type: ignore[attr-defined]
    assert [layer["snapshotReused"] for layer in second["layers"]] == [True, True]  # type: ignore[attr-defined]
    assert (tmp_path / "r2" / "shared.txt").read_bytes() == b"shared\n"
    assert [p.name for p in (snaps / "snap").iterdir()] == [
        f"p-{first['layers'][0]['diffID'].replace(':', '-')}"
    ]  # type: ignore[index]


# -- finding 2: cached plaintext verified on reuse, gc, leftovers ----------------------------


def _pull_json(
    capsys: pytest.CaptureFixture[str], *args: str, snapshots: Path, store: Path
) -> dict[str, object]:
    status, out, err = pull(capsys, *args, "--json", snapshots=snapshots, store=store)
    assert status == 0, err
    return dict(json.loads(out))


def _pulled_into_r1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[str, KeyPair, Path, Path]:
    """An encrypted image pulled once into ``tmp_path/r1``: (ref, key, store, snapshots)."""
    ref, key, _ = encrypted_image(tmp_path)
    store, snaps = tmp_path / "store", tmp_path / "snaps"
    _pull_json_with_key(capsys, key, ref, tmp_path / "r1", snapshots=snaps, store=store)
    return ref, key, store, snaps


def test_host_edit_of_a_snapshot_does_not_reach_the_rootfs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ref, key, store, snaps = _pulled_into_r1(tmp_path, capsys)
    original = (tmp_path / "r1" / "layer0.txt").read_bytes()
    [victim] = [p for p in snaps.rglob("layer0.txt")]
    victim.chmod(0o644)
    victim.write_bytes(b"edited by the host\n")
    result = _pull_json_with_key(capsys, key, ref, tmp_path / "r2", snapshots=snaps, store=store)
    assert (tmp_path / "r2" / "layer0.txt").read_bytes() == original
    assert [layer["snapshotReused"] for layer in result["layers"]] == [False]  # type: ignore[attr-defined]
    # the snapshot was rebuilt, and the rebuilt one is reused untouched
    assert [p.read_bytes() for p in snaps.rglob("layer0.txt")] == [original]
    result = _pull_json_with_key(capsys, key, ref, tmp_path / "r3", snapshots=snaps, store=store)
    assert [layer["snapshotReused"] for layer in result["layers"]] == [True]  # type: ignore[attr-defined]


@pytest.mark.parametrize("edit", ["add", "remove", "chmod", "symlink"])
def test_any_host_change_to_a_snapshot_is_detected(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], edit: str
) -> None:
    ref, key, store, snaps = _pulled_into_r1(tmp_path, capsys)
    [victim] = [p for p in snaps.rglob("layer0.txt")]
    if edit == "add":
        (victim.parent / "planted").write_bytes(b"x")
    elif edit == "remove":
        victim.unlink()
    elif edit == "chmod":
        victim.chmod(0o4755)
    else:
        victim.unlink()
        victim.symlink_to("/etc/shadow")
    result = _pull_json_with_key(capsys, key, ref, tmp_path / "r2", snapshots=snaps, store=store)
    assert [layer["snapshotReused"] for layer in result["layers"]] == [False]  # type: ignore[attr-defined]
    assert files_under(tmp_path / "r2") == files_under(tmp_path / "r1")
    assert not (tmp_path / "r2" / "layer0.txt").is_symlink()
    assert (tmp_path / "r2" / "layer0.txt").stat().st_mode == (tmp_path / "r1" / "layer0.txt").stat().st_mode


def test_default_snapshot_location_is_private_and_not_beside_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from layerseal.cli.engine import default_snapshots

    monkeypatch.delenv("LAYERSEAL_SNAPSHOTS", raising=False)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert default_snapshots() == Path("/run/layerseal/snapshots")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "xdg"))
    assert default_snapshots() == tmp_path / "xdg" / "layerseal" / "snapshots"
    monkeypatch.setenv("LAYERSEAL_SNAPSHOTS", str(tmp_path / "chosen"))
    assert default_snapshots() == tmp_path / "chosen"


def _gc(capsys: pytest.CaptureFixture[str], store: Path, snaps: Path, *extra: str) -> dict[str, int]:
    capsys.readouterr()
    assert main(["store", "gc", "--store", str(store), "--snapshots", str(snaps), "--json", *extra]) == 0
    return dict(json.loads(capsys.readouterr().out))


def _snapshot_dirs(snaps: Path) -> list[Path]:
    return sorted(p for p in (snaps / "snap").iterdir()) if (snaps / "snap").exists() else []


def test_gc_removes_snapshots_of_released_images_and_idle_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ref, key, store, snaps = _pulled_into_r1(tmp_path, capsys)
    assert len(_snapshot_dirs(snaps)) == 1
    report = _gc(capsys, store, snaps)
    assert report["removed_snapshots"] == 0 and len(_snapshot_dirs(snaps)) == 1  # referenced, fresh: kept
    # not reused for longer than --max-idle: removed (a revoked layer's snapshot is never reused again)
    report = _gc(capsys, store, snaps, "--max-idle", "0")
    assert report["removed_snapshots"] == 1 and _snapshot_dirs(snaps) == []
    _pull_json_with_key(capsys, key, ref, tmp_path / "r2", snapshots=snaps, store=store)
    assert len(_snapshot_dirs(snaps)) == 1
    # the image's reference is released: its blobs and snapshots go
    capsys.readouterr()
    assert main(["store", "release", "--store", str(store), ref]) == 0
    report = _gc(capsys, store, snaps)
    assert report["removed_snapshots"] == 1 and report["removed_blobs"] == 1
    assert _snapshot_dirs(snaps) == []


def _start_slow_pull(
    tmp_path: Path, ref: str, key: KeyPair, store: Path, snaps: Path
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        pull_argv(ref, key.private, store=store, snapshots=snaps, rootfs=tmp_path / "killed"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _kill_during_unpack(proc: subprocess.Popen[bytes], snaps: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        work = snaps / "work"
        if work.exists() and any(p.rglob("*.bin") for p in work.iterdir()):
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return
        if proc.poll() is not None:
            break
        time.sleep(0.005)
    pytest.fail("the pull finished before it could be killed mid-unpack")


def test_leftovers_of_a_killed_pull_are_removed_by_gc_and_by_the_next_pull(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ref, key, _ = encrypted_image(tmp_path, big=60_000_000)
    store, snaps = tmp_path / "store", tmp_path / "snaps"
    _kill_during_unpack(_start_slow_pull(tmp_path, ref, key, store, snaps), snaps)
    assert list((snaps / "work").iterdir())  # partly decrypted data left behind
    report = _gc(capsys, store, snaps)
    assert report["removed_snapshot_leftovers"] >= 1 and list((snaps / "work").iterdir()) == []
    _kill_during_unpack(_start_slow_pull(tmp_path, ref, key, store, snaps), snaps)
    assert list((snaps / "work").iterdir())
    _pull_json_with_key(capsys, key, ref, tmp_path / "r", snapshots=snaps, store=store)
    assert list((snaps / "work").iterdir()) == []
    assert not list((store / "blobs" / "sha256").glob(".*.tmp"))


def test_gc_and_pulls_leave_a_live_pull_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from layerseal.engine.snapshot import SnapshotStore

    ref, key, _ = encrypted_image(tmp_path)
    store, snaps = tmp_path / "store", tmp_path / "snaps"
    SnapshotStore(snaps)
    # a live pull: its work directory, and the lock it holds on that snapshot name while it works
    name = "e-" + "ab" * 32
    live = snaps / "work" / f"{name}.{os.getpid()}.live"
    live.mkdir()
    (live / "partial").write_bytes(b"in progress")
    fd = os.open(snaps / "locks" / name, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        report = _gc(capsys, store, snaps)
        assert report["removed_snapshot_leftovers"] == 0 and (live / "partial").exists()
        _pull_json_with_key(capsys, key, ref, tmp_path / "r", snapshots=snaps, store=store)
        assert (live / "partial").exists()
    finally:
        os.close(fd)
    assert _gc(capsys, store, snaps)["removed_snapshot_leftovers"] == 1 and not live.exists()


def test_concurrent_pulls_sharing_a_cache_build_each_snapshot_once(tmp_path: Path) -> None:
    """Two engines, one cache, layers in any order: no deadlock, every snapshot built once."""
    ref, key, _ = encrypted_image(tmp_path, big=2_000_000, layers=4)
    for attempt in range(1):
        snaps = tmp_path / f"snaps{attempt}"
        codes, outs = pull_in_parallel(
            ref,
            key.private,
            store=tmp_path / "store",
            snapshots=lambda _n, snaps=snaps: snaps,
            rootfs=lambda n, attempt=attempt: tmp_path / f"r{attempt}-{n}",
        )
        assert codes == [0, 0], [o[1] for o in outs]
        reused = [[layer["snapshotReused"] for layer in json.loads(o[0])["layers"]] for o in outs]
        assert [a != b for a, b in zip(*reused, strict=True)] == [True] * 4  # one built, the other reused
        assert len(list((snaps / "snap").iterdir())) == 4


# -- finding 6: disk full --------------------------------------------------------------------


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root")
    path.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def _leftovers(root: Path) -> list[str]:
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.name.endswith(".tmp") or (p.parent.name == "work" and p.parent.parent.name == "snaps")
    )


@pytest.mark.parametrize("size", ["2m", "5m", "7m"])
def test_disk_full_gives_one_line_and_leaves_the_store_consistent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], size: str
) -> None:
    """2m: a blob does not fit; 5m: the blobs fit, a snapshot does not; 7m: the rootfs does not."""
    ref, key, _ = encrypted_image(tmp_path, big=1_500_000, layers=2)
    with small_tmpfs(tmp_path / "disk", size) as disk:
        store, snaps = disk / "store", disk / "snaps"
        status, _, err = _pull_with_key(capsys, key, ref, disk / "rootfs", snapshots=snaps, store=store)
        assert status == 2, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "no space left on device" in lines[0].lower() and "Traceback" not in err
        assert _leftovers(disk) == [] and not (disk / "rootfs").exists()
        for blob in (store / "blobs" / "sha256").iterdir():  # what is committed is whole
            assert Digest.of(blob.read_bytes()).hex == blob.name
        # a rerun on the same full disk fails the same clean way (nothing half-made blocks it) ...
        status, _, err = _pull_with_key(capsys, key, ref, disk / "rootfs", snapshots=snaps, store=store)
        assert status == 2 and _leftovers(disk) == []
        # ... and succeeds once there is room
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        status, _, err = _pull_with_key(capsys, key, ref, disk / "rootfs", snapshots=snaps, store=store)
        assert status == 0, err
        assert (disk / "rootfs" / "layer1.txt").read_bytes() == b"hello from layer 1\n"


# -- finding 6: copies ------------------------------------------------------------------------


@contextlib.contextmanager
def xfs_loop(path: Path) -> Iterator[Path]:
    """A real XFS (reflink=1, the mkfs default) on a loop device."""
    if os.geteuid() != 0 or shutil.which("mkfs.xfs") is None:
        pytest.skip("a loop-mounted XFS needs root and mkfs.xfs (xfsprogs)")
    image = path.with_suffix(".img")
    with image.open("wb") as f:
        f.truncate(320 << 20)
    subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", str(image)], check=True)
    path.mkdir()
    subprocess.run(["mount", "-o", "loop", str(image), str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)
        image.unlink()


def _used(path: Path) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def test_rootfs_shares_the_snapshots_extents_on_a_reflink_filesystem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    layer = 24_000_000
    ref, key, _ = encrypted_image(tmp_path, big=layer)
    with xfs_loop(tmp_path / "xfs") as fs:
        store, snaps = fs / "store", fs / "snaps"
        before = _used(fs)
        _pull_json_with_key(capsys, key, ref, fs / "r1", snapshots=snaps, store=store)
        os.sync()
        grown = _used(fs) - before
        # the encrypted blob plus one decrypted tree, not a third copy
        assert 2 * layer <= grown < 2 * layer + layer // 2, grown
        # a container writing its rootfs copies on write: the cache stays intact
        with (fs / "r1" / "data" / "blob0.bin").open("r+b") as f:
            f.write(b"container write")
        result = _pull_json_with_key(capsys, key, ref, fs / "r2", snapshots=snaps, store=store)
        assert [entry["snapshotReused"] for entry in result["layers"]] == [True]  # type: ignore[attr-defined]
        assert (fs / "r2" / "data" / "blob0.bin").read_bytes()[:15] != b"container write"


def test_an_unusable_cache_location_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ref, key, _ = encrypted_image(tmp_path)
    (tmp_path / "file").write_bytes(b"")
    status, _, err = _pull_with_key(
        capsys, key, ref, tmp_path / "r", snapshots=tmp_path / "file" / "snaps", store=tmp_path / "store"
    )
    assert status == 2 and len(err.strip().splitlines()) == 1 and "--snapshots DIR" in err, err
    assert not (tmp_path / "r").exists()
