"""Read an image's manifest and config and summarise it (``layerseal inspect``)."""

from __future__ import annotations

from layerseal.builder.copy import resolve_manifest
from layerseal.image.config import ImageConfig
from layerseal.image.descriptor import Platform
from layerseal.image.digest import Digest
from layerseal.image.summary import ImageSummary, summarize
from layerseal.image.transport import ImageSource

MAX_CONFIG_BYTES = 8 * 1024 * 1024


def inspect_image(src: ImageSource, platform: Platform | None = None) -> ImageSummary:
    data, _, manifest = resolve_manifest(src, platform)
    if manifest.config.size > MAX_CONFIG_BYTES:
        config = None
    else:
        config = ImageConfig.from_bytes(b"".join(src.iter_blob(manifest.config)), f"config of {src.name}")
    return summarize(src.name, str(Digest.of(data)), manifest, config)
