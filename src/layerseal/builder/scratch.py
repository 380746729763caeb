"""Create a new image in an OCI layout from generated layers (demos, tests, ``layer add``)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from layerseal.builder.tarlayer import MEDIA_TYPES, FileEntry, write_layer
from layerseal.image import mediatypes as mt
from layerseal.image.config import ImageConfig
from layerseal.image.descriptor import Descriptor
from layerseal.image.manifest import Manifest
from layerseal.image.transport import ImageDestination


@dataclass(frozen=True)
class LayerSpec:
    entries: tuple[FileEntry, ...]
    compression: str = "gzip"
    created_by: str = "layerseal"


def build_image(
    dst: ImageDestination,
    layers: Sequence[LayerSpec],
    *,
    cmd: Sequence[str] = ("/bin/sh",),
    env: Sequence[str] = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",),
    architecture: str = "amd64",
    annotations: dict[str, str] | None = None,
) -> Descriptor:
    """Write a small image (layers held in memory: for generated content only) and commit it."""
    descs: list[Descriptor] = []
    diff_ids: list[str] = []
    history: list[dict[str, Any]] = []
    for spec in layers:
        buf = io.BytesIO()
        diff_id = write_layer(buf, spec.entries, spec.compression)
        descs.append(dst.put_blob([buf.getvalue()], MEDIA_TYPES[spec.compression]))
        diff_ids.append(str(diff_id))
        history.append({"created": "1970-01-01T00:00:00Z", "created_by": spec.created_by})
    config = ImageConfig(
        {
            "created": "1970-01-01T00:00:00Z",
            "architecture": architecture,
            "os": "linux",
            "config": {"Env": list(env), "Cmd": list(cmd)},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": history,
        }
    )
    config_desc = dst.put_blob([config.to_bytes()], mt.OCI_CONFIG)
    manifest = Manifest(
        config=config_desc,
        layers=tuple(descs),
        media_type=mt.OCI_MANIFEST,
        annotations=annotations or {},
    )
    return dst.put_manifest(manifest.to_bytes(), mt.OCI_MANIFEST)
