"""``layerseal layer add``: append a layer made of local files to an image."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from layerseal.cli._subcommands import command_group
from layerseal.cli.common import (
    add_encryption_flags,
    add_registry_flags,
    parse_platform,
    parse_wrappers,
    print_json,
    transfer,
)
from layerseal.errors import BadInputError


def register(sub: Any) -> None:
    lsub = command_group(sub, "layer", "change the layers of an image", metavar="COMMAND")
    p = lsub.add_parser(
        "add",
        help="append a layer built from files, directories or a tar",
        description="PATH is LOCAL[:IN_IMAGE]; by default a file or directory lands at /<its name>.",
    )
    p.add_argument(
        "items", metavar="SRC PATH... DST", nargs="+", help="source image, paths, destination image"
    )
    add_encryption_flags(p)
    p.add_argument("--message", "-m", help="history comment for the new layer")
    p.add_argument("--compress", default="gzip", choices=["gzip", "zstd", "none"])
    p.add_argument(
        "--keep-mtime", action="store_true", help="keep file mtimes (default: fixed, reproducible)"
    )
    p.add_argument("--platform", metavar="OS/ARCH[/VARIANT]")
    p.add_argument("--quiet", "-q", action="store_true")
    p.add_argument("--json", action="store_true")
    add_registry_flags(p, "src", "dest")
    p.set_defaults(func=run_add, collect_positionals="items", tune_allocator_first=False)  # by transfer()


def parse_paths(specs: list[str]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for spec in specs:
        local, sep, inside = spec.partition(":")
        path = Path(local)
        if not path.exists() and not path.is_symlink():
            raise BadInputError(f"PATH {local}: expected an existing file or directory, seen nothing")
        dest = inside if sep else path.resolve().name
        if not dest.strip("/") and path.is_file():
            raise BadInputError(f"PATH {spec}: expected a file name inside the image, seen {inside!r}")
        out[dest] = path
    return out


def run_add(args: argparse.Namespace) -> int:
    if len(args.items) < 3:
        raise BadInputError(f"layer add: expected SRC PATH... DST, seen {len(args.items)} argument(s)")
    args.source, args.destination = args.items[0], args.items[-1]
    sources = parse_paths(args.items[1:-1])
    wrappers = parse_wrappers(args, args.destination)
    platform = parse_platform(args.platform)
    with transfer(args, wrappers) as (src, dst, progress):
        # after both ends opened: a missing image fails without loading the layer builder
        from layerseal.builder.layeradd import add_layer

        report = add_layer(
            src,
            dst,
            sources,
            wrappers=wrappers,
            compression=args.compress,
            message=args.message,
            keep_mtime=args.keep_mtime,
            platform=platform,
            progress=progress,
        )
    if args.json:
        print_json(
            {
                "manifest": str(report.manifest.digest),
                "layer": str(report.layer.digest),
                "mediaType": report.layer.media_type,
                "diffID": str(report.diff_id),
                "encrypted": report.encrypted,
            }
        )
    elif not args.quiet:
        state = "encrypted" if report.encrypted else "plain"
        size = f"{report.layer.size:,d} B"
        print(f"added {state} layer {report.layer.digest} ({size}); manifest {report.manifest.digest}")
    return 0
