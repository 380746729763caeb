"""``docker://HOST[:PORT]/REPO[:TAG|@DIGEST]`` references, validated as distribution does.

Grammar follows distribution/reference: the first path component is a registry host
only when it contains ``.`` or ``:`` or is ``localhost``; otherwise the name lives on
Docker Hub, whose one-component names get the ``library/`` prefix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from layerseal.errors import BadInputError
from layerseal.image.digest import Digest

DOCKER_HUB = "docker.io"
#: the host that actually serves Docker Hub's distribution API
DOCKER_HUB_API = "registry-1.docker.io"
DEFAULT_TAG = "latest"
TRANSPORT_PREFIX = "docker://"

_HOST_LABEL = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)"
_HOST_RE = re.compile(rf"^(?:{_HOST_LABEL}(?:\.{_HOST_LABEL})*|\[[a-fA-F0-9:]+\])(?::[0-9]{{1,5}})?$")
_COMPONENT_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")
_MAX_NAME = 255


def validate_repository(repository: str) -> str:
    """Return *repository* when it is a valid repository path, else raise BadInputError."""
    if not repository or len(repository) > _MAX_NAME:
        raise BadInputError(f"repository name: expected 1 to {_MAX_NAME} characters, seen {len(repository)}")
    for part in repository.split("/"):
        if not _COMPONENT_RE.match(part):
            raise BadInputError(
                "repository name: expected lowercase components like 'team/app' "
                f"([a-z0-9] joined by '.', '_', '__' or '-'), seen {repository!r}"
            )
    return repository


def validate_tag(tag: str) -> str:
    if not _TAG_RE.match(tag):
        raise BadInputError(
            f"tag: expected up to 128 of [A-Za-z0-9_.-] not starting with '.' or '-', seen {tag!r}"
        )
    return tag


@dataclass(frozen=True)
class RegistryReference:
    """A parsed registry reference; ``registry`` is the name users write (``docker.io``)."""

    registry: str
    repository: str
    tag: str | None = None
    digest: Digest | None = None

    def __post_init__(self) -> None:
        if not _HOST_RE.match(self.registry):
            raise BadInputError(f"registry host: expected HOST[:PORT], seen {self.registry!r}")
        validate_repository(self.repository)
        if self.tag is not None:
            validate_tag(self.tag)
        if self.tag is None and self.digest is None:
            raise BadInputError(f"reference {self.registry}/{self.repository}: expected a tag or a digest")

    @property
    def api_host(self) -> str:
        """The host (and port) to which API requests go."""
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def reference(self) -> str:
        """What goes after ``/manifests/``: the digest when there is one, else the tag."""
        if self.digest is not None:
            return str(self.digest)
        assert self.tag is not None  # guaranteed by __post_init__
        return self.tag

    def with_tag(self, tag: str) -> RegistryReference:
        return replace(self, tag=tag, digest=None)

    def with_digest(self, digest: Digest) -> RegistryReference:
        return replace(self, tag=None, digest=digest)

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


def _is_host(component: str) -> bool:
    return "." in component or ":" in component or component == "localhost"


def parse_reference(text: str) -> RegistryReference:
    """Parse ``[docker://]HOST[:PORT]/REPO[:TAG][@DIGEST]`` (host optional: Docker Hub)."""
    if not isinstance(text, str) or not text:
        raise BadInputError("registry reference: expected 'docker://HOST/REPO[:TAG|@DIGEST]', seen ''")
    rest = text.removeprefix(TRANSPORT_PREFIX)
    if rest.startswith("/") or not rest:
        raise BadInputError(f"registry reference: expected 'docker://HOST/REPO[:TAG|@DIGEST]', seen {text!r}")

    digest: Digest | None = None
    if "@" in rest:
        rest, _, digest_text = rest.partition("@")
        try:
            digest = Digest.parse(digest_text)
        except BadInputError as exc:
            raise BadInputError(f"registry reference {text!r}: {exc}") from exc

    tag: str | None = None
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1 :]
        if not tag:
            raise BadInputError(f"registry reference {text!r}: expected a tag after ':', seen nothing")

    first, sep, remainder = rest.partition("/")
    if sep and _is_host(first):
        registry, repository = first, remainder
    else:
        registry, repository = DOCKER_HUB, rest
    if registry == "index.docker.io":
        registry = DOCKER_HUB
    if registry == DOCKER_HUB and repository and "/" not in repository:
        repository = f"library/{repository}"
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    try:
        return RegistryReference(registry=registry, repository=repository, tag=tag, digest=digest)
    except BadInputError as exc:
        raise BadInputError(f"registry reference {text!r}: {exc}") from exc
