"""The real ``layerseal`` CLI run as a child process: one command, or several pulls at once."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

LAYERSEAL = [sys.executable, "-m", "layerseal.cli.main"]


def run_layerseal(
    *args: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float | None = None,
    check: bool = False,
) -> subprocess.CompletedProcess[str]:
    """``layerseal *args`` with *env* (this process's when None), its output captured as text."""
    return subprocess.run(
        [*LAYERSEAL, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout, check=check
    )


def pull_argv(
    ref: str, key: Path, *, store: Path, snapshots: Path, rootfs: Path, options: Sequence[str] = ()
) -> list[str]:
    """The argv of one ``layerseal pull`` of *ref* with the private *key* into *rootfs*."""
    return [
        *LAYERSEAL,
        "pull",
        *options,
        "--decryption-key",
        str(key),
        "--store",
        str(store),
        "--snapshots",
        str(snapshots),
        ref,
        "--rootfs",
        str(rootfs),
    ]


def pull_in_parallel(
    ref: str,
    key: Path,
    *,
    store: Path,
    snapshots: Callable[[int], Path],
    rootfs: Callable[[int], Path],
    options: Sequence[str] = (),
    count: int = 2,
) -> tuple[list[int], list[tuple[str, str]]]:
    """Start *count* ``--json`` pulls together; their exit statuses and (stdout, stderr), in start order."""
    procs = [
        subprocess.Popen(
            [
                *pull_argv(ref, key, store=store, snapshots=snapshots(n), rootfs=rootfs(n), options=options),
                "--json",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(count)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    return [p.returncode for p in procs], outs
