"""Push and pull against the real docker-registry (distribution 2.8), plain HTTP."""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from registry_helpers import LAYER, desc_of, fast_options, pull_image, push_blobs, push_image

from layerseal.builder.copy import copy_image
from layerseal.errors import NotFoundError, TransportError
from layerseal.image.descriptor import Descriptor
from layerseal.image.digest import Digest
from layerseal.image.manifest import Index
from layerseal.image.transport import CHUNK_SIZE
from layerseal.registry import (
    RegistryClient,
    RegistryDestination,
    open_registry_destination,
    open_registry_source,
)
from support.fault_proxy import Fault, FaultProxy
from support.oci_images import OCI_INDEX, OCI_MANIFEST, make_image, make_index, sha256
from support.registry_server import RegistryServer

pytestmark = pytest.mark.integration


def test_push_then_pull_is_identical(registry: RegistryServer) -> None:
    image = make_image([{"etc/hello": b"hello\n"}, {"bin/tool": os.urandom(300_000)}])
    ref = f"docker://{registry.host}/team/app:v1"
    with open_registry_destination(ref, fast_options(tls_verify=False)) as dst:
        pushed = push_image(dst, image)
    assert str(pushed.digest) == image.digest
    with open_registry_source(ref, fast_options(tls_verify=False)) as src:
        manifest, blobs = pull_image(src)
        assert src.client.base_url() == f"http://{registry.host}"
    assert manifest == image.manifest
    assert blobs == image.blobs


def test_streamed_upload_of_unknown_digest_is_one_patch(registry: RegistryServer) -> None:
    data = os.urandom(2 * CHUNK_SIZE + 12345)
    host, port = registry.host.split(":")
    with FaultProxy(host, int(port)) as proxy:
        dst = open_registry_destination(f"docker://{proxy.host}/team/big:v1", fast_options(tls_verify=False))
        pieces = (data[i : i + 100_000] for i in range(0, len(data), 100_000))
        stored = dst.put_blob(pieces, LAYER)
        assert str(stored.digest) == sha256(data) and stored.size == len(data)
        methods = [r.method for r in proxy.requests if "/blobs/uploads/" in r.path]
        assert methods == ["POST", "PATCH", "PUT"]  # the real registry accepts one streamed PATCH
        src = open_registry_source(f"docker://{registry.host}/team/big:v1", fast_options(tls_verify=False))
        assert b"".join(src.iter_blob(stored)) == data


def test_head_exists_and_skip(registry: RegistryServer) -> None:
    data = os.urandom(5000)
    desc = desc_of(sha256(data), data)
    dst = open_registry_destination(f"docker://{registry.host}/team/app:v1", fast_options(tls_verify=False))
    assert dst.has_blob(desc) is False
    dst.put_blob(iter([data]), LAYER, expected=desc)
    assert dst.has_blob(desc) is True
    assert dst.client.stat_blob("team/app", desc.digest) == len(data)

    # a second put of the same blob is skipped after the HEAD: a generator that fails if read
    def must_not_read() -> Iterator[bytes]:
        raise AssertionError("blob was uploaded again")
        yield b""

    assert dst.put_blob(must_not_read(), LAYER, expected=desc) == desc


def test_mount_between_repositories(registry: RegistryServer) -> None:
    image = make_image([{"a": b"1"}])
    opts = fast_options(tls_verify=False)
    with open_registry_destination(f"docker://{registry.host}/src/app:v1", opts) as first:
        push_image(first, image)
    layer_digest = image.layer_digests[0]
    layer = desc_of(layer_digest, image.blobs[layer_digest])
    with open_registry_destination(f"docker://{registry.host}/dst/app:v1", opts) as second:
        assert second.has_blob(layer) is False
        assert second.mount_blob(layer, "src/app") is True
        assert second.has_blob(layer) is True
        missing = desc_of(sha256(b"nope"), b"nope")
        assert second.mount_blob(missing, "src/app") is False
        assert second.has_blob(missing) is False


def test_multi_arch_index_push_and_pull(registry: RegistryServer) -> None:
    images = {
        "linux/amd64": make_image([{"arch": b"amd64"}], arch="amd64"),
        "linux/arm64": make_image([{"arch": b"arm64"}], arch="arm64"),
    }
    index = make_index(images)
    opts = fast_options(tls_verify=False)
    with open_registry_destination(f"docker://{registry.host}/multi/app:v1", opts) as dst:
        for image in images.values():
            push_blobs(dst, image)
            assert str(dst.put_manifest_by_digest(image.manifest, OCI_MANIFEST).digest) == image.digest
        pushed = dst.put_manifest(index, OCI_INDEX)
    assert str(pushed.digest) == sha256(index)
    with open_registry_source(f"docker://{registry.host}/multi/app:v1", opts) as src:
        data, media_type = src.get_manifest()
        assert (data, media_type) == (index, OCI_INDEX)
        parsed = Index.from_bytes(data)
        for desc in parsed.manifests:
            assert desc.platform is not None
            manifest, blobs = pull_image(src, desc.digest)
            image = images[f"{desc.platform.os}/{desc.platform.architecture}"]
            assert manifest == image.manifest and blobs == image.blobs
        head = src.client.head_manifest("multi/app", "v1")
        assert head is not None and head.media_type == OCI_INDEX and str(head.digest) == sha256(index)


def test_tag_listing(registry: RegistryServer) -> None:
    # distribution 2.8 answers in one page whatever n is; Link pagination is covered by unit tests
    image = make_image([{"f": b"x"}])
    opts = fast_options(tls_verify=False)
    tags = [f"t{i}" for i in range(7)]
    for tag in tags:
        with open_registry_destination(f"docker://{registry.host}/tags/app:{tag}", opts) as dst:
            push_image(dst, image)
    client = RegistryClient(registry.host, opts)
    assert sorted(client.list_tags("tags/app", page_size=3)) == tags
    assert sorted(client.list_tags("tags/app")) == tags
    with pytest.raises(NotFoundError, match="tags/none"):
        client.list_tags("tags/none")


def test_parallel_blob_pulls_share_one_client(registry: RegistryServer) -> None:
    image = make_image([{f"f{i}": os.urandom(200_000)} for i in range(8)])
    opts = fast_options(tls_verify=False, max_connections=4)
    with open_registry_destination(f"docker://{registry.host}/par/app:v1", opts) as dst:
        with ThreadPoolExecutor(4) as pool:
            list(
                pool.map(
                    lambda kv: dst.put_blob(iter([kv[1]]), LAYER, desc_of(kv[0], kv[1])), image.blobs.items()
                )
            )
        dst.put_manifest(image.manifest, OCI_MANIFEST)
    with (
        open_registry_source(f"docker://{registry.host}/par/app:v1", opts) as src,
        ThreadPoolExecutor(4) as pool,
    ):
        got = dict(pool.map(lambda d: (d, b"".join(src.iter_blob(desc_of(d, image.blobs[d])))), image.blobs))
    assert got == image.blobs


def test_missing_things_are_not_found_with_names(registry: RegistryServer) -> None:
    opts = fast_options(tls_verify=False)
    with open_registry_source(f"docker://{registry.host}/team/ghost:nope", opts) as src:
        with pytest.raises(NotFoundError) as info:
            src.get_manifest()
        text = str(info.value)
        assert registry.host in text and "team/ghost" in text and "nope" in text
        with pytest.raises(NotFoundError, match="blob sha256:"):
            list(src.iter_blob(desc_of(sha256(b"x"), b"x")))
        assert src.referrers(Digest.parse(sha256(b"x"))) == []


def _reads_back(registry: RegistryServer, repo: str, stored: Descriptor, data: bytes) -> None:
    src = open_registry_source(f"docker://{registry.host}/{repo}:v1", fast_options(tls_verify=False))
    assert str(stored.digest) == sha256(data)
    assert b"".join(src.iter_blob(stored)) == data


def _chunked(proxy: FaultProxy, repo: str, limit: int) -> RegistryDestination:
    return open_registry_destination(
        f"docker://{proxy.host}/{repo}:v1", fast_options(tls_verify=False, upload_chunk_limit=limit)
    )


def test_chunked_upload_with_content_range(registry: RegistryServer) -> None:
    data = os.urandom(3 * 1024 * 1024 + 777)
    host, port = registry.host.split(":")
    with FaultProxy(host, int(port)) as proxy:
        pieces = (data[i : i + 300_000] for i in range(0, len(data), 300_000))
        stored = _chunked(proxy, "team/chunked", 1024 * 1024).put_blob(pieces, LAYER)
        methods = [r.method for r in proxy.requests if "/blobs/uploads/" in r.path]
    # 2 MiB go in the first PATCHes, the rest in the PUT: the real registry takes Content-Range chunks
    assert methods == ["POST", "PATCH", "PATCH", "PATCH", "PUT"]
    _reads_back(registry, "team/chunked", stored, data)


def test_refused_chunk_is_sent_again_after_the_status_check(registry: RegistryServer) -> None:
    data = os.urandom(3 * 1024 * 1024 + 5)
    host, port = registry.host.split(":")
    with FaultProxy(host, int(port)) as proxy:
        busy = proxy.add(Fault("status", path="/blobs/uploads/", method="PATCH", status=503, times=2))
        stored = _chunked(proxy, "team/retried", 1024 * 1024).put_blob(iter([data]), LAYER)
        seen = [(r.method, r.fault) for r in proxy.requests if "/blobs/uploads/" in r.path]
    assert busy.hits == 2
    assert seen[:6] == [
        ("POST", None),
        ("PATCH", "status"),
        ("GET", None),  # the registry holds 0 bytes of this chunk: all of it again
        ("PATCH", "status"),
        ("GET", None),
        ("PATCH", None),
    ]
    _reads_back(registry, "team/retried", stored, data)


def test_chunk_broken_off_midway_fails_clearly_and_leaves_no_blob(registry: RegistryServer) -> None:
    data = os.urandom(3 * 1024 * 1024 + 5)
    host, port = registry.host.split(":")
    with FaultProxy(host, int(port)) as proxy:
        proxy.add(Fault("cut_request", path="/blobs/uploads/", method="PATCH", cut_after=300_001))
        with pytest.raises(TransportError) as info:
            _chunked(proxy, "team/cut", 1024 * 1024).put_blob(iter([data]), LAYER)
        seen = [r.method for r in proxy.requests if "/blobs/uploads/" in r.path]
    # distribution kept 300,001 bytes, then refused the upload's now stale state: it is cancelled
    assert "bytes 0-1048575 (PATCH)" in str(info.value)
    assert "cannot resume the upload" in str(info.value) and "BLOB_UPLOAD_INVALID" in str(info.value)
    assert seen == ["POST", "PATCH", "GET", "DELETE"]
    client = RegistryClient(registry.host, fast_options(tls_verify=False))
    assert client.stat_blob("team/cut", Digest.parse(sha256(data))) is None


def test_copy_between_repositories_of_one_registry_mounts_instead_of_uploading(
    registry: RegistryServer,
) -> None:
    image = make_image([{"a": os.urandom(400_000)}, {"b": os.urandom(300_000)}])
    with open_registry_destination(
        f"docker://{registry.host}/src/app:v1", fast_options(tls_verify=False)
    ) as dst:
        push_image(dst, image)
    host, port = registry.host.split(":")
    with FaultProxy(host, int(port)) as proxy:
        src = open_registry_source(f"docker://{proxy.host}/src/app:v1", fast_options(tls_verify=False))
        dst = open_registry_destination(f"docker://{proxy.host}/dst/app:v1", fast_options(tls_verify=False))
        report = copy_image(src, dst)
        uploads = [(r.method, r.path) for r in proxy.requests if "/blobs/uploads/" in r.path]
        layer_gets = [r for r in proxy.requests if r.method == "GET" and "/blobs/" in r.path]
    assert [r.action for r in report.layers] == ["mounted", "mounted"]
    assert str(report.manifest.digest) == image.digest and report.bytes_moved == 0
    # three mounts (two layers and the config), no upload session, no blob read
    assert len(uploads) == 3 and all(
        m == "POST" and "mount=sha256:" in p and "from=src" in p for m, p in uploads
    )
    assert layer_gets == []
    with open_registry_source(f"docker://{registry.host}/dst/app:v1", fast_options(tls_verify=False)) as back:
        manifest, blobs = pull_image(back)
    assert manifest == image.manifest and blobs == image.blobs


def _holders_of_big_bytes() -> int:
    """Tracked objects (requests, streams, lists, frames) that reference a bytes of 100 kB or more."""
    import gc

    return sum(
        1
        for o in gc.get_objects()
        if any(isinstance(r, bytes) and len(r) >= 100_000 for r in gc.get_referents(o))
    )


def test_sent_chunks_are_not_kept_alive_by_httpx_reference_cycles(registry: RegistryServer) -> None:
    import gc

    seen: list[int] = []

    def pieces() -> Iterator[bytes]:
        for i in range(40):
            yield os.urandom(200_000)  # distinct pieces, referenced by nothing of the test
            if i % 10 == 9:
                seen.append(_holders_of_big_bytes())

    gc.collect()
    gc.disable()  # memory must stay bounded without the collector's help
    try:
        dst = open_registry_destination(
            f"docker://{registry.host}/team/mem:v1",
            fast_options(tls_verify=False, upload_chunk_limit=400_000),
        )
        stored = dst.put_blob(pieces(), LAYER)
    finally:
        gc.enable()
    assert stored.size == 40 * 200_000
    # only the chunk being built is referenced (by a few lists and frames), the same number
    # at every checkpoint; before the fix every sent chunk stayed in a request: 11, 21, 31, 41
    assert len(seen) == 4 and len(set(seen)) == 1 and seen[0] <= 6, seen
