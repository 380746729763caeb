"""The OCI image model (pure: bytes in, objects out; no I/O).

The names below load with their module on first use, so that importing one submodule
(``layerseal.image.mediatypes``, say) does not load them all: a command that fails before
it reads an image must not pay for the model (issue 20).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from layerseal.image.config import ImageConfig
    from layerseal.image.descriptor import Descriptor, Platform
    from layerseal.image.digest import Digest, DigestVerifier
    from layerseal.image.manifest import Index, Manifest, parse_any

# name -> submodule defining it
_LAZY = {
    "Descriptor": "descriptor",
    "Digest": "digest",
    "DigestVerifier": "digest",
    "ImageConfig": "config",
    "Index": "manifest",
    "Manifest": "manifest",
    "Platform": "descriptor",
    "parse_any": "manifest",
}

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


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
