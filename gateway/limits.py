"""Rate limits (no I/O): a token bucket per connection. Limits shared by all gateways
(commands per agent) are counted in Redis by :mod:`gateway.runners`."""

from __future__ import annotations

import time


class TokenBucket:
    """``rate`` events per second with bursts up to ``burst``."""

    __slots__ = ("rate", "burst", "_tokens", "_last")

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else rate
        self._tokens = self.burst
        self._last = time.monotonic()

    def take(self, now: float | None = None) -> bool:
        """Spend one token; False when the bucket is empty (over the limit)."""
        now = time.monotonic() if now is None else now
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False
