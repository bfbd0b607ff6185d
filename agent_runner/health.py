"""How long a process has been talking to Redis without a failure (a core: no I/O, the
caller passes the time).

Why: during a Redis outage every heartbeat ages. When Redis comes back, a runner that
looked at the heartbeats at once would find every other runner "dead" and reap their live
agents. Each caller records its own failures here, and the reaper only declares a runner
dead once the caller itself has been talking to Redis without a failure for at least a
TTL plus a heartbeat (:func:`agent_runner.reaper.reap_dead_runners`, ``ok_for_s``): by then
every live runner has had time to beat again."""

from __future__ import annotations

import math


class RedisHealth:
    """The time of the last failure talking to Redis (any monotonic clock)."""

    __slots__ = ("_failed_at", "failures")

    def __init__(self) -> None:
        self._failed_at: float | None = None
        #: Failures recorded so far (each one marks the registry for a check, too).
        self.failures = 0

    def failed(self, now: float) -> None:
        """Record a failure (a connection error, a timeout) at ``now``."""
        self._failed_at = now
        self.failures += 1

    def ok_for(self, now: float) -> float:
        """Seconds since the last failure (infinite when there was none)."""
        return math.inf if self._failed_at is None else max(0.0, now - self._failed_at)
