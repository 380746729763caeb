"""Generate benchmark images: incompressible gzip layers of a chosen size, streamed to disk."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from layerseal.builder.tarlayer import MEDIA_TYPES, write_layer_from_paths
from layerseal.image import mediatypes as mt
from layerseal.image.config import ImageConfig
from layerseal.image.manifest import Manifest
from layerseal.layout.oci import LayoutDestination, LayoutReference

FILE = 8 << 20


def _chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(4 << 20):
            yield chunk


def make_image(ref: str, layer_sizes: list[int], compression: str = "gzip") -> None:
    """An image whose layer i holds ~layer_sizes[i] bytes of random data (so gzip cannot shrink it)."""
    dst = LayoutDestination(LayoutReference.parse(ref))
    try:
        descs, diff_ids = [], []
        for i, size in enumerate(layer_sizes):
            with tempfile.TemporaryDirectory(prefix="bench-layer-") as d:
                root = Path(d) / "files"
                root.mkdir()
                left, n = size, 0
                while left > 0:
                    (root / f"f{n:05d}.bin").write_bytes(os.urandom(min(FILE, left)))
                    left -= FILE
                    n += 1
                blob = Path(d) / "layer"
                with open(blob, "wb") as out:
                    diff_ids.append(str(write_layer_from_paths(out, {f"layer{i}": root}, compression)))
                descs.append(dst.put_blob(_chunks(blob), MEDIA_TYPES[compression]))
        config = ImageConfig(
            {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids}}
        )
        cdesc = dst.put_blob([config.to_bytes()], mt.OCI_CONFIG)
        manifest = Manifest(config=cdesc, layers=tuple(descs))
        dst.put_manifest(manifest.to_bytes(), mt.OCI_MANIFEST)
    finally:
        dst.close()
