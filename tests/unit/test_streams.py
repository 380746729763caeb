"""threaded(): order kept, upstream errors re-raised, an early stop ends the helper thread."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from layerseal.errors import IntegrityError
from layerseal.streams import threaded


def test_order_and_content_kept() -> None:
    chunks = [bytes([i]) * (i + 1) for i in range(100)]
    assert list(threaded(iter(chunks), depth=2)) == chunks


def test_upstream_error_reaches_the_consumer_after_earlier_chunks() -> None:
    def source() -> Iterator[bytes]:
        yield b"a"
        yield b"b"
        raise IntegrityError("blob: expected digest X, seen Y")

    got = []
    with pytest.raises(IntegrityError, match="expected digest X"):
        for c in threaded(source()):
            got.append(c)
    assert got == [b"a", b"b"]


def test_consumer_stopping_early_stops_the_producer() -> None:
    produced = []
    closed = threading.Event()

    def source() -> Iterator[bytes]:
        try:
            for i in range(10_000):
                produced.append(i)
                yield b"x"
        finally:
            closed.set()

    it = threaded(source(), depth=2)
    assert next(it) == b"x"
    it.close()  # what a failing consumer's generator cleanup does
    assert closed.wait(5)
    assert len(produced) < 100  # bounded by the queue, not the whole source
