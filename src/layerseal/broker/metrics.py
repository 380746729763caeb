"""Prometheus metrics written by hand in the text exposition format (version 0.0.4)."""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def _labels(pairs: tuple[tuple[str, str], ...]) -> str:
    if not pairs:
        return ""
    inner = ",".join(
        f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"' for k, v in pairs
    )
    return "{" + inner + "}"


class Metrics:
    """Counters and one latency histogram per endpoint; safe to share between threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str], int] = defaultdict(int)
        self._decisions: dict[tuple[str, str], int] = defaultdict(int)
        self._keys_released = 0
        self._hist: dict[str, list[int]] = {}
        self._sum: dict[str, float] = defaultdict(float)
        self._count: dict[str, int] = defaultdict(int)

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        with self._lock:
            self._requests[(endpoint, str(status))] += 1
            buckets = self._hist.setdefault(endpoint, [0] * len(_BUCKETS))
            for i, bound in enumerate(_BUCKETS):
                if seconds <= bound:
                    buckets[i] += 1
            self._sum[endpoint] += seconds
            self._count[endpoint] += 1

    def observe_decision(self, action: str, decision: str, keys: int) -> None:
        with self._lock:
            self._decisions[(action, decision)] += 1
            if action == "release" and decision == "ok":
                self._keys_released += keys

    def latency(self, endpoint: str) -> dict[str, Any]:
        """One endpoint's latency histogram as counts per bucket (not cumulative), with the
        upper bound of the buckets holding the 50th, 90th and 99th percentiles."""
        with self._lock:
            cumulative = list(self._hist.get(endpoint, [0] * len(_BUCKETS)))
            count = self._count.get(endpoint, 0)
            total = self._sum.get(endpoint, 0.0)
        buckets: list[dict[str, Any]] = []
        prev = 0
        for bound, n in zip(_BUCKETS, cumulative, strict=True):
            buckets.append({"le": bound, "count": n - prev})
            prev = n
        buckets.append({"le": None, "count": count - prev})

        def quantile(q: float) -> float | None:
            if not count:
                return None
            return next((b for b, n in zip(_BUCKETS, cumulative, strict=True) if n >= q * count), None)

        return {
            "count": count,
            "sum_seconds": round(total, 6),
            "buckets": buckets,
            "p50_le": quantile(0.5),
            "p90_le": quantile(0.9),
            "p99_le": quantile(0.99),
        }

    def render(self) -> str:
        out: list[str] = []
        with self._lock:
            out.append("# HELP layerseal_broker_requests_total HTTP requests by endpoint and status.")
            out.append("# TYPE layerseal_broker_requests_total counter")
            for (endpoint, status), n in sorted(self._requests.items()):
                lab = _labels((("endpoint", endpoint), ("status", status)))
                out.append(f"layerseal_broker_requests_total{lab} {n}")
            out.append("# HELP layerseal_broker_decisions_total Audited decisions by action and outcome.")
            out.append("# TYPE layerseal_broker_decisions_total counter")
            for (action, decision), n in sorted(self._decisions.items()):
                lab = _labels((("action", action), ("decision", decision)))
                out.append(f"layerseal_broker_decisions_total{lab} {n}")
            out.append(
                "# HELP layerseal_broker_keys_released_total Layer keys released to attested enclaves."
            )
            out.append("# TYPE layerseal_broker_keys_released_total counter")
            out.append(f"layerseal_broker_keys_released_total {self._keys_released}")
            out.append("# HELP layerseal_broker_request_seconds Request latency by endpoint.")
            out.append("# TYPE layerseal_broker_request_seconds histogram")
            for endpoint, buckets in sorted(self._hist.items()):
                for bound, n in zip(_BUCKETS, buckets, strict=True):
                    lab = _labels((("endpoint", endpoint), ("le", repr(bound))))
                    out.append(f"layerseal_broker_request_seconds_bucket{lab} {n}")
                lab = _labels((("endpoint", endpoint), ("le", "+Inf")))
                out.append(f"layerseal_broker_request_seconds_bucket{lab} {self._count[endpoint]}")
                lab = _labels((("endpoint", endpoint),))
                out.append(f"layerseal_broker_request_seconds_sum{lab} {self._sum[endpoint]:.6f}")
                out.append(f"layerseal_broker_request_seconds_count{lab} {self._count[endpoint]}")
        return "\n".join(out) + "\n"
