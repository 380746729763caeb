"""Manifests, tag lists and referrers of a registry: small documents, read whole and bounded.

Manifest digests are verified (the reference's digest, else ``Docker-Content-Digest``);
tag lists follow ``Link: <...>; rel="next"`` pagination; referrers fall back to the
``sha256-HEX`` tag schema when the registry lacks the referrers API.
"""

from __future__ import annotations

from typing import Any

import httpx

from layerseal.errors import BadInputError, IntegrityError, NotFoundError, TransportError
from layerseal.image import jsonutil
from layerseal.image import mediatypes as mt
from layerseal.image.descriptor import Descriptor
from layerseal.image.digest import Digest
from layerseal.image.manifest import MAX_MANIFEST_BYTES, Index, detect_media_type
from layerseal.registry.reference import validate_repository
from layerseal.registry.session import PULL, PUSH, RegistrySession

#: every manifest type layerseal reads, most preferred first
MANIFEST_ACCEPT = ", ".join((mt.OCI_MANIFEST, mt.OCI_INDEX, mt.DOCKER_MANIFEST, mt.DOCKER_MANIFEST_LIST))
_MAX_LIST_BODY = 16 * 1024 * 1024
_MAX_PAGES = 10_000


def content_type(response: httpx.Response) -> str:
    value: str = response.headers.get("content-type", "")
    return value.split(";", 1)[0].strip()


def digest_header(response: httpx.Response, what: str) -> Digest | None:
    value = response.headers.get("docker-content-digest")
    if not value:
        return None
    try:
        return Digest.parse(value.strip())
    except BadInputError as exc:
        raise TransportError(f"{what}: header Docker-Content-Digest: {exc}") from exc


def _is_digest(reference: str) -> bool:
    return ":" in reference


class Manifests:
    """The manifest, tag and referrers endpoints over one :class:`RegistrySession`."""

    def __init__(self, session: RegistrySession) -> None:
        self._session = session

    def get(
        self, repository: str, reference: str, accept: str = MANIFEST_ACCEPT
    ) -> tuple[bytes, str, Digest]:
        """Manifest bytes, media type and digest; the digest is verified when known."""
        validate_repository(repository)
        what = f"manifest {reference}"
        response, data = self._session.get_bounded(
            f"/v2/{repository}/manifests/{reference}",
            repository,
            what,
            MAX_MANIFEST_BYTES,
            {"Accept": accept},
        )
        where = f"{self._session.where(repository)}: {what}"
        expected = Digest.parse(reference) if _is_digest(reference) else digest_header(response, where)
        actual = Digest.of(data, expected.algorithm if expected else "sha256")
        if expected is not None and actual != expected:
            raise IntegrityError(f"{where}: expected digest {expected}, seen {actual}")
        media_type = detect_media_type(data, content_type(response) or None, where)
        return data, media_type, actual

    def head(self, repository: str, reference: str) -> Descriptor | None:
        """The descriptor of a manifest, or None when the registry does not have it."""
        what = f"manifest {reference} (HEAD)"
        url = f"/v2/{repository}/manifests/{reference}"
        accept = {"Accept": MANIFEST_ACCEPT}
        response = self._session.request(
            "HEAD", url, repository, PULL, what, expect=(200, 404), headers=accept
        )
        if response.status_code == 404:
            return None
        digest = digest_header(response, what)
        length = response.headers.get("content-length", "")
        if digest is None or not length.isdigit():
            data, media_type, digest = self.get(repository, reference)
            return Descriptor(media_type, digest, len(data))
        return Descriptor(content_type(response) or mt.OCI_MANIFEST, digest, int(length))

    def put(self, repository: str, reference: str, data: bytes, media_type: str) -> Descriptor:
        """Upload a manifest under a tag or its digest; checks the digest the registry reports."""
        validate_repository(repository)
        what = f"manifest {reference} (PUT)"
        if len(data) > MAX_MANIFEST_BYTES:
            raise BadInputError(f"{what}: expected at most {MAX_MANIFEST_BYTES} bytes, seen {len(data)}")
        digest = Digest.of(data, Digest.parse(reference).algorithm if _is_digest(reference) else "sha256")
        if _is_digest(reference) and str(digest) != reference:
            raise IntegrityError(f"{what}: expected manifest bytes with digest {reference}, seen {digest}")
        url = f"/v2/{repository}/manifests/{reference}"
        headers = {"Content-Type": media_type}
        response = self._session.request(
            "PUT", url, repository, PUSH, what, expect=(201,), headers=headers, content=data
        )
        reported = digest_header(response, what)
        if reported is not None and reported.algorithm == digest.algorithm and reported != digest:
            raise IntegrityError(
                f"{self._session.where(repository)}: {what}: expected digest {digest}, seen {reported}"
            )
        return Descriptor(media_type, digest, len(data))

    def delete(self, repository: str, digest: Digest) -> None:
        what = f"manifest {digest} (DELETE)"
        url = f"/v2/{repository}/manifests/{digest}"
        self._session.request("DELETE", url, repository, ("delete",), what, expect=(200, 202)).close()

    def list_tags(self, repository: str, page_size: int | None = None) -> list[str]:
        """All tags of a repository, following ``Link: <...>; rel="next"`` pagination."""
        validate_repository(repository)
        where = f"{self._session.where(repository)}: tag list"
        url = f"/v2/{repository}/tags/list" + (f"?n={page_size}" if page_size else "")
        tags: list[str] = []
        seen_urls: set[str] = set()
        for _ in range(_MAX_PAGES):
            response, data = self._session.get_bounded(
                url, repository, "tag list", _MAX_LIST_BODY, {"Accept": "application/json"}
            )
            body: Any = jsonutil.loads_object(data, where)
            page = body.get("tags") or []
            if not isinstance(page, list) or not all(isinstance(t, str) for t in page):
                raise BadInputError(f"{where}: field 'tags': expected strings")
            tags.extend(page)
            link = response.links.get("next", {}).get("url")
            if not link:
                return tags
            url = str(response.url.join(link))
            if url in seen_urls:
                raise TransportError(f"{where}: pagination loops at {url}")
            seen_urls.add(url)
        raise TransportError(f"{where}: expected at most {_MAX_PAGES} pages, seen more")

    def referrers(
        self, repository: str, digest: Digest, artifact_type: str | None = None
    ) -> list[Descriptor]:
        """Manifests whose ``subject`` is *digest*: the referrers API, else the ``sha256-HEX`` tag schema."""
        validate_repository(repository)
        what = f"referrers of {digest}"
        url = f"/v2/{repository}/referrers/{digest}"
        if artifact_type:
            url = str(httpx.URL(url).copy_add_param("artifactType", artifact_type))
        try:
            _, data = self._session.get_bounded(
                url, repository, what, MAX_MANIFEST_BYTES, {"Accept": mt.OCI_INDEX}
            )
        except NotFoundError:
            try:
                data, _, _ = self.get(repository, f"{digest.algorithm}-{digest.hex}", accept=mt.OCI_INDEX)
            except NotFoundError:
                return []
        index = Index.from_bytes(data, f"{self._session.where(repository)}: {what}")
        found = list(index.manifests)
        if artifact_type:
            found = [d for d in found if d.artifact_type == artifact_type]
        return found
