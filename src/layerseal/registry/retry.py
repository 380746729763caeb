"""Retry policy: bounded attempts, exponential backoff with jitter, ``Retry-After`` honoured;
one overall deadline per command; network failures named by cause, with the fix, and
split into those worth repeating and those no repetition can fix (DNS, TLS)."""

from __future__ import annotations

import email.utils
import random
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from layerseal.errors import BadInputError
from layerseal.netcause import NetworkFailure, classify_network_error

__all__ = [
    "Deadline",
    "NetworkFailure",
    "RetryPolicy",
    "classify_network_error",
    "format_duration",
    "is_retriable_status",
    "parse_duration",
    "parse_retry_after",
]

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


@dataclass(frozen=True)
class Deadline:
    """One overall time limit for a command (``--timeout``), shared by all its clients."""

    seconds: float
    flag: str = "--timeout"
    started: float = field(default_factory=time.monotonic)

    def remaining(self) -> float:
        return self.seconds - (time.monotonic() - self.started)

    def describe(self) -> str:
        return f"the deadline of {format_duration(self.seconds)} ({self.flag})"


def format_duration(seconds: float) -> str:
    """``90`` -> ``1m30s``; ``3600`` -> ``1h0m0s``; ``2.5`` -> ``2.5s`` (Go's style, as skopeo prints)."""
    if seconds < 60:
        return f"{seconds:g}s"
    whole = round(seconds)
    h, rest = divmod(whole, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m}m{s}s" if h else f"{m}m{s}s"


_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?$")


def parse_duration(text: str, what: str) -> float:
    """``90``, ``90s``, ``15m``, ``2h``, ``1h30m`` -> seconds (positive)."""
    match = _DURATION.match(text.strip().lower())
    seconds = 0.0
    if match:
        h, m, sec = (float(g) if g else 0.0 for g in match.groups())
        seconds = h * 3600 + m * 60 + sec
    if seconds <= 0:
        raise BadInputError(f"{what} {text!r}: expected a positive duration such as 90s, 15m or 1h30m")
    return seconds
