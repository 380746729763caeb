"""Retry policy: bounded attempts, exponential backoff with jitter, ``Retry-After`` honoured;
one overall deadline per command; network failures named by cause, with the fix, and
split into those worth repeating and those no repetition can fix (DNS, TLS)."""

from __future__ import annotations

import email.utils
import errno
import random
import re
import socket
import ssl
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from layerseal.errors import BadInputError

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


@dataclass(frozen=True)
class NetworkFailure:
    """Why a connection failed, what to do about it, and whether trying again can help."""

    cause: str
    fix: str
    retriable: bool

    def message(self) -> str:
        return f"{self.cause}" + (f": {self.fix}" if self.fix else "")


# OpenSSL's reasons when the peer answered a TLS hello with something that is not TLS
_NOT_TLS_REASONS = ("WRONG_VERSION_NUMBER", "HTTP_REQUEST", "PACKET_LENGTH_TOO_LONG", "RECORD_LAYER_FAILURE")


def _root_cause(exc: BaseException) -> BaseException:
    seen = 0
    while seen < 10:
        nxt = exc.__cause__ or exc.__context__
        if nxt is None or isinstance(exc, OSError):
            return exc
        exc, seen = nxt, seen + 1
    return exc


def classify_network_error(exc: BaseException, host: str, tls_flag: str = "--tls-verify") -> NetworkFailure:
    """Name the cause of a failed connection to *host* and the fix; *tls_flag* is the
    command's flag for the registry's TLS checks (``--src-tls-verify``...)."""
    root = _root_cause(exc)
    name = type(exc).__name__
    if isinstance(root, ssl.SSLCertVerificationError):
        detail = root.verify_message or str(root)
        return NetworkFailure(
            f"certificate of {host} not trusted ({detail})",
            f"add its CA with {tls_flag.replace('-tls-verify', '-cert-dir')} DIR, or use {tls_flag}=false",
            retriable=False,
        )
    if isinstance(root, ssl.SSLError):
        reason = getattr(root, "reason", None) or ""
        if reason in _NOT_TLS_REASONS:
            return NetworkFailure(
                f"{host} did not answer with TLS ({reason})",
                f"this looks like plain HTTP: use {tls_flag}=false",
                retriable=False,
            )
        return NetworkFailure(f"TLS handshake with {host} failed ({reason or root})", "", retriable=False)
    if isinstance(root, socket.gaierror):
        temporary = root.errno == socket.EAI_AGAIN
        hostname = host if host.startswith("[") else host.rsplit(":", 1)[0]
        return NetworkFailure(
            f"name {hostname} not resolved ({root.strerror})",
            "check the registry host name and DNS" if not temporary else "the DNS server did not answer",
            retriable=temporary,
        )
    if isinstance(root, ConnectionRefusedError):
        return NetworkFailure(
            f"connection to {host} refused", "check the host and port, and that the registry is running", True
        )
    if isinstance(root, OSError) and root.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return NetworkFailure(
            f"{host} unreachable ({root.strerror})", "check the address and the network route", False
        )
    if name == "ConnectTimeout":
        return NetworkFailure(
            f"no connection to {host} within the connect timeout",
            "the host is unreachable or a firewall drops the connection",
            retriable=False,
        )
    if isinstance(root, ConnectionResetError) or name == "RemoteProtocolError":
        return NetworkFailure(f"{host} closed the connection ({root})", "", retriable=True)
    if name in ("ReadTimeout", "WriteTimeout", "PoolTimeout"):
        return NetworkFailure(f"{host} did not answer in time ({name})", "", retriable=True)
    return NetworkFailure(f"{name}: {root}", "", retriable=True)
