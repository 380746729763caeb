"""Read an image's manifest and config and summarise it (``layerseal inspect``)."""

from __future__ import annotations

from dataclasses import replace

from layerseal.image.descriptor import Platform
from layerseal.image.digest import Digest
from layerseal.image.manifest import Index, parse_any
from layerseal.image.summary import ImageSummary, IndexEntry, IndexSummary, summarize
from layerseal.image.transport import MAX_CONFIG_BYTES, ImageSource, read_config, select_manifest


def inspect_image(src: ImageSource, platform: Platform | None = None) -> ImageSummary:
    """The summary of *src*'s image (*platform*'s, default this host's, when it is an index),
    with the index's entries when there is one."""
    top, top_type = src.get_manifest()
    parsed = parse_any(top, top_type, f"manifest of {src.name}")
    index = None
    if isinstance(parsed, Index):
        index = IndexSummary(
            str(Digest.of(top)),
            parsed.media_type or top_type,
            tuple(IndexEntry(str(d.platform or ""), str(d.digest), d.media_type) for d in parsed.manifests),
        )
    data, _, manifest = select_manifest(src, top, top_type, parsed, platform)
    # an oversized config is left out of the summary rather than refused
    config = None if manifest.config.size > MAX_CONFIG_BYTES else read_config(src, manifest)
    return replace(summarize(src.name, str(Digest.of(data)), manifest, config), index=index)
