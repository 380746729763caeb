"""Parsing and validation of docker:// references."""

from __future__ import annotations

import pytest

from layerseal.errors import BadInputError
from layerseal.image.digest import Digest
from layerseal.registry.reference import RegistryReference, parse_reference

D = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        ("docker://127.0.0.1:5000/team/app:v1", "127.0.0.1:5000", "team/app", "v1", None),
        ("docker://localhost/app", "localhost", "app", "latest", None),
        ("docker://busybox", "docker.io", "library/busybox", "latest", None),
        ("docker://docker.io/busybox:1.36", "docker.io", "library/busybox", "1.36", None),
        ("docker://index.docker.io/user/app", "docker.io", "user/app", "latest", None),
        ("docker://user/app", "docker.io", "user/app", "latest", None),
        (f"docker://quay.io/a/b/c@{D}", "quay.io", "a/b/c", None, D),
        (f"ghcr.io/org/img:tag@{D}", "ghcr.io", "org/img", "tag", D),
        ("docker://[::1]:5000/x:y", "[::1]:5000", "x", "y", None),
        ("docker://reg.example:443/a__b/c-d.e:T_1.0-x", "reg.example:443", "a__b/c-d.e", "T_1.0-x", None),
    ],
)
def test_valid_references(
    text: str, registry: str, repository: str, tag: str | None, digest: str | None
) -> None:
    ref = parse_reference(text)
    assert (ref.registry, ref.repository, ref.tag) == (registry, repository, tag)
    assert ref.digest == (Digest.parse(digest) if digest else None)


def test_docker_hub_api_host_and_reference_part() -> None:
    ref = parse_reference("docker://busybox")
    assert ref.api_host == "registry-1.docker.io"
    assert ref.reference == "latest"
    assert str(ref) == "docker.io/library/busybox:latest"
    by_digest = parse_reference(f"docker://r.io/a@{D}")
    assert by_digest.reference == D
    assert parse_reference("docker://r.io:5000/a").api_host == "r.io:5000"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "expected"),
        ("docker://", "expected"),
        ("docker://r.io/Upper/app", "lowercase"),
        ("docker://r.io/app:", "tag after"),
        ("docker://r.io/app:-bad", "tag"),
        ("docker://r.io/a//b", "lowercase"),
        ("docker://r.io/app@sha256:xyz", "digest"),
        ("docker://r.io/app@md5:" + "a" * 32, "algorithm"),
        ("docker://r.io/" + "a" * 256, "255"),
        ("docker://bad_host.io:x/app", "HOST[:PORT]"),
    ],
)
def test_invalid_references(text: str, fragment: str) -> None:
    with pytest.raises(BadInputError) as info:
        parse_reference(text)
    assert fragment in str(info.value)


def test_reference_needs_tag_or_digest() -> None:
    with pytest.raises(BadInputError, match="tag or a digest"):
        RegistryReference("r.io", "app")
    ref = RegistryReference("r.io", "app", tag="v1")
    assert ref.with_digest(Digest.parse(D)).reference == D
    assert ref.with_tag("v2").tag == "v2"


def test_reference_is_frozen() -> None:
    ref = parse_reference("docker://r.io/app:v1")
    with pytest.raises(AttributeError):
        ref.tag = "v2"  # type: ignore[misc]
