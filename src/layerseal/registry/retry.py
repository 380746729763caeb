"""Retry policy: bounded attempts, exponential backoff with jitter, ``Retry-After`` honoured."""

from __future__ import annotations

import email.utils
import random
from dataclasses import dataclass
from datetime import UTC, datetime

#: statuses worth repeating for requests the server may not have acted on
RETRIABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
#: for requests that must not be applied twice (PATCH/PUT of upload data), only statuses that
#: say the request was refused before being processed
RETRIABLE_UNSAFE_STATUSES = frozenset({429, 503})


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a request is repeated."""

    max_attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0
    #: upper bound on a server's Retry-After, so a hostile value cannot stall us for hours
    max_retry_after: float = 120.0
    #: fraction of the delay removed at random, so parallel transfers do not retry in lockstep
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts: expected >= 1, seen {self.max_attempts}")

    def backoff(self, attempt: int) -> float:
        """Delay after failed attempt number *attempt* (1-based)."""
        delay: float = min(self.max_delay, self.base_delay * float(2 ** max(0, attempt - 1)))
        return delay * (1.0 - self.jitter * random.random())

    def delay(self, attempt: int, retry_after: str | None = None, now: datetime | None = None) -> float:
        """The server's Retry-After when it gave a usable one (capped), else the backoff."""
        if retry_after is not None:
            seconds = parse_retry_after(retry_after, now)
            if seconds is not None:
                return min(seconds, self.max_retry_after)
        return self.backoff(attempt)


def parse_retry_after(value: str, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or HTTP-date); None if invalid."""
    value = value.strip()
    if value.isdigit():
        return float(int(value))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    now = now or datetime.now(UTC)
    return max(0.0, (when - now).total_seconds())


def is_retriable_status(status: int, idempotent: bool = True) -> bool:
    return status in (RETRIABLE_STATUSES if idempotent else RETRIABLE_UNSAFE_STATUSES)
