"""Per-client token buckets guarding the unauthenticated RCAR endpoints.

Kept in process memory on purpose: it costs no database round trip, and since challenges
are stateless nothing an unauthenticated client does fills the database anyway.  Clients
are counted per address, IPv6 ones per /64: one host usually holds a whole /64, so
counting its addresses one by one would let it rotate through billions of buckets.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections import OrderedDict
from collections.abc import Callable


def client_bucket(client: str) -> str:
    """The bucket of a client address: itself, or its /64 for IPv6."""
    if ":" not in client:
        return client
    try:
        return str(ipaddress.IPv6Network((client.split("%", 1)[0], 64), strict=False))
    except ValueError:
        return client


class RateLimiter:
    def __init__(
        self,
        rate: float = 20.0,
        burst: float = 100.0,
        *,
        max_clients: int = 65536,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.max_clients = max_clients
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def allow(self, client: str) -> bool:
        client = client_bucket(client)
        now = self.clock()
        with self._lock:
            tokens, last = self._buckets.get(client, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            allowed = tokens >= 1.0
            if allowed:
                tokens -= 1.0
            self._buckets[client] = (tokens, now)
            self._buckets.move_to_end(client)
            if len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
        return allowed
