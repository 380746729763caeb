"""Pull inside the enclave: manifest first, every layer key in one batch, verified decrypt, safe unpack.

Order of work, and why:
1. The manifest (and config) come first, so the engine knows every encrypted layer and
   the key each names before touching any blob.
2. All layer keys are obtained before any unpacking: broker keys in one attested batch,
   JWE keys with the given private keys.  A refused key stops the pull with an error
   naming every refused layer, and nothing has been written to the rootfs.
3. Encrypted blobs go through the shared content-addressed store (fetched once per
   enclave, verified).  Each layer is decrypted as a stream into a snapshot in a work
   directory, which is committed only after the HMAC, the blob digest and the config's
   diff_id all matched.
4. Snapshots live in the enclave-private cache of :mod:`layerseal.engine.snapshot`: an
   encrypted layer's snapshot is named by an HMAC under its own layer key, so only a run
   that obtained that key (step 2) can locate it, and every reuse re-verifies its seal.
5. Snapshots are stacked into the rootfs atomically, while the run holds them.

Running out of space anywhere is a one-line :class:`BadInputError` (exit 2: the place the
caller chose cannot hold the image; 3 would wrongly say the data was tampered with).
Nothing half-written stays: blobs, snapshots and the rootfs are each committed by rename.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from layerseal.crypto.keywrap import KeyUnwrapper, LayerContext, open_private_options, public_options
from layerseal.crypto.layercipher import LayerDecryptor, decrypt_views
from layerseal.engine.decompress import Chunk, decompressor
from layerseal.engine.keys import BrokerUnwrapper
from layerseal.engine.limits import ImageBudget, UnpackLimits
from layerseal.engine.snapshot import ContentHashes, Lease, SnapshotKey, SnapshotStore, user_of
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


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
#: decrypted chunks queued between the fetch and the decompress thread
_DEPTH = 4


def _no_space(exc: BaseException) -> OSError | None:
    """The ENOSPC/EDQUOT OSError behind *exc*, if any (unpack and stacking wrap theirs)."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno in _NO_SPACE:
            return cur
        cur = cur.__cause__ or cur.__context__
    return None


def _close(*gens: object) -> None:
    # close each pipeline stage now, not when a traceback lets go of it: a download's
    # temporary file is removed by its generator's cleanup, which must run before exit
    for g in gens:
        close = getattr(g, "close", None)
        if close is not None:
            with contextlib.suppress(ValueError):
                close()


class _Puller:
    def __init__(
        self, src: ImageSource, store: SharedBlobStore, snapshots: SnapshotStore, budget: ImageBudget
    ) -> None:
        self.src, self.store, self.snapshots, self.budget = src, store, snapshots, budget

    def layer(
        self,
        index: int,
        desc: Descriptor,
        diff_id: Digest,
        key: tuple[PublicOptions, PrivateOptions] | None,
        skey: SnapshotKey,
    ) -> tuple[LayerResult, Lease]:
        ctx = LayerContext(index, desc, self.src.name)
        downloads: list[bool] = []

        def build(tree: Path) -> ContentHashes:
            # one pass: download (into the shared store), decrypt, decompress and unpack together;
            # the blob and the snapshot are each committed only once everything verified
            # the source verifies the blob's digest and size as it streams (ImageSource.iter_blob),
            # and the store commits only after that stream ended cleanly: one SHA-256 pass
            fetched = self.store.stream_through(
                desc, lambda: self.src.iter_blob(desc), lambda: downloads.append(True), verified=True
            )
            stream: Iterator[Chunk] = iter(fetched)
            if key is not None:
                # the HMAC authenticates the layer; the decrypted (compressed) blob's own digest
                # is checked nowhere (ocicrypt's private options often name another blob), so it
                # is not computed: a full SHA-256 pass of the blob saved
                decryptor = LayerDecryptor(key[0], key[1], str(ctx), compute_digest=False)
                # plaintext in a ring of reused buffers: the queue below holds _DEPTH chunks, the
                # decompressor one more while it asks for the next, and one is being written
                stream = decrypt_views(stream, decryptor, buffers=_DEPTH + 3)
            # three stages on three threads: fetch + decrypt + verify, decompress, unpack
            inner = threaded(stream, depth=_DEPTH)
            tar_stream = threaded(
                decompressor(mt.compression(desc.media_type), what=str(ctx))(inner), depth=8
            )
            try:
                result = unpack_layer(tar_stream, "none", tree, what=str(ctx), budget=self.budget)
                for _ in tar_stream:  # authenticate the whole ciphertext before the snapshot is committed
                    pass
            finally:
                _close(tar_stream, inner, stream, fetched)
            if result.diff_id != diff_id:
                raise IntegrityError(
                    f"{ctx}: diff_id: expected {diff_id} (from the config), seen {result.diff_id}"
                )
            return result.content  # the seal need not read back what was just written

        lease = self.snapshots.acquire(skey, build, user_of(self.store.root))
        try:
            if lease.reused:
                # keep the encrypted blob referenced and present, as a fresh pull would
                self.store.ensure(desc, lambda: self.src.iter_blob(desc))
        except BaseException:
            lease.close()
            raise
        return LayerResult(index, desc.digest, diff_id, key is not None, bool(downloads), lease.reused), lease


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
    try:
        store.add_refs(owner or src.name, [d.digest for d in manifest.layers])
        results = _pull_layers(src, store, snapshots, rootfs, manifest, diff_ids, keys, workers, limits)
    except BaseException as exc:
        full = _no_space(exc)
        if full is None:
            raise
        where = f" ({full.filename})" if full.filename else ""
        raise BadInputError(
            f"{src.name}: pull into store {store.root}, snapshots {snapshots.root}, rootfs {rootfs}: "
            f"expected room for the image, seen no space left on device{where}; nothing half-written was kept"
        ) from exc
    return PullResult(src.name, manifest_digest, config, rootfs, results, released)


def _pull_layers(
    src: ImageSource,
    store: SharedBlobStore,
    snapshots: SnapshotStore,
    rootfs: Path,
    manifest: Manifest,
    diff_ids: Sequence[Digest],
    keys: dict[int, tuple[PublicOptions, PrivateOptions]],
    workers: int,
    limits: UnpackLimits | None = None,
) -> tuple[LayerResult, ...]:
    # leftovers of earlier killed pulls (a live pull holds the locks that keep its own)
    store.remove_stale_temps()
    snapshots.remove_leftovers()
    puller = _Puller(src, store, snapshots, ImageBudget(limits))
    layers = manifest.layers
    skeys = [
        snapshots.key_for(d.digest, diff_ids[i], keys[i][1] if i in keys else None)
        for i, d in enumerate(layers)
    ]
    # a layer listed twice is built once
    first: dict[str, int] = {}
    for i, k in enumerate(skeys):
        first.setdefault(k.name, i)
    results: dict[int, LayerResult] = {}
    leases: dict[int, Lease] = {}
    errors: list[BaseException] = []
    try:
        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(first) or 1))) as pool:
            futures = {
                i: pool.submit(puller.layer, i, layers[i], diff_ids[i], keys.get(i), skeys[i])
                for i in first.values()
            }
            for i, future in futures.items():
                try:
                    results[i], leases[i] = future.result()
                except BaseException as exc:
                    errors.append(exc)
        if errors:
            raise next((e for e in errors if isinstance(e, LayersealError)), errors[0])
        for i, d in enumerate(layers):
            if i not in results:
                results[i] = LayerResult(i, d.digest, diff_ids[i], i in keys, False, True)
        stack_snapshots([leases[first[k.name]].tree for k in skeys], rootfs, what=f"rootfs of {src.name}")
    finally:
        for lease in leases.values():
            lease.close()
    results_list = [results[i] for i in range(len(layers))]
    return tuple(results_list)
