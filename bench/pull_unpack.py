"""Encrypted image from the local registry to an unpacked rootfs: layerseal against skopeo + umoci.

Image: a static-busybox base layer plus one ~500 MB incompressible gzip layer
(``BENCH_LAYER_MB``), every layer encrypted for a jwe: recipient, pushed to a
docker-registry on 127.0.0.1.  Compared, in the same run:

* ``layerseal pull --decryption-key K docker://... --rootfs DIR`` (cold shared store), and
* ``skopeo copy --decryption-key K docker://... oci:DIR`` followed by ``umoci unpack``.

Also reported: peak RSS of ``layerseal pull`` and the time from starting
``layerseal run`` to the first byte the container prints (cold store, then warm).
Targets: total <= 0.5x the skopeo+umoci pipeline; peak RSS <= 200 MB.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import VENV_BIN, drop_tree, save, table, timed, tool_version
from bench.copy_oci import keys

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers.images import make_busybox_image
from support.registry_server import RegistryServer

LAYER_MB = int(os.environ.get("BENCH_LAYER_MB", "500"))
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
LS = str(VENV_BIN / "layerseal")


def build(d: Path) -> Path:
    """busybox image, then a big layer of random files appended with ``layer add``, as one OCI layout."""
    make_busybox_image(f"oci:{d}/base:v1", message="first byte")
    big_files = d / "bigfiles"
    big_files.mkdir()
    for i in range(max(1, LAYER_MB // 8)):
        (big_files / f"f{i:04d}.bin").write_bytes(os.urandom(min(8 << 20, LAYER_MB * 1_000_000)))
    subprocess.run(
        [LS, "layer", "add", "-q", f"oci:{d}/base:v1", f"{big_files}:/data", f"oci:{d}/img:v1"], check=True
    )
    drop_tree(big_files)
    return d / "img"


def first_byte(cmd: list[str]) -> tuple[float, float]:
    """Seconds to the first stdout byte, and to exit."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    proc.stdout.read(1)
    first = time.perf_counter() - start
    proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} failed with {proc.returncode}")
    return first, time.perf_counter() - start


def main() -> int:
    results: dict[str, Any] = {
        "skopeo": tool_version(["skopeo", "--version"]),
        "umoci": tool_version(["umoci", "--version"]),
        "runs": RUNS,
    }
    tmp = os.environ.get("BENCH_TMP", "/dev/shm" if os.path.isdir("/dev/shm") else None)
    results["tmpdir"] = tmp
    with tempfile.TemporaryDirectory(prefix="layerseal-bench-", dir=tmp) as dd:
        d = Path(dd)
        build(d)
        priv, pub = keys(d)
        with RegistryServer(d / "registry") as reg:
            ref = f"docker://{reg.host}/bench/app:v1"
            subprocess.run(
                [
                    LS,
                    "copy",
                    "-q",
                    "--dest-tls-verify=false",
                    "--encryption-key",
                    f"jwe:{pub}",
                    f"oci:{d}/img:v1",
                    ref,
                ],
                check=True,
            )
            size = sum(p.stat().st_size for p in (d / "img" / "blobs" / "sha256").iterdir())
            ls_runs, sk_runs = [], []
            for _ in range(RUNS):
                for name in ("store", "snaps", "rootfs", "oci", "bundle"):
                    drop_tree(d / name)
                subprocess.run(["sync"], check=True)
                ls_runs.append(
                    timed(
                        [
                            LS,
                            "pull",
                            "--src-tls-verify=false",
                            "--decryption-key",
                            str(priv),
                            "--store",
                            str(d / "store"),
                            "--snapshots",
                            str(d / "snaps"),
                            ref,
                            "--rootfs",
                            str(d / "rootfs"),
                        ]
                    )
                )
                subprocess.run(["sync"], check=True)
                a = timed(
                    [
                        "skopeo",
                        "--insecure-policy",
                        "copy",
                        "-q",
                        "--src-tls-verify=false",
                        "--decryption-key",
                        str(priv),
                        ref,
                        f"oci:{d}/oci:v1",
                    ]
                )
                b = timed(["umoci", "unpack", "--image", f"{d}/oci:v1", str(d / "bundle")])
                sk_runs.append((a.seconds + b.seconds, max(a.peak_rss_mb, b.peak_rss_mb)))
            ls_best = min(r.seconds for r in ls_runs)
            sk_best = min(r[0] for r in sk_runs)
            ls_rss = max(r.peak_rss_mb for r in ls_runs)
            for name in ("store", "snaps"):
                drop_tree(d / name)
            run_cmd = [
                LS,
                "run",
                "--src-tls-verify=false",
                "--decryption-key",
                str(priv),
                "--store",
                str(d / "store"),
                "--snapshots",
                str(d / "snaps"),
                ref,
            ]
            cold = first_byte(run_cmd)
            warm = first_byte(run_cmd)
        rows = [
            ["layerseal pull -> rootfs", ls_best, size / ls_best / 1e6, ls_rss],
            [
                "skopeo copy --decryption-key + umoci unpack",
                sk_best,
                size / sk_best / 1e6,
                max(r[1] for r in sk_runs),
            ],
            ["ratio layerseal / pipeline", ls_best / sk_best, "", ""],
            ["layerseal run: first output byte (cold store)", cold[0], "", ""],
            ["layerseal run: first output byte (warm store)", warm[0], "", ""],
        ]
        results.update(
            {
                "image_bytes": size,
                "layerseal_s": ls_best,
                "pipeline_s": sk_best,
                "ratio": ls_best / sk_best,
                "layerseal_peak_rss_mb": ls_rss,
                "run_first_byte_cold_s": cold[0],
                "run_first_byte_warm_s": warm[0],
            }
        )
    print(
        table(
            f"pull + unpack of a {size / 1e6:.0f} MB encrypted image",
            ["what", "seconds", "MB/s", "peak RSS MB"],
            rows,
        )
    )
    print("targets: ratio <= 0.5; layerseal peak RSS <= 200 MB")
    print(f"results: {save('pull_unpack', results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
