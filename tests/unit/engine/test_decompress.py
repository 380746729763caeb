"""Tests for layerseal.engine.decompress: gzip (isal), zstd (zstandard), none."""

from __future__ import annotations

import gzip
import os

import pytest
import zstandard
from engine_tarkit import chunked
from hypothesis import given, settings
from hypothesis import strategies as st

from layerseal.engine.decompress import OUT_CHUNK, decompressor
from layerseal.errors import BadInputError

DATA = os.urandom(200_000) + b"\0" * 3_000_000 + b"layer tail"


def run(compression: str, blob: bytes, size: int = 4096, what: str = "layer L1") -> bytes:
    return b"".join(decompressor(compression, what=what)(chunked(blob, size)))


@pytest.mark.parametrize("size", [1, 7, 4096, 1 << 20])
def test_gzip_roundtrip_any_chunking(size: int) -> None:
    blob = gzip.compress(DATA[:300_000] if size == 1 else DATA)
    assert run("gzip", blob, size) == (DATA[:300_000] if size == 1 else DATA)


def test_gzip_multi_member() -> None:
    blob = gzip.compress(DATA[:1000]) + gzip.compress(DATA[1000:5000]) + gzip.compress(DATA[5000:])
    assert run("gzip", blob) == DATA


def test_gzip_output_chunks_are_bounded() -> None:
    # 64 MiB of zeros compress to ~64 KiB: one input chunk must not become one huge output
    bomb = gzip.compress(b"\0" * (64 << 20), compresslevel=9)
    sizes = [len(c) for c in decompressor("gzip")([bomb])]
    assert sum(sizes) == 64 << 20
    assert max(sizes) <= OUT_CHUNK


def test_zstd_output_chunks_are_bounded() -> None:
    bomb = zstandard.ZstdCompressor(level=19).compress(b"\0" * (64 << 20))
    sizes = [len(c) for c in decompressor("zstd")([bomb])]
    assert sum(sizes) == 64 << 20
    assert max(sizes) <= OUT_CHUNK


@pytest.mark.parametrize("cut", [1, 10, 100, 5000])
def test_gzip_truncated_refused(cut: int) -> None:
    blob = gzip.compress(DATA)
    with pytest.raises(BadInputError, match=r"layer L1 \(gzip\).*truncated"):
        run("gzip", blob[:-cut])


def test_gzip_corrupt_refused() -> None:
    with pytest.raises(BadInputError, match=r"layer L1 \(gzip\): expected valid gzip data"):
        run("gzip", b"\x1f\x8b\x08\x00" + b"\xff" * 100)


def test_gzip_trailing_garbage_refused() -> None:
    with pytest.raises(BadInputError, match=r"layer L1 \(gzip\)"):
        run("gzip", gzip.compress(b"abc") + b"garbage!" * 4)


def test_gzip_empty_refused() -> None:
    with pytest.raises(BadInputError, match="empty stream"):
        run("gzip", b"")


def test_zstd_roundtrip_multi_frame_and_skippable() -> None:
    c = zstandard.ZstdCompressor()
    skippable = (0x184D2A50).to_bytes(4, "little") + (5).to_bytes(4, "little") + b"hello"
    blob = c.compress(DATA[:1000]) + skippable + c.compress(DATA[1000:])
    assert run("zstd", blob) == DATA


def test_zstd_with_checksum_and_without_content_size() -> None:
    blob = zstandard.ZstdCompressor(write_checksum=True, write_content_size=False).compress(DATA)
    assert run("zstd", blob, 333) == DATA


def test_zstd_streamed_frames() -> None:
    # frames written by a streaming compressor carry no content size and many blocks
    cobj = zstandard.ZstdCompressor().compressobj()
    blob = cobj.compress(DATA) + cobj.flush()
    assert run("zstd", blob) == DATA


@pytest.mark.parametrize("cut", [1, 4, 50, 1000])
def test_zstd_truncated_refused(cut: int) -> None:
    blob = zstandard.ZstdCompressor().compress(DATA)
    with pytest.raises(BadInputError, match=r"layer L1 \(zstd\).*truncated"):
        run("zstd", blob[:-cut])


def test_zstd_corrupt_refused() -> None:
    with pytest.raises(BadInputError, match=r"layer L1 \(zstd\): expected valid zstd data"):
        run("zstd", b"\x28\xb5\x2f\xfd" + b"\xff" * 64)
    with pytest.raises(BadInputError, match=r"layer L1 \(zstd\)"):
        run("zstd", b"not zstd at all" * 10)


def test_zstd_trailing_garbage_refused() -> None:
    with pytest.raises(BadInputError, match=r"layer L1 \(zstd\)"):
        run("zstd", zstandard.ZstdCompressor().compress(b"abc") + b"garbage!")


def test_zstd_empty_refused() -> None:
    with pytest.raises(BadInputError, match="empty stream"):
        run("zstd", b"")


def test_none_passes_through() -> None:
    assert run("none", DATA, 999) == DATA


def test_unknown_compression_refused() -> None:
    with pytest.raises(
        BadInputError, match=r"layer X compression: expected gzip or zstd or none, seen 'bzip2'"
    ):
        decompressor("bzip2", what="layer X")


@settings(max_examples=40, deadline=None)
@given(
    data=st.binary(max_size=20_000),
    cuts=st.lists(st.integers(min_value=1, max_value=3000), max_size=8),
    compression=st.sampled_from(["gzip", "zstd"]),
)
def test_roundtrip_random_chunking(data: bytes, cuts: list[int], compression: str) -> None:
    blob = gzip.compress(data) if compression == "gzip" else zstandard.ZstdCompressor().compress(data)
    pieces, pos = [], 0
    for c in cuts:
        pieces.append(blob[pos : pos + c])
        pos += c
    pieces.append(blob[pos:])
    assert b"".join(decompressor(compression)(pieces)) == data
