"""Where ``pull`` writes: a bundle dir only root can enter, a rootfs never left open to local users."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.images import make_busybox_image, make_keys
from layerseal.cli.main import main

pytestmark = pytest.mark.integration


@pytest.fixture
def image(tmp_path: Path) -> str:
    make_busybox_image(f"oci:{tmp_path}/img:v1")
    return f"oci:{tmp_path}/img:v1"


def _pull(tmp_path: Path, image: str, *out: str) -> int:
    return main(["pull", "--store", str(tmp_path / "store"), image, *out])


def test_bundle_directory_is_created_private(tmp_path: Path, image: str) -> None:
    bundle = tmp_path / "new" / "bundle"
    assert _pull(tmp_path, image, "--bundle", str(bundle)) == 0
    assert stat.S_IMODE(bundle.stat().st_mode) == 0o700
    assert (bundle / "config.json").is_file()
    assert (bundle / "rootfs" / "bin" / "busybox").is_file()
    # the rootfs keeps the image's own root mode: non-root container users must traverse it
    assert stat.S_IMODE((bundle / "rootfs").stat().st_mode) & 0o055 == 0o055


def test_existing_empty_bundle_directory_is_made_private(tmp_path: Path, image: str) -> None:
    bundle = tmp_path / "open"
    bundle.mkdir(mode=0o755)
    bundle.chmod(0o755)
    assert _pull(tmp_path, image, "--bundle", str(bundle)) == 0
    assert stat.S_IMODE(bundle.stat().st_mode) == 0o700


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every local user can enter, with no private ancestor (pytest's are 0700)."""
    d = Path(tempfile.mkdtemp(prefix="layerseal-open-", dir="/tmp"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="the check protects setuid files, which only root unpacks")
def test_rootfs_under_an_open_directory_is_refused_as_root(
    tmp_path: Path, image: str, open_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = _pull(tmp_path, image, "--rootfs", str(open_dir / "rootfs"))
    err = capsys.readouterr().err
    assert status == 2, err
    assert "0700" in err and "--bundle" in err
    assert len(err.strip().splitlines()) == 1
    assert list(open_dir.iterdir()) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="root-only rule")
def test_rootfs_gets_a_private_parent_when_it_is_missing(tmp_path: Path, image: str, open_dir: Path) -> None:
    rootfs = open_dir / "private" / "rootfs"
    assert _pull(tmp_path, image, "--rootfs", str(rootfs)) == 0
    assert stat.S_IMODE(rootfs.parent.stat().st_mode) == 0o700
    assert (rootfs / "bin" / "busybox").is_file()


def test_rootfs_in_a_private_directory_is_accepted(tmp_path: Path, image: str) -> None:
    # pytest's own temporary directories are 0700: the usual case
    assert _pull(tmp_path, image, "--rootfs", str(tmp_path / "rootfs")) == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="cgroup limits need root")
def test_run_limit_flags_reach_the_container(
    tmp_path: Path, image: str, capfd: pytest.CaptureFixture[str]
) -> None:
    script = (
        "cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max; "
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max"
    )
    argv = ["run", "--store", str(tmp_path / "store"), "--pids-limit", "12", "--memory", "96M", image]
    assert main([*argv, "--", "/bin/sh", "-c", script]) == 0
    assert capfd.readouterr().out.split() == ["12", str(96 << 20)]


@pytest.fixture
def encrypted(tmp_path: Path, image: str) -> tuple[str, Path]:
    key = make_keys(tmp_path / "keys", "ec256")
    argv = ["copy", "-q", "--encryption-key", f"jwe:{key.public}", image, f"oci:{tmp_path}/enc:v1"]
    assert main(argv) == 0
    return f"oci:{tmp_path}/enc:v1", key.private


def test_wrong_key_is_bad_input(
    tmp_path: Path, encrypted: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    other = make_keys(tmp_path / "other", "ec256")
    ref, _ = encrypted
    status = _pull(tmp_path, ref, "--decryption-key", str(other.private), "--rootfs", str(tmp_path / "r"))
    err = capsys.readouterr().err
    assert status == 2, err
    assert "decryption key" in err


def test_no_key_given_says_which_flags(
    tmp_path: Path, encrypted: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    ref, _ = encrypted
    status = _pull(tmp_path, ref, "--rootfs", str(tmp_path / "r"))
    err = capsys.readouterr().err
    assert status == 2, err
    assert "--decryption-key" in err and "--kbs" in err
    assert "attempt" not in err and "denied" not in err.lower()


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (["/bin/sh", "-c", "exit 3"], 3),  # the container's own status, unchanged
        (["/bin/sh", "-c", "exit 4"], 4),
        (["/bin/sh", "-c", "exit 0"], 0),
        (["/no/such/command"], 127),  # as podman: the command was not found
        (["/etc"], 126),  # as podman: found, but cannot be run
    ],
)
def test_run_exit_status(tmp_path: Path, image: str, command: list[str], expected: int) -> None:
    assert main(["run", "--store", str(tmp_path / "store"), image, "--", *command]) == expected


def test_run_own_failures_use_125(
    tmp_path: Path, encrypted: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    ref, _ = encrypted
    status = main(["run", "--store", str(tmp_path / "store"), ref, "--", "/bin/true"])
    err = capsys.readouterr().err
    assert status == 125, err
    assert "--decryption-key" in err and len(err.strip().splitlines()) == 1
