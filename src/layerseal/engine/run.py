"""``layerseal run``: pull into a private bundle, run it with runc/crun/bwrap, clean up."""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from layerseal.errors import BadInputError, expected_seen

# the pull and runtime code load when a pulled image is made a bundle: 'pull' prepares its
# output with this module before it opens the image, and a missing image must fail fast (issue 20)
if TYPE_CHECKING:
    from layerseal.engine.pull import PullResult


def prepare_bundle(
    result: PullResult,
    bundle: Path,
    args: Sequence[str] | None,
    *,
    pids_limit: int | None = None,
    memory_limit: int | None = None,
) -> dict[str, Any]:
    """Write ``config.json`` next to the pulled ``rootfs`` (which must be ``bundle/rootfs``)."""
    from layerseal.engine.bundle import runtime_spec
    from layerseal.engine.runtime import read_user_db, write_bundle

    passwd, group = read_user_db(result.rootfs)
    spec = runtime_spec(
        result.config,
        "rootfs",
        args or None,
        passwd=passwd,
        group=group,
        pids_limit=pids_limit,
        memory_limit=memory_limit,
    )
    write_bundle(bundle, spec)
    return spec


def _only_root_enters(directory: Path) -> bool:
    """True when some directory on the way to *directory* (itself included) is root's and
    closed to group and others, so nothing below it is reachable by a local user."""
    for d in (directory, *directory.parents):
        st = d.stat()
        if st.st_uid == 0 and st.st_mode & 0o011 == 0:
            return True
    return False


def _first_missing(path: Path) -> Path | None:
    missing = None
    for d in (path, *path.parents):
        if d.exists() or d.is_symlink():
            return missing
        missing = d
    return missing


def prepare_output(target: Path, *, bundle: bool) -> tuple[Path, Path | None]:
    """Make the place ``pull`` writes to; returns the rootfs path and the topmost directory
    this created (for the caller to remove when the pull fails), if any.

    A bundle is laid out as umoci does: *target* mode 0700 (created with its parents if
    missing), ``rootfs`` inside it keeping the image's own root mode.  A bare rootfs run by
    root holds setuid files and device nodes, so it must sit below a directory only root can
    enter: a missing parent is created 0700, an open one is refused.
    """
    target = Path(os.path.abspath(target))
    created = _first_missing(target)
    if bundle:
        try:
            target.mkdir(mode=0o700, parents=True, exist_ok=True)
            if target.is_symlink() or not target.is_dir():
                raise BadInputError(expected_seen(f"--bundle {target}", "a directory", "another file type"))
            target.chmod(0o700)
        except OSError as exc:
            raise BadInputError(
                expected_seen(f"--bundle {target}", "a directory layerseal can create", exc.strerror)
            ) from exc
        return target / "rootfs", created
    parent = target.parent
    if not parent.exists():
        try:
            parent.mkdir(mode=0o700, parents=True)
        except OSError as exc:
            raise BadInputError(
                expected_seen(
                    f"--rootfs {target}: parent {parent}", "a directory layerseal can create", exc.strerror
                )
            ) from exc
    if os.geteuid() == 0 and not _only_root_enters(parent):
        mode = stat.S_IMODE(parent.stat().st_mode)
        raise BadInputError(
            f"--rootfs {target}: expected a parent directory only root can enter (mode 0700), seen {parent} "
            f"with mode {mode:04o}, so setuid files and devices of the image would be reachable by local "
            f"users: use --bundle DIR, or create the parent with 'mkdir -m 0700'"
        )
    return target, created


def new_bundle_dir(parent: Path | None = None) -> Path:
    import tempfile

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
    pids_limit: int | None = None,
    memory_limit: int | None = None,
) -> int:
    from layerseal.engine.runtime import run_bundle

    try:
        prepare_bundle(result, bundle, args, pids_limit=pids_limit, memory_limit=memory_limit)
        return run_bundle(bundle, runtime=runtime, stdout=stdout, stderr=stderr)
    finally:
        if not keep:
            shutil.rmtree(bundle, ignore_errors=True)
