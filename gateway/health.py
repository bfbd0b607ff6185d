"""Is this gateway's Redis reachable? The state, its transitions and the notices they cause
(no I/O: the gateway's watch task and request paths feed it, and send what it returns).

Clients are told once per transition, not once per failed call: the first failure after a
healthy period turns the state *down* (one ``system:alert`` of level ``error``), the first
success after that turns it *up* again (one ``info``). Redis being down, these alerts go from
the gateway straight to its own connections, not through the bus.

The time of the last failure also gates what must not run on stale data: runner heartbeats
age while Redis is away, so dead-runner reaping waits until the connection has been healthy
for a runner TTL plus a heartbeat (see :meth:`RedisHealth.stable_for`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shared.protocol import Metadata, SystemAlertMessage, SystemAlertPayload


@dataclass(slots=True)
class RedisHealth:
    up: bool = True
    #: Why it is down (the last connection error), for logs, alerts and ``/readyz``.
    reason: str = ""
    #: Outages seen so far: a request that saw this change while it waited may have lost
    #: its reply in the outage.
    outages: int = 0
    #: Monotonic time of the last failure (None: never failed).
    last_failure: float | None = None
    down_since: float | None = None

    def failed(self, now: float, reason: str) -> bool:
        """A Redis call failed on a connection error; True when this starts an outage."""
        self.last_failure = now
        self.reason = reason
        if not self.up:
            return False
        self.up = False
        self.down_since = now
        self.outages += 1
        return True

    def recovered(self, now: float) -> float | None:
        """A Redis call worked; the outage's length in seconds when this ends one."""
        if self.up:
            return None
        self.up = True
        started = self.down_since if self.down_since is not None else now
        self.down_since = None
        return max(0.0, now - started)

    def stable_for(self, now: float) -> float:
        """Seconds since the last failure (infinite when there was none)."""
        if not self.up:
            return 0.0
        if self.last_failure is None:
            return float("inf")
        return now - self.last_failure


def degraded_alert(gateway_id: str, reason: str) -> SystemAlertMessage:
    return SystemAlertMessage(
        type="system:alert",
        payload=SystemAlertPayload(
            level="error",
            category="performance",
            message=(
                f"gateway {gateway_id} lost Redis ({reason}): requests are refused with "
                "SERVICE_UNAVAILABLE and live events pause until it is back"
            ),
            details={"gatewayId": gateway_id, "reason": reason, "redis": "down"},
        ),
        metadata=Metadata(priority="high"),
    )


def recovered_alert(gateway_id: str, down_s: float) -> SystemAlertMessage:
    details: dict[str, Any] = {
        "gatewayId": gateway_id,
        "redis": "up",
        "downMs": int(down_s * 1000),
    }
    return SystemAlertMessage(
        type="system:alert",
        payload=SystemAlertPayload(
            level="info",
            category="performance",
            message=(
                f"gateway {gateway_id} reached Redis again after {down_s:.1f}s: live events "
                "resume (gaps are resynced or announced with subscription:gap)"
            ),
            details=details,
        ),
        metadata=Metadata(priority="high"),
    )


@dataclass(slots=True)
class CollectorWatch:
    """Is a metrics collector still publishing? Fed the ``metrics`` topic's head once per
    check: a head that stops moving for ``silence_s`` makes the collector *silent* (once),
    a head that moves again brings it *back* (once). A topic that never had an event (no
    collector in this deployment) is never announced."""

    silence_s: float
    head: tuple[int, str | None] | None = None
    last_change: float | None = None
    silent: bool = False
    silent_since: float | None = None

    def observe(self, now: float, offset: int, epoch: str | None) -> str | None:
        """``"silent"`` or ``"back"`` when the state changes with this check, else None."""
        head = (offset, epoch)
        if head != self.head:
            first = self.head is None
            self.head = head
            if epoch is None:
                return None
            self.last_change = now
            if self.silent and not first:
                self.silent = False
                self.silent_since = None
                return "back"
            return None
        if self.last_change is None or self.silent:
            return None
        if now - self.last_change >= self.silence_s:
            self.silent = True
            self.silent_since = self.last_change
            return "silent"
        return None

    def pause(self, now: float) -> None:
        """Redis was away: the collector could not publish either; start the clock again."""
        if self.last_change is not None:
            self.last_change = now
