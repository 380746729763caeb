"""Streaming decompression of layer blobs (gzip via isal, zstd via zstandard, or none).

Every decompressor bounds the size of each output chunk, so a small, highly
compressible input (a "decompression bomb") never turns into one huge bytes object,
and each refuses a stream that ends in the middle of a gzip member or zstd frame:
both libraries would otherwise hand back a silently truncated layer.

Input chunks may be memoryviews of buffers their producer reuses (see
:func:`layerseal.crypto.layercipher.decrypt_views`): a decompressor reads each one
before it asks for the next and keeps nothing of it but copies, and every output chunk
is a ``bytes`` object of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import IO, cast

import zstandard
from isal import isal_zlib

from layerseal.errors import BadInputError, expected_seen

#: upper bound of one decompressed chunk handed to the caller.  Measured on a 512 MiB layer:
#: 1 MiB (with 1 MiB input slices) saves ~2.5% CPU (a quarter of the queue hand-offs and
#: hash submissions) but raises the pull's peak RSS from ~72 to ~130 MB (glibc arenas keep
#: the larger chunks), so 256 KiB stays
OUT_CHUNK = 256 * 1024
#: largest piece of compressed input handed to zlib at once
IN_SLICE = 256 * 1024

Chunk = bytes | memoryview
Decompressor = Callable[[Iterable[Chunk]], Iterator[bytes]]

# the stub declares `error` as an instance; at runtime it is the exception class
_GZIP_ERROR = cast(type[Exception], isal_zlib.error)

COMPRESSIONS = ("gzip", "zstd", "none")


def decompressor(compression: str, *, what: str = "layer") -> Decompressor:
    """Return a function turning compressed chunks into decompressed chunks.

    ``compression`` is ``"gzip"``, ``"zstd"`` or ``"none"``; ``what`` names the layer in
    error messages.  Corrupt or truncated data raises :class:`BadInputError`.
    """
    if compression == "gzip":
        return lambda chunks: _gunzip(chunks, what)
    if compression == "zstd":
        return lambda chunks: _unzstd(chunks, what)
    if compression == "none":
        return _passthrough
    raise BadInputError(expected_seen(f"{what} compression", " or ".join(COMPRESSIONS), repr(compression)))


def _passthrough(chunks: Iterable[Chunk]) -> Iterator[bytes]:
    for chunk in chunks:
        if chunk:
            yield bytes(chunk)  # a chunk of its own: the input's buffer may be reused


def _slices(chunks: Iterable[Chunk]) -> Iterator[memoryview]:
    # Feed zlib modest pieces: with a bounded output size, every call that stops early
    # copies the whole unconsumed input tail, which is quadratic in the input chunk size.
    # Views, not copies: zlib reads them in place.
    for chunk in chunks:
        view = memoryview(chunk)
        for start in range(0, len(view), IN_SLICE):
            yield view[start : start + IN_SLICE]


def _gunzip(chunks: Iterable[Chunk], what: str) -> Iterator[bytes]:
    # wbits=31: gzip wrapper only.  A layer may hold several gzip members back to back
    # (pigz, concatenated appends): each ends with eof and leaves the next in unused_data.
    d = isal_zlib.decompressobj(wbits=31)
    members = 0
    in_member = False
    total_in = 0
    try:
        for piece in _slices(chunks):
            data: Chunk = piece
            total_in += len(data)
            while data:
                in_member = True
                out = d.decompress(data, OUT_CHUNK)
                if out:
                    yield out
                # a full output buffer may leave output pending with all input consumed
                while not d.eof and len(out) == OUT_CHUNK and not d.unconsumed_tail:
                    out = d.decompress(b"", OUT_CHUNK)
                    if out:
                        yield out
                if d.eof:
                    members += 1
                    in_member = False
                    data = d.unused_data
                    d = isal_zlib.decompressobj(wbits=31)
                else:
                    data = d.unconsumed_tail
        while in_member and not d.eof:
            out = d.decompress(b"", OUT_CHUNK)
            if not out:
                break
            yield out
        if in_member and d.eof:
            members += 1
            in_member = False
    except _GZIP_ERROR as e:
        raise BadInputError(
            expected_seen(
                f"{what} (gzip)", "valid gzip data", f"corrupt data near compressed byte {total_in}: {e}"
            )
        ) from e
    if in_member:
        raise BadInputError(
            expected_seen(
                f"{what} (gzip)",
                "a complete gzip member",
                f"the stream ends inside a member after {total_in} compressed bytes (truncated)",
            )
        )
    if members == 0:
        raise BadInputError(expected_seen(f"{what} (gzip)", "at least one gzip member", "an empty stream"))


class _ChunkSource:
    """A ``read(n)`` file-like view of an iterator of chunks (what zstandard reads from)."""

    def __init__(self, chunks: Iterable[Chunk], tap: Callable[[bytes], None]) -> None:
        self._it = iter(chunks)
        self._buf = memoryview(b"")
        self._tap = tap

    def read(self, n: int = -1) -> bytes:
        while not self._buf:
            chunk = next(self._it, None)
            if chunk is None:
                return b""
            data = bytes(chunk)  # one copy: the input's buffer may be reused, zstandard reads later
            self._tap(data)
            self._buf = memoryview(data)
        if n < 0 or n >= len(self._buf):
            out, self._buf = self._buf, memoryview(b"")
        else:
            out, self._buf = self._buf[:n], self._buf[n:]
        return bytes(out)


_ZSTD_MAGIC = 0xFD2FB528
_SKIP_MAGIC_MIN, _SKIP_MAGIC_MAX = 0x184D2A50, 0x184D2A5F


class _ZstdFrameTracker:
    """Follows the frame and block headers of a zstd stream to tell whether it ends cleanly.

    zstandard's stream reader returns EOF at the end of its input even in the middle of a
    frame; this tracker reads only headers (block contents are skipped by count), so it
    costs almost nothing and answers "did the last frame end?".
    """

    def __init__(self) -> None:
        self.frames = 0
        self._state = "magic"
        self._need = 4
        self._pending = bytearray()
        self._skip = 0
        self._checksum = False
        self.error: str | None = None

    def feed(self, data: bytes) -> None:
        pos, n = 0, len(data)
        while pos < n and self.error is None:
            if self._skip:
                take = min(self._skip, n - pos)
                self._skip -= take
                pos += take
                continue
            take = min(self._need - len(self._pending), n - pos)
            self._pending += data[pos : pos + take]
            pos += take
            if len(self._pending) == self._need:
                header = bytes(self._pending)
                self._pending.clear()
                self._advance(header)

    def _advance(self, header: bytes) -> None:
        if self._state == "magic":
            magic = int.from_bytes(header, "little")
            if magic == _ZSTD_MAGIC:
                self._state, self._need = "fhd", 1
            elif _SKIP_MAGIC_MIN <= magic <= _SKIP_MAGIC_MAX:
                self._state, self._need = "skipsize", 4
            else:
                self.error = f"bad frame magic {header.hex()}"
        elif self._state == "skipsize":
            self._skip = int.from_bytes(header, "little")
            self._state, self._need = "magic", 4
            self.frames += 1
        elif self._state == "fhd":
            fhd = header[0]
            single_segment = bool(fhd & 0x20)
            self._checksum = bool(fhd & 0x04)
            did_size = (0, 1, 2, 4)[fhd & 3]
            fcs_size = (1 if single_segment else 0, 2, 4, 8)[fhd >> 6]
            rest = (0 if single_segment else 1) + did_size + fcs_size
            self._skip = rest
            self._state, self._need = "block", 3
        elif self._state == "block":
            bh = int.from_bytes(header, "little")
            last, btype, bsize = bh & 1, (bh >> 1) & 3, bh >> 3
            if btype == 3:
                self.error = "reserved block type"
                return
            self._skip = 1 if btype == 1 else bsize
            if last:
                self._skip += 4 if self._checksum else 0
                self._state, self._need = "magic", 4
                self.frames += 1

    def complete(self) -> bool:
        return (
            self.error is None
            and self.frames > 0
            and self._state == "magic"
            and not self._pending
            and self._skip == 0
        )


def _unzstd(chunks: Iterable[Chunk], what: str) -> Iterator[bytes]:
    tracker = _ZstdFrameTracker()
    total_in = 0

    def tap(data: bytes) -> None:
        nonlocal total_in
        total_in += len(data)
        tracker.feed(data)

    source = _ChunkSource(chunks, tap)
    reader = zstandard.ZstdDecompressor().stream_reader(cast(IO[bytes], source), read_across_frames=True)
    try:
        while True:
            out = reader.read(OUT_CHUNK)
            if not out:
                break
            yield out
    except zstandard.ZstdError as e:
        raise BadInputError(
            expected_seen(
                f"{what} (zstd)", "valid zstd data", f"corrupt data near compressed byte {total_in}: {e}"
            )
        ) from e
    # the reader may stop before pulling the tail of the source: account for all of it
    while source.read(OUT_CHUNK):
        pass
    if not tracker.complete():
        if tracker.error:
            seen = f"{tracker.error} after {total_in} compressed bytes"
        elif total_in == 0:
            seen = "an empty stream"
        else:
            seen = f"the stream ends inside a frame after {total_in} compressed bytes (truncated)"
        raise BadInputError(expected_seen(f"{what} (zstd)", "complete zstd frames", seen))
