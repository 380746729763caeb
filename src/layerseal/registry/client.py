"""Low-level OCI distribution-spec v1.1 client for one registry, on httpx.

:class:`RegistryClient` is the API the rest of layerseal uses; the work is done by a
:class:`~layerseal.registry.session.RegistrySession` (base URL, authentication, the one
retry policy, error mapping) and the endpoint groups over it: manifests and listings,
blob downloads (verified, resumed with ``Range``) and blob uploads (single PUT, streamed
PATCH or ``Content-Range`` chunks).  One client is safe to share between threads.
"""

from __future__ import annotations

import time
from collections.abc import Callable

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
        manifests, downloads = Manifests(self.session), Downloads(self.session)
        uploads = Uploads(self.session, downloads.stat)
        # the endpoint groups' methods are the client's API (see their docstrings)
        self.get_manifest = manifests.get
        self.head_manifest = manifests.head
        self.put_manifest = manifests.put
        self.delete_manifest = manifests.delete
        self.list_tags = manifests.list_tags
        self.referrers = manifests.referrers
        self.stat_blob = downloads.stat
        self.iter_blob = downloads.iter_blob
        self.mount_blob = uploads.mount
        self.upload_blob = uploads.upload

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
