"""``layerseal pull`` and ``layerseal run``: the enclave container engine."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from layerseal.attest.attesters import TEE_CHOICES
from layerseal.builder.endpoints import open_source
from layerseal.cli.common import add_registry_flags, parse_unwrappers, print_json, registry_options
from layerseal.engine.enclave import enclave_client, make_attester
from layerseal.engine.keys import BrokerUnwrapper
from layerseal.engine.pull import PullResult, pull_image
from layerseal.engine.run import new_bundle_dir, prepare_bundle, run_pulled
from layerseal.engine.snapshot import SnapshotStore
from layerseal.errors import BadInputError
from layerseal.image.descriptor import Platform
from layerseal.layout.blobstore import SharedBlobStore


def _default_store() -> str:
    env = os.environ.get("LAYERSEAL_STORE")
    if env:
        return env
    base = "/var/lib/layerseal" if os.geteuid() == 0 else os.path.expanduser("~/.local/share/layerseal")
    return f"{base}/store"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="SRC", help="oci:DIR[:TAG] or docker://HOST/REPO[:TAG]")
    p.add_argument("--kbs", metavar="URL", help="key broker to attest to for provider.attestation-agent keys")
    p.add_argument("--kbs-cacert", help="CA bundle for the broker's TLS certificate")
    p.add_argument("--decryption-key", action="append", default=[], metavar="PRIVKEY", help="for jwe: layers")
    p.add_argument("--store", default=None, help="shared encrypted blob store (default: $LAYERSEAL_STORE)")
    p.add_argument("--snapshots", help="decrypted snapshot cache (default: STORE.snapshots)")
    p.add_argument("--tee", choices=TEE_CHOICES, help="attester (default: auto: detect, else sim)")
    p.add_argument(
        "--sim-platform", metavar="DIR", help="sim TEE platform (default: $LAYERSEAL_SIM_PLATFORM)"
    )
    p.add_argument("--platform", metavar="OS/ARCH[/VARIANT]")
    add_registry_flags(p, "src")


def register(sub: Any) -> None:
    p = sub.add_parser("pull", help="pull, decrypt, verify and unpack an image inside the enclave")
    _common(p)
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument("--rootfs", help="unpack the image here (a new directory)")
    out.add_argument("--bundle", help="write an OCI runtime bundle here (rootfs/ + config.json)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_pull)

    r = sub.add_parser("run", help="pull an image and run it with runc (or crun, or bwrap)")
    _common(r)
    r.add_argument("--runtime", choices=["runc", "crun", "bwrap"], help="default: the first one installed")
    r.add_argument("--keep-bundle", action="store_true", help="leave the bundle on disk (debugging)")
    r.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS... to replace the image's Cmd")
    r.set_defaults(func=run_run)


def _pull(args: argparse.Namespace, rootfs: Path) -> PullResult:
    unwrappers = parse_unwrappers(args.decryption_key)
    store_dir = Path(args.store or _default_store())
    store = SharedBlobStore(store_dir)
    snapshots = SnapshotStore(
        Path(args.snapshots) if args.snapshots else store_dir.with_name(store_dir.name + ".snapshots")
    )
    broker = None
    if args.kbs:
        broker = BrokerUnwrapper(
            enclave_client(args.kbs, make_attester(args.tee, args.sim_platform), args.kbs_cacert)
        )
    src = open_source(args.source, registry_options(args, "src", args.source))
    try:
        return pull_image(
            src,
            store,
            snapshots,
            rootfs,
            unwrappers=unwrappers,
            broker=broker,
            platform=Platform.parse(args.platform) if args.platform else None,
        )
    finally:
        src.close()
        if broker is not None:
            broker.client.close()


def run_pull(args: argparse.Namespace) -> int:
    target = Path(args.bundle or args.rootfs)
    rootfs = target / "rootfs" if args.bundle else target
    created = not target.exists()
    try:
        result = _pull(args, rootfs)
        if args.bundle:
            prepare_bundle(result, target, None)
    except BaseException:
        if created:
            shutil.rmtree(target, ignore_errors=True)
        raise
    if args.json:
        print_json(
            {
                "image": result.image,
                "manifest": str(result.manifest_digest),
                "rootfs": str(result.rootfs),
                "keysReleased": result.keys_released,
                "layers": [
                    {
                        "index": r.index,
                        "digest": str(r.digest),
                        "diffID": str(r.diff_id),
                        "encrypted": r.encrypted,
                        "fetched": r.fetched,
                        "snapshotReused": r.snapshot_reused,
                    }
                    for r in result.layers
                ],
            }
        )
    else:
        enc = sum(r.encrypted for r in result.layers)
        print(f"pulled {result.image}: {len(result.layers)} layers ({enc} decrypted) into {target}")
    return 0


def run_run(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    bundle = new_bundle_dir()
    try:
        result = _pull(args, bundle / "rootfs")
    except BaseException:
        shutil.rmtree(bundle, ignore_errors=True)
        raise
    sys.stdout.flush()
    if not command and not (result.config.runtime.get("Cmd") or result.config.runtime.get("Entrypoint")):
        shutil.rmtree(bundle, ignore_errors=True)
        raise BadInputError(f"{result.image}: expected a command (image has no Entrypoint/Cmd), seen none")
    return run_pulled(result, bundle, command or None, runtime=args.runtime, keep=args.keep_bundle)
