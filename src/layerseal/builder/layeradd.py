"""``layerseal layer add``: append a layer built from files to an image, optionally encrypted.

The new layer is streamed: tar (reproducible) -> gzip/zstd -> layer cipher -> destination,
with a bounded queue between the tar-writing thread and the upload, so memory does not
grow with the layer.  Existing layers are neither re-encrypted nor re-uploaded when the
destination already holds them, and keep their keys.  The config gains the diff_id and a
history entry; the manifest is written last, so a failure publishes nothing.
"""

from __future__ import annotations

import datetime as _dt
import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

from layerseal.builder.copy import (
    CopyOptions,
    LayerReport,
    Progress,
    put_blob_retrying,
    transfer_layers,
)
from layerseal.builder.tarlayer import MEDIA_TYPES, write_layer_from_paths
from layerseal.crypto.keywrap import KeyWrapper, LayerContext
from layerseal.crypto.layercipher import LayerEncryptor, encrypt_stream
from layerseal.errors import BadInputError
from layerseal.image import mediatypes as mt
from layerseal.image.descriptor import Descriptor, Platform
from layerseal.image.digest import Digest
from layerseal.image.encryption import ANNOTATION_PUBOPTS, keys_annotation
from layerseal.image.transport import CHUNK_SIZE, ImageDestination, ImageSource, read_config, resolve_manifest
from layerseal.streams import ChunkPipe


@dataclass(frozen=True)
class AddLayerReport:
    manifest: Descriptor
    layer: Descriptor
    diff_id: Digest
    encrypted: bool
    existing: tuple[LayerReport, ...]


class _Cancelled(Exception):
    """The consuming side stopped (its own error is the one reported)."""


class _PipeWriter:
    """A write-only file object feeding a :class:`ChunkPipe`, in CHUNK_SIZE pieces."""

    def __init__(self, pipe: ChunkPipe[bytes]) -> None:
        self._pipe = pipe
        self._buf = bytearray()

    def write(self, data: bytes) -> int:
        self._buf += data
        while len(self._buf) >= CHUNK_SIZE:
            self._put(bytes(self._buf[:CHUNK_SIZE]))
            del self._buf[:CHUNK_SIZE]
        return len(data)

    def flush(self) -> None:
        pass

    def close_stream(self) -> None:
        if self._buf:
            self._put(bytes(self._buf))
            self._buf.clear()

    def _put(self, chunk: bytes) -> None:
        if not self._pipe.put(chunk):
            raise _Cancelled()


def layer_stream(
    sources: Mapping[str, Path], compression: str, keep_mtime: bool
) -> tuple[Iterator[bytes], Future[Digest]]:
    """The compressed layer as chunks, and (once they are consumed) its diff_id."""
    pipe: ChunkPipe[bytes] = ChunkPipe(depth=4)
    diff_id: Future[Digest] = Future()

    def produce() -> None:
        writer = _PipeWriter(pipe)
        try:
            d = write_layer_from_paths(cast(IO[bytes], writer), sources, compression, keep_mtime)
            writer.close_stream()
            diff_id.set_result(d)
            pipe.end()
        except BaseException as exc:
            if not diff_id.done():
                diff_id.set_exception(exc)
            pipe.fail(exc)  # dropped when the consumer has stopped (a _Cancelled, then)

    return pipe.drain(threading.Thread(target=produce, name="layerseal-tar", daemon=True)), diff_id


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def add_layer(
    src: ImageSource,
    dst: ImageDestination,
    sources: Mapping[str, Path],
    *,
    wrappers: Sequence[KeyWrapper] = (),
    compression: str = "gzip",
    message: str | None = None,
    keep_mtime: bool = False,
    platform: Platform | None = None,
    progress: Progress | None = None,
) -> AddLayerReport:
    if compression not in MEDIA_TYPES:
        raise BadInputError(f"--compress: expected one of {sorted(MEDIA_TYPES)}, seen {compression!r}")
    if not sources:
        raise BadInputError("layer add: expected at least one PATH, seen none")
    _, _, manifest = resolve_manifest(src, platform)
    config = read_config(src, manifest)
    if len(config.diff_ids) != len(manifest.layers):
        raise BadInputError(
            f"{src.name}: expected one diff_id per layer ({len(manifest.layers)}), "
            f"seen {len(config.diff_ids)}"
        )
    # a Docker manifest cannot carry zstd or encrypted layers: the result is OCI, as with ocicrypt
    convert = manifest.is_docker
    existing = transfer_layers(src, dst, manifest.layers, frozenset(), convert, CopyOptions(), progress)

    chunks, diff_id_future = layer_stream(sources, compression, keep_mtime)
    plain_type = MEDIA_TYPES[compression]
    index = len(manifest.layers)
    if wrappers:
        enc = LayerEncryptor()
        stored = dst.put_blob(encrypt_stream(chunks, enc), mt.encrypted_type(plain_type))
        pub, priv = enc.finalize()
        plain = Descriptor(plain_type, priv.digest, stored.size)
        layer_ctx = LayerContext(index, plain, src.name)
        annotations: dict[str, str] = {ANNOTATION_PUBOPTS: pub.to_annotation()}
        for wrapper in wrappers:
            name, value = keys_annotation(wrapper.scheme, [wrapper.wrap(priv, layer_ctx)])
            annotations[name] = value
        new_layer = stored.with_changes(annotations=annotations)
    else:
        new_layer = dst.put_blob(chunks, plain_type)
    diff_id = diff_id_future.result()

    history: dict[str, Any] = {
        "created": _now(),
        "created_by": "layerseal layer add " + " ".join(sorted(sources)),
    }
    if message:
        history["comment"] = message
    new_config = config.with_layer(diff_id, history)
    config_bytes = new_config.to_bytes()
    config_type = mt.OCI_CONFIG if convert else manifest.config.media_type
    config_desc = put_blob_retrying(
        src,
        dst,
        Descriptor(config_type, Digest.of(config_bytes), len(config_bytes)),
        CopyOptions().layer_attempts,
        lambda: [config_bytes],
    )
    layers = [r.result for r in existing] + [new_layer]
    new_manifest = manifest.with_changes(
        config=config_desc,
        layers=tuple(layers),
        media_type=mt.OCI_MANIFEST if convert else manifest.media_type,
    )
    written = dst.put_manifest(new_manifest.to_bytes(), new_manifest.effective_media_type)
    return AddLayerReport(written, new_layer, diff_id, bool(wrappers), existing)
