"""Media types of OCI and Docker images, and the ``+encrypted`` layer variants."""

from __future__ import annotations

from layerseal.errors import BadInputError

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"

OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_ND_LAYER_TAR = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_ND_LAYER_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
OCI_ND_LAYER_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_FOREIGN_LAYER_GZIP = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

ENCRYPTED_SUFFIX = "+encrypted"

MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})

_OCI_LAYERS = frozenset(
    {OCI_LAYER_TAR, OCI_LAYER_GZIP, OCI_LAYER_ZSTD, OCI_ND_LAYER_TAR, OCI_ND_LAYER_GZIP, OCI_ND_LAYER_ZSTD}
)
# ocicrypt converts Docker layer types to their OCI equivalents when it encrypts.
_DOCKER_TO_OCI = {DOCKER_LAYER_GZIP: OCI_LAYER_GZIP, DOCKER_FOREIGN_LAYER_GZIP: OCI_ND_LAYER_GZIP}
PLAIN_LAYERS = _OCI_LAYERS | frozenset(_DOCKER_TO_OCI)
ENCRYPTED_LAYERS = frozenset(t + ENCRYPTED_SUFFIX for t in _OCI_LAYERS)


def is_layer(media_type: str) -> bool:
    return media_type in PLAIN_LAYERS or media_type in ENCRYPTED_LAYERS


def is_encrypted(media_type: str) -> bool:
    return media_type in ENCRYPTED_LAYERS


def encrypted_type(media_type: str) -> str:
    """The ``+encrypted`` media type ocicrypt gives a plain layer type."""
    if media_type in ENCRYPTED_LAYERS:
        raise BadInputError(f"layer media type: expected an unencrypted type, seen {media_type!r}")
    oci = _DOCKER_TO_OCI.get(media_type, media_type)
    if oci not in _OCI_LAYERS:
        raise BadInputError(f"layer media type: expected one of {sorted(PLAIN_LAYERS)}, seen {media_type!r}")
    return oci + ENCRYPTED_SUFFIX


def decrypted_type(media_type: str) -> str:
    if media_type not in ENCRYPTED_LAYERS:
        raise BadInputError(
            f"layer media type: expected one of {sorted(ENCRYPTED_LAYERS)}, seen {media_type!r}"
        )
    return media_type[: -len(ENCRYPTED_SUFFIX)]


def compression(media_type: str) -> str:
    """``gzip``, ``zstd`` or ``none`` for a (plain or encrypted) layer type."""
    base = media_type.removesuffix(ENCRYPTED_SUFFIX)
    if base.endswith("gzip"):
        return "gzip"
    if base.endswith("zstd"):
        return "zstd"
    if base.endswith("tar"):
        return "none"
    raise BadInputError(f"layer media type: expected a tar layer type, seen {media_type!r}")
