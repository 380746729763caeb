"""Start-up time of the ``layerseal`` command, beside skopeo and a bare interpreter.

Measures ``--version``, ``--help``, ``copy --help`` and an ``inspect`` of a missing
layout (fails before any network or disk work: the time a command takes to get going).
The cases run round-robin (``BENCH_RUNS`` rounds, default 15), so load from other work
on the machine hits every case alike; wall and CPU time (user + system) are reported as
the median and the fastest run.  Targets: ``--version``/``--help`` <= 40 ms, any command
<= 60 ms before its first network call.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import VENV_BIN, save, table, tool_version

RUNS = int(os.environ.get("BENCH_RUNS", "15"))
LS = str(VENV_BIN / "layerseal")

CASES: dict[str, list[str]] = {
    "python -c pass (interpreter floor)": [str(VENV_BIN / "python"), "-c", "pass"],
    "layerseal --version": [LS, "--version"],
    "layerseal --help": [LS, "--help"],
    "layerseal copy --help": [LS, "copy", "--help"],
    "layerseal inspect oci:MISSING (fails)": [LS, "inspect", "oci:/nonexistent/layerseal-bench:v1"],
    "skopeo --version": ["skopeo", "--version"],
}
TARGET_MS = {"layerseal --version": 40, "layerseal --help": 40, "layerseal copy --help": 60}
TARGET_MS["layerseal inspect oci:MISSING (fails)"] = 60


def run_once(cmd: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds of one run; the exit status is not checked (inspect fails on purpose)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, _, usage = os.wait4(proc.pid, 0)
    return time.perf_counter() - start, usage.ru_utime + usage.ru_stime


def main() -> int:
    available = {k: v for k, v in CASES.items() if Path(v[0]).exists() or v[0] == "skopeo"}
    samples: dict[str, list[tuple[float, float]]] = {k: [] for k in available}
    for cmd in available.values():  # warm the page cache and bytecode once
        run_once(cmd)
    for _ in range(RUNS):
        for name, cmd in available.items():
            samples[name].append(run_once(cmd))
    rows: list[list[Any]] = []
    results: dict[str, Any] = {"runs": RUNS, "skopeo": tool_version(["skopeo", "--version"]), "cases": {}}
    for name, runs in samples.items():
        wall = [w * 1000 for w, _ in runs]
        cpu = [c * 1000 for _, c in runs]
        entry = {
            "wall_median_ms": statistics.median(wall),
            "wall_min_ms": min(wall),
            "cpu_median_ms": statistics.median(cpu),
            "target_ms": TARGET_MS.get(name),
        }
        results["cases"][name] = entry
        target = TARGET_MS.get(name)
        rows.append(
            [
                name,
                entry["wall_median_ms"],
                entry["wall_min_ms"],
                entry["cpu_median_ms"],
                f"<= {target}" if target else "",
            ]
        )
    print(
        table(
            f"start-up, {RUNS} interleaved rounds",
            ["command", "wall median ms", "wall min ms", "CPU median ms", "target ms"],
            rows,
        )
    )
    print(f"results: {save('startup', results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
