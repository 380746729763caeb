"""Faults injected by a proxy between our client and the real docker-registry."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from registry_helpers import desc_of, fast_options, push_image

from layerseal.errors import BadInputError, IntegrityError, TransportError
from layerseal.image.manifest import MAX_MANIFEST_BYTES
from layerseal.image.transport import CHUNK_SIZE
from layerseal.registry import RetryPolicy, open_registry_destination, open_registry_source
from support.fault_proxy import Fault, FaultProxy
from support.oci_images import make_image
from support.registry_server import RegistryServer

pytestmark = pytest.mark.integration

BIG = 2 * CHUNK_SIZE + 4321


@pytest.fixture
def proxied(registry: RegistryServer) -> Iterator[tuple[RegistryServer, FaultProxy, object]]:
    """The registry with one image (one big layer) and a fault proxy in front of it."""
    image = make_image([{"big.bin": os.urandom(BIG)}, {"small": b"s"}])
    with open_registry_destination(
        f"docker://{registry.host}/fault/app:v1", fast_options(tls_verify=False)
    ) as dst:
        push_image(dst, image)
    host, port = registry.host.split(":")
    with FaultProxy(host, int(port)) as proxy:
        yield registry, proxy, image


def _source(proxy: FaultProxy, **kw: object):  # type: ignore[no-untyped-def]
    return open_registry_source(f"docker://{proxy.host}/fault/app:v1", fast_options(tls_verify=False, **kw))


def test_connection_cut_mid_blob_resumes_with_range(proxied) -> None:  # type: ignore[no-untyped-def]
    _, proxy, image = proxied
    big_digest = image.layer_digests[0]
    big = image.blobs[big_digest]
    cut = proxy.add(Fault("cut", path=f"/blobs/{big_digest}$", method="GET", cut_after=CHUNK_SIZE + 999))
    with _source(proxy) as src:
        got = b"".join(src.iter_blob(desc_of(big_digest, big)))
    assert got == big
    assert cut.hits == 1
    gets = [r for r in proxy.requests if r.method == "GET" and big_digest in r.path]
    assert len(gets) == 2 and gets[0].range is None
    assert gets[1].range is not None and gets[1].range.startswith("bytes=") and gets[1].range != "bytes=0-"


def test_repeated_cuts_resume_each_time(proxied) -> None:  # type: ignore[no-untyped-def]
    _, proxy, image = proxied
    big_digest = image.layer_digests[0]
    big = image.blobs[big_digest]
    proxy.add(Fault("cut", path=f"/blobs/{big_digest}$", method="GET", cut_after=500_000, times=3))
    with _source(proxy) as src:
        assert b"".join(src.iter_blob(desc_of(big_digest, big))) == big
    ranges = [r.range for r in proxy.requests if r.method == "GET" and big_digest in r.path]
    assert len(ranges) == 4 and ranges[0] is None and all(ranges[1:])


@pytest.mark.parametrize("status", [500, 503, 429])
def test_error_bursts_are_retried(proxied, status: int) -> None:  # type: ignore[no-untyped-def]
    _, proxy, image = proxied
    manifest_fault = proxy.add(Fault("status", path="/manifests/", status=status, times=3, retry_after="0"))
    blob_fault = proxy.add(Fault("status", path="/blobs/sha256:", status=status, times=2))
    with _source(proxy) as src:
        data, _ = src.get_manifest()
        small = image.layer_digests[1]
        blob = b"".join(src.iter_blob(desc_of(small, image.blobs[small])))
    assert data == image.manifest and blob == image.blobs[small]
    assert manifest_fault.hits == 3 and blob_fault.hits == 2


def test_errors_beyond_the_retry_budget_fail(proxied) -> None:  # type: ignore[no-untyped-def]
    _, proxy, _ = proxied
    proxy.add(Fault("status", path="/manifests/", status=503, times=100))
    with (
        _source(proxy, retry=RetryPolicy(max_attempts=3, base_delay=0.01)) as src,
        pytest.raises(TransportError, match="HTTP 503"),
    ):
        src.get_manifest()
    assert sum(1 for r in proxy.requests if "/manifests/" in r.path) == 3


def test_corrupted_blob_is_rejected_and_nothing_written(proxied) -> None:  # type: ignore[no-untyped-def]
    registry, proxy, image = proxied
    big_digest = image.layer_digests[0]
    desc = desc_of(big_digest, image.blobs[big_digest])
    proxy.add(Fault("corrupt", path=f"/blobs/{big_digest}$", method="GET"))
    opts = fast_options(tls_verify=False)
    with (
        _source(proxy) as src,
        open_registry_destination(f"docker://{registry.host}/copy/app:v1", opts) as dst,
    ):
        with pytest.raises(IntegrityError, match="expected digest"):
            dst.put_blob(src.iter_blob(desc), desc.media_type)
        assert dst.has_blob(desc) is False
        proxy.add(Fault("corrupt", path=f"/blobs/{big_digest}$", method="GET"))
        with pytest.raises(IntegrityError):
            dst.put_blob(src.iter_blob(desc), desc.media_type, expected=desc)
        assert dst.has_blob(desc) is False
        # without the fault the same copy goes through
        assert dst.put_blob(src.iter_blob(desc), desc.media_type, expected=desc) == desc
        assert dst.has_blob(desc) is True


@pytest.mark.parametrize("chunked", [False, True])
def test_oversized_manifest_is_rejected(proxied, chunked: bool) -> None:  # type: ignore[no-untyped-def]
    _, proxy, _ = proxied
    fault = proxy.add(
        Fault(
            "inflate", path="/manifests/", method="GET", inflate_to=MAX_MANIFEST_BYTES + 10, chunked=chunked
        )
    )
    with _source(proxy) as src, pytest.raises(BadInputError, match=f"at most {MAX_MANIFEST_BYTES}"):
        src.get_manifest()
    assert fault.hits == 1
