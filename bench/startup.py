"""Start-up time of the ``layerseal`` command, beside skopeo and a bare interpreter.

Measures ``--version``, ``--help``, ``copy --help``, the ``--help`` of the other heavy
commands (pull, run, keys, broker) and commands that fail on their first input before any
network work: ``inspect``, ``pull``, ``run``, ``copy`` and ``layer add`` of a missing
layout (the time a command takes to get going; pull and run use a private store and cache
under a temporary directory) and ``keyprovider`` with an empty request on stdin (ocicrypt
starts it once per layer).  The cases run
round-robin (``BENCH_RUNS`` rounds, default 20), so load from other work on the machine
hits every case alike; wall and CPU time (user + system) are reported as the median and
the fastest run.  Targets (issue 20): ``--version``/``--help`` <= 40 ms, any command
<= 60 ms before its first network call; the targets are CPU time.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import VENV_BIN, save, table, tool_version

RUNS = int(os.environ.get("BENCH_RUNS", "20"))
LS = str(VENV_BIN / "layerseal")
MISSING = "oci:/nonexistent/layerseal-bench:v1"


def cases(work: Path) -> dict[str, tuple[list[str], int | None]]:
    """name -> (command, target CPU ms or None for a reference); *work* is a private
    directory for what the failing commands would write (they fail before writing)."""
    cache = ["--store", str(work / "store"), "--snapshots", str(work / "snapshots")]
    (work / "file").write_bytes(b"x")
    dst = f"oci:{work / 'dst'}:v1"
    return {
        "python -c pass (interpreter floor)": ([str(VENV_BIN / "python"), "-c", "pass"], None),
        "skopeo --version": (["skopeo", "--version"], None),
        "layerseal --version": ([LS, "--version"], 40),
        "layerseal --help": ([LS, "--help"], 40),
        "layerseal copy --help": ([LS, "copy", "--help"], 60),
        "layerseal inspect oci:MISSING (fails)": ([LS, "inspect", MISSING], 60),
        "layerseal pull oci:MISSING (fails)": (
            [LS, "pull", MISSING, "--rootfs", str(work / "rootfs"), *cache],
            60,
        ),
        "layerseal run oci:MISSING (fails)": ([LS, "run", *cache, MISSING], 60),
        "layerseal copy oci:MISSING (fails)": ([LS, "copy", MISSING, dst], 60),
        "layerseal layer add oci:MISSING (fails)": (
            [LS, "layer", "add", MISSING, str(work / "file"), dst],
            60,
        ),
        "layerseal keyprovider < empty (fails)": ([LS, "keyprovider"], 60),
        "layerseal pull --help": ([LS, "pull", "--help"], 60),
        "layerseal run --help": ([LS, "run", "--help"], 60),
        "layerseal keys --help": ([LS, "keys", "--help"], 60),
        "layerseal broker --help": ([LS, "broker", "--help"], 60),
    }


def run_once(cmd: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds of one run; the exit status is not checked (some fail on purpose);
    stdin is empty (the keyprovider reads its request there)."""
    start = time.perf_counter()
    quiet = subprocess.DEVNULL
    proc = subprocess.Popen(cmd, stdin=quiet, stdout=quiet, stderr=quiet)
    _, _, usage = os.wait4(proc.pid, 0)
    return time.perf_counter() - start, usage.ru_utime + usage.ru_stime


def _available(cmd: list[str]) -> bool:
    return Path(cmd[0]).exists() or tool_version([cmd[0], "--version"]) != "unavailable"


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="layerseal-startup-") as work:
        return _measure({name: case for name, case in cases(Path(work)).items() if _available(case[0])})


def _measure(cases: dict[str, tuple[list[str], int | None]]) -> int:
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
    for cmd, _ in cases.values():  # warm the page cache and bytecode once
        run_once(cmd)
    for _ in range(RUNS):
        for name, (cmd, _) in cases.items():
            samples[name].append(run_once(cmd))
    rows: list[list[Any]] = []
    results: dict[str, Any] = {"runs": RUNS, "skopeo": tool_version(["skopeo", "--version"]), "cases": {}}
    for name, runs in samples.items():
        wall = [w * 1000 for w, _ in runs]
        cpu = [c * 1000 for _, c in runs]
        target = cases[name][1]
        entry = {
            "command": cases[name][0],
            "wall_median_ms": statistics.median(wall),
            "wall_min_ms": min(wall),
            "cpu_median_ms": statistics.median(cpu),
            "cpu_min_ms": min(cpu),
            "target_ms": target,
            "within_target": None if target is None else statistics.median(cpu) <= target,
        }
        results["cases"][name] = entry
        verdict = "" if target is None else ("yes" if entry["within_target"] else "NO")
        rows.append(
            [
                name,
                entry["wall_median_ms"],
                entry["wall_min_ms"],
                entry["cpu_median_ms"],
                entry["cpu_min_ms"],
                f"<= {target}" if target else "(reference)",
                verdict,
            ]
        )
    headers = ["command", "wall median ms", "wall min ms", "CPU median ms", "CPU min ms", "target (CPU) ms"]
    print(table(f"start-up, {RUNS} interleaved rounds", [*headers, "met"], rows))
    print(f"results: {save('startup', results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
