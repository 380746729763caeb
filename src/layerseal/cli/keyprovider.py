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

#: layerseal.crypto.keywrap.PROVIDER_NAME (not imported: ocicrypt starts this once per layer)
DEFAULT_NAME = "attestation-agent"
_PATH_FLAGS = ("token_file", "cacert", "sim_platform", "cache_dir", "config")
# the TLS of 'serve --grpc' and of the 'config --grpc' entry: (flag, metavar, help)
_TLS_FLAGS = (
    ("--tls-cert", "PEM", "serve --grpc: TLS certificate (chain) of the server"),
    ("--tls-key", "PEM", "serve --grpc: TLS private key of the server"),
    ("--tls-client-ca", "PEM", "serve --grpc: require client certificates issued by this CA"),
    ("--grpc-root-ca", "PEM", "config --grpc: CA that ocicrypt verifies the server with"),
    ("--grpc-client-cert", "PEM", "config --grpc: ocicrypt's client certificate"),
    ("--grpc-client-key", "PEM", "config --grpc: ocicrypt's client key"),
    ("--grpc-server-name", "NAME", "config --grpc: name to verify in the certificate"),
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "action",
        nargs="?",
        choices=["serve", "config"],
        help="none: answer one request on stdin (cmd protocol); serve: gRPC server; "
        "config: print the ocicrypt config",
    )
    p.add_argument(
        "--name", default=DEFAULT_NAME, help=f"provider name in the ocicrypt config (default {DEFAULT_NAME})"
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
    for flag, metavar, help_text in _TLS_FLAGS:
        p.add_argument(flag, metavar=metavar, help=help_text)


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
    from layerseal.keyprovider.protocol import parse_request

    # a request that is not one fails before the settings, token cache and broker client load
    request = parse_request(sys.stdin.buffer.read())
    provider = _provider(args)
    try:
        reply = provider.answer(request)
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
    from layerseal.keyprovider.grpcserver import ServerTls, build_server

    if bool(args.tls_cert) != bool(args.tls_key) or (args.tls_client_ca and not args.tls_cert):
        raise BadInputError(
            "keyprovider serve: expected --tls-cert and --tls-key together (and --tls-client-ca only with "
            "them), seen only some"
        )
    tls = ServerTls(args.tls_cert, args.tls_key, args.tls_client_ca) if args.tls_cert else None
    provider = _provider(args)
    try:
        server, port = build_server(provider, args.grpc, tls=tls)
    except BaseException:
        provider.close()
        raise
    host = args.grpc.rpartition(":")[0].strip("[]")
    mode = "mutual TLS" if args.tls_client_ca else ("TLS" if tls else "plaintext")
    print(
        f"layerseal keyprovider: serving gRPC keyprovider.KeyProviderService ({mode}) on {host}:{port}",
        file=sys.stderr,
    )
    if host not in ("127.0.0.1", "localhost", "::1") and not args.tls_client_ca:
        reason = (
            "without TLS: layer keys cross it in the clear" if tls is None else "without client certificates"
        )
        print(
            f"layerseal keyprovider: warning: serving beyond loopback {reason}, and any client that reaches "
            "it can have layer keys unwrapped; use --tls-cert/--tls-key/--tls-client-ca or bind to loopback",
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
        entry: dict[str, Any] = {"grpc": args.grpc}
        tls = {
            key: str(Path(value).resolve()) if key.endswith("-file") else value
            for key, value in (
                ("root-ca-file", args.grpc_root_ca),
                ("cert-file", args.grpc_client_cert),
                ("key-file", args.grpc_client_key),
                ("server-name", args.grpc_server_name),
            )
            if value
        }
        if tls:  # ocicrypt >= 1.3 dials TLS when the entry has "grpc-tls"
            entry["grpc-tls"] = tls
        return {"key-providers": {args.name: entry}}
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
    # key-sized requests: the allocator tuning for streaming buffers would only cost start-up
    parser.set_defaults(func=run, tune_allocator_first=False)


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
