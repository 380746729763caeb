"""Safe unpacking of layer tars into per-layer snapshots, and stacking them into a rootfs.

The public entry; the work is done by :mod:`~layerseal.engine.tarread` (reading and
hashing the tar, the only user of ``tarfile`` internals), :mod:`~layerseal.engine.extract`
(writing members), :mod:`~layerseal.engine.stack` and :mod:`~layerseal.engine.filecopy`
(building the rootfs) and :mod:`~layerseal.engine.fdtree` (descriptor-relative trees).

``tarfile`` is used only to parse headers: every path is created one component
at a time, relative to directory file descriptors opened with ``O_NOFOLLOW``, so no
symlink is ever followed while writing (CVE-2007-4559 and the runc/umoci family of
"symlink, then write through it" escapes).

Snapshot format (what :func:`unpack_layer` leaves in its target, what
:func:`stack_snapshots` reads): the layer's tree as-is, with every whiteout kept as the
empty regular file named like the tar entry (``.wh.NAME``, ``.wh..wh..opq``, mode 0600).
The ``.wh.`` prefix is reserved by the OCI image spec, so no real file can collide, and
the markers need no privilege (overlayfs' 0/0 char devices would need root).  Stacking
applies them: for each layer, lower to upper, a directory's opaque marker first empties
the directory built so far, then each ``.wh.NAME`` removes ``NAME``, then the layer's own
entries are merged in.  Whiteouts thus only hide lower layers, as the spec requires.
Two more markers, in AUFS' ``.wh..wh.`` namespace that no layer entry can create (such
entries are skipped): ``.wh..wh..implicit`` in a directory the layer only wrote into
(stacking then keeps the metadata of the directory below, as umoci does), and
``.wh..wh..lowerlinks`` at the root, listing hard links to files of lower layers (left
as empty placeholders in the snapshot, linked when stacking).

Policy choices:
- any ``..`` component and any absolute name (entry or hard-link target) is refused;
- device nodes and fifos are created only when ``allow_devices`` (default: running as
  root); otherwise they are skipped, logged, and listed in ``UnpackResult.skipped``;
- ownership is restored (numeric uid/gid, never names) only as root; without root the
  setuid/setgid bits are dropped; xattrs in ``user.*`` are always restored, other
  namespaces only as root, ``*.overlay.*`` never (they would steer overlayfs);
  an xattr the filesystem refuses is skipped and listed;
- directories' modes and mtimes are applied at the end, children first, so a read-only
  directory in the tar does not block its own children;
- pax/GNU long-name headers are capped at 1 MiB, sparse maps at 65536 regions (tarfile
  would read them whole); sparse files are written with holes;
- every uncompressed byte and entry is charged to :mod:`layerseal.engine.limits` before
  it is written;
- what Go's archive/tar (so umoci) accepts is accepted: no end-of-archive blocks after a
  whole member, empty PAX records ignored, PAX mtimes exact to the ns.

Trees are walked, merged and removed without recursion, holding one directory descriptor
per tree (going up by ``..``), so depth costs neither Python stack nor open files.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from layerseal.engine import stack
from layerseal.engine.decompress import decompressor
from layerseal.engine.extract import Extractor
from layerseal.engine.fdtree import DIR_FLAGS, describe, empty_dir, remove_tree
from layerseal.engine.fdtree import running_as_root as _privileged
from layerseal.engine.limits import ImageBudget, UnpackLimits
from layerseal.engine.tarread import HashingReader, HeaderRefused, members
from layerseal.errors import BadInputError, MisuseError, expected_seen
from layerseal.image.digest import Digest

__all__ = ["DEFAULT_MAX_ENTRY_SIZE", "UnpackResult", "remove_tree", "stack_snapshots", "unpack_layer"]

log = logging.getLogger(__name__)

DEFAULT_MAX_ENTRY_SIZE = 64 << 30


@dataclass(frozen=True)
class UnpackResult:
    """What one layer unpack produced.

    ``diff_id`` is the sha256 of the uncompressed tar stream (all of it, trailing padding
    included); ``skipped`` names entries or attributes deliberately not restored;
    ``content`` holds the SHA-256 of the files written, as they were written (for the
    snapshot's seal: :data:`layerseal.engine.snapshot.ContentHashes`).
    """

    diff_id: Digest
    entries: int
    bytes_written: int
    skipped: tuple[str, ...] = ()
    content: Mapping[tuple[int, int], tuple[int, bytes]] = field(
        default_factory=dict, repr=False, compare=False
    )


def _prepare_target(target: Path, what: str) -> bool:
    """Make sure ``target`` is an empty real directory; return True if created here."""
    try:
        st = target.lstat()
    except FileNotFoundError:
        target.mkdir(mode=0o700)
        return True
    if not stat.S_ISDIR(st.st_mode):
        raise MisuseError(
            expected_seen(f"{what}: unpack target {str(target)!r}", "a directory", describe(st.st_mode))
        )
    if any(target.iterdir()):
        raise MisuseError(
            expected_seen(f"{what}: unpack target {str(target)!r}", "an empty directory", "entries")
        )
    return False


def unpack_layer(
    chunks: Iterable[bytes],
    compression: str,
    target: Path,
    *,
    what: str = "layer",
    allow_devices: bool | None = None,
    max_entry_size: int | None = None,
    limits: UnpackLimits | None = None,
    budget: ImageBudget | None = None,
) -> UnpackResult:
    """Stream a (compressed) layer tar into the empty or new directory ``target``.

    Returns the diff_id (sha256 of the uncompressed tar) with counts; the caller compares
    it with the image config.  On any error ``target`` is left empty (or removed if this
    call created it) and the error names ``what`` and the tar entry.

    Uncompressed bytes and entries are charged to ``budget`` (the image's, shared by its
    layers) or else to a budget of this layer alone under ``limits``; passing a limit
    stops the unpack before the data past it is written.
    """
    privileged = _privileged()
    if allow_devices is None:
        allow_devices = privileged
    limit = DEFAULT_MAX_ENTRY_SIZE if max_entry_size is None else max_entry_size
    decompress = decompressor(compression, what=what)
    target = Path(target)
    created = _prepare_target(target, what)
    layer_budget = (budget or ImageBudget(limits)).layer(what)
    root_fd = os.open(target, DIR_FLAGS)
    try:
        reader = HashingReader(decompress(chunks), layer_budget)
        ex = Extractor(root_fd, what, allow_devices, limit, privileged, layer_budget)
        try:
            with contextlib.closing(members(reader, what)) as headers:
                for tf, ti in headers:
                    ex.add(tf, ti)
            ex.finish()
        finally:
            ex.close()
        reader.drain()
    except tarfile.TarError as e:
        _cleanup(root_fd, target, created)
        raise BadInputError(expected_seen(f"{what}: tar stream", "a valid tar archive", f"{e}")) from e
    except HeaderRefused as e:
        _cleanup(root_fd, target, created)
        raise BadInputError(f"{what}: {e}") from e
    except BaseException:
        _cleanup(root_fd, target, created)
        raise
    os.close(root_fd)
    if ex.skipped:
        log.warning("%s: %d entries or attributes skipped", what, len(ex.skipped))
    return UnpackResult(reader.digest(), ex.entries, ex.bytes_written, tuple(ex.skipped), ex.content)


def _cleanup(root_fd: int, target: Path, created: bool) -> None:
    try:
        if not _privileged():
            os.fchmod(root_fd, stat.S_IMODE(os.fstat(root_fd).st_mode) | stat.S_IRWXU)
        empty_dir(root_fd)
    finally:
        os.close(root_fd)
    if created:
        target.rmdir()


def stack_snapshots(snapshots: Sequence[Path], rootfs: Path, *, what: str = "rootfs") -> None:
    """Build ``rootfs`` from snapshot directories, lowest layer first.

    Built in a temporary sibling directory and renamed into place when complete, so on
    any error ``rootfs`` is as before (absent, or the empty directory it was) and no
    temporary directory remains.
    """
    stack.stack_snapshots(snapshots, rootfs, what=what, privileged=_privileged())
