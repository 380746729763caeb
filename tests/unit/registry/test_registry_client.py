"""The low-level client and the source/destination adapters against an in-memory registry."""

from __future__ import annotations

import os
from collections.abc import Iterator

import httpx
import pytest
from registry_fakes import BreakingStream, FakeRegistry, sha

from layerseal.errors import (
    BadInputError,
    DeniedError,
    IntegrityError,
    MisuseError,
    NotFoundError,
    TransportError,
)
from layerseal.image.descriptor import Descriptor, Platform
from layerseal.image.digest import Digest
from layerseal.image.manifest import MAX_MANIFEST_BYTES
from layerseal.image.transport import CHUNK_SIZE, ImageDestination, ImageSource
from layerseal.registry import (
    RegistryClient,
    RegistryOptions,
    RetryPolicy,
    open_registry_destination,
    open_registry_source,
)
from layerseal.registry.client import MIN_PIECE as _MIN_PIECE

MT = "application/vnd.oci.image.manifest.v1+json"
IDX = "application/vnd.oci.image.index.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
MANIFEST = b'{"schemaVersion":2,"mediaType":"' + MT.encode() + b'","config":{},"layers":[]}'


def desc(data: bytes) -> Descriptor:
    return Descriptor(LAYER, Digest.parse(sha(data)), len(data))


def client(fake: FakeRegistry, sleeps: list[float] | None = None, **kw: object) -> RegistryClient:
    record = sleeps if sleeps is not None else []
    return RegistryClient("reg.test", fake.options(**kw), sleep=record.append)


# ------------------------------------------------------------------ manifests


def test_get_manifest_sends_accept_for_all_four_types() -> None:
    fake = FakeRegistry()
    fake.add_manifest("a/b", "v1", MANIFEST, MT)
    data, media_type, digest = client(fake).get_manifest("a/b", "v1")
    assert (data, media_type, str(digest)) == (MANIFEST, MT, sha(MANIFEST))
    accept = fake.requests[-1].headers["accept"]
    for t in (
        MT,
        IDX,
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ):
        assert t in accept


def test_manifest_digest_mismatch_with_header_is_integrity_error() -> None:
    fake = FakeRegistry()
    wrong = "sha256:" + "0" * 64
    fake.hooks.append(
        lambda r: httpx.Response(
            200, headers={"Content-Type": MT, "Docker-Content-Digest": wrong}, content=MANIFEST
        )
    )
    with pytest.raises(IntegrityError) as info:
        client(fake).get_manifest("a/b", "v1")
    assert wrong in str(info.value) and sha(MANIFEST) in str(info.value)


def test_manifest_by_digest_is_verified_even_without_header() -> None:
    fake = FakeRegistry()
    asked = "sha256:" + "1" * 64
    fake.hooks.append(lambda r: httpx.Response(200, headers={"Content-Type": MT}, content=MANIFEST))
    with pytest.raises(IntegrityError, match=asked):
        client(fake).get_manifest("a/b", asked)


def test_manifest_over_limit_by_content_length() -> None:
    fake = FakeRegistry()
    big = b" " * (MAX_MANIFEST_BYTES + 1)
    fake.hooks.append(lambda r: httpx.Response(200, headers={"Content-Type": MT}, content=big))
    with pytest.raises(BadInputError, match=f"at most {MAX_MANIFEST_BYTES}"):
        client(fake).get_manifest("a/b", "v1")


def test_manifest_over_limit_while_streaming() -> None:
    fake = FakeRegistry()

    def chunks() -> Iterator[bytes]:
        for _ in range(5):
            yield b" " * (1024 * 1024)

    fake.hooks.append(lambda r: httpx.Response(200, headers={"Content-Type": MT}, content=chunks()))
    with pytest.raises(BadInputError, match="seen more"):
        client(fake).get_manifest("a/b", "v1")


def test_missing_manifest_names_registry_repo_and_tag() -> None:
    fake = FakeRegistry()
    with pytest.raises(NotFoundError) as info:
        client(fake).get_manifest("team/app", "nope")
    text = str(info.value)
    assert "reg.test" in text and "team/app" in text and "nope" in text and "MANIFEST_UNKNOWN" in text


def test_forbidden_is_denied() -> None:
    fake = FakeRegistry()
    fake.hooks.append(lambda r: httpx.Response(403, json={"errors": [{"code": "DENIED", "message": "no"}]}))
    with pytest.raises(DeniedError, match="HTTP 403 \\(DENIED: no\\)"):
        client(fake).get_manifest("a/b", "v1")


def test_put_manifest_and_head() -> None:
    fake = FakeRegistry()
    c = client(fake)
    d = c.put_manifest("a/b", "v1", MANIFEST, MT)
    assert str(d.digest) == sha(MANIFEST) and d.size == len(MANIFEST)
    head = c.head_manifest("a/b", "v1")
    assert head is not None and head.digest == d.digest and head.size == len(MANIFEST)
    assert c.head_manifest("a/b", "v2") is None
    with pytest.raises(IntegrityError):
        c.put_manifest("a/b", "sha256:" + "2" * 64, MANIFEST, MT)
    with pytest.raises(BadInputError, match="at most"):
        c.put_manifest("a/b", "v1", b" " * (MAX_MANIFEST_BYTES + 1), MT)


# ------------------------------------------------------------------ retries


def test_retry_on_503_honours_retry_after() -> None:
    fake = FakeRegistry()
    fake.add_manifest("a/b", "v1", MANIFEST, MT)
    burst = [0]

    def unavailable(r: httpx.Request) -> httpx.Response | None:
        if burst[0] < 2:
            burst[0] += 1
            return httpx.Response(503 if burst[0] == 1 else 429, headers={"Retry-After": "7"})
        return None

    fake.hooks.append(unavailable)
    sleeps: list[float] = []
    data, _, _ = client(fake, sleeps).get_manifest("a/b", "v1")
    assert data == MANIFEST and sleeps == [7.0, 7.0]


def test_retries_are_bounded() -> None:
    fake = FakeRegistry()
    fake.hooks.append(lambda r: httpx.Response(500))
    sleeps: list[float] = []
    with pytest.raises(TransportError, match="HTTP 500"):
        client(fake, sleeps).get_manifest("a/b", "v1")
    assert len(fake.requests) == 4 and len(sleeps) == 3


def test_connection_errors_are_retried() -> None:
    fake = FakeRegistry()
    fake.add_manifest("a/b", "v1", MANIFEST, MT)
    fails = [2]

    def refuse(r: httpx.Request) -> httpx.Response | None:
        if fails[0]:
            fails[0] -= 1
            raise httpx.ConnectError("connection refused", request=r)
        return None

    fake.hooks.append(refuse)
    assert client(fake).get_manifest("a/b", "v1")[0] == MANIFEST
    fake.hooks[0] = lambda r: (_ for _ in ()).throw(httpx.ConnectError("refused", request=r))
    with pytest.raises(TransportError, match="ConnectError"):
        client(fake).get_manifest("a/b", "v1")


# ------------------------------------------------------------------ blobs


def test_blob_stream_passes_large_reads_on_whole() -> None:
    fake = FakeRegistry()
    data = os.urandom(2 * CHUNK_SIZE + 5)
    fake.add_blob("a/b", data)
    chunks = list(client(fake).iter_blob("a/b", desc(data)))
    assert b"".join(chunks) == data
    assert len(chunks) == 1  # the fake delivers one read: no re-slicing copy
    assert fake.requests[-1].headers["accept-encoding"] == "identity"


def test_blob_stream_joins_small_reads() -> None:
    fake = FakeRegistry()
    data = os.urandom(3 * _MIN_PIECE + 123)
    digest = fake.add_blob("a/b", data)

    def trickle() -> Iterator[bytes]:
        for start in range(0, len(data), 1000):
            yield data[start : start + 1000]

    fake.hooks.append(
        lambda r: (
            httpx.Response(200, headers={"Content-Length": str(len(data))}, content=trickle())
            if r.method == "GET" and r.url.path.endswith(digest)
            else None
        )
    )
    chunks = list(client(fake).iter_blob("a/b", desc(data)))
    assert b"".join(chunks) == data
    assert all(len(c) >= _MIN_PIECE for c in chunks[:-1])
    assert all(len(c) < _MIN_PIECE + 1000 for c in chunks)
    assert len(chunks) == 3  # streamed as it arrives, not held to the end


def test_blob_with_wrong_bytes_raises_integrity_error() -> None:
    fake = FakeRegistry()
    data = os.urandom(1000)
    fake.add_blob("a/b", data)
    fake.blobs["a/b"][sha(data)] = data[:-1] + bytes([data[-1] ^ 1])
    with pytest.raises(IntegrityError, match="expected digest"):
        list(client(fake).iter_blob("a/b", desc(data)))


def test_blob_with_wrong_length_is_rejected_before_reading() -> None:
    fake = FakeRegistry()
    data = os.urandom(1000)
    fake.add_blob("a/b", data + b"extra")
    fake.blobs["a/b"][sha(data)] = data + b"extra"
    with pytest.raises(IntegrityError, match="Content-Length 1005"):
        next(client(fake).iter_blob("a/b", desc(data)))


def test_blob_resumes_with_range_after_cut() -> None:
    fake = FakeRegistry()
    data = os.urandom(2 * 1024 * 1024 + 17)
    fake.add_blob("a/b", data)
    cut = [True]

    def cut_first(r: httpx.Request) -> httpx.Response | None:
        if r.method == "GET" and "/blobs/" in r.url.path and cut[0]:
            cut[0] = False
            return httpx.Response(
                200, headers={"Content-Length": str(len(data))}, stream=BreakingStream(data[:1_500_000])
            )
        return None

    fake.hooks.append(cut_first)
    got = b"".join(client(fake).iter_blob("a/b", desc(data)))
    assert got == data
    ranges = [r.headers.get("range") for r in fake.requests if r.method == "GET"]
    assert ranges == [None, "bytes=1500000-"]


def test_resume_when_server_ignores_range_drops_the_prefix() -> None:
    fake = FakeRegistry()
    data = os.urandom(4000)
    fake.add_blob("a/b", data)
    calls = [0]

    def serve(r: httpx.Request) -> httpx.Response | None:
        if r.method != "GET" or "/blobs/" not in r.url.path:
            return None
        calls[0] += 1
        if calls[0] == 1:
            return httpx.Response(200, stream=BreakingStream(data[:1000]))
        return httpx.Response(200, content=data)  # full body although Range was asked

    fake.hooks.append(serve)
    assert b"".join(client(fake).iter_blob("a/b", desc(data))) == data


def test_resume_continuation_from_other_content_fails_digest() -> None:
    fake = FakeRegistry()
    data = os.urandom(4000)
    other = os.urandom(4000)
    calls = [0]

    def serve(r: httpx.Request) -> httpx.Response | None:
        calls[0] += 1
        if calls[0] == 1:
            return httpx.Response(200, stream=BreakingStream(data[:1000]))
        return httpx.Response(206, headers={"Content-Range": "bytes 1000-3999/4000"}, content=other[1000:])

    fake.hooks.append(serve)
    with pytest.raises(IntegrityError):
        b"".join(client(fake).iter_blob("a/b", desc(data)))


def test_resume_with_wrong_content_range_is_refused() -> None:
    fake = FakeRegistry()
    data = os.urandom(4000)
    calls = [0]

    def serve(r: httpx.Request) -> httpx.Response | None:
        calls[0] += 1
        if calls[0] == 1:
            return httpx.Response(200, stream=BreakingStream(data[:1000]))
        return httpx.Response(206, headers={"Content-Range": "bytes 0-3999/4000"}, content=data)

    fake.hooks.append(serve)
    with pytest.raises(TransportError, match="Content-Range start: expected 1000, seen 0"):
        b"".join(client(fake).iter_blob("a/b", desc(data)))


def test_resume_attempts_are_bounded_without_progress() -> None:
    fake = FakeRegistry()
    data = os.urandom(4000)
    fake.hooks.append(lambda r: httpx.Response(200, stream=BreakingStream(b"")))
    with pytest.raises(TransportError, match="expected 4000 bytes, seen 0"):
        b"".join(client(fake).iter_blob("a/b", desc(data)))
    assert len(fake.requests) == 4


def test_missing_blob_is_not_found() -> None:
    fake = FakeRegistry()
    data = b"x"
    with pytest.raises(NotFoundError) as info:
        list(client(fake).iter_blob("team/app", desc(data)))
    assert sha(data) in str(info.value) and "team/app" in str(info.value)


# ------------------------------------------------------------------ uploads


def test_chunked_upload_of_unknown_digest() -> None:
    fake = FakeRegistry()
    data = os.urandom(5 * 1024 * 1024 + 3)
    pieces = [data[i : i + 700_000] for i in range(0, len(data), 700_000)]
    c = client(fake, upload_chunk_size=2 * 1024 * 1024)
    digest, size = c.upload_blob("a/b", iter(pieces))
    assert (str(digest), size) == (sha(data), len(data))
    assert fake.blobs["a/b"][sha(data)] == data
    methods = [r.method for r in fake.requests]
    assert methods == ["POST", "PATCH", "PUT"]  # one streamed PATCH, then the commit
    patch = fake.requests[1]
    assert "content-range" not in patch.headers and patch.headers.get("transfer-encoding") == "chunked"
    put = fake.requests[-1]
    assert put.url.params["_state"] == "y" and put.url.params["digest"] == sha(data)


def test_small_upload_is_one_put() -> None:
    fake = FakeRegistry()
    digest, _ = client(fake).upload_blob("a/b", [b"hello ", b"world"])
    assert str(digest) == sha(b"hello world")
    assert [r.method for r in fake.requests] == ["POST", "PUT"]


def test_failed_stream_cancels_upload_and_commits_nothing() -> None:
    fake = FakeRegistry()

    def broken() -> Iterator[bytes]:
        yield os.urandom(3 * 1024 * 1024)
        raise IntegrityError("source blob: expected digest A, seen B")

    c = client(fake, upload_chunk_size=1024 * 1024)
    with pytest.raises(IntegrityError):
        c.upload_blob("a/b", broken())
    assert fake.requests[-1].method == "DELETE" and len(fake.deleted_uploads) == 1
    assert not fake.blobs.get("a/b")


def test_upload_not_matching_expected_is_refused() -> None:
    fake = FakeRegistry()
    expected = desc(b"the real thing")
    with pytest.raises(IntegrityError, match="content: expected"):
        client(fake).upload_blob("a/b", [b"something else"], expected)
    assert fake.requests[-1].method == "DELETE"
    with pytest.raises(IntegrityError, match="seen more"):
        client(fake).upload_blob("a/b", [b"the real thing", b"!"], expected)
    assert not fake.blobs.get("a/b")


def test_patch_not_retried_after_server_error() -> None:
    fake = FakeRegistry()
    fake.hooks.append(lambda r: httpx.Response(500) if r.method == "PATCH" else None)
    with pytest.raises(TransportError, match="HTTP 500"):
        client(fake, upload_chunk_size=1024).upload_blob("a/b", [os.urandom(3000)])
    assert [r.method for r in fake.requests].count("PATCH") == 1
    assert fake.requests[-1].method == "DELETE"


def test_start_and_commit_retried_on_503_but_streamed_patch_is_not() -> None:
    fake = FakeRegistry()
    failures = {"POST": 1, "PUT": 1}

    def busy(r: httpx.Request) -> httpx.Response | None:
        if failures.get(r.method):
            failures[r.method] -= 1
            return httpx.Response(503)
        return None

    fake.hooks.append(busy)
    data = os.urandom(3000)
    digest, _ = client(fake, upload_chunk_size=1024).upload_blob("a/b", [data[:1500], data[1500:]])
    assert fake.blobs["a/b"][str(digest)] == data
    assert [r.method for r in fake.requests].count("POST") == 2  # retried start

    # a streamed body cannot be sent twice: the upload is cancelled with a clear error
    fake2 = FakeRegistry()
    fake2.hooks.append(lambda r: httpx.Response(503) if r.method == "PATCH" else None)
    with pytest.raises(TransportError, match="streamed PATCH"):
        client(fake2, upload_chunk_size=1024).upload_blob("a/b", [data[:1500], data[1500:]])
    assert fake2.requests[-1].method == "DELETE" and not fake2.blobs.get("a/b")


def test_mount_success_and_fallback() -> None:
    fake = FakeRegistry()
    data = b"shared layer"
    fake.add_blob("src/repo", data)
    c = client(fake)
    assert c.mount_blob("dst/repo", Digest.parse(sha(data)), "src/repo") is True
    assert fake.blobs["dst/repo"][sha(data)] == data
    assert c.mount_blob("dst/repo", Digest.parse(sha(b"other")), "src/repo") is False
    assert fake.requests[-1].method == "DELETE" and not fake.uploads


def test_mount_asks_token_with_both_scopes() -> None:
    fake = FakeRegistry(auth="bearer")
    fake.add_blob("src/repo", b"x")
    c = client(fake, creds="alice:s3cret")
    assert c.mount_blob("dst/repo", Digest.parse(sha(b"x")), "src/repo")
    scopes = fake.token_requests[0].url.params.get_list("scope")
    assert scopes == ["repository:dst/repo:pull,push", "repository:src/repo:pull"]


# ------------------------------------------------------------------ listings


def test_tag_listing_follows_link_pagination() -> None:
    fake = FakeRegistry()
    for tag in ("v1", "v2", "v3", "v4", "v5"):
        fake.add_manifest("a/b", tag, MANIFEST, MT)
    assert client(fake).list_tags("a/b", page_size=2) == ["v1", "v2", "v3", "v4", "v5"]
    assert [r.url.params.get("last") for r in fake.requests] == [None, "v2", "v4"]
    with pytest.raises(NotFoundError, match="NAME_UNKNOWN"):
        client(fake).list_tags("no/such")


def test_referrers_fall_back_to_tag_schema() -> None:
    fake = FakeRegistry()
    subject = Digest.parse(sha(MANIFEST))
    sig = b'{"schemaVersion":2,"mediaType":"' + MT.encode() + b'","config":{},"layers":[]}'
    index = (
        b'{"schemaVersion":2,"mediaType":"'
        + IDX.encode()
        + b'","manifests":[{"mediaType":"'
        + MT.encode()
        + b'","digest":"'
        + sha(sig).encode()
        + b'","size":'
        + str(len(sig)).encode()
        + b',"artifactType":"application/x-sig"}]}'
    )
    c = client(fake)
    assert c.referrers("a/b", subject) == []
    fake.add_manifest("a/b", f"sha256-{subject.hex}", index, IDX)
    found = c.referrers("a/b", subject)
    assert [str(d.digest) for d in found] == [sha(sig)]
    assert c.referrers("a/b", subject, artifact_type="application/x-other") == []


# ------------------------------------------------------------------ adapters


def test_source_and_destination_round_trip() -> None:
    fake = FakeRegistry()
    opts = fake.options()
    layer = os.urandom(10_000)
    dst: ImageDestination
    src: ImageSource
    with open_registry_destination("docker://reg.test/team/app:v1", opts) as dst:
        assert not dst.has_blob(desc(layer))
        stored = dst.put_blob(iter([layer]), LAYER)
        assert stored == desc(layer)
        assert dst.has_blob(desc(layer))
        pushed = dst.put_manifest(MANIFEST, MT)
    with open_registry_source("docker://reg.test/team/app:v1", opts) as src:
        assert src.name == "docker://reg.test/team/app:v1"
        assert open_registry_source("docker://reg.test/team/app:v1", opts).list_tags() == ["v1"]
        assert src.get_manifest() == (MANIFEST, MT)
        assert src.get_manifest(pushed.digest) == (MANIFEST, MT)
        assert b"".join(src.iter_blob(desc(layer))) == layer


def test_put_blob_skips_existing_and_closes_the_stream() -> None:
    fake = FakeRegistry()
    layer = b"already there"
    fake.add_blob("team/app", layer)
    closed = []

    def gen() -> Iterator[bytes]:
        try:
            yield layer
        finally:
            closed.append(True)

    stream = gen()
    dst = open_registry_destination("docker://reg.test/team/app:v1", fake.options())
    assert dst.put_blob(stream, LAYER, expected=desc(layer)) == desc(layer)
    assert [r.method for r in fake.requests] == ["HEAD"]
    assert dst.mount_blob(desc(layer), "team/app") is True


def test_destination_by_digest_only() -> None:
    fake = FakeRegistry()
    dst = open_registry_destination(f"docker://reg.test/team/app@{sha(MANIFEST)}", fake.options())
    assert str(dst.put_manifest(MANIFEST, MT).digest) == sha(MANIFEST)
    assert fake.requests[-1].url.path == f"/v2/team/app/manifests/{sha(MANIFEST)}"
    with pytest.raises(IntegrityError):
        dst.put_manifest(MANIFEST + b" ", MT)
    child = dst.put_manifest_by_digest(b'{"schemaVersion":2}', MT)
    assert fake.manifests["team/app"][str(child.digest)][0] == b'{"schemaVersion":2}'


def test_source_by_digest_fetches_that_digest() -> None:
    fake = FakeRegistry()
    fake.add_manifest("team/app", "v1", MANIFEST, MT)
    src = open_registry_source(f"docker://reg.test/team/app@{sha(MANIFEST)}", fake.options())
    assert src.get_manifest()[0] == MANIFEST
    assert fake.requests[-1].url.path.endswith(sha(MANIFEST))


def test_insecure_option_falls_back_to_plain_http() -> None:
    fake = FakeRegistry()
    fake.add_manifest("a/b", "v1", MANIFEST, MT)

    def no_tls(r: httpx.Request) -> httpx.Response | None:
        if r.url.scheme == "https":
            raise httpx.ConnectError("wrong version number", request=r)
        return None

    fake.hooks.append(no_tls)
    c = client(fake, tls_verify=False)
    assert c.get_manifest("a/b", "v1")[0] == MANIFEST
    assert c.base_url() == "http://reg.test"
    strict = client(fake)
    with pytest.raises(TransportError):
        strict.get_manifest("a/b", "v1")


def test_bad_ca_file_is_bad_input(tmp_path: object) -> None:
    with pytest.raises(BadInputError, match="CA file"):
        RegistryClient("reg.test", RegistryOptions(ca_file="/nonexistent/ca.pem"))


def test_shared_client_is_thread_safe() -> None:
    from concurrent.futures import ThreadPoolExecutor

    fake = FakeRegistry(auth="bearer")
    blobs = [os.urandom(50_000) for _ in range(12)]
    for b in blobs:
        fake.add_blob("a/b", b)
    src = open_registry_source(
        "docker://reg.test/a/b:v1", fake.options(creds="alice:s3cret", retry=RetryPolicy(base_delay=0))
    )
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda b: b"".join(src.iter_blob(desc(b))), blobs))
    assert got == blobs
    assert len(fake.token_requests) == 1


# --------------------------------------------------------------- chunked uploads (Content-Range)


def _patches(fake: FakeRegistry) -> list[httpx.Request]:
    return [r for r in fake.requests if r.method == "PATCH"]


def test_chunk_limit_sends_patches_of_that_size_with_content_range() -> None:
    fake = FakeRegistry()
    data = os.urandom(5 * 1000 + 17)
    pieces = [data[i : i + 700] for i in range(0, len(data), 700)]
    digest, size = client(fake, upload_chunk_size=1024, upload_chunk_limit=1000).upload_blob(
        "a/b", iter(pieces)
    )
    assert (str(digest), size) == (sha(data), len(data))
    assert fake.blobs["a/b"][sha(data)] == data
    ranges = [r.headers["content-range"] for r in _patches(fake)]
    assert ranges == [f"{i}-{i + 999}" for i in range(0, 5000, 1000)]
    assert all(int(r.headers["content-length"]) == 1000 for r in _patches(fake))
    assert fake.requests[-1].method == "PUT" and fake.requests[-1].content == data[5000:]


def test_registry_minimum_chunk_wins_over_a_smaller_limit() -> None:
    fake = FakeRegistry()

    def minimum(r: httpx.Request) -> httpx.Response | None:
        if r.method == "POST":
            fake.hooks.remove(minimum)
            response = fake.handle(r)
            response.headers["OCI-Chunk-Min-Length"] = "2500"
            return response
        return None

    fake.hooks.append(minimum)
    data = os.urandom(6000)
    client(fake, upload_chunk_size=1024, upload_chunk_limit=1000).upload_blob("a/b", [data])
    assert [r.headers["content-range"] for r in _patches(fake)] == ["0-2499", "2500-4999"]
    assert fake.blobs["a/b"][sha(data)] == data


def test_broken_chunk_resumes_from_what_the_registry_kept() -> None:
    fake = FakeRegistry()
    broken = {"done": False}

    def cut_second_chunk(r: httpx.Request) -> httpx.Response | None:
        if r.method == "PATCH" and r.headers["content-range"].startswith("1000-") and not broken["done"]:
            broken["done"] = True
            session = r.url.path.rsplit("/", 1)[1]
            fake.uploads[session] += r.read()[:300]  # the registry kept 300 bytes, then the line dropped
            raise httpx.ReadError("connection reset by peer")
        return None

    fake.hooks.append(cut_second_chunk)
    data = os.urandom(3500)
    c = client(fake, upload_chunk_size=1024, upload_chunk_limit=1000)
    digest, _ = c.upload_blob("a/b", [data])
    assert fake.blobs["a/b"][str(digest)] == data
    assert [r.headers["content-range"] for r in _patches(fake)] == [
        "0-999",
        "1000-1999",
        "1300-1999",
        "2000-2999",
    ]
    status = [r for r in fake.requests if r.method == "GET"]
    assert len(status) == 1 and "/blobs/uploads/" in status[0].url.path


def test_chunk_refused_with_503_is_sent_again_after_checking_the_offset() -> None:
    fake = FakeRegistry()
    refusals = {"left": 2}

    def busy(r: httpx.Request) -> httpx.Response | None:
        if r.method == "PATCH" and refusals["left"]:
            refusals["left"] -= 1
            return httpx.Response(503)
        return None

    fake.hooks.append(busy)
    data = os.urandom(2500)
    client(fake, upload_chunk_size=1024, upload_chunk_limit=1000).upload_blob("a/b", [data])
    assert fake.blobs["a/b"][sha(data)] == data
    assert [r.headers["content-range"] for r in _patches(fake)] == ["0-999"] * 3 + ["1000-1999"]


def test_chunk_failing_beyond_the_retry_budget_cancels_the_upload() -> None:
    fake = FakeRegistry()
    fake.hooks.append(lambda r: httpx.Response(503) if r.method == "PATCH" else None)
    with pytest.raises(TransportError, match=r"bytes 0-999 \(PATCH\).*HTTP 503"):
        client(fake, upload_chunk_size=1024, upload_chunk_limit=1000).upload_blob("a/b", [os.urandom(2500)])
    assert len(_patches(fake)) == 4  # the fake's RetryPolicy(max_attempts=4)
    assert fake.requests[-1].method == "DELETE" and not fake.blobs.get("a/b")


def test_chunk_refused_as_bad_request_is_not_repeated() -> None:
    fake = FakeRegistry()
    fake.hooks.append(
        lambda r: fake._error(400, "BLOB_UPLOAD_INVALID", "bad") if r.method == "PATCH" else None
    )
    with pytest.raises(BadInputError, match="BLOB_UPLOAD_INVALID"):
        client(fake, upload_chunk_size=1024, upload_chunk_limit=1000).upload_blob("a/b", [os.urandom(2500)])
    assert len(_patches(fake)) == 1 and fake.requests[-1].method == "DELETE"


def test_status_outside_the_chunk_is_an_error() -> None:
    fake = FakeRegistry()

    def lose_everything(r: httpx.Request) -> httpx.Response | None:
        if r.method == "PATCH" and r.headers["content-range"].startswith("1000-"):
            fake.uploads[r.url.path.rsplit("/", 1)[1]].clear()  # the registry lost the first chunk
            return httpx.Response(503)
        return None

    fake.hooks.append(lose_everything)
    with pytest.raises(TransportError, match="bytes received: expected 1000 to 2000, seen 0"):
        client(fake, upload_chunk_size=1024, upload_chunk_limit=1000).upload_blob("a/b", [os.urandom(2500)])
    assert fake.requests[-1].method == "DELETE" and not fake.blobs.get("a/b")


@pytest.mark.parametrize("field", ["upload_chunk_limit", "upload_chunk_size", "max_connections"])
@pytest.mark.parametrize("value", [0, -5])
def test_options_refuse_non_positive_sizes(field: str, value: int) -> None:
    with pytest.raises(
        MisuseError, match=f"RegistryOptions.{field}: expected a positive integer, seen {value}"
    ):
        RegistryOptions(**{field: value})  # type: ignore[arg-type]


# --------------------------------------------------------------- mounting instead of uploading


def _copy_between(fake: FakeRegistry, src_ref: str, dst_ref: str) -> list[str]:
    from layerseal.builder.copy import copy_image

    layer = os.urandom(5000)
    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    manifest = (
        '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",'
        f'"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{sha(config)}",'
        f'"size":{len(config)}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip",'
        f'"digest":"{sha(layer)}","size":{len(layer)}}}]}}'
    ).encode()
    for data in (layer, config):
        fake.add_blob("src/app", data)
    fake.add_manifest("src/app", "v1", manifest, "application/vnd.oci.image.manifest.v1+json")
    with (
        open_registry_source(src_ref, fake.options()) as src,
        open_registry_destination(dst_ref, fake.options()) as dst,
    ):
        report = copy_image(src, dst)
    assert fake.blobs["dst/app"][sha(layer)] == layer
    return [r.action for r in report.layers]


def test_same_registry_other_repository_is_mounted() -> None:
    fake = FakeRegistry()
    assert _copy_between(fake, "docker://reg.test/src/app:v1", "docker://reg.test/dst/app:v1") == ["mounted"]
    assert not [r for r in fake.requests if r.method in ("PATCH", "PUT") and "/blobs/" in r.url.path]


def test_declined_mount_falls_back_to_upload() -> None:
    fake = FakeRegistry()
    fake.hooks.append(  # the registry opens an upload session instead of mounting (202)
        lambda r: (
            httpx.Response(202, headers={"Location": "/v2/dst/app/blobs/uploads/x?_state=m"})
            if r.method == "POST" and "mount" in r.url.params
            else None
        )
    )
    assert _copy_between(fake, "docker://reg.test/src/app:v1", "docker://reg.test/dst/app:v1") == ["copied"]
    assert any(r.method == "DELETE" and r.url.path.endswith("/uploads/x") for r in fake.requests)


def test_other_registry_is_never_asked_to_mount() -> None:
    fake = FakeRegistry()
    # same fake behind two names: a mount across registries must not even be tried
    fake2_ref = "docker://other.test/dst/app:v1"
    assert _copy_between(fake, "docker://reg.test/src/app:v1", fake2_ref) == ["copied"]
    assert not [r for r in fake.requests if "mount" in r.url.params]


def test_with_a_chunk_limit_no_request_body_exceeds_it() -> None:
    fake = FakeRegistry()
    data = os.urandom(2500)  # below the single-PUT size, above the limit
    client(fake, upload_chunk_size=4096, upload_chunk_limit=1000).upload_blob("a/b", [data])
    assert fake.blobs["a/b"][sha(data)] == data
    assert [r.headers["content-range"] for r in _patches(fake)] == ["0-999", "1000-1999"]
    assert len(fake.requests[-1].content) == 500
    small = FakeRegistry()
    client(small, upload_chunk_size=4096, upload_chunk_limit=1000).upload_blob("a/b", [data[:900]])
    assert [r.method for r in small.requests] == ["POST", "PUT"]  # fits in one request: one PUT


def test_inspect_of_an_index_reads_the_tagged_manifest_once() -> None:
    from layerseal.builder.inspect import inspect_image

    fake = FakeRegistry()
    config = b'{"architecture":"arm64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    fake.add_blob("a/b", config)
    child = (
        '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":'
        f'{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{sha(config)}","size":{len(config)}}},'
        '"layers":[]}'
    ).encode()
    index = (
        '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":['
        f'{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{sha(child)}","size":{len(child)},'
        '"platform":{"architecture":"arm64","os":"linux"}}]}'
    ).encode()
    fake.add_manifest("a/b", sha(child), child, "application/vnd.oci.image.manifest.v1+json")
    fake.add_manifest("a/b", "v1", index, "application/vnd.oci.image.index.v1+json")
    with open_registry_source("docker://reg.test/a/b:v1", fake.options()) as src:
        summary = inspect_image(src, Platform("arm64", "linux"))
    assert summary.index is not None and summary.manifest_digest == sha(child)
    tagged = [r for r in fake.requests if r.method == "GET" and r.url.path.endswith("/manifests/v1")]
    assert len(tagged) == 1
