"""Low-level OCI distribution-spec v1.1 client for one registry, on httpx.

:class:`RegistryClient` is the API the rest of layerseal uses; the work is done by a
:class:`~layerseal.registry.session.RegistrySession` (base URL, authentication, the one
retry policy, error mapping) and the endpoint groups over it: manifests and listings,
blob downloads (verified, resumed with ``Range``) and blob uploads (single PUT, streamed
PATCH or ``Content-Range`` chunks).  One client is safe to share between threads.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator

from layerseal.image.descriptor import Descriptor
from layerseal.image.digest import Digest
from layerseal.registry.auth import Authenticator
from layerseal.registry.downloads import MIN_PIECE, Downloads
from layerseal.registry.manifests import MANIFEST_ACCEPT, Manifests
from layerseal.registry.options import RegistryOptions
from layerseal.registry.session import RegistrySession
from layerseal.registry.uploads import Uploads

__all__ = ["MANIFEST_ACCEPT", "MIN_PIECE", "RegistryClient"]


class RegistryClient:
    """The distribution API of one registry host (``registry`` as users write it)."""

    def __init__(
        self,
        registry: str,
        options: RegistryOptions | None = None,
        *,
        repository: str | None = None,
        push: bool = False,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.options = options = options or RegistryOptions()
        self.session = RegistrySession(registry, options, repository=repository, push=push, sleep=sleep)
        self.registry = registry
        self.host = self.session.host
        self._manifests = Manifests(self.session)
        self._downloads = Downloads(self.session)
        self._uploads = Uploads(self.session, self._downloads.stat)

    @property
    def auth(self) -> Authenticator:
        return self.session.auth

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def base_url(self) -> str:
        """``https://HOST`` or, with ``tls_verify=False`` and no TLS listener, ``http://HOST``."""
        return self.session.base_url()

    def ping(self) -> None:
        """Check that the registry speaks the v2 API (401 counts: auth comes later)."""
        self.session.ping()

    # ----------------------------------------------------------------- manifests and listings

    def get_manifest(
        self, repository: str, reference: str, accept: str = MANIFEST_ACCEPT
    ) -> tuple[bytes, str, Digest]:
        """Manifest bytes, media type and digest; the digest is verified when known."""
        return self._manifests.get(repository, reference, accept)

    def head_manifest(self, repository: str, reference: str) -> Descriptor | None:
        """The descriptor of a manifest, or None when the registry does not have it."""
        return self._manifests.head(repository, reference)

    def put_manifest(self, repository: str, reference: str, data: bytes, media_type: str) -> Descriptor:
        """Upload a manifest under a tag or its digest; checks the digest the registry reports."""
        return self._manifests.put(repository, reference, data, media_type)

    def delete_manifest(self, repository: str, digest: Digest) -> None:
        self._manifests.delete(repository, digest)

    def list_tags(self, repository: str, page_size: int | None = None) -> list[str]:
        """All tags of a repository, following ``Link: <...>; rel="next"`` pagination."""
        return self._manifests.list_tags(repository, page_size)

    def referrers(
        self, repository: str, digest: Digest, artifact_type: str | None = None
    ) -> list[Descriptor]:
        """Manifests whose ``subject`` is *digest*: the referrers API, else the ``sha256-HEX`` tag schema."""
        return self._manifests.referrers(repository, digest, artifact_type)

    # ----------------------------------------------------------------- blobs

    def stat_blob(self, repository: str, digest: Digest) -> int | None:
        """The size of a blob the registry holds, or None when it does not."""
        return self._downloads.stat(repository, digest)

    def iter_blob(self, repository: str, desc: Descriptor) -> Iterator[bytes]:
        """Stream a blob, verifying digest and size; resumes with ``Range`` after a broken connection."""
        return self._downloads.iter_blob(repository, desc)

    def mount_blob(self, repository: str, digest: Digest, from_repository: str) -> bool:
        """Cross-repository mount; False when the registry could not mount (nothing is left behind)."""
        return self._uploads.mount(repository, digest, from_repository)

    def upload_blob(
        self,
        repository: str,
        chunks: Iterable[bytes],
        expected: Descriptor | None = None,
        *,
        verified: bool = False,
    ) -> tuple[Digest, int]:
        """Upload a stream (digest computed on the way) and commit it only after a clean end."""
        return self._uploads.upload(repository, chunks, expected, verified=verified)
