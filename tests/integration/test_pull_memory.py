"""A pull streams: its peak memory does not grow with the size of the layer it decrypts.

Measured as the peak RSS GNU time reports for ``layerseal pull`` of an encrypted image
whose one big layer is 16 MiB, then 160 MiB (random data, so gzip cannot shrink it).
A data path that buffered a layer (or a tenth of it) would add tens of MB to the second.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from helpers.images import make_image, make_keys

pytestmark = pytest.mark.integration

LAYERSEAL = [sys.executable, "-m", "layerseal.cli.main"]
GNU_TIME = "/usr/bin/time"


def peak_rss_mb(cmd: list[str]) -> float:
    # through GNU time: a child forked from this process could report its parent's
    # pre-exec high-water mark as its own
    with tempfile.NamedTemporaryFile("r", prefix="rss-") as out:
        r = subprocess.run([GNU_TIME, "-q", "-f", "%M", "-o", out.name, *cmd], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        return int(out.read().split()[-1]) / 1024


def pull_peak(tmp_path: Path, name: str, size: int, pub: Path, priv: Path) -> float:
    plain, enc = tmp_path / f"{name}-plain", tmp_path / f"{name}-enc"
    make_image(f"oci:{plain}:v1", compressions=("gzip",), big=size)
    r = subprocess.run(
        [*LAYERSEAL, "copy", "-q", "--encryption-key", f"jwe:{pub}", f"oci:{plain}:v1", f"oci:{enc}:v1"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    rootfs = tmp_path / f"{name}-rootfs"
    peak = peak_rss_mb(
        [
            *LAYERSEAL, "pull", "--decryption-key", str(priv), "--store", str(tmp_path / f"{name}-store"),
            "--snapshots", str(tmp_path / f"{name}-snaps"), f"oci:{enc}:v1", "--rootfs", str(rootfs),
        ]
    )  # fmt: skip
    assert (rootfs / "data" / "blob0.bin").stat().st_size == size
    return peak


@pytest.mark.skipif(not os.path.exists(GNU_TIME), reason="GNU time is installed by make test")
def test_peak_memory_of_a_pull_does_not_grow_with_layer_size(tmp_path: Path) -> None:
    keys = make_keys(tmp_path / "keys", "ec256")
    small = pull_peak(tmp_path, "small", 16 << 20, keys.public, keys.private)
    large = pull_peak(tmp_path, "large", 160 << 20, keys.public, keys.private)
    # 144 MiB more layer; the pipeline's queues and buffers are a few MB whatever the size
    assert large - small < 24, f"peak RSS {small:.0f} MB for 16 MiB, {large:.0f} MB for 160 MiB"
