"""``layerseal keys rotate|revoke|list``: the publisher's key operations at the broker.

The image and broker client code is imported by the commands when they run, not with the parser.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime
from typing import Any

from layerseal.cli._subcommands import command_group
from layerseal.cli.common import (
    add_encryption_flags,
    add_registry_flags,
    parse_unwrappers,
    parse_wrappers,
    print_json,
    transfer,
)
from layerseal.errors import BadInputError


def _client(args: argparse.Namespace) -> Any:
    token = args.kbs_token or os.environ.get("LAYERSEAL_KBS_TOKEN")
    if not args.kbs or not token:
        raise BadInputError("keys: expected --kbs URL and a token (--kbs-token or LAYERSEAL_KBS_TOKEN)")
    # httpx loads only for a request that can be made
    from layerseal.kbs.client import PublisherClient

    return PublisherClient(args.kbs, token, verify=args.kbs_cacert or True)


def _broker_flags(p: argparse.ArgumentParser, with_token: bool = True) -> None:
    p.add_argument("--kbs", metavar="URL", help="the key broker")
    if with_token:  # add_encryption_flags already defines these for 'rotate'
        p.add_argument("--kbs-cacert", help="CA bundle for the broker's TLS certificate")
        p.add_argument("--kbs-token", help="broker API token (default: $LAYERSEAL_KBS_TOKEN)")


def register(sub: Any) -> None:
    ksub = command_group(sub, "keys", "rotate, revoke and list layer keys at the broker", metavar="COMMAND")

    r = ksub.add_parser("rotate", help="new key versions for every layer (annotations only, no re-upload)")
    r.add_argument("source", metavar="SRC")
    r.add_argument("destination", metavar="DST")
    r.add_argument("--retire-previous", action="store_true", help="retire the old versions at the broker")
    r.add_argument(
        "--all-tags",
        action="store_true",
        help="also rewrite every other tag of the repository that uses these keys (one rotation)",
    )
    r.add_argument(
        "--force",
        action="store_true",
        help="retire even while other tags still use the old versions (they stop pulling)",
    )
    r.add_argument("--reencrypt", action="store_true", help="re-encrypt blobs with fresh layer keys")
    r.add_argument("--decryption-key", action="append", default=[], metavar="PRIVKEY")
    add_encryption_flags(r)
    _broker_flags(r, with_token=False)
    r.add_argument("--quiet", "-q", action="store_true")
    r.add_argument("--json", action="store_true")
    add_registry_flags(r, "src", "dest")
    r.set_defaults(func=run_rotate, tune_allocator_first=False)  # tuned by transfer()

    v = ksub.add_parser("revoke", help="revoke a key (all versions) or one version")
    v.add_argument("key_id", metavar="KEY_ID")
    v.add_argument("--version", type=int)
    _broker_flags(v)
    v.set_defaults(func=run_revoke, tune_allocator_first=False)  # one broker request

    ls = ksub.add_parser("list", help="list the keys the broker holds for this token's tenant")
    ls.add_argument("--repository")
    ls.add_argument("--unused", action="store_true", help="only keys of failed publishes (cleanable)")
    ls.add_argument("--json", action="store_true")
    _broker_flags(ls)
    ls.set_defaults(func=run_list, tune_allocator_first=False)


def _tag_stores(src: Any, dst: Any) -> tuple[list[Any], tuple[str, str] | None]:
    """The repositories searched for other tags using the keys: the destination's (rewritable)
    and the source's when it is another one (read only); and the tag the destination replaces."""
    from layerseal.builder.rotate import RegistryTags
    from layerseal.registry.transport import RegistryDestination, RegistrySource

    stores: list[Any] = []
    replaced = None
    if isinstance(dst, RegistryDestination):
        ref = dst.reference
        store = RegistryTags(dst.client, ref.registry, ref.repository, writable=True)
        stores.append(store)
        if ref.tag is not None:
            replaced = (store.name, ref.tag)
    if isinstance(src, RegistrySource):
        ref = src.reference
        if not stores or stores[0].name != f"docker://{ref.registry}/{ref.repository}":
            stores.append(RegistryTags(src.client, ref.registry, ref.repository, writable=False))
    return stores, replaced


def run_rotate(args: argparse.Namespace) -> int:
    if args.reencrypt and (args.all_tags or args.force):
        raise BadInputError("keys rotate --reencrypt: expected no --all-tags/--force (broker keys only)")
    with transfer(args) as (src, dst, progress):
        # after both ends opened: a missing image fails without loading the rotation code
        from layerseal.builder.rotate import reencrypt, rotate_keys

        if args.reencrypt:
            report = reencrypt(
                src,
                dst,
                parse_unwrappers(args.decryption_key),
                parse_wrappers(args, args.destination),
                progress=progress,
            )
        else:
            stores, replaced = _tag_stores(src, dst)
            with _client(args) as client:
                report = rotate_keys(
                    src,
                    dst,
                    client,
                    retire_previous=args.retire_previous,
                    tag_stores=stores,
                    replaced=replaced,
                    all_tags=args.all_tags,
                    force=args.force,
                    progress=progress,
                )
    if report.broken:
        print(
            f"warning: --force: {len(report.broken)} other tag(s) still name retired key versions and "
            f"will not pull: {', '.join(report.broken)}",
            file=sys.stderr,
        )
    if args.json:
        print_json(
            {
                "manifest": str(report.manifest.digest),
                "rotated": [{"layer": i, "from": a, "to": b} for i, a, b in report.rotated],
                "reencrypted": report.reencrypted,
                "also_rotated": [{"tag": t, "manifest": m} for t, m in report.also_rotated],
                "retired": [{"key_id": k, "version": v} for k, v in report.retired],
                "broken": list(report.broken),
            }
        )
    elif not args.quiet:
        what = (
            f"{report.reencrypted} layers re-encrypted"
            if args.reencrypt
            else f"{len(report.rotated)} keys rotated"
        )
        print(f"{what}; manifest {report.manifest.digest}")
        for tag, digest in report.also_rotated:
            print(f"also rotated {tag}; manifest {digest}")
        if report.retired:
            print(f"retired {len(report.retired)} key version(s)")
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if args.version is not None:
            client.revoke_key_version(args.key_id, args.version)
            print(f"revoked {args.key_id} version {args.version}")
        else:
            client.revoke_key(args.key_id)
            print(f"revoked {args.key_id} (every version)")
    return 0


def iso_time(epoch: Any) -> str:
    """An epoch timestamp from the broker as ISO-8601 UTC (``2026-11-30T05:08:29Z``); ``-`` if absent."""
    if not isinstance(epoch, int | float) or isinstance(epoch, bool):
        return "-"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def key_status(key: dict[str, Any]) -> str:
    """``revoked`` (every version), ``unused`` (a failed publish), ``active``, else ``retired``."""
    if key.get("revoked"):
        return "revoked"
    if key.get("unused"):
        return "unused"
    versions = key.get("versions") or []
    if any(isinstance(v, dict) and v.get("status") == "active" for v in versions):
        return "active"
    return "retired" if versions else "active"


def version_summary(key: dict[str, Any]) -> str:
    """The versions as ``#2 active, #1 retired`` (newest first): a version is no image tag."""
    versions = [v for v in key.get("versions") or [] if isinstance(v, dict)]
    if not versions:
        current = key.get("current_version")
        return f"#{current}" if current is not None else "-"
    ordered = sorted(versions, key=lambda v: v.get("version", 0), reverse=True)
    return ", ".join(f"#{v.get('version')} {v.get('status', '?')}" for v in ordered)


def key_rows(keys: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The broker's key records plus ``status`` and ISO-8601 ``created`` (for ``--json``)."""
    out = []
    for k in keys:
        row = dict(k)
        row["status"] = key_status(k)
        row["created"] = iso_time(k.get("created_at"))
        out.append(row)
    return out


HEADERS = ("KEY ID", "REPOSITORY", "LAYER (plaintext digest)", "STATUS", "VERSIONS", "CREATED (UTC)")


def key_table(keys: list[dict[str, Any]]) -> list[str]:
    """Aligned lines: a header, then one line per key."""
    rows = [HEADERS] + [
        (
            str(k.get("key_id", "?")),
            str(k.get("repository", "?")),
            str(k.get("layer_digest", "?")),
            key_status(k),
            version_summary(k),
            iso_time(k.get("created_at")),
        )
        for k in keys
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADERS) - 1)]
    return ["  ".join([*(c.ljust(w) for c, w in zip(r, widths, strict=False)), r[-1]]) for r in rows]


def run_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        keys = client.list_keys(args.repository)
    if args.unused:
        keys = [k for k in keys if k.get("unused")]
    if args.json:
        print_json(key_rows(keys))
        return 0
    if not keys:
        print("no keys" + (f" for repository {args.repository}" if args.repository else ""), file=sys.stderr)
        return 0
    for line in key_table(keys):
        print(line)
    return 0
