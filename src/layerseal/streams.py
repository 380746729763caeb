"""Run the upstream half of a chunk pipeline on its own thread.

``threaded(chunks)`` pulls *chunks* on a helper thread into a small bounded queue, so
that (for example) fetching, decrypting and hashing overlap with decompressing and
unpacking on the caller's thread.  The libraries doing the heavy work release the GIL,
so the two halves really run on two cores.  Memory stays bounded by ``depth`` chunks;
errors from the upstream iterator are re-raised in the caller; a caller that stops
early stops the helper thread too.  :class:`ChunkPipe` is that queue, for producers
that push chunks (a writer handed to a tar or compression library) rather than yield them.

``Background`` runs the updates of one hash (HMAC, SHA-256) on a small shared pool, each
overlapping with the caller's next piece of work.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

_END = object()
_T = TypeVar("_T")


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class ChunkPipe(Generic[_T]):
    """A bounded queue of chunks from a producer thread to the consumer's :meth:`drain`.

    The producer calls :meth:`put` for each chunk, then :meth:`end`, or :meth:`fail` with
    its error; ``put`` returns False once the consumer has stopped, and the producer
    should then return.
    """

    def __init__(self, depth: int) -> None:
        self._q: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()

    @property
    def stopped(self) -> bool:
        """The consumer has stopped (finished, failed or closed the stream early)."""
        return self._stop.is_set()

    def put(self, item: _T | object) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def end(self) -> None:
        self.put(_END)

    def fail(self, exc: BaseException) -> None:
        """Hand *exc* to the consumer, which re-raises it after the chunks before it."""
        self.put(_Failure(exc))

    def drain(self, producer: threading.Thread) -> Iterator[_T]:
        """Start *producer* and yield what it puts; stops and joins it when the caller stops."""
        producer.start()
        try:
            while True:
                item = self._q.get()
                if item is _END:
                    return
                if isinstance(item, _Failure):
                    raise item.exc
                yield item  # type: ignore[misc]
        finally:
            self._stop.set()
            producer.join()


def threaded(chunks: Iterable[_T], depth: int = 4) -> Iterator[_T]:
    pipe: ChunkPipe[_T] = ChunkPipe(depth)

    def produce() -> None:
        try:
            for chunk in chunks:
                if not pipe.put(chunk):
                    return
            pipe.end()
        except BaseException as exc:  # handed to the consumer, which re-raises it
            pipe.fail(exc)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None and pipe.stopped:
                close()

    return pipe.drain(threading.Thread(target=produce, name="layerseal-stream", daemon=True))


# Chunks smaller than this are MAC'ed inline: a thread hop costs more than it saves.
_PARALLEL_MIN = 64 * 1024

_pool: ThreadPoolExecutor | None = None


def _executor() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="layerseal-hash")
    return _pool


class Background:
    """Runs one hash's updates on a helper thread, overlapping the caller's next chunk.

    Updates of one hash stay in order (each waits for the previous); different hashes
    (HMAC of the ciphertext, digest of the plaintext) run side by side.
    """

    def __init__(self, update: Callable[[bytes], object]) -> None:
        self._update = update
        self._pending: Future[object] | None = None

    def update(self, data: bytes) -> None:
        self.wait()
        if len(data) >= _PARALLEL_MIN:
            self._pending = _executor().submit(self._update, data)
        else:
            self._update(data)

    def wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()
