"""Shared encrypted blob store: fetch once, atomic and verified writes, repair, refs and gc."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from layerseal.cli.main import main as cli_main
from layerseal.errors import BadInputError, IntegrityError, NotFoundError
from layerseal.image.descriptor import Descriptor
from layerseal.image.digest import Digest, DigestVerifier
from layerseal.layout.blobstore import SharedBlobStore

MT = "application/vnd.oci.image.layer.v1.tar+gzip+encrypted"


def desc_of(data: bytes) -> Descriptor:
    return Descriptor(MT, Digest.of(data), len(data))


class Fetcher:
    """A fetch callable that counts calls and serves *data* in chunks."""

    def __init__(self, data: bytes, chunk: int = 1000) -> None:
        self.data = data
        self.chunk = chunk
        self.calls = 0

    def __call__(self) -> Iterator[bytes]:
        self.calls += 1
        for i in range(0, len(self.data), self.chunk):
            yield self.data[i : i + self.chunk]


def store_files(store: SharedBlobStore) -> list[str]:
    return sorted(str(p.relative_to(store.root)) for p in (store.root / "blobs").rglob("*") if p.is_file())


def test_layout_and_permissions(tmp_path: Path) -> None:
    store = SharedBlobStore(tmp_path / "store")
    for sub in ("blobs/sha256", "locks", "refs"):
        assert (store.root / sub).is_dir()
        assert (store.root / sub).stat().st_mode & 0o777 == 0o700


def test_ensure_fetches_once_and_stores_verified_blob(tmp_path: Path) -> None:
    store = SharedBlobStore(tmp_path)
    data = os.urandom(10_000)
    desc = desc_of(data)
    fetch = Fetcher(data)
    assert not store.has(desc)
    assert store.ensure(desc, fetch) is True
    assert store.ensure(desc, fetch) is False
    assert fetch.calls == 1
    assert store.has(desc)
    assert store.path(desc.digest).read_bytes() == data
    assert b"".join(store.iter_blob(desc)) == data
    # no temporary file remains beside the blob
    assert store_files(store) == [f"blobs/sha256/{desc.digest.hex}"]


def test_fetch_failing_midway_leaves_nothing(tmp_path: Path) -> None:
    store = SharedBlobStore(tmp_path)
    data = os.urandom(5000)
    desc = desc_of(data)

    def broken() -> Iterator[bytes]:
        yield data[:1000]
        raise ConnectionError("network went away")

    with pytest.raises(ConnectionError):
        store.ensure(desc, broken)
    assert not store.has(desc)
    assert store_files(store) == []
    # and a later good fetch still works
    assert store.ensure(desc, Fetcher(data)) is True


def test_fetched_bytes_not_matching_digest_are_refused(tmp_path: Path) -> None:
    store = SharedBlobStore(tmp_path)
    data = os.urandom(3000)
    desc = desc_of(data)
    evil = bytearray(data)
    evil[100] ^= 1
    with pytest.raises(IntegrityError, match=str(desc.digest)):
        store.ensure(desc, Fetcher(bytes(evil)))
    with pytest.raises(IntegrityError, match="bytes"):
        store.ensure(desc, Fetcher(data + b"x"))
    with pytest.raises(IntegrityError, match="expected 3000 bytes, seen 2999"):
        store.ensure(desc, Fetcher(data[:-1]))
    assert store_files(store) == []


def tamper(path: Path, offset: int = 10) -> None:
    os.chmod(path, 0o644)
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0xFF
    path.write_bytes(bytes(raw))


def test_tampered_stored_blob_is_detected_by_iter_blob(tmp_path: Path) -> None:
    store = SharedBlobStore(tmp_path)
    data = os.urandom(4000)
    desc = desc_of(data)
    store.ensure(desc, Fetcher(data))
    tamper(store.path(desc.digest))
    assert store.has(desc)  # same size: only hashing finds it
    with pytest.raises(IntegrityError) as info:
        b"".join(store.iter_blob(desc))
    assert str(desc.digest) in str(info.value)
    assert str(store.path(desc.digest)) in str(info.value)


def test_iter_blob_missing_blob(tmp_path: Path) -> None:
    store = SharedBlobStore(tmp_path)
    with pytest.raises(NotFoundError, match="missing"):
        list(store.iter_blob(desc_of(b"absent")))


def test_iter_verified_repairs_tampered_copy_before_yielding(tmp_path: Path) -> None:
    store = SharedBlobStore(tmp_path)
    data = os.urandom(20_000)
    desc = desc_of(data)
    fetch = Fetcher(data)
    store.ensure(desc, fetch)
    tamper(store.path(desc.digest))
    # the consumer never sees the tampered bytes: the stream is exactly the real blob
    assert b"".join(store.iter_verified(desc, fetch)) == data
    assert fetch.calls == 2
    assert store.path(desc.digest).read_bytes() == data


def test_iter_verified_replaces_truncated_copy(tmp_path: Path) -> None:
    store = SharedBlobStore(tmp_path)
    data = os.urandom(2000)
    desc = desc_of(data)
    path = store.path(desc.digest)
    path.write_bytes(data[:500])  # wrong size: not "present"
    fetch = Fetcher(data)
    assert b"".join(store.iter_verified(desc, fetch)) == data
    assert fetch.calls == 1


def test_iter_verified_raises_when_refetch_is_bad_too(tmp_path: Path) -> None:
    store = SharedBlobStore(tmp_path)
    data = os.urandom(2000)
    desc = desc_of(data)
    store.ensure(desc, Fetcher(data))
    tamper(store.path(desc.digest))
    evil = bytearray(data)
    evil[0] ^= 1
    with pytest.raises(IntegrityError):
        list(store.iter_verified(desc, Fetcher(bytes(evil))))
    assert not store.path(desc.digest).exists()


def test_iter_verified_refetches_a_blob_removed_meanwhile(tmp_path: Path) -> None:
    store = SharedBlobStore(tmp_path)
    data = os.urandom(1500)
    desc = desc_of(data)
    fetch = Fetcher(data)
    assert b"".join(store.iter_verified(desc, fetch)) == data
    store.path(desc.digest).unlink()
    assert b"".join(store.iter_verified(desc, fetch)) == data
    assert fetch.calls == 2


def test_symlink_in_store_is_not_followed(tmp_path: Path) -> None:
    store = SharedBlobStore(tmp_path / "s")
    secret = tmp_path / "secret"
    secret.write_bytes(b"host secret")
    desc = desc_of(b"host secret")
    store.path(desc.digest).symlink_to(secret)
    assert not store.has(desc)
    with pytest.raises(IntegrityError, match="symlink"):
        list(store.iter_blob(desc))
    # ensure replaces the planted link with a real verified file
    assert store.ensure(desc, Fetcher(b"host secret")) is True
    assert not store.path(desc.digest).is_symlink()


def test_refs_and_gc(tmp_path: Path) -> None:
    store = SharedBlobStore(tmp_path)
    blobs = [os.urandom(n) for n in (100, 200, 300)]
    descs = [desc_of(b) for b in blobs]
    for d, b in zip(descs, blobs, strict=True):
        store.ensure(d, Fetcher(b))
    store.add_refs("docker://reg/app:1", [descs[0].digest, descs[1].digest])
    store.add_refs("engine-7", [descs[1].digest])

    report = store.gc()
    assert (report.removed_blobs, report.freed_bytes, report.kept_blobs) == (1, 300, 2)
    assert not store.has(descs[2])
    assert store.has(descs[0]) and store.has(descs[1])

    store.release("docker://reg/app:1")
    report = store.gc()
    assert (report.removed_blobs, report.freed_bytes, report.kept_blobs) == (1, 100, 1)
    assert store.has(descs[1]) and not store.has(descs[0])

    stats = store.stats()
    assert stats.blob_count == 1
    assert stats.total_bytes == 200
    assert stats.owners == ("engine-7",)
    assert stats.blobs[0].owners == ("engine-7",)

    store.release("engine-7")
    store.release("engine-7")  # releasing twice is harmless
    assert store.gc().freed_bytes == 200
    assert store.stats().blob_count == 0


def test_add_refs_merges_and_survives_reopen(tmp_path: Path) -> None:
    store = SharedBlobStore(tmp_path)
    a, b = Digest.of(b"a"), Digest.of(b"b")
    store.add_refs("img", [a])
    store.add_refs("img", [b])
    reopened = SharedBlobStore(tmp_path)
    for data in (b"a", b"b"):
        reopened.ensure(desc_of(data), Fetcher(data))
    assert reopened.gc().removed_blobs == 0
    with pytest.raises(BadInputError, match="owner"):
        store.add_refs("", [a])


def test_gc_refuses_to_run_on_corrupt_refs(tmp_path: Path) -> None:
    store = SharedBlobStore(tmp_path)
    store.ensure(desc_of(b"x"), Fetcher(b"x"))
    (store.root / "refs" / "bad.json").write_text("{not json")
    with pytest.raises(BadInputError, match=r"bad\.json"):
        store.gc()
    assert store.has(desc_of(b"x"))


def test_gc_skips_blob_locked_by_a_reader(tmp_path: Path) -> None:
    store = SharedBlobStore(tmp_path)
    data = os.urandom(3 * 1024)
    desc = desc_of(data)
    store.ensure(desc, Fetcher(data))
    stream = store.iter_blob(desc)
    first = next(stream)  # the reader now holds the shared lock
    report = store.gc()
    assert report.busy_blobs == 1 and report.removed_blobs == 0
    assert first + b"".join(stream) == data
    assert store.gc().removed_blobs == 1


def test_gc_removes_stale_temp_files(tmp_path: Path) -> None:
    store = SharedBlobStore(tmp_path)
    hexd = Digest.of(b"crashed").hex
    stale = store.root / "blobs" / "sha256" / f".{hexd}.abc123.tmp"
    stale.write_bytes(b"partial")
    assert store.gc().removed_temp_files == 1
    assert not stale.exists()


def test_cli_store_ls_and_gc(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = SharedBlobStore(tmp_path)
    keep, drop = desc_of(b"keep me"), desc_of(b"drop me!")
    store.ensure(keep, Fetcher(b"keep me"))
    store.ensure(drop, Fetcher(b"drop me!"))
    store.add_refs("img:1", [keep.digest])

    assert cli_main(["store", "ls", "--store", str(tmp_path), "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["blob_count"] == 2
    assert {b["digest"]: b["owners"] for b in listing["blobs"]} == {
        str(keep.digest): ["img:1"],
        str(drop.digest): [],
    }

    assert cli_main(["store", "gc", "--store", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["removed_blobs"] == 1 and report["freed_bytes"] == len(b"drop me!")

    assert cli_main(["store", "ls", "--store", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert str(keep.digest) in text and str(drop.digest) not in text


CHILD = textwrap.dedent(
    """
    import hashlib, json, os, sys, time
    from pathlib import Path
    from layerseal.image.descriptor import Descriptor
    from layerseal.image.digest import Digest
    from layerseal.layout.blobstore import SharedBlobStore

    root, digest, size, source, record, go = sys.argv[1:7]
    desc = Descriptor("application/octet-stream", Digest.parse(digest), int(size))
    data = Path(source).read_bytes()

    def fetch():
        with open(record, "a") as f:
            f.write(f"{os.getpid()}\\n")
        for i in range(0, len(data), 4096):
            time.sleep(0.001)  # a slow download widens the window for the others
            yield data[i : i + 4096]

    while not os.path.exists(go):
        time.sleep(0.005)
    store = SharedBlobStore(Path(root))
    downloaded = store.ensure(desc, fetch)
    content = b"".join(store.iter_blob(desc))
    print(json.dumps({"downloaded": downloaded, "sha256": hashlib.sha256(content).hexdigest()}))
    """
)


def test_concurrent_processes_fetch_a_blob_once(tmp_path: Path) -> None:
    data = os.urandom(400_000)
    desc = desc_of(data)
    source = tmp_path / "source.bin"
    source.write_bytes(data)
    record = tmp_path / "fetches.log"
    go = tmp_path / "go"
    root = tmp_path / "store"
    SharedBlobStore(root)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                CHILD,
                str(root),
                str(desc.digest),
                str(desc.size),
                str(source),
                str(record),
                str(go),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(6)
    ]
    go.touch()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
        results.append(json.loads(out))
    assert len(record.read_text().splitlines()) == 1
    assert sum(r["downloaded"] for r in results) == 1
    assert {r["sha256"] for r in results} == {hashlib.sha256(data).hexdigest()}
    assert SharedBlobStore(root).path(desc.digest).read_bytes() == data


def test_stream_through_commits_only_a_verified_download(tmp_path: Path) -> None:
    store = SharedBlobStore(tmp_path / "st")
    data = os.urandom(300_000)
    desc = Descriptor("application/octet-stream", Digest.of(data), len(data))
    calls: list[bool] = []
    out = b"".join(store.stream_through(desc, lambda: [data[:1000], data[1000:]], lambda: calls.append(True)))
    assert out == data and calls == [True] and store.has(desc)
    # present now: streamed from the store, not fetched again
    assert b"".join(store.stream_through(desc, lambda: [b"never"], lambda: calls.append(True))) == data
    assert calls == [True]
    # wrong bytes from the network: yielded provisionally, then refused, nothing stored
    bad = Descriptor("application/octet-stream", Digest.of(b"other"), len(data))
    with pytest.raises(IntegrityError):
        for _ in store.stream_through(bad, lambda: [data]):
            pass
    assert not store.has(bad)
    assert not [p for p in (tmp_path / "st" / "blobs" / "sha256").iterdir() if p.name.endswith(".tmp")]


def test_stream_through_a_verified_source_is_hashed_once_and_committed_only_on_its_clean_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SharedBlobStore(tmp_path / "st")
    data = os.urandom(300_000)
    desc = Descriptor("application/octet-stream", Digest.of(data), len(data))

    def source(blob: bytes) -> Iterator[bytes]:
        # what ImageSource.iter_blob does: verify while streaming, raise after the last chunk
        verifier = DigestVerifier(desc.digest, desc.size)
        for piece in (blob[:1000], blob[1000:]):
            verifier.update(piece)
            yield piece
        verifier.verify()

    hashed: list[int] = []
    real_update = DigestVerifier.update

    def counting_update(self: DigestVerifier, chunk: bytes | memoryview) -> None:
        hashed.append(len(chunk))
        real_update(self, chunk)

    monkeypatch.setattr(DigestVerifier, "update", counting_update)
    tampered = data[:-1] + bytes([data[-1] ^ 1])
    with pytest.raises(IntegrityError):
        for _ in store.stream_through(desc, lambda: source(tampered), verified=True):
            pass
    assert not store.has(desc)
    assert not [p for p in (tmp_path / "st" / "blobs" / "sha256").iterdir() if p.name.endswith(".tmp")]
    hashed.clear()
    assert b"".join(store.stream_through(desc, lambda: source(data), verified=True)) == data
    assert store.has(desc) and sum(hashed) == len(data)  # the source's pass only


def test_a_download_removes_dead_downloads_of_the_same_blob(tmp_path: Path) -> None:
    store = SharedBlobStore(tmp_path)
    data = b"blob data " * 100
    desc = desc_of(data)
    stale = store.root / "blobs" / "sha256" / f".{desc.digest.hex}.dead01.tmp"
    stale.write_bytes(b"partial")  # what a killed pull left
    assert b"".join(store.stream_through(desc, Fetcher(data))) == data
    assert not stale.exists() and store_files(store) == [f"blobs/sha256/{desc.digest.hex}"]


def test_remove_stale_temps_spares_a_live_download(tmp_path: Path) -> None:
    import fcntl

    store = SharedBlobStore(tmp_path)
    hexd = Digest.of(b"in flight").hex
    live = store.root / "blobs" / "sha256" / f".{hexd}.live01.tmp"
    live.write_bytes(b"partial")
    fd = os.open(store.root / "locks" / hexd, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as the downloading process holds it
        assert store.remove_stale_temps() == 0 and live.exists()
    finally:
        os.close(fd)
    assert store.remove_stale_temps() == 1 and not live.exists()
