"""Per-layer snapshot directories keyed by diff_id, created and removed atomically.

Layout: ``<root>/<algorithm>/<hex>/`` holds one unpacked layer (see
:mod:`layerseal.engine.unpack` for the format).  Work in progress lives in hidden
``.<hex>.*.tmp`` siblings that are renamed into place only when complete, so a snapshot
path either does not exist or holds a whole, verified layer.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from layerseal.engine.limits import UnpackLimits
from layerseal.engine.unpack import UnpackResult, remove_tree, unpack_layer
from layerseal.errors import IntegrityError, expected_seen
from layerseal.image.digest import Digest


class SnapshotStore:
    """A directory of layer snapshots shared by the engines of one enclave."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        # snapshots hold decrypted layers: only this user may even list them
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.root.stat().st_mode & 0o077:
            os.chmod(self.root, 0o700)

    def path(self, diff_id: Digest) -> Path:
        return self.root / diff_id.algorithm / diff_id.hex

    def exists(self, diff_id: Digest) -> bool:
        try:
            return stat.S_ISDIR(self.path(diff_id).lstat().st_mode)
        except FileNotFoundError:
            return False

    @contextmanager
    def create(self, diff_id: Digest) -> Iterator[Path]:
        """Yield an empty temporary directory; on success it becomes ``path(diff_id)``.

        On an exception the temporary directory is removed and the error propagates.
        If another engine committed the same diff_id meanwhile, its snapshot is kept
        (content addressing makes them equal) and this one is discarded.
        """
        final = self.path(diff_id)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{diff_id.hex[:16]}.", suffix=".tmp", dir=final.parent))
        try:
            yield tmp
            try:
                os.rename(tmp, final)
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not self.exists(diff_id):
                    raise
                remove_tree(tmp)
        except BaseException:
            remove_tree(tmp)
            raise

    def unpack(
        self,
        diff_id: Digest,
        chunks: Iterable[bytes],
        compression: str,
        *,
        what: str = "layer",
        allow_devices: bool | None = None,
        limits: UnpackLimits | None = None,
    ) -> UnpackResult:
        """Unpack a layer into a new snapshot, committing it only if its diff_id matches."""
        with self.create(diff_id) as tmp:
            result = unpack_layer(
                chunks, compression, tmp, what=what, allow_devices=allow_devices, limits=limits
            )
            if result.diff_id != diff_id:
                raise IntegrityError(expected_seen(f"{what} diff_id", diff_id, result.diff_id))
        return result

    def remove(self, diff_id: Digest) -> None:
        """Remove a snapshot if present; it disappears from ``path`` at once (renamed first)."""
        final = self.path(diff_id)
        if not self.exists(diff_id):
            return
        doomed = Path(tempfile.mkdtemp(prefix=f".{diff_id.hex[:16]}.", suffix=".rm.tmp", dir=final.parent))
        with contextlib.suppress(FileNotFoundError):  # removed concurrently
            os.rename(final, doomed)  # replaces the empty placeholder atomically
        remove_tree(doomed)
