"""The one place that decides whether a registry request is tried again, and how long to wait.

Every loop of the client (API requests, token requests, bounded reads, resumed blob
downloads, upload chunks) counts its tries with an :class:`Attempts` from the client's
:class:`Retrier`, which applies the :class:`RetryPolicy` (attempts, backoff,
``Retry-After``), the command's :class:`Deadline` (``--timeout``) and the rules for
what may be sent twice: a request the server may have acted on is repeated only when it
is idempotent or provably never sent, and a streamed body, consumed by sending it, is
never sent again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import httpx

from layerseal.errors import TransportError
from layerseal.registry.retry import (
    Deadline,
    NetworkFailure,
    RetryPolicy,
    format_duration,
    is_retriable_status,
)

log = logging.getLogger(__name__)

#: errors that prove the request never reached the server, so repeating it is always safe
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


class Retrier:
    """The retry policy, the deadline and the clock of one client, shared by all its loops."""

    def __init__(
        self, policy: RetryPolicy, deadline: Deadline | None, sleep: Callable[[float], None]
    ) -> None:
        self.policy = policy
        self.deadline = deadline
        self._sleep = sleep

    def attempts(self, where: str, *, limit: int | None = None, replayable: bool = True) -> Attempts:
        """A new loop's count; a body that cannot be replayed gets one try, whatever *limit* says."""
        return Attempts(self, where, (limit or self.policy.max_attempts) if replayable else 1, replayable)

    def check_deadline(self, where: str) -> None:
        deadline = self.deadline
        if deadline is not None and deadline.remaining() <= 0:
            raise TransportError(f"{where}: expected to finish within {deadline.describe()}, seen it pass")

    def wait(
        self, delay: float, where: str, reason: str, attempt: int, limit: int, announce: bool = False
    ) -> None:
        """Sleep before attempt *attempt* + 1, unless that would pass the command's deadline.

        Long waits (a server's ``Retry-After``) are announced on stderr, even under ``-q``:
        a command that seems to hang for minutes must say why.
        """
        deadline = self.deadline
        if deadline is not None and delay > deadline.remaining():
            left = format_duration(max(0.0, round(deadline.remaining(), 1)))
            raise TransportError(
                f"{where}: {reason}; waiting {format_duration(delay)} before trying again would pass "
                f"{deadline.describe()} ({left} left): giving up"
            )
        if announce or delay >= 5:
            log.warning(
                "%s: %s; waiting %s before attempt %d of %d",
                where,
                reason,
                format_duration(round(delay, 1)),
                attempt + 1,
                limit,
            )
        self._sleep(delay)


class Attempts:
    """The tries of one loop: :meth:`start` each, then ask whether (and after what wait) to go on.

    The ``after_*`` methods wait and return True when another try may follow, else
    return False and leave the error to the caller, who knows how to word it.
    """

    def __init__(self, retrier: Retrier, where: str, limit: int, replayable: bool) -> None:
        self._retrier = retrier
        self.where = where
        self.limit = limit
        self.replayable = replayable
        self.number = 0

    def start(self) -> int:
        """Begin the next try (refused once the deadline has passed); returns its number."""
        self.number += 1
        self._retrier.check_deadline(self.where)
        return self.number

    def _wait(self, delay: float, reason: str, announce: bool = False) -> None:
        self._retrier.wait(delay, self.where, reason, self.number, self.limit, announce)

    def after_network_error(self, failure: NetworkFailure, *, repeatable: bool = True) -> bool:
        """After a broken connection; *repeatable* is False when the server may have acted."""
        if not (failure.retriable and repeatable and self.number < self.limit):
            return False
        log.debug("%s: %s, retrying", self.where, failure.cause)
        self._wait(self._retrier.policy.backoff(self.number), failure.cause)
        return True

    def after_request_error(
        self, exc: httpx.TransportError, failure: NetworkFailure, idempotent: bool
    ) -> bool:
        """After a request failed to get an answer: repeated when idempotent or never sent."""
        return self.after_network_error(failure, repeatable=idempotent or isinstance(exc, NOT_SENT))

    def after_status(self, response: httpx.Response, *, idempotent: bool = True) -> bool:
        """After an answer that asks to come back later (5xx, 429), honouring ``Retry-After``."""
        status = response.status_code
        if not (is_retriable_status(status, idempotent) and self.number < self.limit):
            return False
        retry_after = response.headers.get("retry-after")
        delay = self._retrier.policy.delay(self.number, retry_after)
        log.debug("%s: HTTP %d, retrying in %.1fs", self.where, status, delay)
        response.close()
        reason = f"HTTP {status}" + (f", Retry-After {retry_after}" if retry_after else "")
        self._wait(delay, reason, announce=retry_after is not None)
        return True

    def after_failure(self, reason: str) -> bool:
        """After any other failure the caller knows how to recover from (a broken upload chunk)."""
        if self.number >= self.limit:
            return False
        self._wait(self._retrier.policy.backoff(self.number), reason)
        return True

    def after_unauthorized(self) -> bool:
        """After HTTP 401, once the credentials are refreshed: the server did not act on the
        request, so it goes again without counting a try, unless its body was a stream
        (consumed by sending it: sending it again would send nothing)."""
        if not self.replayable:
            return False
        self.number -= 1
        return True

    def progressed(self) -> None:
        """The try that just failed made progress (a resumed download): it counts as the first."""
        self.number = 1
