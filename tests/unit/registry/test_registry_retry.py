"""Retry policy: backoff bounds and Retry-After parsing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from layerseal.registry.retry import RetryPolicy, is_retriable_status, parse_retry_after


def test_backoff_grows_and_is_capped() -> None:
    policy = RetryPolicy(base_delay=1.0, max_delay=5.0, jitter=0.0)
    assert [policy.backoff(a) for a in (1, 2, 3, 4, 5)] == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_jitter_only_shortens() -> None:
    policy = RetryPolicy(base_delay=2.0, max_delay=60.0, jitter=0.5)
    delays = [policy.backoff(2) for _ in range(50)]
    assert all(2.0 <= d <= 4.0 for d in delays)


def test_retry_after_seconds_and_date() -> None:
    now = datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now) == 30.0
    assert parse_retry_after(format_datetime(now - timedelta(seconds=30), usegmt=True), now) == 0.0
    assert parse_retry_after("soon") is None


def test_policy_prefers_retry_after_but_caps_it() -> None:
    policy = RetryPolicy(base_delay=1.0, jitter=0.0, max_retry_after=10.0)
    assert policy.delay(1, "3") == 3.0
    assert policy.delay(1, "3600") == 10.0
    assert policy.delay(3, "garbage") == 4.0
    assert policy.delay(2, None) == 2.0


def test_retriable_statuses() -> None:
    assert is_retriable_status(503) and is_retriable_status(429) and is_retriable_status(500)
    assert not is_retriable_status(404) and not is_retriable_status(501)
    assert not is_retriable_status(500, idempotent=False)
    assert is_retriable_status(503, idempotent=False)


def test_policy_rejects_zero_attempts() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
