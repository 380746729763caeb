"""``layerseal run``: pull into a private bundle, run it with runc/crun/bwrap, clean up."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from layerseal.engine.bundle import runtime_spec
from layerseal.engine.pull import PullResult
from layerseal.engine.runtime import read_user_db, run_bundle, write_bundle


def prepare_bundle(result: PullResult, bundle: Path, args: Sequence[str] | None) -> dict[str, Any]:
    """Write ``config.json`` next to the pulled ``rootfs`` (which must be ``bundle/rootfs``)."""
    passwd, group = read_user_db(result.rootfs)
    spec = runtime_spec(result.config, "rootfs", args or None, passwd=passwd, group=group)
    write_bundle(bundle, spec)
    return spec


def new_bundle_dir(parent: Path | None = None) -> Path:
    # the decrypted rootfs lives here: private to this user
    return Path(tempfile.mkdtemp(prefix="layerseal-bundle-", dir=parent))


def run_pulled(
    result: PullResult,
    bundle: Path,
    args: Sequence[str] | None,
    *,
    runtime: str | None = None,
    stdout: IO[Any] | None = None,
    stderr: IO[Any] | None = None,
    keep: bool = False,
) -> int:
    try:
        prepare_bundle(result, bundle, args)
        return run_bundle(bundle, runtime=runtime, stdout=stdout, stderr=stderr)
    finally:
        if not keep:
            shutil.rmtree(bundle, ignore_errors=True)
