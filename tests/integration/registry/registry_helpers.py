"""Push and pull helpers shared by the registry integration tests."""

from __future__ import annotations

from dataclasses import dataclass

from layerseal.image.descriptor import Descriptor
from layerseal.image.digest import Digest
from layerseal.image.manifest import Manifest
from layerseal.registry import RegistryDestination, RegistryOptions, RegistrySource, RetryPolicy
from support.certs import TlsFiles
from support.oci_images import OCI_INDEX, OCI_MANIFEST, SampleImage
from support.registry_server import RegistryServer
from support.token_server import TokenServer

LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
USER, PASSWORD = "alice", "wonder-land-42"
READER, READER_PASSWORD = "rita", "read-only-7"
SERVICE = "layerseal-test-registry"


def fast_options(**kw: object) -> RegistryOptions:
    """Options with short retry delays, so fault tests run quickly."""
    kw.setdefault("retry", RetryPolicy(max_attempts=5, base_delay=0.01, max_delay=0.05))
    return RegistryOptions(**kw)  # type: ignore[arg-type]


@dataclass
class TlsRegistry:
    server: RegistryServer
    files: TlsFiles


@dataclass
class TokenRegistry:
    server: RegistryServer
    tokens: TokenServer


def desc_of(digest: str, data: bytes, media_type: str = LAYER) -> Descriptor:
    return Descriptor(media_type, Digest.parse(digest), len(data))


def push_blobs(dst: RegistryDestination, image: SampleImage) -> None:
    for digest, data in image.blobs.items():
        dst.put_blob(iter([data]), LAYER, expected=desc_of(digest, data))


def push_image(dst: RegistryDestination, image: SampleImage) -> Descriptor:
    push_blobs(dst, image)
    return dst.put_manifest(image.manifest, OCI_MANIFEST)


def pull_image(src: RegistrySource, digest: Digest | None = None) -> tuple[bytes, dict[str, bytes]]:
    data, media_type = src.get_manifest(digest)
    assert media_type == OCI_MANIFEST
    manifest = Manifest.from_bytes(data)
    blobs = {str(d.digest): b"".join(src.iter_blob(d)) for d in (manifest.config, *manifest.layers)}
    return data, blobs


__all__ = [
    "OCI_INDEX",
    "OCI_MANIFEST",
    "PASSWORD",
    "READER",
    "READER_PASSWORD",
    "SERVICE",
    "USER",
    "TlsRegistry",
    "TokenRegistry",
    "desc_of",
    "fast_options",
    "pull_image",
    "push_blobs",
    "push_image",
]
