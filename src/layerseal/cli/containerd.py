"""``layerseal containerd decode`` (containerd's stream processor) and ``layerseal containerd config``.

containerd starts ``decode`` once per encrypted layer: imports stay inside functions.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
import time
from pathlib import Path
from typing import Any

from layerseal.cli._subcommands import command_group

PAYLOAD_FD = 3
LINGER = 1.5
DEFAULT_KEYS_PATH = "/etc/containerd/ocicrypt/keys"
DEFAULT_SPOOL = "/var/tmp"  # noqa: S108 - disk-backed; only ciphertext, in anonymous 0600 files
_PATH_FLAGS = (
    "decryption_keys_path",
    "containerd_root",
    "spool_dir",
    "cacert",
    "sim_platform",
    "cache_dir",
    "config",
)


def _add_decode_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--decryption-keys-path", metavar="DIR", help="directory of JWE private keys")
    p.add_argument(
        "--containerd-root",
        metavar="DIR",
        help="containerd's root, to find a layer's descriptor when no payload comes on fd 3 "
        "(default /var/lib/containerd)",
    )
    p.add_argument(
        "--spool-dir", metavar="DIR", help=f"where the ciphertext is spooled (default {DEFAULT_SPOOL})"
    )
    p.add_argument("--kbs", metavar="URL", help="broker for key packets (default $LAYERSEAL_KBS_URL)")
    p.add_argument("--cacert", help="CA bundle to verify the broker's TLS certificate")
    p.add_argument("--tee", help="TEE kind to attest as (default sim)")
    p.add_argument("--sim-platform", help="sim platform directory (default $LAYERSEAL_SIM_PLATFORM)")
    p.add_argument("--cache-dir", help="attestation token cache shared by the per-layer runs")
    p.add_argument("--config", help="keyprovider JSON settings file (default $LAYERSEAL_KEYPROVIDER_CONFIG)")


def register(sub: Any) -> None:
    actions = command_group(
        sub,
        "containerd",
        "containerd stream processor: decrypt layers as containerd unpacks",
        dest="containerd_action",
    )
    d = actions.add_parser(
        "decode", help="(run by containerd) encrypted layer on stdin, plaintext layer on stdout"
    )
    _add_decode_flags(d)
    d.add_argument("--payload-fd", type=int, default=PAYLOAD_FD, help="-1: ignore any payload")
    d.add_argument(
        "--linger",
        type=float,
        default=LINGER,
        metavar="SECONDS",
        help=f"on failure, hold stdout open this long so containerd reports the error (default {LINGER})",
    )
    d.set_defaults(func=run_decode)
    c = actions.add_parser("config", help="print the [stream_processors] stanza and CRI settings")
    _add_decode_flags(c)
    c.add_argument("--module", action="store_true", help="run as 'python -m layerseal.cli.main'")
    c.add_argument("--no-cri", action="store_true", help="leave out the CRI settings")
    c.set_defaults(func=run_config)


def _read_payload(fd: int) -> bytes:
    if fd < 0:
        return b""
    try:
        st = os.fstat(fd)
    except OSError:
        return b""  # containerd passes fd 3 only when the client set a payload
    if not (stat.S_ISFIFO(st.st_mode) or stat.S_ISREG(st.st_mode)):
        return b""
    from layerseal.containerd.payload import MAX_PAYLOAD

    chunks, size = [], 0
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_PAYLOAD:
            break
    os.close(fd)
    return b"".join(chunks)


def _provider(args: argparse.Namespace, parameters: Any) -> Any:
    from layerseal.keyprovider.params import Settings, parse_rest
    from layerseal.keyprovider.provider import Provider, load_settings
    from layerseal.keyprovider.tokencache import TokenCache, default_directory

    kbs = parse_rest(f"kbs={args.kbs}").kbs if args.kbs else None
    flags = Settings(
        kbs=kbs, cacert=args.cacert, tee=args.tee, sim_platform=args.sim_platform, cache_dir=args.cache_dir
    )
    settings = load_settings(flags, args.config, os.environ)
    # the broker may also come from the payload (ctr-enc --key provider:layerseal:kbs=URL)
    if not settings.kbs and not parameters.get("layerseal"):
        return None
    return Provider(
        "layerseal", settings, cache=TokenCache(settings.cache_dir or default_directory(os.environ))
    )


def _decode(args: argparse.Namespace) -> None:
    from layerseal.containerd import contentstore, keysource
    from layerseal.containerd.decoder import decode
    from layerseal.containerd.payload import parse_payload
    from layerseal.errors import BadInputError

    payload = parse_payload(_read_payload(args.payload_fd))
    media_type = os.environ.get("STREAM_PROCESSOR_MEDIATYPE", "")
    if not media_type:
        raise BadInputError("STREAM_PROCESSOR_MEDIATYPE: expected the layer's media type, seen none")
    keys = keysource.payload_keys(payload.parameters)
    if args.decryption_keys_path:
        keys += keysource.directory_keys(Path(args.decryption_keys_path))
    provider = _provider(args, payload.parameters)
    root = Path(args.containerd_root or contentstore.DEFAULT_ROOT)
    try:
        decode(
            sys.stdin.buffer,
            sys.stdout.buffer,
            media_type,
            descriptor=payload.descriptor,
            find_descriptors=lambda digest, mtype: contentstore.find_layer_descriptors(root, digest, mtype),
            unwrappers=keysource.unwrappers(keys, provider, payload.parameters),
            spool_dir=Path(args.spool_dir or os.environ.get("LAYERSEAL_SPOOL_DIR") or DEFAULT_SPOOL),
        )
    finally:
        if provider is not None:
            provider.close()


def _hold_stdout(seconds: float) -> None:
    """Keep stdout open in a short-lived child after this process exits with an error.

    containerd 1.6 reads a processor's exit status (``Err()``) as soon as stdout ends,
    without waiting for the process to be reaped; stdout ends when we exit, so it
    usually sees no error yet and reports the ``diff_id`` mismatch of the empty output
    instead.  The pull fails either way; holding stdout a moment lets containerd report
    the real cause (this stderr line).  The child holds nothing but stdout.
    """
    if seconds <= 0 or not stat.S_ISFIFO(os.fstat(1).st_mode):
        return
    try:
        pid = os.fork()
    except OSError:
        return
    if pid == 0:  # pragma: no cover - the child only sleeps
        try:
            os.close(0)
            os.closerange(2, 65536)
            time.sleep(seconds)
        finally:
            os._exit(0)


def _fail(message: str, status: int, linger: float) -> int:
    print(f"layerseal containerd decode: {' '.join(message.split())}", file=sys.stderr)
    sys.stderr.flush()
    _hold_stdout(linger)
    return status


def run_decode(args: argparse.Namespace) -> int:
    """containerd shows the processor's stderr as the error: exactly one line, never a traceback."""
    from layerseal.errors import LayersealError

    try:
        _decode(args)
    except LayersealError as exc:
        return _fail(str(exc), exc.exit_code, args.linger)
    except BrokenPipeError:
        return _fail("stdout: expected containerd to read the whole layer, seen the pipe closed", 4, 0)
    except Exception as exc:  # a bug: name its kind only, the message could carry key material
        return _fail(f"internal error {type(exc).__name__}", 1, args.linger)
    return 0


def decode_command(args: argparse.Namespace) -> tuple[str, list[str]]:
    """The path and args containerd should run for these flags."""
    import shutil

    extra: list[str] = []
    for flag in (*_PATH_FLAGS, "kbs", "tee"):
        value = getattr(args, flag, None)
        if value is not None:
            value = str(Path(value).resolve()) if flag in _PATH_FLAGS else value
            extra += [f"--{flag.replace('_', '-')}", value]
    script = shutil.which("layerseal") or str(Path(sys.executable).parent / "layerseal")
    if args.module or not os.access(script, os.X_OK):
        return sys.executable, ["-m", "layerseal.cli.main", "containerd", "decode", *extra]
    return str(Path(script).resolve()), ["containerd", "decode", *extra]


def run_config(args: argparse.Namespace) -> int:
    from layerseal.containerd.stanza import config_text

    path, argv = decode_command(args)
    sys.stdout.write(config_text(path, argv, cri=not args.no_cri))
    return 0
