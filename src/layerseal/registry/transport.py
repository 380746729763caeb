"""``docker://`` references as an :class:`ImageSource` and an :class:`ImageDestination`."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

from layerseal.errors import BadInputError, DeniedError, IntegrityError, NotFoundError
from layerseal.image.descriptor import Descriptor
from layerseal.image.digest import Digest
from layerseal.image.transport import ImageDestination
from layerseal.registry.client import RegistryClient
from layerseal.registry.options import RegistryOptions
from layerseal.registry.reference import RegistryReference, parse_reference, validate_repository

log = logging.getLogger(__name__)

__all__ = [
    "RegistryDestination",
    "RegistryOptions",
    "RegistrySource",
    "open_registry_destination",
    "open_registry_source",
]


class _RegistryEnd:
    def __init__(self, name: str, reference: RegistryReference, client: RegistryClient) -> None:
        self._name = name
        self.reference = reference
        self.client = client

    @property
    def name(self) -> str:
        return self._name

    @property
    def repository(self) -> str:
        return self.reference.repository

    def list_tags(self) -> list[str]:
        return self.client.list_tags(self.repository)

    def close(self) -> None:
        self.client.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._name!r})"


class RegistrySource(_RegistryEnd):
    """Reads the image a registry reference names."""

    def __enter__(self) -> RegistrySource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get_manifest(self, digest: Digest | None = None) -> tuple[bytes, str]:
        """The manifest by *digest*, or by the reference's digest or tag; digests are verified."""
        data, media_type, _ = self.client.get_manifest(
            self.repository, str(digest) if digest is not None else self.reference.reference
        )
        return data, media_type

    def iter_blob(self, desc: Descriptor) -> Iterator[bytes]:
        return self.client.iter_blob(self.repository, desc)

    def referrers(self, digest: Digest, artifact_type: str | None = None) -> list[Descriptor]:
        return self.client.referrers(self.repository, digest, artifact_type)


class RegistryDestination(_RegistryEnd, ImageDestination):
    """Writes an image to a registry reference; the manifest PUT is the commit point."""

    def __enter__(self) -> RegistryDestination:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def has_blob(self, desc: Descriptor) -> bool:
        size = self.client.stat_blob(self.repository, desc.digest)
        return size is not None and size in (desc.size, -1)

    def _write_blob(
        self, chunks: Iterable[bytes], expected: Descriptor | None, trusted: bool
    ) -> tuple[Digest, int]:
        if expected is not None and self.has_blob(expected):
            close = getattr(chunks, "close", None)
            if callable(close):  # release the source stream we are not going to read
                close()
            return expected.digest, expected.size
        return self.client.upload_blob(self.repository, chunks, expected, verified=trusted)

    def mount_blob(self, desc: Descriptor, from_repo: str) -> bool:
        """Mount *desc* from repository *from_repo* of the same registry; False if not mounted."""
        validate_repository(from_repo)
        if from_repo == self.repository:
            return self.has_blob(desc)
        return self.client.mount_blob(self.repository, desc.digest, from_repo)

    def mount_from(self, source: object, desc: Descriptor) -> bool:
        """Mount *desc* when *source* is another repository of this registry, as skopeo does.

        False when it is not, or when the registry declines or the credentials may not read
        the source repository: the caller then uploads the blob.
        """
        if not isinstance(source, RegistrySource) or source.reference.registry != self.reference.registry:
            return False
        if source.repository == self.repository:
            return False
        try:
            return self.mount_blob(desc, source.repository)
        except (DeniedError, NotFoundError) as exc:
            log.debug("%s: mount of %s from %s refused: %s", self.name, desc.digest, source.repository, exc)
            return False

    def put_manifest(self, data: bytes, media_type: str) -> Descriptor:
        """Push to the reference's tag, or by digest when the reference names only a digest."""
        ref = self.reference
        if ref.tag is None:
            assert ref.digest is not None
            actual = Digest.of(data, ref.digest.algorithm)
            if actual != ref.digest:
                raise IntegrityError(
                    f"{self.name}: expected manifest with digest {ref.digest}, seen {actual}"
                )
        return self.client.put_manifest(
            self.repository, ref.reference if ref.tag is None else ref.tag, data, media_type
        )

    def put_manifest_by_digest(self, data: bytes, media_type: str) -> Descriptor:
        """Push a manifest without a tag (the children of an index)."""
        return self.client.put_manifest(self.repository, str(Digest.of(data)), data, media_type)


def _open(ref: str, options: RegistryOptions, push: bool) -> tuple[RegistryReference, RegistryClient]:
    if not isinstance(options, RegistryOptions):
        raise BadInputError(f"registry options: expected RegistryOptions, seen {type(options).__name__}")
    reference = parse_reference(ref)
    return reference, RegistryClient(reference.registry, options, repository=reference.repository, push=push)


def open_registry_source(ref: str, options: RegistryOptions | None = None) -> RegistrySource:
    reference, client = _open(ref, options or RegistryOptions(), push=False)
    return RegistrySource(ref, reference, client)


def open_registry_destination(ref: str, options: RegistryOptions | None = None) -> RegistryDestination:
    reference, client = _open(ref, options or RegistryOptions(), push=True)
    return RegistryDestination(ref, reference, client)
