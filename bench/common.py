"""Shared benchmark plumbing: timed child processes with peak RSS, tables, JSON results."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
VENV_BIN = Path(__file__).resolve().parents[1] / ".venv" / "bin"


@dataclass
class Run:
    seconds: float
    peak_rss_mb: float
    cpu_s: float = 0.0  # the child's user + system time
    user_s: float = 0.0
    sys_s: float = 0.0


GNU_TIME = "/usr/bin/time"


def timed(cmd: Sequence[str], *, env: dict[str, str] | None = None, cwd: str | None = None) -> Run:
    """Run *cmd* to completion; wall time, peak RSS and CPU time.

    The peak RSS comes from GNU time, which forks the command itself: a child forked
    straight from this (large) process would report this process's memory as its own
    peak, because Linux keeps the pre-exec high-water mark.
    """
    with tempfile.NamedTemporaryFile("r", prefix="bench-rss-") as rss:
        start = time.perf_counter()
        proc = subprocess.Popen(
            [GNU_TIME, "-q", "-f", "%M", "-o", rss.name, *cmd],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            cwd=cwd,
        )
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        err = proc.stderr.read().decode() if proc.stderr else ""
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {err.strip()[:500]}")
        peak_kb = int(rss.read().split()[-1])
    # the CPU time includes GNU time's own, a millisecond or so
    return Run(elapsed, peak_kb / 1024, usage.ru_utime + usage.ru_stime, usage.ru_utime, usage.ru_stime)


def best_of(
    n: int, cmd: Sequence[str], prepare: Any = None, server_cpu: Any = None, **kw: Any
) -> dict[str, float]:
    """Fastest and median of *n* runs; ``cpu_s`` (and ``server_cpu_s``, read from the
    *server_cpu* callable around each run) belong to the fastest run."""
    runs, server = [], []
    for _ in range(n):
        if prepare:
            prepare()
        before = server_cpu() if server_cpu else 0.0
        runs.append(timed(cmd, **kw))
        server.append(server_cpu() - before if server_cpu else 0.0)
    secs = [r.seconds for r in runs]
    fastest = secs.index(min(secs))
    return {
        "min_s": min(secs),
        "median_s": statistics.median(secs),
        "peak_rss_mb": max(r.peak_rss_mb for r in runs),
        "cpu_s": runs[fastest].cpu_s,
        "server_cpu_s": server[fastest],
    }


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version()}


def tool_version(cmd: Sequence[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip().splitlines()[0]
    except (OSError, IndexError):
        return "unavailable"


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [
        [f"{c:.1f}" if isinstance(c, float) else str(c) for c in r] for r in rows
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = "  ".join("-" * w for w in widths)
    out = [title, line]
    for i, r in enumerate(cells):
        out.append(
            "  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(r, widths, strict=True)))
        )
        if i == 0:
            out.append(line)
    return "\n".join(out)


def save(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    data = {"benchmark": name, "machine": machine(), **data}
    path.write_text(json.dumps(data, indent=2, default=lambda o: asdict(o)))
    return path


def drop_tree(path: Path) -> None:
    subprocess.run(["rm", "-rf", str(path)], check=True)
