"""oci -> oci copies: layerseal against skopeo on the same image in the same run.

Image: one ~500 MB incompressible gzip layer (``BENCH_LAYER_MB`` to change).  For each
of plain copy, encrypting copy (jwe: recipient) and decrypting copy, prints MB/s and the
peak RSS of the copying process.  A second, 5x smaller image shows whether peak RSS grows
with layer size.  Targets: encrypted and decrypted copies >= 3x skopeo's rate;
peak RSS <= 150 MB regardless of layer size.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import VENV_BIN, best_of, drop_tree, save, table, tool_version
from bench.images import make_image

LAYER_MB = int(os.environ.get("BENCH_LAYER_MB", "500"))
RUNS = int(os.environ.get("BENCH_RUNS", "3"))


def keys(d: Path) -> tuple[Path, Path]:
    priv, pub = d / "k.pem", d / "k.pub"
    subprocess.run(
        ["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(priv)],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        ["openssl", "pkey", "-in", str(priv), "-pubout", "-out", str(pub)], check=True, capture_output=True
    )
    return priv, pub


def measure(d: Path, layer_mb: int) -> tuple[list[list[Any]], dict[str, Any]]:
    src = d / f"src{layer_mb}"
    make_image(f"oci:{src}:v1", [layer_mb * 1_000_000])
    size = sum(p.stat().st_size for p in (src / "blobs" / "sha256").iterdir())
    priv, pub = keys(d)
    ls = [str(VENV_BIN / "layerseal"), "copy", "-q"]
    sk = ["skopeo", "--insecure-policy", "copy", "-q"]
    # reference encrypted images for the decrypt runs, one from each tool
    subprocess.run([*ls, "--encryption-key", f"jwe:{pub}", f"oci:{src}:v1", f"oci:{d}/lenc:v1"], check=True)
    subprocess.run([*sk, "--encryption-key", f"jwe:{pub}", f"oci:{src}:v1", f"oci:{d}/senc:v1"], check=True)
    out = d / "out"

    def fresh() -> None:
        # flush the previous run's dirty pages so no run pays for another's writeback
        drop_tree(out)
        subprocess.run(["sync"], check=True)

    cases = {
        "plain copy": ([], f"oci:{src}:v1", f"oci:{src}:v1"),
        "encrypt (jwe)": (["--encryption-key", f"jwe:{pub}"], f"oci:{src}:v1", f"oci:{src}:v1"),
        "decrypt": (["--decryption-key", str(priv)], f"oci:{d}/lenc:v1", f"oci:{d}/senc:v1"),
    }
    rows, data = [], {}
    for name, (flags, ls_src, sk_src) in cases.items():
        a = best_of(RUNS, [*ls, *flags, ls_src, f"oci:{out}:v1"], prepare=fresh)
        b = best_of(RUNS, [*sk, *flags, sk_src, f"oci:{out}:v1"], prepare=fresh)
        ra, rb = size / a["min_s"] / 1e6, size / b["min_s"] / 1e6
        rows.append(
            [f"{name}, {layer_mb} MB layer", ra, rb, f"{ra / rb:.2f}x", a["peak_rss_mb"], b["peak_rss_mb"]]
        )
        data[name] = {
            "layerseal": a,
            "skopeo": b,
            "layerseal_mb_s": ra,
            "skopeo_mb_s": rb,
            "speedup": ra / rb,
        }
    fresh()
    drop_tree(src)
    for n in ("lenc", "senc"):
        drop_tree(d / n)
    return rows, {"layer_bytes": size, "cases": data}


def main() -> int:
    results: dict[str, Any] = {"skopeo": tool_version(["skopeo", "--version"]), "runs": RUNS}
    rows: list[list[Any]] = []
    # tmpfs by default: this VM's disk writes swing between 0.3 and 3 GB/s, which would
    # measure the disk, not the tools; BENCH_TMP=/var/tmp measures durable on-disk copies
    tmp = os.environ.get("BENCH_TMP", "/dev/shm" if os.path.isdir("/dev/shm") else None)
    results["tmpdir"] = tmp
    with tempfile.TemporaryDirectory(prefix="layerseal-bench-", dir=tmp) as d:
        for mb in (max(1, LAYER_MB // 5), LAYER_MB):
            r, data = measure(Path(d), mb)
            rows += r
            results[f"layer_{mb}MB"] = data
    print(
        table(
            "oci -> oci copy (MB/s from min of runs; peak RSS in MB)",
            ["case", "layerseal MB/s", "skopeo MB/s", "speedup", "layerseal RSS", "skopeo RSS"],
            rows,
        )
    )
    print("targets: encrypt/decrypt >= 3x skopeo; layerseal peak RSS <= 150 MB at every layer size")
    print(f"results: {save('copy_oci', results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
