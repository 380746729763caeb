"""Open the ``oci:`` or ``docker://`` end of a copy from the reference the user wrote."""

from __future__ import annotations

from typing import TYPE_CHECKING

from layerseal.errors import BadInputError
from layerseal.image.transport import ImageDestination, ImageSource
from layerseal.layout.oci import LayoutDestination, LayoutReference, LayoutSource

if TYPE_CHECKING:  # the registry stack (httpx) loads only when a docker:// reference needs it
    from layerseal.registry.transport import RegistryOptions

_SCHEMES = "oci:DIR[:TAG] or docker://HOST[:PORT]/REPO[:TAG|@DIGEST]"


def _scheme(ref: str) -> str:
    if ref.startswith("oci:"):
        return "oci"
    if ref.startswith("docker://"):
        return "docker"
    raise BadInputError(f"image reference {ref!r}: expected {_SCHEMES}")


def open_source(ref: str, registry: RegistryOptions | None = None) -> ImageSource:
    if _scheme(ref) == "oci":
        return LayoutSource(LayoutReference.parse(ref))
    from layerseal.registry.transport import RegistryOptions, open_registry_source

    return open_registry_source(ref, registry or RegistryOptions())


def open_destination(ref: str, registry: RegistryOptions | None = None) -> ImageDestination:
    if _scheme(ref) == "oci":
        return LayoutDestination(LayoutReference.parse(ref))
    from layerseal.registry.transport import RegistryOptions, open_registry_destination

    return open_registry_destination(ref, registry or RegistryOptions())
