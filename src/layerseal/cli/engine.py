"""``layerseal pull`` and ``layerseal run``: the enclave container engine.

The engine (image, crypto, HTTP and unpacking code) is imported by the commands when they
run, not with the parser.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from layerseal.cli._constants import (
    DEFAULT_MAX_ENTRIES,
    DEFAULT_MAX_IMAGE_SIZE,
    DEFAULT_MAX_LAYER_SIZE,
    TEE_CHOICES,
)
from layerseal.cli.common import (
    add_registry_flags,
    parse_platform,
    parse_size,
    parse_unwrappers,
    print_json,
    registry_options,
    size_flag,
    tune_allocator_now,
)
from layerseal.errors import BadInputError

if TYPE_CHECKING:
    from layerseal.crypto.keywrap import KeyUnwrapper
    from layerseal.engine.pull import PullResult
    from layerseal.engine.snapshot import SnapshotStore
    from layerseal.image.transport import ImageSource

RUN_FAILURE_STATUS = 125


def _default_store() -> str:
    env = os.environ.get("LAYERSEAL_STORE")
    if env:
        return env
    base = "/var/lib/layerseal" if os.geteuid() == 0 else os.path.expanduser("~/.local/share/layerseal")
    return f"{base}/store"


def default_snapshots() -> Path:
    """Where decrypted layers are cached: enclave-private runtime storage, never beside the store.

    ``/run`` and ``$XDG_RUNTIME_DIR`` are memory-backed on systemd hosts; inside a
    confidential VM that memory is the TEE's own (see docs/cache.md).
    """
    env = os.environ.get("LAYERSEAL_SNAPSHOTS")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/run/layerseal/snapshots")
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.geteuid()}"
    return Path(runtime) / "layerseal" / "snapshots"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="SRC", help="oci:DIR[:TAG] or docker://HOST/REPO[:TAG]")
    p.add_argument("--kbs", metavar="URL", help="key broker to attest to for provider.attestation-agent keys")
    p.add_argument("--kbs-cacert", help="CA bundle for the broker's TLS certificate")
    p.add_argument(
        "--decryption-key",
        action="append",
        default=[],
        metavar="PRIVKEY[:PASSWORD-SOURCE]",
        help="for jwe: and pkcs7: layers (KEY:PASS, KEY:file=PATH, KEY:env=VAR... as for copy)",
    )
    p.add_argument("--store", default=None, help="shared encrypted blob store (default: $LAYERSEAL_STORE)")
    p.add_argument(
        "--snapshots",
        metavar="DIR",
        help="decrypted-layer cache in enclave-private storage (default: $LAYERSEAL_SNAPSHOTS, "
        "else /run/layerseal/snapshots as root, $XDG_RUNTIME_DIR/layerseal/snapshots otherwise)",
    )
    p.add_argument("--tee", choices=TEE_CHOICES, help="attester (default: auto: detect, else sim)")
    p.add_argument(
        "--sim-platform", metavar="DIR", help="sim TEE platform (default: $LAYERSEAL_SIM_PLATFORM)"
    )
    p.add_argument("--platform", metavar="OS/ARCH[/VARIANT]")
    p.add_argument(
        "--max-layer-size", type=size_flag("--max-layer-size"), default=DEFAULT_MAX_LAYER_SIZE,
        metavar="SIZE",
        help="most uncompressed bytes one layer may hold (default: 32G)",
    )  # fmt: skip
    p.add_argument(
        "--max-image-size", type=size_flag("--max-image-size"), default=DEFAULT_MAX_IMAGE_SIZE,
        metavar="SIZE",
        help="most uncompressed bytes of all layers unpacked (default: 64G)",
    )  # fmt: skip
    p.add_argument(
        "--max-entries", type=int, default=DEFAULT_MAX_ENTRIES, metavar="N",
        help="most tar entries in the image (default: 5000000)",
    )  # fmt: skip
    add_registry_flags(p, "src")


def register(sub: Any) -> None:
    p = sub.add_parser("pull", help="pull, decrypt, verify and unpack an image inside the enclave")
    _common(p)
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument("--rootfs", help="unpack the image here (a new directory)")
    out.add_argument("--bundle", help="write an OCI runtime bundle here (rootfs/ + config.json)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_pull, tune_allocator_first=False)  # tuned by _opened_source()

    r = sub.add_parser("run", help="pull an image and run it with runc (or crun, or bwrap)")
    _common(r)
    r.add_argument("--runtime", choices=["runc", "crun", "bwrap"], help="default: the first one installed")
    r.add_argument("--keep-bundle", action="store_true", help="leave the bundle on disk (debugging)")
    r.add_argument(
        "--pids-limit", type=int, metavar="N", help="most processes the container may have (default 2048)"
    )
    r.add_argument("--memory", metavar="SIZE", help="memory limit, e.g. 512M or 2G (default: none)")
    r.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS... to replace the image's Cmd")
    # layerseal's own failures: podman's 125, so they never pass for the container's status
    r.set_defaults(func=run_run, failure_status=RUN_FAILURE_STATUS, tune_allocator_first=False)


def _snapshots(args: argparse.Namespace) -> SnapshotStore:
    return open_snapshots(Path(args.snapshots) if args.snapshots else default_snapshots())


def open_snapshots(path: Path) -> SnapshotStore:
    """The cache at *path*, or a one-line error saying why it cannot be used."""
    from layerseal.engine.snapshot import SnapshotStore

    try:
        return SnapshotStore(path)
    except OSError as e:
        raise BadInputError(
            f"decrypted-layer cache {path}: expected a directory this user can create and write, "
            f"seen {e.strerror}; choose --snapshots DIR in enclave-private storage"
        ) from e


def _opened_source(args: argparse.Namespace) -> tuple[ImageSource, tuple[KeyUnwrapper, ...]]:
    """The image's source, opened before the blob store and the decrypted-layer cache: a
    missing layout or a bad reference fails without loading them (issue 20); and the
    ``--decryption-key`` unwrappers, read before it as always."""
    from layerseal.builder.endpoints import open_source

    unwrappers = parse_unwrappers(args.decryption_key)
    src = open_source(args.source, registry_options(args, "src", args.source))
    tune_allocator_now()
    return src, unwrappers


def _pull(
    args: argparse.Namespace,
    src: ImageSource,
    unwrappers: tuple[KeyUnwrapper, ...],
    rootfs: Path,
    snapshots: SnapshotStore | None = None,
) -> PullResult:
    """Pull from *src* (the caller closes it) into *rootfs*."""
    from layerseal.engine.limits import UnpackLimits
    from layerseal.engine.pull import pull_image
    from layerseal.layout.blobstore import SharedBlobStore

    store_dir = Path(args.store or _default_store())
    store = SharedBlobStore(store_dir)
    snapshots = snapshots or _snapshots(args)
    broker = None
    if args.kbs:
        from layerseal.engine.enclave import enclave_client, make_attester
        from layerseal.engine.keys import BrokerUnwrapper

        broker = BrokerUnwrapper(
            enclave_client(args.kbs, make_attester(args.tee, args.sim_platform), args.kbs_cacert)
        )
    try:
        return pull_image(
            src,
            store,
            snapshots,
            rootfs,
            unwrappers=unwrappers,
            broker=broker,
            platform=parse_platform(args.platform),
            limits=UnpackLimits(args.max_layer_size, args.max_image_size, args.max_entries),
        )
    finally:
        if broker is not None:
            broker.client.close()


def run_pull(args: argparse.Namespace) -> int:
    from layerseal.engine.run import prepare_bundle, prepare_output

    target = Path(args.bundle or args.rootfs)
    rootfs, created = prepare_output(target, bundle=bool(args.bundle))
    try:
        src, unwrappers = _opened_source(args)
        with contextlib.closing(src):
            result = _pull(args, src, unwrappers, rootfs)
        if args.bundle:
            prepare_bundle(result, target, None)
    except BaseException:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
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
    src, unwrappers = _opened_source(args)
    with contextlib.ExitStack() as running:
        with contextlib.closing(src):  # closed once pulled, before the container runs
            snapshots = _snapshots(args)
            # the run's rootfs is plaintext too: it lives in the cache's private storage (where it
            # can also share the snapshots' extents), marked live while this process runs it
            bundle = running.enter_context(snapshots.bundle_dir())
            try:
                result = _pull(args, src, unwrappers, bundle / "rootfs", snapshots)
            except BaseException:
                shutil.rmtree(bundle, ignore_errors=True)
                raise
        sys.stdout.flush()
        if not command and not (result.config.runtime.get("Cmd") or result.config.runtime.get("Entrypoint")):
            shutil.rmtree(bundle, ignore_errors=True)
            raise BadInputError(
                f"{result.image}: expected a command (image has no Entrypoint/Cmd), seen none"
            )
        from layerseal.engine.run import run_pulled

        return run_pulled(
            result,
            bundle,
            command or None,
            runtime=args.runtime,
            keep=args.keep_bundle,
            pids_limit=args.pids_limit,
            memory_limit=parse_size(args.memory, "--memory") if args.memory else None,
        )
