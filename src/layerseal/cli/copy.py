"""``layerseal copy`` and ``layerseal inspect`` (skopeo-style flags).

The image and crypto code is imported by the commands when they run, not with the parser.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from layerseal.cli.common import (
    add_encryption_flags,
    add_registry_flags,
    parse_platform,
    parse_unwrappers,
    parse_wrappers,
    registry_options,
    transfer,
)
from layerseal.errors import BadInputError

if TYPE_CHECKING:
    from layerseal.builder.copy import CopyReport


def register(sub: Any) -> None:
    p = sub.add_parser("copy", help="copy an image, encrypting or decrypting layers")
    p.add_argument("source", metavar="SRC", help="oci:DIR[:TAG] or docker://HOST/REPO[:TAG]")
    p.add_argument("destination", metavar="DST")
    add_encryption_flags(p)
    p.add_argument(
        "--encrypt-layer",
        action="append",
        type=int,
        metavar="N",
        help="encrypt only layer N (0-based, negative counts from the end; repeatable; default all)",
    )
    p.add_argument(
        "--decryption-key",
        action="append",
        default=[],
        metavar="PRIVKEY[:PASSWORD-SOURCE]",
        help="private key file (jwe: and pkcs7: layers); a password as skopeo takes it: KEY:PASS, "
        "KEY:pass=PASS, KEY:file=PATH, KEY:fd=N, or KEY:env=VAR",
    )
    p.add_argument(
        "--platform", metavar="OS/ARCH[/VARIANT]", help="choose from an index (default: this host)"
    )
    p.add_argument(
        "--all",
        "-a",
        action="store_true",
        help="copy every image of an index (each platform), not only this host's or --platform's",
    )
    p.add_argument(
        "--jobs", "-j", type=_positive, metavar="N", help="layers transferred at once (default: one per core)"
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    add_registry_flags(p, "src", "dest")
    p.set_defaults(func=run_copy, tune_allocator_first=False)  # tuned by transfer()

    i = sub.add_parser("inspect", help="show an image's layers and how they are encrypted")
    i.add_argument("source", metavar="SRC")
    i.add_argument("--json", action="store_true", help="print JSON")
    i.add_argument("--platform", metavar="OS/ARCH[/VARIANT]")
    add_registry_flags(i, "src")
    # skopeo inspect's spelling of the same flags
    i.add_argument("--tls-verify", dest="src_tls_verify", choices=["true", "false"], help=argparse.SUPPRESS)
    i.add_argument("--creds", dest="src_creds", help=argparse.SUPPRESS)
    i.add_argument("--cert-dir", dest="src_cert_dir", help=argparse.SUPPRESS)
    i.set_defaults(func=run_inspect, tune_allocator_first=False)  # it reads manifests and a config


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, seen {text!r}")
    return int(text)


def run_copy(args: argparse.Namespace) -> int:
    wrappers = parse_wrappers(args, args.destination)
    encrypt_layers = tuple(args.encrypt_layer) if args.encrypt_layer else None
    unwrappers = parse_unwrappers(args.decryption_key)
    platform = parse_platform(args.platform)
    if args.encrypt_layer and not wrappers:
        raise BadInputError("--encrypt-layer: expected --encryption-key too, seen none")
    if args.all and args.platform:
        raise BadInputError("--all: expected no --platform (every platform is copied), seen one")
    with transfer(args, wrappers) as (src, dst, progress):
        # after both ends opened: a missing image fails without loading the copy pipeline
        from layerseal.builder.copy import CopyOptions, IndexCopyReport, copy_image, copy_index

        options = CopyOptions(
            wrappers=wrappers,
            encrypt_layers=encrypt_layers,
            unwrappers=unwrappers,
            platform=platform,
            **({"workers": args.jobs} if args.jobs else {}),
        )
        result = (
            copy_index(src, dst, options, progress) if args.all else copy_image(src, dst, options, progress)
        )
    reports = [r for r in result.images if r is not None] if isinstance(result, IndexCopyReport) else [result]
    top = result.index if isinstance(result, IndexCopyReport) else result.manifest
    if args.json:
        out: dict[str, Any] = {
            "source": result.source,
            "destination": result.destination,
            "manifest": str(top.digest),
        }
        if isinstance(result, IndexCopyReport):
            out["images"] = [None if r is None else _report_json(r) for r in result.images]
        else:
            out["layers"] = _report_json(result)["layers"]
        print(json.dumps(out, indent=2))
    elif not args.quiet:
        counts: dict[str, int] = {}
        for report in reports:
            for r in report.layers:
                counts[r.action] = counts.get(r.action, 0) + 1
        done = ", ".join(f"{n} {a}" for a, n in sorted(counts.items())) or "no layers"
        images = f"{len(reports)} images, " if isinstance(result, IndexCopyReport) else ""
        kind = "index" if isinstance(result, IndexCopyReport) else "manifest"
        print(f"copied {result.source} -> {result.destination}: {images}{done}; {kind} {top.digest}")
    return 0


def _report_json(report: CopyReport) -> dict[str, Any]:
    return {
        "manifest": str(report.manifest.digest),
        "layers": [
            {"index": r.index, "action": r.action, "from": str(r.source.digest), "to": str(r.result.digest)}
            for r in report.layers
        ],
    }


def run_inspect(args: argparse.Namespace) -> int:
    from layerseal.builder.endpoints import open_source

    src = open_source(args.source, registry_options(args, "src", args.source))
    try:
        # after the source opened: a missing image fails without loading the summary code
        from layerseal.builder.inspect import inspect_image

        summary = inspect_image(src, parse_platform(args.platform))
    finally:
        src.close()
    if args.json:
        print(json.dumps(summary.to_json(), indent=2))
        return 0
    if summary.index is not None:
        platforms = ", ".join(e.platform or "(none)" for e in summary.index.entries)
        print(f"{summary.name}  index {summary.index.digest}  ({len(summary.index.entries)}: {platforms})")
    print(f"{summary.name}  manifest {summary.manifest_digest}  ({summary.media_type})")
    print(f"config {summary.config_digest}")
    for layer in summary.layers:
        state = "encrypted" if layer.encrypted else "plain"
        print(f"  [{layer.index}] {layer.digest}  {layer.size:>12,d} B  {layer.media_type}  {state}")
        for k in layer.keys:
            print(f"        keys.{k.scheme}: {', '.join(k.recipients) or '-'}")
    for h in summary.history:
        created_by = h.get("created_by") or h.get("comment") or ""
        empty = "  (empty layer)" if h.get("empty_layer") else ""
        print(f"  history: {h.get('created', '')}  {created_by}{empty}")
    return 0
