"""The two seams every image copy goes through: where an image is read and where it is written.

``oci:`` layouts and ``docker://`` registries implement them; the copy pipeline only
talks to them.  Blob streams are iterators of ``bytes`` chunks; a source verifies size
and digest while streaming and raises :class:`IntegrityError` from the iterator (after
the last chunk at the latest) when they do not match.  A destination commits a blob only
when the chunk iterator ran to its end without raising.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Protocol

from layerseal.errors import BadInputError

# the image model loads when an image is read or written, not with these seams: a command
# that fails on its reference or a missing layout never needs it (issue 20)
if TYPE_CHECKING:
    from layerseal.image.config import ImageConfig
    from layerseal.image.descriptor import Descriptor, Platform
    from layerseal.image.digest import Digest
    from layerseal.image.manifest import Index, Manifest

#: chunk size used for streaming blobs everywhere
CHUNK_SIZE = 2 * 1024 * 1024


class ImageSource(Protocol):
    """Read side of an image reference."""

    @property
    def name(self) -> str:
        """The reference as the user wrote it, for messages."""
        ...

    def get_manifest(self, digest: Digest | None = None) -> tuple[bytes, str]:
        """Manifest (or index) bytes and media type; ``None`` means the tagged one."""
        ...

    def iter_blob(self, desc: Descriptor) -> Iterator[bytes]:
        """Blob content, verified against ``desc.digest`` and ``desc.size`` while streaming."""
        ...

    def close(self) -> None: ...


class ImageDestination(ABC):
    """Write side of an image reference; an implementation stores blobs in :meth:`_write_blob`."""

    @property
    @abstractmethod
    def name(self) -> str: ...

    @abstractmethod
    def has_blob(self, desc: Descriptor) -> bool:
        """True when the destination already holds this exact blob."""

    def put_blob(
        self,
        chunks: Iterable[bytes],
        media_type: str,
        expected: Descriptor | None = None,
        *,
        verified: bool = False,
    ) -> Descriptor:
        """Store a blob whose digest may be unknown in advance; commit only on a clean end of *chunks*.

        When *expected* is given, the stored bytes must match its digest and size.
        ``verified=True`` says *chunks* is an ``ImageSource.iter_blob(expected)`` stream,
        which raises unless the bytes match *expected*: the destination may then skip
        hashing them again (it still commits only on a clean end of the stream).
        Returns the stored blob's descriptor, of *media_type*.
        """
        from layerseal.image.descriptor import Descriptor

        digest, size = self._write_blob(chunks, expected, verified and expected is not None)
        return Descriptor(media_type=media_type, digest=digest, size=size)

    @abstractmethod
    def _write_blob(
        self, chunks: Iterable[bytes], expected: Descriptor | None, trusted: bool
    ) -> tuple[Digest, int]:
        """Store *chunks* as :meth:`put_blob` says; the digest and size stored.  *trusted*:
        *chunks* is a verified stream of *expected* (its bytes need no hashing again)."""

    @abstractmethod
    def put_manifest(self, data: bytes, media_type: str) -> Descriptor:
        """Store manifest bytes and point the destination's tag at them (the commit point)."""

    @abstractmethod
    def close(self) -> None: ...


#: image configs larger than this are refused (they are JSON read into memory)
MAX_CONFIG_BYTES = 8 * 1024 * 1024


def resolve_manifest(src: ImageSource, platform: Platform | None = None) -> tuple[bytes, str, Manifest]:
    """The image manifest of *src*, choosing *platform*'s entry (default: this host) from an index."""
    from layerseal.image.manifest import parse_any

    data, media_type = src.get_manifest()
    return select_manifest(
        src, data, media_type, parse_any(data, media_type, f"manifest of {src.name}"), platform
    )


def select_manifest(
    src: ImageSource, data: bytes, media_type: str, parsed: Manifest | Index, platform: Platform | None = None
) -> tuple[bytes, str, Manifest]:
    """:func:`resolve_manifest` for a top-level manifest the caller already fetched and parsed."""
    from layerseal.image.descriptor import Platform
    from layerseal.image.manifest import Index, parse_any

    if isinstance(parsed, Index):
        entry = parsed.select(platform or Platform.host())
        data, media_type = src.get_manifest(entry.digest)
        parsed = parse_any(data, media_type, f"manifest {entry.digest} of {src.name}")
        if isinstance(parsed, Index):
            raise BadInputError(f"{src.name}: expected an image manifest below the index, seen another index")
    return data, media_type, parsed


def read_config(src: ImageSource, manifest: Manifest) -> ImageConfig:
    from layerseal.image.config import ImageConfig

    if manifest.config.size > MAX_CONFIG_BYTES:
        raise BadInputError(
            f"config of {src.name}: expected at most {MAX_CONFIG_BYTES} bytes, seen {manifest.config.size}"
        )
    return ImageConfig.from_bytes(b"".join(src.iter_blob(manifest.config)), f"config of {src.name}")
