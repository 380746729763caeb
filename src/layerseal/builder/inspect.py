"""Read an image's manifest and config and summarise it (``layerseal inspect``)."""

from __future__ import annotations

from layerseal.image.descriptor import Platform
from layerseal.image.digest import Digest
from layerseal.image.summary import ImageSummary, summarize
from layerseal.image.transport import MAX_CONFIG_BYTES, ImageSource, read_config, resolve_manifest


def inspect_image(src: ImageSource, platform: Platform | None = None) -> ImageSummary:
    data, _, manifest = resolve_manifest(src, platform)
    # an oversized config is left out of the summary rather than refused
    config = None if manifest.config.size > MAX_CONFIG_BYTES else read_config(src, manifest)
    return summarize(src.name, str(Digest.of(data)), manifest, config)
