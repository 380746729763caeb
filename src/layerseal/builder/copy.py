"""Copy an image between sources and destinations, encrypting or decrypting layers on the way.

Every layer is streamed once: read (digest-verified by the source), transformed
(ocicrypt cipher), written (digest-verified and committed by the destination only when
the stream ended cleanly).  Layers move in parallel on a small thread pool; the manifest
is written last, so a failed copy never publishes a half-made image.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Protocol, cast

from layerseal.crypto.keywrap import (
    KeyUnwrapper,
    KeyWrapper,
    LayerContext,
    open_private_options,
    public_options,
)
from layerseal.crypto.layercipher import (
    LayerDecryptor,
    LayerEncryptor,
    decrypt_stream,
    encrypt_stream,
    note_recorded_digest,
)
from layerseal.errors import BadInputError, LayersealError, MisuseError, TransportError
from layerseal.image import mediatypes as mt
from layerseal.image.descriptor import Descriptor, Platform
from layerseal.image.encryption import (
    ANNOTATION_PUBOPTS,
    PrivateOptions,
    keys_annotation,
    strip_encryption,
)
from layerseal.image.manifest import Index, Manifest, parse_any
from layerseal.image.transport import ImageDestination, ImageSource, resolve_manifest
from layerseal.streams import threaded

log = logging.getLogger(__name__)


class Progress(Protocol):
    """Receives transfer progress; the CLI draws bars from it."""

    def start(self, key: str, description: str, total: int) -> None: ...

    def advance(self, key: str, amount: int) -> None: ...

    def finish(self, key: str) -> None: ...


@dataclass(frozen=True)
class CopyOptions:
    wrappers: tuple[KeyWrapper, ...] = ()
    #: layer positions to encrypt (negative counts from the end); None = every layer
    encrypt_layers: tuple[int, ...] | None = None
    unwrappers: tuple[KeyUnwrapper, ...] = ()
    platform: Platform | None = None
    #: layers moved at once: one per core (measured: more threads only add GIL hand-offs)
    workers: int = field(default_factory=lambda: max(2, min(8, os.cpu_count() or 2)))
    #: times one layer is transferred from the start when the network fails beyond the
    #: registry client's own retries (an upload broken off midway cannot be resumed)
    layer_attempts: int = 3

    def __post_init__(self) -> None:
        for name in ("workers", "layer_attempts"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise MisuseError(f"CopyOptions.{name}: expected a positive integer, seen {value!r}")


@dataclass(frozen=True)
class LayerReport:
    index: int
    action: str  # copied | reused | mounted | encrypted | decrypted | reencrypted
    source: Descriptor
    result: Descriptor
    seconds: float


@dataclass(frozen=True)
class CopyReport:
    source: str
    destination: str
    manifest: Descriptor
    config: Descriptor
    layers: tuple[LayerReport, ...]

    @property
    def bytes_moved(self) -> int:
        return sum(r.source.size for r in self.layers if r.action not in ("reused", "mounted"))


def reuse_blob(src: ImageSource, dst: ImageDestination, desc: Descriptor) -> str | None:
    """``"reused"`` when *dst* holds the blob, ``"mounted"`` when it could mount it from *src*
    (a repository of the same registry), None when it must be copied."""
    if dst.has_blob(desc):
        return "reused"
    mount = getattr(dst, "mount_from", None)  # registries only
    if mount is not None and mount(src, desc):
        return "mounted"
    return None


class _Aborted(Exception):
    """Raised inside a layer stream when another layer failed first."""


class _TransferFailed(Exception):
    """The network failed while a blob moved (reading the source or writing the destination):
    the one failure worth moving the layer again for.  A broker that fails while wrapping
    the layer key is not retried here: uploading the layer again would not help it."""

    def __init__(self, error: TransportError) -> None:
        super().__init__(str(error))
        self.error = error


@contextlib.contextmanager
def _transfer() -> Iterator[None]:
    """A blob moving to the destination: a network failure here is a :class:`_TransferFailed`."""
    try:
        yield
    except TransportError as exc:
        raise _TransferFailed(exc) from exc


def put_blob_retrying(
    src: ImageSource,
    dst: ImageDestination,
    blob: Descriptor,
    attempts: int,
    open_chunks: Callable[[], Iterable[bytes]] | None = None,
) -> Descriptor:
    """Upload *blob* (read from *src*, or from *open_chunks*) under the same policy as a layer:
    after a network failure beyond the registry client's own retries, the whole upload is
    repeated from the start, up to *attempts* times (nothing is committed before the end)."""
    for attempt in range(1, attempts + 1):
        chunks = open_chunks() if open_chunks is not None else src.iter_blob(blob)
        try:
            # bytes from *open_chunks* are hashed on the way; the source verifies its own
            return dst.put_blob(chunks, blob.media_type, blob, verified=open_chunks is None)
        except TransportError as exc:
            if attempt == attempts:
                raise
            log.warning(
                "blob %s: %s; transferring it again (attempt %d of %d)",
                blob.digest,
                exc,
                attempt + 1,
                attempts,
            )
    raise AssertionError("unreachable")  # pragma: no cover


def select_layers(spec: Sequence[int] | None, count: int) -> frozenset[int]:
    """Positions to encrypt, from skopeo-style ``--encrypt-layer`` values."""
    if spec is None:
        return frozenset(range(count))
    chosen: set[int] = set()
    for n in spec:
        if not -count <= n < count:
            raise BadInputError(
                f"--encrypt-layer {n}: expected a position from {-count} to {count - 1} "
                f"for an image with {count} layers"
            )
        chosen.add(n % count)
    return frozenset(chosen)


def _metered(
    chunks: Iterable[bytes], progress: Progress | None, key: str, abort: threading.Event
) -> Iterator[bytes]:
    for chunk in chunks:
        if abort.is_set():
            raise _Aborted()
        if progress is not None:
            progress.advance(key, len(chunk))
        yield chunk


class _LayerJob:
    def __init__(
        self,
        src: ImageSource,
        dst: ImageDestination,
        options: CopyOptions,
        progress: Progress | None,
        abort: threading.Event,
    ) -> None:
        self.src, self.dst, self.options, self.progress, self.abort = src, dst, options, progress, abort

    def run_retrying(self, index: int, desc: Descriptor, encrypt: bool, convert_to_oci: bool) -> LayerReport:
        """:meth:`run`, repeated from the start after a network failure (nothing was committed)."""
        attempts = self.options.layer_attempts
        for attempt in range(1, attempts + 1):
            try:
                return self.run(index, desc, encrypt, convert_to_oci)
            except _TransferFailed as failed:
                self._finish(f"{index}")
                if attempt == attempts or self.abort.is_set():
                    raise failed.error from None
                log.warning(
                    "layer %d (%s): %s; transferring it again (attempt %d of %d)",
                    index,
                    desc.digest,
                    failed.error,
                    attempt + 1,
                    attempts,
                )
        raise AssertionError("unreachable")  # pragma: no cover

    def run(self, index: int, desc: Descriptor, encrypt: bool, convert_to_oci: bool) -> LayerReport:
        started = time.perf_counter()
        layer = LayerContext(index, desc, self.src.name)
        key = f"{index}"
        media_type = desc.media_type
        if convert_to_oci and not mt.is_encrypted(media_type):
            media_type = mt.encrypted_type(media_type).removesuffix(mt.ENCRYPTED_SUFFIX)
        decrypt = mt.is_encrypted(desc.media_type) and bool(self.options.unwrappers)
        if not encrypt and not decrypt:
            result = desc.with_changes(media_type=media_type)
            reused = reuse_blob(self.src, self.dst, desc)
            if reused is not None:
                return LayerReport(index, reused, desc, result, time.perf_counter() - started)
            if self.progress:
                self.progress.start(key, f"copy    {desc.digest.hex[:12]}", desc.size)
            with _transfer():
                self.dst.put_blob(
                    _metered(threaded(self.src.iter_blob(desc), depth=2), self.progress, key, self.abort),
                    media_type,
                    desc,
                    verified=True,
                )
            self._finish(key)
            return LayerReport(index, "copied", desc, result, time.perf_counter() - started)

        if self.progress:
            verb = "reencrypt" if encrypt and decrypt else ("encrypt" if encrypt else "decrypt")
            self.progress.start(key, f"{verb:<9} {desc.digest.hex[:12]}", desc.size)
        # reading and verifying the source overlaps with the cipher and the upload
        source = threaded(self.src.iter_blob(desc), depth=2)
        stream: Iterator[bytes] = _metered(source, self.progress, key, self.abort)
        annotations = dict(desc.annotations)
        priv: PrivateOptions | None = None
        if decrypt:
            pub = public_options(desc, layer)
            priv = open_private_options(desc, layer, self.options.unwrappers)
            # the HMAC authenticates the layer; the digest in the private options may name the
            # source blob ocicrypt was handed before (re)compression, so the decrypted blob's
            # digest is computed: by the destination (decrypt) or the encryptor (re-encrypt)
            stream = decrypt_stream(stream, LayerDecryptor(pub, priv, str(layer), compute_digest=False))
            annotations = strip_encryption(annotations)
            media_type = mt.decrypted_type(desc.media_type)
        if encrypt:
            enc = LayerEncryptor(plain_digest=None if decrypt else desc.digest)
            with _transfer():
                stored = self.dst.put_blob(encrypt_stream(stream, enc), mt.encrypted_type(media_type))
            pub_out, priv_out = enc.finalize()
            if priv is not None:
                note_recorded_digest(priv, priv_out.digest, str(layer))
                plain = Descriptor(media_type, priv_out.digest, enc.size)
            else:
                plain = desc.with_changes(media_type=media_type)
            plain_layer = LayerContext(index, plain, self.src.name)
            annotations[ANNOTATION_PUBOPTS] = pub_out.to_annotation()
            for wrapper in self.options.wrappers:
                name, value = keys_annotation(wrapper.scheme, [wrapper.wrap(priv_out, plain_layer)])
                annotations[name] = value
            result = stored.with_changes(annotations=annotations)
            action = "reencrypted" if decrypt else "encrypted"
        else:
            with _transfer():
                stored = self.dst.put_blob(stream, media_type)
            assert priv is not None  # neither encrypting nor decrypting returned above
            note_recorded_digest(priv, stored.digest, str(layer))
            result = stored.with_changes(annotations=annotations)
            action = "decrypted"
        self._finish(key)
        return LayerReport(index, action, desc, result, time.perf_counter() - started)

    def _finish(self, key: str) -> None:
        if self.progress:
            self.progress.finish(key)


def transfer_layers(
    src: ImageSource,
    dst: ImageDestination,
    layers: Sequence[Descriptor],
    to_encrypt: frozenset[int],
    convert: bool,
    options: CopyOptions,
    progress: Progress | None,
) -> tuple[LayerReport, ...]:
    """Move *layers* in parallel; the first failure stops the others and is raised."""
    abort = threading.Event()
    job = _LayerJob(src, dst, options, progress, abort)
    results: list[LayerReport | None] = [None] * len(layers)
    errors: list[BaseException] = []
    with ThreadPoolExecutor(max_workers=max(1, min(options.workers, len(layers) or 1))) as pool:
        futures = {
            pool.submit(job.run_retrying, i, d, i in to_encrypt, convert): i for i, d in enumerate(layers)
        }
        for future, i in futures.items():
            try:
                results[i] = future.result()
            except _Aborted:
                continue
            except BaseException as exc:  # collected, the first one is re-raised below
                abort.set()
                errors.append(exc)
    if errors:
        raise next((e for e in errors if isinstance(e, LayersealError)), errors[0])
    return tuple(r for r in results if r is not None)


def copy_image(
    src: ImageSource,
    dst: ImageDestination,
    options: CopyOptions = CopyOptions(),
    progress: Progress | None = None,
) -> CopyReport:
    """Copy one image from *src* to *dst*; see the module docstring for the guarantees."""
    manifest_bytes, manifest_type, manifest = resolve_manifest(src, options.platform)
    return _copy_manifest(
        src, dst, manifest_bytes, manifest_type, manifest, options, progress, dst.put_manifest
    )


def _copy_manifest(
    src: ImageSource,
    dst: ImageDestination,
    manifest_bytes: bytes,
    manifest_type: str,
    manifest: Manifest,
    options: CopyOptions,
    progress: Progress | None,
    commit: Callable[[bytes, str], Descriptor],
) -> CopyReport:
    layers = manifest.layers
    for i, d in enumerate(layers):
        if not mt.is_layer(d.media_type):
            raise BadInputError(
                f"{src.name}: layer {i} ({d.digest}): unsupported media type {d.media_type!r}"
            )
    to_encrypt: frozenset[int] = frozenset()
    if options.wrappers:
        chosen = select_layers(options.encrypt_layers, len(layers))
        decrypting = bool(options.unwrappers)
        to_encrypt = frozenset(i for i in chosen if decrypting or not mt.is_encrypted(layers[i].media_type))
        if options.encrypt_layers is not None:
            already = sorted(i for i in chosen - to_encrypt)
            if already:
                raise BadInputError(
                    f"{src.name}: --encrypt-layer names layer(s) {already}, expected unencrypted layers, "
                    f"seen layers that are already encrypted"
                )
    convert = bool(to_encrypt) and manifest.is_docker
    reports = transfer_layers(src, dst, layers, to_encrypt, convert, options, progress)
    config = manifest.config
    if reuse_blob(src, dst, config) is None:
        put_blob_retrying(src, dst, config, options.layer_attempts)
    changed = any(r.action not in ("copied", "reused", "mounted") for r in reports) or convert
    if changed:
        new_manifest = manifest.with_changes(
            layers=tuple(r.result for r in reports),
            media_type=mt.OCI_MANIFEST if convert else manifest.media_type,
            config=config.with_changes(media_type=mt.OCI_CONFIG) if convert else config,
        )
        manifest_bytes, manifest_type = new_manifest.to_bytes(), new_manifest.effective_media_type
    written = commit(manifest_bytes, manifest_type)
    return CopyReport(src.name, dst.name, written, config, reports)


@dataclass(frozen=True)
class IndexCopyReport:
    source: str
    destination: str
    index: Descriptor
    #: one per entry of the index, in its order; None for entries copied as they are
    images: tuple[CopyReport | None, ...]


def _child_committer(dst: ImageDestination) -> Callable[[bytes, str], Descriptor]:
    """How *dst* stores a manifest that only an index names (no tag of its own)."""
    by_digest = getattr(dst, "put_manifest_by_digest", None)  # registries
    if by_digest is not None:
        return cast(Callable[[bytes, str], Descriptor], by_digest)
    return lambda data, media_type: dst.put_blob([data], media_type)  # layouts commit it with the index


def _copy_verbatim(
    src: ImageSource, dst: ImageDestination, entry: Descriptor, data: bytes, attempts: int
) -> Descriptor:
    """An index entry that is no plain image (attestation, artifact): blobs and manifest as they are."""
    parsed = parse_any(data, entry.media_type, f"manifest {entry.digest} of {src.name}")
    if isinstance(parsed, Index):
        raise BadInputError(
            f"{src.name}: manifest {entry.digest}: expected an image manifest, seen a nested index"
        )
    for blob in (parsed.config, *parsed.layers):
        if reuse_blob(src, dst, blob) is None:
            put_blob_retrying(src, dst, blob, attempts)
    return _child_committer(dst)(data, entry.media_type)


def copy_index(
    src: ImageSource,
    dst: ImageDestination,
    options: CopyOptions = CopyOptions(),
    progress: Progress | None = None,
) -> IndexCopyReport | CopyReport:
    """Copy every image of *src*'s index (skopeo's ``--all``), encrypting or decrypting each.

    Entries whose layers are not all image layers (attestations, artifacts) are copied as
    they are.  The index is written last, so a failure leaves no new tag.  A source that is
    a single image is copied as :func:`copy_image` would.
    """
    if options.platform is not None:
        raise BadInputError("--all: expected no --platform (every platform is copied), seen one")
    data, media_type = src.get_manifest()
    parsed = parse_any(data, media_type, f"manifest of {src.name}")
    if not isinstance(parsed, Index):
        return _copy_manifest(src, dst, data, media_type, parsed, options, progress, dst.put_manifest)
    commit_child = _child_committer(dst)
    entries: list[Descriptor] = []
    images: list[CopyReport | None] = []
    for entry in parsed.manifests:
        child_data, child_type = src.get_manifest(entry.digest)
        child = parse_any(child_data, child_type, f"manifest {entry.digest} of {src.name}")
        if isinstance(child, Manifest) and all(mt.is_layer(d.media_type) for d in child.layers):
            report = _copy_manifest(src, dst, child_data, child_type, child, options, progress, commit_child)
            written = report.manifest
            images.append(report)
        else:
            written = _copy_verbatim(src, dst, entry, child_data, options.layer_attempts)
            images.append(None)
        entries.append(
            entry.with_changes(media_type=written.media_type, digest=written.digest, size=written.size)
        )
    index_type = parsed.media_type
    if index_type == mt.DOCKER_MANIFEST_LIST and any(e.media_type != mt.DOCKER_MANIFEST for e in entries):
        index_type = mt.OCI_INDEX  # encrypted images are OCI manifests, which a Docker list cannot hold
    if tuple(entries) == parsed.manifests and index_type == parsed.media_type:
        index_bytes, written_type = data, media_type  # unchanged: byte for byte, digest kept
    else:
        new_index = replace(parsed, manifests=tuple(entries), media_type=index_type)
        index_bytes, written_type = new_index.to_bytes(), index_type or mt.OCI_INDEX
    written_index = dst.put_manifest(index_bytes, written_type)
    return IndexCopyReport(src.name, dst.name, written_index, tuple(images))


ProgressFactory = Callable[[], Progress]
