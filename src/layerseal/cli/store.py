"""``layerseal store gc`` and ``layerseal store ls``: maintain the shared encrypted blob store."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from layerseal.layout.blobstore import SharedBlobStore


def register(sub: Any) -> None:
    p = sub.add_parser("store", help="inspect or clean the shared encrypted blob store")
    ssub = p.add_subparsers(dest="store_command", metavar="ACTION")
    ssub.required = True

    gc = ssub.add_parser("gc", help="remove blobs that no image or engine references")
    gc.add_argument("--store", required=True, metavar="DIR", help="store root directory")
    gc.add_argument("--json", action="store_true", help="print the result as JSON")
    gc.set_defaults(func=run_gc)

    ls = ssub.add_parser("ls", help="list stored blobs, their sizes and owners")
    ls.add_argument("--store", required=True, metavar="DIR", help="store root directory")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.set_defaults(func=run_ls)


def run_gc(args: argparse.Namespace) -> int:
    report = SharedBlobStore(Path(args.store)).gc()
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(
            f"removed {report.removed_blobs} blobs ({report.freed_bytes} bytes), "
            f"kept {report.kept_blobs}, busy {report.busy_blobs}, "
            f"stale temporary files removed {report.removed_temp_files}"
        )
    return 0


def run_ls(args: argparse.Namespace) -> int:
    stats = SharedBlobStore(Path(args.store)).stats()
    if args.json:
        print(json.dumps(stats.to_json(), indent=2))
        return 0
    for blob in stats.blobs:
        owners = ", ".join(blob.owners) if blob.owners else "(unreferenced)"
        print(f"{blob.digest}  {blob.size:>12}  {owners}")
    print(f"{stats.blob_count} blobs, {stats.total_bytes} bytes, {len(stats.owners)} owners")
    return 0
