"""Add a 100 MB directory to a 3-layer encrypted image in the registry: layerseal against umoci + skopeo.

* layerseal: ``layer add docker://.../app:v1 DIR --encryption-key jwe:K docker://.../app:v2``
  (builds, compresses, encrypts and pushes only the new layer; the old ones keep their
  blobs and keys).
* baseline, same change: ``umoci insert`` into the publisher's plain OCI layout, then
  ``skopeo copy --encryption-key jwe:K`` of the result to the registry (skopeo encrypts
  every layer again with new keys, so everything is uploaded again).

Each run starts from a fresh registry holding v1.  ``BENCH_ADD_MB`` sets the directory
size, ``BENCH_BASE_MB`` the size of each of the three existing layers.  Target: <= 0.5x.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import VENV_BIN, drop_tree, save, table, timed, tool_version
from bench.copy_oci import keys
from bench.images import make_image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support.registry_server import RegistryServer

ADD_MB = int(os.environ.get("BENCH_ADD_MB", "100"))
BASE_MB = int(os.environ.get("BENCH_BASE_MB", "30"))
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
LS = str(VENV_BIN / "layerseal")


def main() -> int:
    results: dict[str, Any] = {
        "skopeo": tool_version(["skopeo", "--version"]),
        "umoci": tool_version(["umoci", "--version"]),
        "runs": RUNS,
        "add_mb": ADD_MB,
        "base_layers_mb": [BASE_MB] * 3,
    }
    tmp = os.environ.get("BENCH_TMP", "/dev/shm" if os.path.isdir("/dev/shm") else None)
    results["tmpdir"] = tmp
    with tempfile.TemporaryDirectory(prefix="layerseal-bench-", dir=tmp) as dd:
        d = Path(dd)
        make_image(f"oci:{d}/plain:v1", [BASE_MB * 1_000_000] * 3)
        _, pub = keys(d)
        new_dir = d / "newdir"
        new_dir.mkdir()
        for i in range(max(1, ADD_MB // 4)):
            (new_dir / f"part{i:03d}.bin").write_bytes(os.urandom(min(4_000_000, ADD_MB * 1_000_000)))
        ls_times, base_times = [], []
        for _ in range(RUNS):
            with RegistryServer(d / "reg") as reg:
                v1, v2 = f"docker://{reg.host}/bench/app:v1", f"docker://{reg.host}/bench/app:v2"
                push = [LS, "copy", "-q", "--dest-tls-verify=false", "--encryption-key", f"jwe:{pub}"]
                subprocess.run([*push, f"oci:{d}/plain:v1", v1], check=True)
                subprocess.run(["sync"], check=True)
                ls_times.append(
                    timed(
                        [
                            LS,
                            "layer",
                            "add",
                            "-q",
                            "--src-tls-verify=false",
                            "--dest-tls-verify=false",
                            v1,
                            f"{new_dir}:/data",
                            "--encryption-key",
                            f"jwe:{pub}",
                            v2,
                        ]
                    ).seconds
                )
            drop_tree(d / "reg")
            with RegistryServer(d / "reg") as reg:
                v1, v2 = f"docker://{reg.host}/bench/app:v1", f"docker://{reg.host}/bench/app:v2"
                subprocess.run([*push, f"oci:{d}/plain:v1", v1], check=True)
                work = d / "work"
                drop_tree(work)
                shutil.copytree(d / "plain", work)
                subprocess.run(["sync"], check=True)
                a = timed(["umoci", "insert", "--image", f"{work}:v1", "--tag", "v2", str(new_dir), "/data"])
                b = timed(
                    [
                        "skopeo",
                        "--insecure-policy",
                        "copy",
                        "-q",
                        "--dest-tls-verify=false",
                        "--encryption-key",
                        f"jwe:{pub}",
                        f"oci:{work}:v2",
                        v2,
                    ]
                )
                base_times.append(a.seconds + b.seconds)
            drop_tree(d / "reg")
    ls_best, base_best = min(ls_times), min(base_times)
    rows = [
        ["layerseal layer add (encrypt + push new layer only)", ls_best],
        ["umoci insert + skopeo copy --encryption-key jwe:", base_best],
        ["ratio", ls_best / base_best],
    ]
    results.update(
        {
            "layerseal_s": ls_best,
            "baseline_s": base_best,
            "ratio": ls_best / base_best,
            "layerseal_runs": ls_times,
            "baseline_runs": base_times,
        }
    )
    print(
        table(
            f"add a {ADD_MB} MB directory to a 3 x {BASE_MB} MB encrypted image (seconds, min of runs)",
            ["what", "seconds"],
            rows,
        )
    )
    print("target: ratio <= 0.5")
    print(f"results: {save('add_layer', results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
