"""``layerseal keyprovider``: the ocicrypt keyprovider (cmd protocol, ``serve --grpc``, ``config``).

ocicrypt starts this once per layer, so imports stay inside the functions.
``python -m layerseal.keyprovider`` (``config --module``) runs the same without the
``layerseal`` launcher.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

DEFAULT_NAME = "layerseal"
_PATH_FLAGS = ("token_file", "cacert", "sim_platform", "cache_dir", "config")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "action",
        nargs="?",
        choices=["serve", "config"],
        help="none: answer one request on stdin (cmd protocol); serve: gRPC server; "
        "config: print the ocicrypt config",
    )
    p.add_argument(
        "--name", default=DEFAULT_NAME, help="provider name in the ocicrypt config (default layerseal)"
    )
    p.add_argument("--grpc", metavar="HOST:PORT", help="serve: listen address; config: print the grpc form")
    p.add_argument("--kbs", metavar="URL", help="broker URL (default $LAYERSEAL_KBS_URL)")
    p.add_argument("--repo", help="keywrap: image repository the broker files keys under")
    p.add_argument("--tenant", help="keywrap: tenant (admin tokens only)")
    p.add_argument(
        "--token-file", help="keywrap: file with the broker API token (default $LAYERSEAL_KBS_TOKEN)"
    )
    p.add_argument("--cacert", help="CA bundle to verify the broker's TLS certificate")
    p.add_argument(
        "--tee", help="keyunwrap: auto, snp, tdx, az-snp-vtpm, az-tdx-vtpm, sgx or sim (default sim)"
    )
    p.add_argument(
        "--sim-platform", help="keyunwrap: sim platform directory (default $LAYERSEAL_SIM_PLATFORM)"
    )
    p.add_argument(
        "--cache-dir", help="keyunwrap: attestation token cache (default $XDG_RUNTIME_DIR/layerseal)"
    )
    p.add_argument("--no-cache", action="store_true", help="keyunwrap: attest for every request")
    p.add_argument("--config", help="JSON settings file (default $LAYERSEAL_KEYPROVIDER_CONFIG)")
    p.add_argument(
        "--module", action="store_true", help="config: run as 'python -m layerseal.keyprovider' (faster)"
    )


def _provider(args: argparse.Namespace) -> Any:
    from layerseal.keyprovider.params import Settings
    from layerseal.keyprovider.provider import Provider, load_settings
    from layerseal.keyprovider.tokencache import TokenCache, default_directory

    flags = Settings(
        kbs=args.kbs,
        repo=args.repo,
        tenant=args.tenant,
        token_file=args.token_file,
        cacert=args.cacert,
        tee=args.tee,
        sim_platform=args.sim_platform,
        cache_dir=args.cache_dir,
    )
    if args.kbs is not None:  # same checks as kbs= in REST
        import dataclasses

        from layerseal.keyprovider.params import parse_rest

        flags = dataclasses.replace(flags, kbs=parse_rest(f"kbs={args.kbs}").kbs)
    settings = load_settings(flags, args.config, os.environ)
    cache = None if args.no_cache else TokenCache(settings.cache_dir or default_directory(os.environ))
    return Provider(args.name, settings, cache=cache)


def _cmd(args: argparse.Namespace) -> int:
    request = sys.stdin.buffer.read()
    provider = _provider(args)
    try:
        reply = provider.handle(request)
    finally:
        provider.close()
    sys.stdout.buffer.write(reply)
    sys.stdout.buffer.flush()
    return 0


def _serve(args: argparse.Namespace) -> int:
    import signal
    import threading

    from layerseal.errors import BadInputError

    if not args.grpc:
        raise BadInputError("keyprovider serve: expected --grpc HOST:PORT, seen none")
    from layerseal.keyprovider.grpcserver import build_server

    provider = _provider(args)
    server, port = build_server(provider, args.grpc)
    host = args.grpc.rpartition(":")[0].strip("[]")
    print(
        f"layerseal keyprovider: serving gRPC keyprovider.KeyProviderService on {host}:{port}",
        file=sys.stderr,
    )
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(
            "layerseal keyprovider: warning: ocicrypt talks to this server without TLS "
            "and layer keys cross it; bind it to loopback",
            file=sys.stderr,
        )
    sys.stderr.flush()
    stopped = threading.Event()

    def stop(_signum: int, _frame: object) -> None:
        stopped.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        stopped.wait()
    finally:
        server.stop(grace=2).wait()
        provider.close()
    return 0


def ocicrypt_config(args: argparse.Namespace) -> dict[str, Any]:
    """The ``OCICRYPT_KEYPROVIDER_CONFIG`` document for these arguments."""
    import shutil
    from pathlib import Path

    if args.grpc:
        return {"key-providers": {args.name: {"grpc": args.grpc}}}
    extra: list[str] = []
    if args.name != DEFAULT_NAME:
        extra += ["--name", args.name]
    for flag in (
        "kbs",
        "repo",
        "tenant",
        "token_file",
        "cacert",
        "tee",
        "sim_platform",
        "cache_dir",
        "config",
    ):
        value = getattr(args, flag)
        if value is not None:
            # ocicrypt runs the tool from the caller's directory: make paths absolute
            extra += [
                f"--{flag.replace('_', '-')}",
                str(Path(value).resolve()) if flag in _PATH_FLAGS else value,
            ]
    if args.no_cache:
        extra.append("--no-cache")
    script = shutil.which("layerseal") or str(Path(sys.executable).parent / "layerseal")
    if args.module or not os.access(script, os.X_OK):
        cmd = {"path": sys.executable, "args": ["-m", "layerseal.keyprovider", *extra]}
    else:
        cmd = {"path": str(Path(script).resolve()), "args": ["keyprovider", *extra]}
    return {"key-providers": {args.name: {"cmd": cmd}}}


def _config(args: argparse.Namespace) -> int:
    import json

    print(json.dumps(ocicrypt_config(args), indent=2))
    return 0


def run(args: argparse.Namespace) -> int:
    if args.action == "serve":
        return _serve(args)
    if args.action == "config":
        return _config(args)
    return _cmd(args)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "keyprovider",
        help="ocicrypt keyprovider: skopeo/podman/buildah/CRI-O/containerd wrap and unwrap "
        "layer keys via the broker",
    )
    add_arguments(parser)
    parser.set_defaults(func=run)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point without the rest of the CLI (``python -m layerseal.keyprovider``)."""
    from layerseal.errors import LayersealError

    parser = argparse.ArgumentParser(prog="layerseal keyprovider")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except LayersealError as exc:
        print(f"layerseal: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
