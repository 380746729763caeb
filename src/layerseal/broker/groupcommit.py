"""Audit group commit: concurrent requests share one audit write transaction.

A request hands its audit row to the committer and waits until the transaction holding
it has committed, so an acknowledged release always has a durable audit row.  While one
transaction commits (and fsyncs), the rows of other requests gather for the next, so
under load the commit cost is shared by a whole batch.  One writer thread per process
appends rows in arrival order; the chain links them in commit order.

A commit's fixed cost (statements, fsync, waking the writer) is paid per transaction, so
under sustained load (the previous commit ended moments ago) the writer waits up to
``commit_delay`` for more rows, like PostgreSQL's ``commit_delay``; an idle broker commits
at once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, InvalidStateError
from typing import Any

from layerseal.kbs.problems import UnavailableError

log = logging.getLogger("layerseal.broker.audit")

Entry = Mapping[str, Any]


class AuditCommitter:
    """Batches audit rows into shared transactions; ``append`` returns once a row is durable."""

    def __init__(
        self,
        append_batch: Callable[[Sequence[Entry]], list[int]],
        *,
        max_batch: int = 256,
        commit_delay: float = 0.002,
        idle_exit: float = 5.0,
        on_close: Callable[[], None] | None = None,
        on_idle: Callable[[], None] | None = None,
    ) -> None:
        self._append_batch = append_batch
        self._on_close = on_close
        self._on_idle = on_idle
        self.max_batch = max_batch
        self.commit_delay = commit_delay
        self.idle_exit = idle_exit
        self._queue: list[tuple[Entry, Future[int]]] = []
        self._cond = threading.Condition()
        self._running = False
        self._idle = False  # the writer waits for a first row (only then is it worth waking)
        self._closed = False
        self._last_commit = 0.0
        self.batches = 0  # transactions committed (for tests)
        self.rows = 0

    def submit(self, entry: Entry) -> Future[int]:
        """Queue *entry*; the future resolves to its seq once its transaction committed."""
        fut: Future[int] = Future()
        with self._cond:
            if self._closed:
                raise UnavailableError("audit log: expected a running committer, seen it closed")
            self._queue.append((entry, fut))
            if self._running:
                if self._idle:
                    self._cond.notify()
            else:
                # the thread exits when idle, so brokers that are dropped leave no thread behind
                self._running = True
                threading.Thread(target=self._run, name="audit-committer", daemon=True).start()
        return fut

    def append(self, entry: Entry) -> int:
        """Append *entry* and wait until it is durable; returns its seq."""
        return self.submit(entry).result()

    async def append_async(self, entry: Entry) -> int:
        """Like ``append`` without blocking the event loop."""
        return await asyncio.wrap_future(self.submit(entry))

    def close(self) -> None:
        """Refuse new rows; rows already queued are still committed (then ``on_close`` runs)."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify()
            finish_here = not self._running
        if finish_here:
            self._finish()

    def _finish(self, hook: Callable[[], None] | None = None) -> None:
        hook = hook or self._on_close
        if hook is not None:
            try:
                hook()
            except Exception:
                log.exception("audit log: close or idle hook failed")

    def _run(self) -> None:
        while True:
            ended: bool | None = None  # set when the thread exits: whether by close()
            with self._cond:
                self._idle = True
                while not self._queue:
                    if self._closed or (not self._cond.wait(self.idle_exit) and not self._queue):
                        self._running = False
                        ended = self._closed
                        break
                if ended is None:
                    self._idle = False
                    now = time.monotonic()
                    if now - self._last_commit < self.commit_delay and not self._closed:
                        # back-to-back commits: let more rows join this one (nobody notifies
                        # during the wait, so it costs no wake-ups)
                        deadline = now + self.commit_delay
                        while len(self._queue) < self.max_batch and (left := deadline - time.monotonic()) > 0:
                            self._cond.wait(left)
                    batch = self._queue[: self.max_batch]
                    del self._queue[: self.max_batch]
            if ended is not None:
                if ended:
                    self._finish()
                elif self._on_idle is not None:
                    self._finish(self._on_idle)
                return
            self._commit(batch)
            self._last_commit = time.monotonic()

    def _commit(self, batch: list[tuple[Entry, Future[int]]]) -> None:
        try:
            seqs = self._append_batch([entry for entry, _ in batch])
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0][1], exc)
                return
            # one bad row must not fail its neighbours: retry them one by one
            log.warning("audit batch failed, retrying rows singly", extra={"fields": {"rows": len(batch)}})
            for item in batch:
                self._commit([item])
            return
        self.batches += 1
        self.rows += len(batch)
        for (_, fut), seq in zip(batch, seqs, strict=True):
            _settle(fut, seq)


def _settle(fut: Future[int], outcome: int | BaseException) -> None:
    try:
        if isinstance(outcome, BaseException):
            fut.set_exception(outcome)
        else:
            fut.set_result(outcome)
    except InvalidStateError:
        pass  # the waiter gave up (cancelled); the row is committed regardless
