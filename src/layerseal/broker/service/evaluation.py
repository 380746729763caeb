"""Policy evaluations off the event loop: the evaluation processes and ``PolicyRunner``.

The processes are the one piece of process-wide state of the broker, on purpose: every
broker of a process (tests make many) shares two, started on first use or at serve time.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from layerseal.broker import policy
from layerseal.broker.store import TenantRules

_POLICY_PROCESSES = 2
_POOL_START_S = 60.0  # starting the processes (imports) is not evaluation: it has its own bound
_pool: ProcessPoolExecutor | None = None
_pool_ready: list[Future[Any]] = []
_pool_lock = threading.Lock()


def _exit_with_parent(parent: int) -> None:
    """Evaluation process initializer: exit once the broker process is gone.

    Nothing else would end it: a worker killed by its supervisor never shuts its pool down,
    and the pool's queue stays open in every sibling, so no end-of-file ever arrives.
    """

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, name="layerseal-parent-watch", daemon=True).start()


def _policy_pool() -> tuple[ProcessPoolExecutor, list[Future[Any]]]:
    """The evaluation processes, shared by every broker of this process, started on first
    use, and the warm-up evaluations that tell when each has started."""
    global _pool, _pool_ready
    with _pool_lock:
        if _pool is None:
            # spawned, not forked: the broker has threads (audit committer) and open sockets
            _pool = ProcessPoolExecutor(
                _POLICY_PROCESSES,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_exit_with_parent,
                initargs=(os.getpid(),),
            )
            _pool_ready = [
                _pool.submit(policy.evaluate, policy.DEFAULT_POLICY, {}, {}) for _ in range(_POLICY_PROCESSES)
            ]
        return _pool, _pool_ready


def start_policy_processes() -> None:
    """Start the evaluation processes now (at serve time) rather than on the first release."""
    _policy_pool()


def _drop_pool(broken: ProcessPoolExecutor) -> None:
    global _pool
    with _pool_lock:
        if _pool is broken:
            _pool = None
    broken.shutdown(wait=False, cancel_futures=True)


class PolicyRunner:
    """Policy evaluations off the event loop, each within a deadline.

    An evaluation is bounded in steps (``policy.STEP_LIMIT``, ~0.1 s of CPU here) and runs
    in one of two evaluation processes: a thread would not do, as an evaluating thread
    holds the GIL the event loop needs (measured: the loop lagged more with two policy
    threads than with evaluation on the loop itself).  A release whose evaluations do not
    finish within *deadline* (an overloaded machine) is denied, and nothing is cached.
    Evaluations are rare: decisions are cached per policy, claims and rules generation.
    """

    def __init__(self, deadline: float = 2.0) -> None:
        self.deadline = deadline

    async def decide(
        self, work: Mapping[tuple[str, str], tuple[policy.Policy, TenantRules]], claims: Mapping[str, Any]
    ) -> tuple[dict[tuple[str, str], policy.Decision], set[tuple[str, str]]]:
        """Decisions for *work*, and the keys of those that finished (the cacheable ones)."""
        loop = asyncio.get_running_loop()
        plain_claims = dict(claims)
        for attempt in (1, 2):
            pool, ready = _policy_pool()
            await asyncio.wait([asyncio.wrap_future(f) for f in ready], timeout=_POOL_START_S)
            try:
                futures = {
                    key: loop.run_in_executor(pool, policy.evaluate, pol, plain_claims, dict(rules.refvalues))
                    for key, (pol, rules) in work.items()
                }
                break
            except BrokenProcessPool:  # noticed at submission: start a new pool once
                _drop_pool(pool)
                if attempt == 2:
                    raise
        await asyncio.wait(futures.values(), timeout=self.deadline)
        decided: dict[tuple[str, str], policy.Decision] = {}
        finished: set[tuple[str, str]] = set()
        for key, future in futures.items():
            if future.done() and future.exception() is None:
                decided[key] = future.result()
                finished.add(key)
                continue
            if future.done() and isinstance(future.exception(), BrokenProcessPool):
                _drop_pool(pool)  # a worker died (killed, out of memory): the next call starts anew
                reason = "policy evaluation: expected a result, seen the evaluation process fail"
            else:
                future.cancel()
                reason = f"policy evaluation: expected within {self.deadline:g} s, seen longer"
            decided[key] = policy.Decision(False, reason, (reason,), ("evaluation failed",))
        return decided, finished

    def close(self) -> None:
        """Nothing to release: the evaluation processes are shared and end with this one."""
