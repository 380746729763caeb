"""The OCI image model (pure: bytes in, objects out; no I/O)."""

from layerseal.image.config import ImageConfig
from layerseal.image.descriptor import Descriptor, Platform
from layerseal.image.digest import Digest, DigestVerifier
from layerseal.image.manifest import Index, Manifest, parse_any

__all__ = [
    "Descriptor",
    "Digest",
    "DigestVerifier",
    "ImageConfig",
    "Index",
    "Manifest",
    "Platform",
    "parse_any",
]
