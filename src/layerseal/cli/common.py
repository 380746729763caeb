"""Helpers shared by CLI commands: reading key files, registry flags, progress bars.

Every command's parser is built from here, so this module imports nothing heavy at its top
(no cryptography, HTTP client, rich or image code): a ``--help`` or a usage error must not
pay for them.  The functions that need them import them when called.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from layerseal.errors import BadInputError, LayersealError

if TYPE_CHECKING:
    from cryptography.x509 import Certificate
    from rich.progress import Progress, TaskID

    from layerseal.crypto.keys import PrivateKey
    from layerseal.crypto.keyspec import KeySpec
    from layerseal.crypto.keywrap import KeyUnwrapper, KeyWrapper
    from layerseal.image.descriptor import Platform
    from layerseal.image.transport import ImageDestination, ImageSource
    from layerseal.registry.retry import Deadline
    from layerseal.registry.transport import RegistryOptions


def read_key_file(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise BadInputError(f"{what} {path}: expected a readable file, seen {exc.strerror}") from exc


def add_registry_flags(p: argparse.ArgumentParser, *sides: str) -> None:
    for side in sides:
        p.add_argument(
            f"--{side}-tls-verify",
            default="true",
            choices=["true", "false"],
            help=f"require HTTPS and verify certificates for the {side} registry (default true)",
        )
        p.add_argument(f"--{side}-creds", metavar="USER:PASS", help=f"credentials for the {side} registry")
        p.add_argument(f"--{side}-cert-dir", metavar="DIR", help="CA certificates (*.crt) to trust")
        if side == "dest":
            p.add_argument("--dest-chunk-size", metavar="SIZE", help=_CHUNK_SIZE_HELP)
    p.add_argument("--authfile", help="auth file (Docker config.json or containers auth.json format)")
    p.add_argument(
        "--retry-times",
        type=int,
        default=DEFAULT_RETRY_TIMES,
        metavar="N",
        help=f"times a failed registry request is repeated (default {DEFAULT_RETRY_TIMES}); errors no "
        "repetition can fix (name not resolved, TLS) fail at once",
    )
    p.add_argument(
        "--timeout",
        default=DEFAULT_TIMEOUT,
        metavar="DURATION",
        help=f"deadline for all registry requests of this command, from its start, e.g. 90s, 15m, 2h "
        f"(default {DEFAULT_TIMEOUT}); no retry or Retry-After wait goes past it",
    )


DEFAULT_RETRY_TIMES = 4
DEFAULT_TIMEOUT = "1h"
_CHUNK_SIZE_HELP = (
    "upload blobs in requests of at most SIZE bytes (K, M, G suffixes: powers of 1024), resuming a "
    "broken one where the registry stopped; for registries or proxies that cap request bodies "
    "(default: one streamed request per blob)"
)


def _deadline(args: argparse.Namespace) -> Deadline:
    """The command's one deadline, shared by both sides, counted from its first use."""
    from layerseal.registry.retry import Deadline, parse_duration

    deadline = getattr(args, "_deadline", None)
    if deadline is None:
        deadline = Deadline(parse_duration(str(getattr(args, "timeout", DEFAULT_TIMEOUT)), "--timeout"))
        args._deadline = deadline
    return deadline


def registry_options(args: argparse.Namespace, side: str, ref: str) -> RegistryOptions | None:
    """Registry flags for one side, or None when *ref* is not a registry reference."""
    if not ref.startswith("docker://"):
        return None
    from layerseal.registry.retry import RetryPolicy

    retries = getattr(args, "retry_times", DEFAULT_RETRY_TIMES)
    if not isinstance(retries, int) or not 0 <= retries <= 100:
        raise BadInputError(f"--retry-times {retries}: expected a number from 0 to 100")
    ca = None
    cert_dir = getattr(args, f"{side}_cert_dir", None)
    if cert_dir:
        crts = sorted(Path(cert_dir).glob("*.crt"))
        if not crts:
            raise BadInputError(f"--{side}-cert-dir {cert_dir}: expected *.crt files, seen none")
        ca = str(crts[0])
    from layerseal.registry.transport import RegistryOptions

    chunk = getattr(args, f"{side}_chunk_size", None)
    return RegistryOptions(
        tls_verify=getattr(args, f"{side}_tls_verify", "true") == "true",
        ca_file=ca,
        creds=getattr(args, f"{side}_creds", None),
        authfile=getattr(args, "authfile", None),
        retry=RetryPolicy(max_attempts=retries + 1),
        deadline=_deadline(args),
        side=side,
        upload_chunk_limit=parse_size(chunk, f"--{side}-chunk-size", most=MAX_CHUNK)
        if chunk is not None
        else None,
    )


def tune_allocator_now() -> None:
    """Tune glibc's allocator for streaming (``cli._allocator``) in a command registered with
    ``tune_allocator_first=False``, once its image opened: one that fails on a missing image
    or a bad reference does not load ctypes for it."""
    from layerseal.cli._allocator import tune_allocator

    tune_allocator()


@contextlib.contextmanager
def open_endpoints(args: argparse.Namespace) -> Iterator[tuple[ImageSource, ImageDestination]]:
    """``args.source`` and ``args.destination`` opened, both closed afterwards; every
    registry flag of both sides is checked before either is opened."""
    from layerseal.builder.endpoints import open_destination, open_source

    src_options = registry_options(args, "src", args.source)
    dst_options = registry_options(args, "dest", args.destination)
    src = open_source(args.source, src_options)
    try:
        dst = open_destination(args.destination, dst_options)
        try:
            tune_allocator_now()
            yield src, dst
        finally:
            dst.close()
    finally:
        src.close()


@contextlib.contextmanager
def transfer(
    args: argparse.Namespace, wrappers: tuple[KeyWrapper, ...] = ()
) -> Iterator[tuple[ImageSource, ImageDestination, RichProgress]]:
    """``args.source`` and ``args.destination`` opened (as :func:`open_endpoints`) with progress
    bars unless ``--quiet`` or ``--json``; when the work inside fails, the keys the broker created
    for *wrappers* are marked unused."""
    with open_endpoints(args) as (src, dst), RichProgress(not args.quiet and not args.json) as progress:
        try:
            yield src, dst, progress
        except BaseException:
            abandon_broker_keys(wrappers)
            raise


_SIZE_SUFFIXES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


# an upload holds one chunk in memory: more than this is a typo, not a plan
MAX_CHUNK = 1 << 30


def parse_size(text: str, what: str, *, most: int | None = None) -> int:
    """``1048576``, ``512K``, ``16M``, ``1G`` (also ``16MiB``) -> bytes; at least 1, at most *most*."""
    body = text.strip().upper().removesuffix("IB").removesuffix("B")
    number, suffix = (body[:-1], body[-1]) if body[-1:] in ("K", "M", "G") else (body, "")
    if not number.isdigit() or int(number) < 1:
        raise BadInputError(f"{what} {text!r}: expected a positive size such as 1048576, 512K or 16M")
    size = int(number) * _SIZE_SUFFIXES[suffix]
    if most is not None and size > most:
        raise BadInputError(f"{what} {text!r}: expected at most {most} bytes, seen {size}")
    return size


def size_flag(flag: str) -> Callable[[str], int]:
    """An argparse ``type`` for a size flag: a bad value is a usage error (exit 2), not a traceback."""

    def parse(text: str) -> int:
        try:
            return parse_size(text, flag)
        except BadInputError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc

    return parse


class RichProgress:
    """Per-layer transfer bars on a terminal; silent otherwise (rich is then never imported)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self._progress: Progress | None = None
        if self.enabled:
            from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                transient=True,
            )
        self._tasks: dict[str, TaskID] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> RichProgress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def start(self, key: str, description: str, total: int) -> None:
        if self._progress is None:
            return
        with self._lock:
            self._tasks[key] = self._progress.add_task(description, total=total)

    def advance(self, key: str, amount: int) -> None:
        task = self._tasks.get(key)
        if task is not None and self._progress is not None:
            self._progress.advance(task, amount)

    def finish(self, key: str) -> None:
        with self._lock:
            task = self._tasks.pop(key, None)
        if task is not None and self._progress is not None:
            self._progress.remove_task(task)


def add_encryption_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--encryption-key",
        action="append",
        default=[],
        metavar="jwe:PUBKEY|pkcs7:CERT|kbs:URL",
        help="jwe: encrypt for this public key (PEM, DER, JWK or X.509; repeat for several recipients); "
        "pkcs7: for this X.509 certificate (RSA), as ocicrypt's pkcs7; "
        "kbs: have the key broker at URL create a key for every layer",
    )
    p.add_argument("--kbs-token", help="broker API token for kbs: (default: $LAYERSEAL_KBS_TOKEN)")
    p.add_argument(
        "--kbs-repository", help="image repository the broker files keys under (default: from DST)"
    )
    p.add_argument("--kbs-cacert", help="CA bundle to verify the broker's TLS certificate")


def repository_of(ref: str) -> str:
    """The repository part of an image reference, as the broker files keys under it."""
    if ref.startswith("docker://"):
        from layerseal.registry.reference import parse_reference

        return parse_reference(ref).repository
    body = ref.removeprefix("oci:").partition(":")[0]
    return Path(body).resolve().name or "image"


def parse_wrappers(args: argparse.Namespace, destination: str) -> tuple[KeyWrapper, ...]:
    """Key wrappers from ``--encryption-key``: ``jwe:`` keys share one JWE, ``kbs:`` asks the broker."""
    jwe_keys = []
    certs = []
    wrappers: list[KeyWrapper] = []
    for spec in args.encryption_key:
        scheme, sep, rest = spec.partition(":")
        if not sep or not rest:
            raise BadInputError(f"--encryption-key {spec!r}: expected jwe:PUBKEY, pkcs7:CERT or kbs:URL")
        if scheme == "jwe":
            from layerseal.crypto.keys import load_public_key

            jwe_keys.append(load_public_key(read_key_file(rest, "encryption key"), f"encryption key {rest}"))
        elif scheme == "pkcs7":
            from layerseal.crypto.pkcs7 import certificate_recipient

            cert = load_certificate(rest)
            certificate_recipient(cert, f"--encryption-key pkcs7:{rest}")
            certs.append(cert)
        elif scheme == "kbs":
            token = args.kbs_token or os.environ.get("LAYERSEAL_KBS_TOKEN")
            if not token:
                raise BadInputError(
                    f"--encryption-key {spec}: expected a broker token "
                    "(--kbs-token or LAYERSEAL_KBS_TOKEN), seen none"
                )
            from layerseal.builder.kbswrap import KbsWrapper
            from layerseal.kbs.client import PublisherClient

            client = PublisherClient(rest, token, verify=args.kbs_cacert or True)
            wrappers.append(KbsWrapper(client, args.kbs_repository or repository_of(destination)))
        else:
            raise BadInputError(
                f"--encryption-key {spec!r}: expected scheme 'jwe', 'pkcs7' or 'kbs', seen {scheme!r}"
            )
    if certs:
        from layerseal.crypto.keywrap import Pkcs7Wrapper

        wrappers.insert(0, Pkcs7Wrapper(certs))
    if jwe_keys:
        from layerseal.crypto.keywrap import JweWrapper

        wrappers.insert(0, JweWrapper(jwe_keys))
    return tuple(wrappers)


def abandon_broker_keys(wrappers: tuple[KeyWrapper, ...]) -> None:
    """After a failed publish, mark the keys the broker created for it as unused (best effort)."""
    if not wrappers:
        return
    from layerseal.builder.kbswrap import KbsWrapper

    for w in wrappers:
        if isinstance(w, KbsWrapper) and w.created:
            try:
                marked = w.mark_unused()
                print(
                    f"layerseal: marked {len(marked)} unused broker key(s): {', '.join(marked)}",
                    file=sys.stderr,
                )
            except LayersealError as exc:
                print(f"layerseal: could not mark broker keys unused: {exc}", file=sys.stderr)


def _password_candidates(spec: KeySpec) -> list[bytes | None]:
    """The passwords to try for *spec*'s key, read from its source (never printed)."""
    from layerseal.crypto.keyspec import password_bytes

    source = spec.password
    if source is None:
        return [None]
    if source.kind == "pass":
        return [source.value.encode()]
    if source.kind == "env":
        value = os.environ.get(source.value)
        if value is None:
            raise BadInputError(
                f"decryption key {spec.path}: expected ${source.value} to hold its password, seen it unset"
            )
        return [value.encode()]
    if source.kind == "file":
        raw = read_key_file(source.value, f"password file of {spec.path}:")
    else:
        try:
            raw = os.read(int(source.value), 1 << 16)
        except OSError as exc:
            raise BadInputError(
                f"decryption key {spec.path}: expected a readable file descriptor {source.value}, "
                f"seen {exc.strerror}"
            ) from exc
    return list(password_bytes(raw, source.kind))


def load_decryption_key(spec_text: str) -> PrivateKey | None:
    """The private key of a ``--decryption-key`` value (see ``crypto.keyspec``); None for a
    certificate, which skopeo users pass beside a pkcs7 key and layerseal does not need."""
    from layerseal.crypto.keyspec import parse_key_spec

    spec = parse_key_spec(spec_text, os.path.isfile)
    data = read_key_file(spec.path, "decryption key")
    if b"-----BEGIN CERTIFICATE-----" in data:
        return None
    what = f"decryption key {spec.path}"
    if spec.password is not None:
        what += f" (with {spec.password.describe()})"
    candidates = _password_candidates(spec)
    from layerseal.crypto.keys import load_private_key

    for i, password in enumerate(candidates):
        try:
            return load_private_key(data, what, password)
        except BadInputError:
            if i == len(candidates) - 1:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def parse_unwrappers(specs: list[str]) -> tuple[KeyUnwrapper, ...]:
    """Unwrappers for ``--decryption-key`` values: the keys open ``jwe`` and ``pkcs7`` blobs."""
    keys = [k for k in (load_decryption_key(s) for s in specs) if k is not None]
    if not keys:
        return ()
    from layerseal.crypto.keywrap import JweUnwrapper, Pkcs7Unwrapper

    return (JweUnwrapper(keys), Pkcs7Unwrapper(keys))


def load_certificate(path: str) -> Certificate:
    from cryptography import x509

    data = read_key_file(path, "pkcs7 recipient certificate")
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise BadInputError(
            f"--encryption-key pkcs7:{path}: expected an X.509 certificate (PEM or DER), seen other data"
        ) from exc


def parse_platform(text: str | None) -> Platform | None:
    """``--platform OS/ARCH[/VARIANT]``, or None when not given (the image model loads only then)."""
    if not text:
        return None
    from layerseal.image.descriptor import Platform

    return Platform.parse(text)


def print_json(data: object) -> None:
    print(json.dumps(data, indent=2))
