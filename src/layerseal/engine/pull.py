"""Pull inside the enclave: manifest first, every layer key in one batch, verified decrypt, safe unpack.

Order of work, and why:
1. The manifest (and config) come first, so the engine knows every encrypted layer and
   the key each names before touching any blob.
2. All layer keys are obtained before any unpacking: broker keys in one attested batch,
   JWE keys with the given private keys.  A refused key stops the pull with an error
   naming every refused layer, and nothing has been written to the rootfs.
3. Encrypted blobs go through the shared content-addressed store (fetched once per
   enclave, verified).  Each layer is decrypted as a stream into its own snapshot in a
   temporary directory, which is committed only after the HMAC, the blob digest and the
   config's diff_id all matched.
4. A snapshot already on disk is reused only when this run obtained that layer's key
   (step 2 always runs), so a cached plaintext never lets a key-less engine run it.
5. Snapshots are stacked into the rootfs atomically.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from layerseal.crypto.keywrap import KeyUnwrapper, LayerContext, open_private_options, public_options
from layerseal.crypto.layercipher import LayerDecryptor, decrypt_stream
from layerseal.engine.decompress import decompressor
from layerseal.engine.keys import BrokerUnwrapper
from layerseal.engine.limits import ImageBudget, UnpackLimits
from layerseal.engine.snapshot import SnapshotStore
from layerseal.engine.unpack import stack_snapshots, unpack_layer
from layerseal.errors import BadInputError, DeniedError, IntegrityError, LayersealError, WrongKeyError
from layerseal.image import mediatypes as mt
from layerseal.image.config import ImageConfig
from layerseal.image.descriptor import Descriptor, Platform
from layerseal.image.digest import Digest
from layerseal.image.encryption import PrivateOptions, PublicOptions
from layerseal.image.manifest import Manifest
from layerseal.image.transport import ImageSource, read_config, resolve_manifest
from layerseal.layout.blobstore import SharedBlobStore
from layerseal.streams import threaded


@dataclass(frozen=True)
class LayerResult:
    index: int
    digest: Digest
    diff_id: Digest
    encrypted: bool
    fetched: bool  # downloaded by this engine (False: the shared store had it)
    snapshot_reused: bool


@dataclass(frozen=True)
class PullResult:
    image: str
    manifest_digest: Digest
    config: ImageConfig
    rootfs: Path
    layers: tuple[LayerResult, ...]
    keys_released: int


def fetch_manifest(src: ImageSource, platform: Platform | None) -> tuple[Digest, Manifest]:
    data, _, manifest = resolve_manifest(src, platform)
    for i, d in enumerate(manifest.layers):
        if not mt.is_layer(d.media_type):
            raise BadInputError(
                f"{src.name}: layer {i} ({d.digest}): unsupported media type {d.media_type!r}"
            )
    return Digest.of(data), manifest


def _obtain_keys(
    src: ImageSource,
    layers: Sequence[Descriptor],
    unwrappers: Sequence[KeyUnwrapper],
    broker: BrokerUnwrapper | None,
) -> tuple[dict[int, tuple[PublicOptions, PrivateOptions]], int]:
    """Private options of every encrypted layer, or an error naming every layer refused."""
    encrypted = [i for i, d in enumerate(layers) if mt.is_encrypted(d.media_type)]
    if encrypted and not unwrappers and broker is None:
        raise BadInputError(
            f"{src.name}: {len(encrypted)} encrypted layer(s): expected a key source "
            "(--decryption-key PRIVKEY for jwe keys, --kbs URL for the key broker), seen neither"
        )
    released = broker.prefetch(layers, src.name) if broker is not None else 0
    all_unwrappers = [*unwrappers, *([broker] if broker is not None else [])]
    keys: dict[int, tuple[PublicOptions, PrivateOptions]] = {}
    refused: list[str] = []
    denied = False
    for i, d in enumerate(layers):
        if not mt.is_encrypted(d.media_type):
            continue
        ctx = LayerContext(i, d, src.name)
        try:
            keys[i] = (public_options(d, ctx), open_private_options(d, ctx, all_unwrappers))
        except (WrongKeyError, DeniedError) as exc:
            denied = denied or isinstance(exc, DeniedError)
            refused.append(str(exc))
    if refused:
        # a broker's refusal is a denial (5); keys the caller gave that open nothing are bad input (2)
        error = DeniedError if denied else WrongKeyError
        raise error(
            f"{src.name}: no key for {len(refused)} of {len(keys) + len(refused)} encrypted layer(s); "
            f"nothing was unpacked: " + "; ".join(refused)
        )
    return keys, released


class _Puller:
    def __init__(
        self, src: ImageSource, store: SharedBlobStore, snapshots: SnapshotStore, budget: ImageBudget
    ) -> None:
        self.src, self.store, self.snapshots, self.budget = src, store, snapshots, budget
        self.abort = threading.Event()

    def layer(
        self, index: int, desc: Descriptor, diff_id: Digest, key: tuple[PublicOptions, PrivateOptions] | None
    ) -> LayerResult:
        ctx = LayerContext(index, desc, self.src.name)
        if self.snapshots.exists(diff_id):
            # reuse is safe here: the key for this layer was released in this run (see _obtain_keys)
            fetched = self.store.ensure(desc, lambda: self.src.iter_blob(desc))
            return LayerResult(index, desc.digest, diff_id, key is not None, fetched, True)
        downloads: list[bool] = []
        # one pass: download (into the shared store), decrypt, decompress and unpack together;
        # the blob and the snapshot are each committed only once everything verified
        stream: Iterator[bytes] = iter(
            self.store.stream_through(desc, lambda: self.src.iter_blob(desc), lambda: downloads.append(True))
        )
        compression = mt.compression(desc.media_type)
        if key is not None:
            stream = decrypt_stream(stream, LayerDecryptor(key[0], key[1], str(ctx)))
        # three stages on three threads: fetch + decrypt + verify, decompress, unpack
        tar_stream = threaded(decompressor(compression, what=str(ctx))(threaded(stream)), depth=8)
        with self.snapshots.create(diff_id) as tmp:
            result = unpack_layer(tar_stream, "none", tmp, what=str(ctx), budget=self.budget)
            for _ in tar_stream:  # authenticate the whole ciphertext before the snapshot is committed
                pass
            if result.diff_id != diff_id:
                raise IntegrityError(
                    f"{ctx}: diff_id: expected {diff_id} (from the config), seen {result.diff_id}"
                )
        return LayerResult(index, desc.digest, diff_id, key is not None, bool(downloads), False)


def pull_image(
    src: ImageSource,
    store: SharedBlobStore,
    snapshots: SnapshotStore,
    rootfs: Path,
    *,
    unwrappers: Sequence[KeyUnwrapper] = (),
    broker: BrokerUnwrapper | None = None,
    platform: Platform | None = None,
    owner: str | None = None,
    workers: int | None = None,
    limits: UnpackLimits | None = None,
) -> PullResult:
    """Pull *src* into *rootfs* (which must not exist yet); see the module docstring.

    *workers* layers are pulled at once (default: one per core, as ``copy`` does; each
    layer already runs its fetch, cipher and unpack on threads of its own).  *limits*
    bound the uncompressed bytes per layer and per image (of the layers unpacked by this
    pull) and the number of entries, checked while streaming.
    """
    if workers is None:
        workers = max(2, min(8, os.cpu_count() or 2))
    if rootfs.exists() and any(rootfs.iterdir()):
        raise BadInputError(f"rootfs {rootfs}: expected a new or empty directory, seen existing content")
    manifest_digest, manifest = fetch_manifest(src, platform)
    config = read_config(src, manifest)
    diff_ids = config.diff_ids
    if len(diff_ids) != len(manifest.layers):
        raise BadInputError(
            f"{src.name}: config rootfs.diff_ids: expected {len(manifest.layers)} entries (one per layer), "
            f"seen {len(diff_ids)}"
        )
    keys, released = _obtain_keys(src, manifest.layers, unwrappers, broker)
    store.add_refs(owner or src.name, [d.digest for d in manifest.layers])

    puller = _Puller(src, store, snapshots, ImageBudget(limits))
    results: list[LayerResult | None] = [None] * len(manifest.layers)
    errors: list[BaseException] = []
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(manifest.layers) or 1))) as pool:
        futures = [
            pool.submit(puller.layer, i, d, diff_ids[i], keys.get(i)) for i, d in enumerate(manifest.layers)
        ]
        for i, future in enumerate(futures):
            try:
                results[i] = future.result()
            except BaseException as exc:
                errors.append(exc)
    if errors:
        raise next((e for e in errors if isinstance(e, LayersealError)), errors[0])
    stack_snapshots([snapshots.path(d) for d in diff_ids], rootfs, what=f"rootfs of {src.name}")
    return PullResult(
        src.name, manifest_digest, config, rootfs, tuple(r for r in results if r is not None), released
    )
