"""Find an encrypted layer's descriptor in containerd's content store.

A stream processor gets the layer bytes on stdin and, only when the client set one,
a payload with the layer's descriptor.  Plain ``ctr image pull`` and the CRI plugin
without ``key_model = "node"`` send none, and for media types outside imgcrypt's
payload ids (``tar+zstd``) even the CRI sends none.  The annotations that hold the
wrapped keys and the HMAC are in the image manifest, which containerd fetched before
unpacking: every manifest blob that names the layer's digest is a candidate.

The content store is root's and content-addressed; a manifest from another image that
names the same blob can only offer other wrapped keys for it, which either fail to
open or fail the HMAC, and containerd checks the result against the pulled image's
``diff_ids`` in any case.  Blobs larger than ``MAX_MANIFEST`` are not read.
"""

from __future__ import annotations

import os
from pathlib import Path

from layerseal.errors import BadInputError
from layerseal.image import mediatypes as mt
from layerseal.image.descriptor import Descriptor
from layerseal.image.digest import Digest
from layerseal.wire.jsonload import object_or_none

CONTENT_PLUGIN = "io.containerd.content.v1.content"
MAX_MANIFEST = 4 << 20
DEFAULT_ROOT = "/var/lib/containerd"


def blobs_dir(root: Path, algorithm: str = "sha256") -> Path:
    return root / CONTENT_PLUGIN / "blobs" / algorithm


def find_layer_descriptors(root: Path, digest: Digest, media_type: str) -> list[Descriptor]:
    """Descriptors of *digest* with *media_type* in the manifests stored under containerd *root*.

    Newest manifest first (the image being pulled was fetched last); duplicates (same
    annotations) are dropped.
    """
    directory = blobs_dir(root, digest.algorithm)
    needle = str(digest).encode()
    found: list[tuple[float, Descriptor]] = []
    try:
        entries = list(os.scandir(directory))
    except OSError as exc:
        raise BadInputError(
            f"containerd content store {directory}: expected a readable directory "
            f"(--containerd-root is containerd's 'root'), seen {exc.strerror}"
        ) from exc
    for entry in entries:
        try:
            st = entry.stat(follow_symlinks=False)
            if not entry.is_file(follow_symlinks=False) or st.st_size > MAX_MANIFEST or st.st_size < 2:
                continue
            with open(entry.path, "rb") as fh:
                head = fh.read(1)
                if head != b"{":
                    continue
                data = head + fh.read()
        except OSError:
            continue  # removed by containerd's garbage collector meanwhile
        if needle not in data:
            continue
        doc = object_or_none(data)  # other blobs that happen to hold the digest are skipped
        layers = doc.get("layers") if doc is not None else None
        if not isinstance(layers, list):
            continue
        for i, obj in enumerate(layers):
            if not isinstance(obj, dict) or obj.get("digest") != str(digest):
                continue
            try:
                desc = Descriptor.from_json(obj, f"manifest {entry.name} layer {i}")
            except BadInputError:
                continue
            if desc.media_type == media_type and mt.is_encrypted(desc.media_type):
                found.append((st.st_mtime, desc))
    found.sort(key=lambda item: item[0], reverse=True)
    out: list[Descriptor] = []
    for _, desc in found:
        if all(d.annotations != desc.annotations for d in out):
            out.append(desc)
    return out
