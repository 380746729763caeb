"""Encrypted image from the local registry to an unpacked rootfs: layerseal against skopeo + umoci,
GNU tar and the machine's computed ceiling.

Two cases, each an image encrypted for a jwe: recipient and pushed to a docker-registry
on 127.0.0.1:

* ``large``: a static-busybox base layer plus one ~500 MB incompressible gzip layer
  (``BENCH_LAYER_MB``);
* ``small``: the base plus 30,000 files of 1-20 KiB in 3 layers (``BENCH_SMALL_FILES``).

Per case, in the same sitting and interleaved round by round (``BENCH_RUNS``, default 3),
so that load from other work on the machine hits every contender alike:

* ``layerseal pull --decryption-key K docker://... --rootfs DIR`` (cold store and cache),
  and the same pull from the encrypted OCI layout (no registry, no HTTP);
* ``skopeo copy --decryption-key K docker://... oci:DIR`` followed by ``umoci unpack``;
* GNU ``tar -xzf`` of the plain (unencrypted) layers, one after the other.

Each row gives wall time, CPU time (user + system of the process and its children, the
registry's own excluded), that CPU time per GB of image, and peak RSS.  The **ceiling**
is the least CPU work a pull must do on this machine, spread over all cores: read the
blob, SHA-256 of the ciphertext, HMAC-SHA256, AES-256-CTR, gunzip, SHA-256 of the tar,
and one extraction (GNU ``tar -xf`` of the uncompressed tar: parsing headers and writing
the files once), each measured here on the case's own blobs.  ``share`` = ceiling time / layerseal time.

Also reported: the time from starting ``layerseal run`` to the first byte the container
prints (cold store, then warm).  Targets: total <= 0.5x the skopeo+umoci pipeline; peak
RSS <= 200 MB; share >= 70% (large) and >= 50% (small).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from isal import isal_zlib

from bench.common import VENV_BIN, Run, drop_tree, save, table, timed, tool_version
from bench.copy_oci import keys

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers.images import make_busybox_image
from support.registry_server import RegistryServer

LAYER_MB = int(os.environ.get("BENCH_LAYER_MB", "500"))
SMALL_FILES = int(os.environ.get("BENCH_SMALL_FILES", "30000"))
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
CASES = os.environ.get("BENCH_CASES", "large,small").split(",")
LS = str(VENV_BIN / "layerseal")
CHUNK = 1 << 20


def total(*parts: Run) -> Run:
    """One row for commands run one after the other (skopeo, then umoci)."""
    return Run(
        sum(p.seconds for p in parts),
        max(p.peak_rss_mb for p in parts),
        sum(p.cpu_s for p in parts),
        sum(p.user_s for p in parts),
        sum(p.sys_s for p in parts),
    )


# -- images -----------------------------------------------------------------------------------


def build_large(d: Path) -> Path:
    """busybox image, then a big layer of random files appended with ``layer add``."""
    make_busybox_image(f"oci:{d}/base:v1", message="first byte")
    big_files = d / "bigfiles"
    big_files.mkdir()
    for i in range(max(1, LAYER_MB // 8)):
        (big_files / f"f{i:04d}.bin").write_bytes(os.urandom(min(8 << 20, LAYER_MB * 1_000_000)))
    subprocess.run(
        [LS, "layer", "add", "-q", f"oci:{d}/base:v1", f"{big_files}:/data", f"oci:{d}/large:v1"], check=True
    )
    drop_tree(big_files)
    return d / "large"


def build_small(d: Path) -> Path:
    """busybox image plus SMALL_FILES files of 1-20 KiB spread over 3 layers (100 per directory)."""
    if not (d / "base").exists():
        make_busybox_image(f"oci:{d}/base:v1", message="first byte")
    rng = random.Random(20)
    ref = f"oci:{d}/base:v1"
    per_layer = SMALL_FILES // 3
    for layer in range(3):
        files = d / f"small{layer}"
        for i in range(per_layer):
            sub = files / f"d{i // 100:04d}"
            if i % 100 == 0:
                sub.mkdir(parents=True)
            (sub / f"f{i:05d}").write_bytes(os.urandom(rng.randint(1024, 20 * 1024)))
        out = f"oci:{d}/small-{layer}:v1"
        subprocess.run([LS, "layer", "add", "-q", ref, f"{files}:/l{layer}", out], check=True)
        drop_tree(files)
        ref = out
    return d / "small-2"


def layer_blobs(layout: Path) -> list[Path]:
    index = json.loads((layout / "index.json").read_text())
    mdigest = index["manifests"][0]["digest"].split(":")[1]
    manifest = json.loads((layout / "blobs" / "sha256" / mdigest).read_text())
    return [layout / "blobs" / "sha256" / ld["digest"].split(":")[1] for ld in manifest["layers"]]


# -- the ceiling ----------------------------------------------------------------------------


_STEPS = ("read", "sha256 ciphertext", "hmac", "aes-ctr", "gunzip", "sha256 tar", "extract")


def _layer_steps(blob: Path, plain: Path, steps: dict[str, float]) -> None:
    key, nonce = os.urandom(32), os.urandom(16)
    t = time.process_time()
    data: list[bytes] = []
    with open(blob, "rb") as f:
        while chunk := f.read(CHUNK):
            data.append(chunk)
    steps["read"] += time.process_time() - t
    t = time.process_time()
    h = hashlib.sha256()
    for chunk in data:
        h.update(chunk)
    steps["sha256 ciphertext"] += time.process_time() - t
    t = time.process_time()
    mac = hmac.HMAC(key, hashes.SHA256())
    for chunk in data:
        mac.update(chunk)
    steps["hmac"] += time.process_time() - t
    t = time.process_time()
    aes = Cipher(algorithms.AES(key), modes.CTR(nonce)).encryptor()
    for chunk in data:
        aes.update(chunk)
    steps["aes-ctr"] += time.process_time() - t
    t = time.process_time()
    d = isal_zlib.decompressobj(wbits=31)
    tar_chunks = [d.decompress(chunk) for chunk in data]
    steps["gunzip"] += time.process_time() - t
    t = time.process_time()
    h = hashlib.sha256()
    for chunk in tar_chunks:
        h.update(chunk)
    steps["sha256 tar"] += time.process_time() - t
    with open(plain, "wb") as out:
        out.writelines(tar_chunks)


def ceiling(blobs: list[Path], work: Path) -> dict[str, float]:
    """CPU seconds of each step a pull cannot avoid, measured on *blobs* (the plain gzip
    layers; their ciphertext is as long)."""
    steps = dict.fromkeys(_STEPS, 0.0)
    for i, blob in enumerate(blobs):
        _layer_steps(blob, work / f"layer{i}.tar", steps)
    target = work / "ceiling-rootfs"
    target.mkdir()
    for i in range(len(blobs)):
        steps["extract"] += timed(["tar", "-xf", str(work / f"layer{i}.tar"), "-C", str(target)]).cpu_s
        (work / f"layer{i}.tar").unlink()
    drop_tree(target)
    return steps


# -- one case -------------------------------------------------------------------------------


def measure_case(
    name: str, d: Path, plain: Path, reg: RegistryServer, priv: Path, pub: Path
) -> tuple[list[list[Any]], dict[str, Any]]:
    ref = f"docker://{reg.host}/bench/{name}:v1"
    enc = d / f"{name}-enc"
    subprocess.run(
        [
            LS,
            "copy",
            "-q",
            "--dest-tls-verify=false",
            "--encryption-key",
            f"jwe:{pub}",
            f"oci:{plain}:v1",
            ref,
        ],
        check=True,
    )
    subprocess.run(
        [LS, "copy", "-q", "--encryption-key", f"jwe:{pub}", f"oci:{plain}:v1", f"oci:{enc}:v1"], check=True
    )
    blobs = layer_blobs(plain)
    size = sum(p.stat().st_size for p in layer_blobs(enc))
    work = d / "work"

    def pull(src: str) -> Run:
        return timed(
            [
                LS, "pull", "--src-tls-verify=false", "--decryption-key", str(priv),
                "--store", str(d / "store"), "--snapshots", str(d / "snaps"), src,
                "--rootfs", str(d / "private" / "rootfs"),
            ]
        )  # fmt: skip

    def fresh() -> None:
        for n in ("store", "snaps", "private/rootfs", "oci", "bundle", "gnutar", "work"):
            drop_tree(d / n)
        subprocess.run(["sync"], check=True)

    runs: dict[str, list[Run]] = {k: [] for k in ("registry", "layout", "skopeo+umoci", "gnu tar")}
    for _ in range(RUNS):
        fresh()
        runs["registry"].append(pull(ref))
        fresh()
        runs["layout"].append(pull(f"oci:{enc}:v1"))
        fresh()
        a = timed(
            [
                "skopeo", "--insecure-policy", "copy", "-q", "--src-tls-verify=false",
                "--decryption-key", str(priv), ref, f"oci:{d}/oci:v1",
            ]
        )  # fmt: skip
        b = timed(["umoci", "unpack", "--image", f"{d}/oci:v1", str(d / "bundle")])
        runs["skopeo+umoci"].append(total(a, b))
        fresh()
        (d / "gnutar").mkdir()
        runs["gnu tar"].append(
            total(*(timed(["tar", "-xzf", str(blob), "-C", str(d / "gnutar")]) for blob in blobs))
        )
    files = sum(len(names) for _, _, names in os.walk(d / "gnutar"))  # the image's files (and links)
    fresh()
    work.mkdir()
    steps = ceiling(blobs, work)
    cores = os.cpu_count() or 1
    ceiling_s = sum(steps.values()) / cores
    best = {k: min(v, key=lambda t: t.seconds) for k, v in runs.items()}
    ls = best["registry"]
    rows: list[list[Any]] = []
    for label, key in (
        ("layerseal pull (registry)", "registry"),
        ("layerseal pull (OCI layout)", "layout"),
        ("skopeo copy + umoci unpack", "skopeo+umoci"),
        ("GNU tar -xzf of the plain layers", "gnu tar"),
    ):
        t = best[key]
        rows.append(
            [
                f"{name}: {label}",
                t.seconds,
                size / t.seconds / 1e6,
                files / t.seconds if files else "",
                t.user_s,
                t.sys_s,
                t.cpu_s / size * 1e9,
                t.peak_rss_mb,
                f"{ceiling_s / t.seconds:.0%}",
            ]
        )
    rows.append(
        [f"{name}: ceiling ({cores} cores)", ceiling_s, size / ceiling_s / 1e6,
         files / ceiling_s if files else "", sum(steps.values()), "", sum(steps.values()) / size * 1e9,
         "", "100%"]
    )  # fmt: skip
    result = {
        "image_bytes": size,
        "files": files,
        "ceiling_s": ceiling_s,
        "ceiling_steps_cpu_s": steps,
        "share_of_ceiling": ceiling_s / ls.seconds,
        "cpu_s_per_gb": {k: v.cpu_s / size * 1e9 for k, v in best.items()},
        "ceiling_cpu_s_per_gb": sum(steps.values()) / size * 1e9,
        "ratio_vs_skopeo_umoci": ls.seconds / best["skopeo+umoci"].seconds,
        "runs": {k: [t.__dict__ for t in v] for k, v in runs.items()},
    }
    return rows, result


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


COLUMNS = ["what", "seconds", "MB/s", "files/s", "user s", "sys s", "CPU-s/GB", "peak RSS MB", "of ceiling"]


def main() -> int:
    results: dict[str, Any] = {
        "skopeo": tool_version(["skopeo", "--version"]),
        "umoci": tool_version(["umoci", "--version"]),
        "tar": tool_version(["tar", "--version"]),
        "runs": RUNS,
        "cases": {},
    }
    tmp = os.environ.get("BENCH_TMP", "/dev/shm" if os.path.isdir("/dev/shm") else None)
    results["tmpdir"] = tmp
    rows: list[list[Any]] = []
    with tempfile.TemporaryDirectory(prefix="layerseal-bench-", dir=tmp) as dd:
        d = Path(dd)
        (d / "private").mkdir(mode=0o700)  # a --rootfs parent only root may enter
        priv, pub = keys(d)
        with RegistryServer(d / "registry") as reg:
            for case in CASES:
                plain = build_large(d) if case == "large" else build_small(d)
                case_rows, case_result = measure_case(case, d, plain, reg, priv, pub)
                rows.extend(case_rows)
                results["cases"][case] = case_result
            if "large" in CASES:
                large = results["cases"]["large"]
                best = min(large["runs"]["registry"], key=lambda t: t["seconds"])
                pipeline = min(large["runs"]["skopeo+umoci"], key=lambda t: t["seconds"])
                results.update(
                    {
                        "image_bytes": large["image_bytes"],
                        "layerseal_s": best["seconds"],
                        "pipeline_s": pipeline["seconds"],
                        "ratio": best["seconds"] / pipeline["seconds"],
                        "layerseal_peak_rss_mb": max(t["peak_rss_mb"] for t in large["runs"]["registry"]),
                    }
                )
                run_cmd = [
                    LS, "run", "--src-tls-verify=false", "--decryption-key", str(priv),
                    "--store", str(d / "store"), "--snapshots", str(d / "snaps"),
                    f"docker://{reg.host}/bench/large:v1",
                ]  # fmt: skip
                cold = first_byte(run_cmd)
                warm = first_byte(run_cmd)
                results.update({"run_first_byte_cold_s": cold[0], "run_first_byte_warm_s": warm[0]})
                rows.append(
                    ["layerseal run: first output byte (cold store)", cold[0], "", "", "", "", "", "", ""]
                )
                rows.append(
                    ["layerseal run: first output byte (warm store)", warm[0], "", "", "", "", "", "", ""]
                )
    print(
        table(
            f"pull + unpack, fastest of {RUNS} interleaved rounds",
            COLUMNS,
            rows,
        )
    )
    print(
        "targets: layerseal <= 0.5x skopeo+umoci; peak RSS <= 200 MB; "
        ">= 70% of the ceiling (large), >= 50% (small)"
    )
    print(f"results: {save('pull_unpack', results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
