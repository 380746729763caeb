"""Small deterministic test images: tar.gz layers, configs, manifests, OCI layout dirs."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def make_tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def make_layer(files: dict[str, bytes]) -> tuple[bytes, bytes]:
    """(tar.gz blob, uncompressed tar) with fixed timestamps, so digests are reproducible."""
    tar = make_tar(files)
    return gzip.compress(tar, mtime=0), tar


def descriptor(media_type: str, data: bytes, **extra: object) -> dict[str, object]:
    return {"mediaType": media_type, "digest": sha256(data), "size": len(data), **extra}


@dataclass
class SampleImage:
    """One image: its manifest bytes and every blob it names (config first)."""

    manifest: bytes
    blobs: dict[str, bytes] = field(default_factory=dict)
    config_digest: str = ""
    layer_digests: list[str] = field(default_factory=list)

    @property
    def digest(self) -> str:
        return sha256(self.manifest)


def make_image(
    layer_files: list[dict[str, bytes]], arch: str = "amd64", os_name: str = "linux"
) -> SampleImage:
    layers = [make_layer(files) for files in layer_files]
    config = dumps(
        {
            "architecture": arch,
            "os": os_name,
            "config": {"Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": [sha256(tar) for _, tar in layers]},
            "history": [{"created_by": f"layer {i}"} for i in range(len(layers))],
        }
    )
    manifest = dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(OCI_CONFIG, config),
            "layers": [descriptor(OCI_LAYER_GZIP, blob) for blob, _ in layers],
        }
    )
    blobs = {sha256(config): config}
    blobs.update({sha256(blob): blob for blob, _ in layers})
    return SampleImage(manifest, blobs, sha256(config), [sha256(blob) for blob, _ in layers])


def make_index(images: dict[str, SampleImage]) -> bytes:
    """An OCI index over images keyed by ``os/arch``."""
    manifests = []
    for platform, image in images.items():
        os_name, arch = platform.split("/")
        manifests.append(
            descriptor(OCI_MANIFEST, image.manifest, platform={"architecture": arch, "os": os_name})
        )
    return dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests})


def write_oci_layout(directory: Path, image: SampleImage, tag: str) -> None:
    """An OCI image layout with one tagged manifest, written file by file."""
    blob_dir = directory / "blobs" / "sha256"
    blob_dir.mkdir(parents=True, exist_ok=True)
    (directory / "oci-layout").write_bytes(dumps({"imageLayoutVersion": "1.0.0"}))
    for digest, data in [*image.blobs.items(), (image.digest, image.manifest)]:
        (blob_dir / digest.split(":", 1)[1]).write_bytes(data)
    index = {
        "schemaVersion": 2,
        "manifests": [
            descriptor(OCI_MANIFEST, image.manifest, annotations={"org.opencontainers.image.ref.name": tag})
        ],
    }
    (directory / "index.json").write_bytes(dumps(index))


def read_oci_layout(directory: Path, tag: str) -> tuple[bytes, dict[str, bytes]]:
    """(manifest bytes, blobs by digest) of a tag in an OCI layout written by another tool."""
    index = json.loads((directory / "index.json").read_bytes())
    for entry in index["manifests"]:
        if entry.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            blob_dir = directory / "blobs" / "sha256"
            manifest = (blob_dir / entry["digest"].split(":", 1)[1]).read_bytes()
            parsed = json.loads(manifest)
            blobs = {}
            for desc in [parsed["config"], *parsed["layers"]]:
                blobs[desc["digest"]] = (blob_dir / desc["digest"].split(":", 1)[1]).read_bytes()
            return manifest, blobs
    raise KeyError(tag)
