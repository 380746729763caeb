"""``layerseal store gc|ls|release``: maintain the shared encrypted blob store and the snapshot cache."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from layerseal.cli._subcommands import command_group
from layerseal.cli.engine import default_snapshots, open_snapshots
from layerseal.errors import BadInputError

if TYPE_CHECKING:
    from layerseal.engine.snapshot import SnapshotStore

DEFAULT_MAX_IDLE_DAYS = 14.0


def register(sub: Any) -> None:
    ssub = command_group(
        sub, "store", "inspect or clean the shared encrypted blob store and the snapshot cache"
    )

    gc = ssub.add_parser(
        "gc",
        help="remove blobs no image references; of the snapshots this store's runs used, those of such "
        "blobs or unused for --max-idle days; and leftovers of killed pulls",
    )
    gc.add_argument("--store", required=True, metavar="DIR", help="store root directory")
    gc.add_argument(
        "--snapshots", metavar="DIR", help="decrypted-layer cache (default: as for pull, if it exists)"
    )
    gc.add_argument(
        "--max-idle",
        type=float,
        default=DEFAULT_MAX_IDLE_DAYS,
        metavar="DAYS",
        help="remove snapshots no run reused for this long (a revoked layer's never is); "
        f"default {DEFAULT_MAX_IDLE_DAYS:g}",
    )
    gc.add_argument("--json", action="store_true", help="print the result as JSON")
    gc.set_defaults(func=run_gc)

    ls = ssub.add_parser("ls", help="list stored blobs, their sizes and owners")
    ls.add_argument("--store", required=True, metavar="DIR", help="store root directory")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.set_defaults(func=run_ls)

    rel = ssub.add_parser(
        "release", help="drop an image's references; the next gc removes what nothing else needs"
    )
    rel.add_argument("--store", required=True, metavar="DIR", help="store root directory")
    rel.add_argument("owner", metavar="IMAGE", help="the image reference as pulled (see 'store ls')")
    rel.set_defaults(func=run_release)


def _snapshots(args: argparse.Namespace) -> SnapshotStore | None:
    if args.snapshots:
        return open_snapshots(Path(args.snapshots))
    path = default_snapshots()
    return open_snapshots(path) if path.is_dir() else None


def run_gc(args: argparse.Namespace) -> int:
    if args.max_idle < 0:
        raise BadInputError(f"--max-idle: expected a number of days >= 0, seen {args.max_idle:g}")
    from layerseal.engine.snapshot import SnapshotGcReport, user_of
    from layerseal.layout.blobstore import SharedBlobStore

    store = SharedBlobStore(Path(args.store))
    # snapshots first: a snapshot whose blob goes now would be unreferenced at the next gc anyway
    snapshots = _snapshots(args)
    snap = (
        snapshots.gc(user_of(store.root), store.referenced(), args.max_idle * 86400.0)
        if snapshots is not None
        else SnapshotGcReport(0, 0, 0, 0)
    )
    report = store.gc()
    if args.json:
        print(
            json.dumps(
                {
                    **report.to_json(),
                    "removed_snapshots": snap.removed,
                    "kept_snapshots": snap.kept,
                    "busy_snapshots": snap.busy,
                    "removed_snapshot_leftovers": snap.leftovers,
                },
                indent=2,
            )
        )
    else:
        print(
            f"removed {report.removed_blobs} blobs ({report.freed_bytes} bytes), "
            f"kept {report.kept_blobs}, busy {report.busy_blobs}, "
            f"stale temporary files removed {report.removed_temp_files}; "
            f"snapshots removed {snap.removed}, kept {snap.kept}, busy {snap.busy}, "
            f"leftovers of killed pulls removed {snap.leftovers}"
        )
    return 0


def run_ls(args: argparse.Namespace) -> int:
    from layerseal.layout.blobstore import SharedBlobStore

    stats = SharedBlobStore(Path(args.store)).stats()
    if args.json:
        print(json.dumps(stats.to_json(), indent=2))
        return 0
    for blob in stats.blobs:
        owners = ", ".join(blob.owners) if blob.owners else "(unreferenced)"
        print(f"{blob.digest}  {blob.size:>12}  {owners}")
    print(f"{stats.blob_count} blobs, {stats.total_bytes} bytes, {len(stats.owners)} owners")
    return 0


def run_release(args: argparse.Namespace) -> int:
    from layerseal.layout.blobstore import SharedBlobStore

    store = SharedBlobStore(Path(args.store))
    if args.owner not in store.stats().owners:
        raise BadInputError(
            f"store {store.root}: expected an owner listed by 'store ls', seen {args.owner!r}"
        )
    store.release(args.owner)
    return 0
