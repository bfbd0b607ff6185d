"""Security events: the audit log, their metrics, and the alert when they come in a burst.

Every security-relevant refusal goes through :meth:`SecurityAudit.record` with a *kind*
(a small fixed set, the metric's label), a reason, and who: client IP, user (when known)
and connection id. It is

* logged on the ``ws.audit`` logger (``kind: reason``) with ``extra`` fields ``user_id``,
  ``connection_id`` and ``ip`` (fields in JSON logs, bracketed ids in text logs), at most
  ``log_per_second`` lines per kind — the rest are counted and the next line says how many
  were left out, so a flood cannot flood the logs;
* counted in ``teamdash_gateway_security_events_total{kind}`` (every event, none skipped);
* fed to a :class:`BurstDetector`: ``threshold`` events within ``window_s`` on this gateway
  raise one ``system:alert`` (level ``warning``, category ``security``) on the ``logs``
  topic. It is re-armed only once the rate has fallen below half the threshold (hysteresis,
  announced by an ``info`` alert) and never raised again within ``cooldown_s``.

``token_expired`` is logged and counted but does not feed the burst detector: tokens of
dashboards opened at the same time expire at the same time, which is no attack.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from gateway.limits import TokenBucket
from gateway.metrics import GatewayMetrics, SecurityEventKind
from shared.protocol import Metadata, SystemAlertMessage, SystemAlertPayload

log = logging.getLogger("ws.audit")

Kind = SecurityEventKind

#: Kinds that do not count towards a burst (they happen in herds without an attacker).
NOT_BURSTY: frozenset[str] = frozenset({"token_expired"})

#: Longest reason kept in a log line.
MAX_REASON_CHARS = 300


@dataclass(slots=True)
class BurstDetector:
    """Counts events in a sliding window; says when to raise and when to clear (no I/O)."""

    threshold: int
    window_s: float
    cooldown_s: float
    _times: deque[float] = field(default_factory=deque)
    _kinds: deque[str] = field(default_factory=deque)
    raised: bool = False
    _last_raised: float = float("-inf")

    def _trim(self, now: float) -> None:
        start = now - self.window_s
        while self._times and self._times[0] < start:
            self._times.popleft()
            self._kinds.popleft()

    def add(self, kind: str, now: float) -> bool:
        """Count one event; True when this event starts a burst (raise the alert now)."""
        self._times.append(now)
        self._kinds.append(kind)
        self._trim(now)
        if self.raised or len(self._times) < self.threshold:
            return False
        if now - self._last_raised < self.cooldown_s:
            return False
        self.raised = True
        self._last_raised = now
        return True

    def check_clear(self, now: float) -> bool:
        """True once, when a raised burst has calmed down (under half the threshold)."""
        self._trim(now)
        if self.raised and len(self._times) < max(1, self.threshold // 2):
            self.raised = False
            return True
        return False

    def kinds(self) -> dict[str, int]:
        """Events in the current window by kind."""
        return dict(Counter(self._kinds))

    @property
    def count(self) -> int:
        return len(self._times)


class SecurityAudit:
    def __init__(
        self,
        metrics: GatewayMetrics,
        *,
        gateway_id: str,
        threshold: int,
        window_s: float,
        cooldown_s: float,
        publish: Callable[[SystemAlertMessage], None],
        log_per_second: float = 20.0,
    ) -> None:
        self.metrics = metrics
        self.gateway_id = gateway_id
        self.burst = BurstDetector(threshold, window_s, cooldown_s)
        self._publish = publish
        self._log_per_second = log_per_second
        self._log_buckets: dict[str, TokenBucket] = {}
        self._suppressed: Counter[str] = Counter()
        self._ips: set[str] = set()
        self._users: set[str] = set()

    def record(
        self,
        kind: Kind,
        reason: str,
        *,
        ip: str | None,
        user_id: str | None = None,
        connection_id: str | None = None,
    ) -> None:
        """Log, count and watch one security event (see the module doc)."""
        self.metrics.security_events.labels(kind).inc()
        bucket = self._log_buckets.get(kind)
        if bucket is None:
            bucket = self._log_buckets[kind] = TokenBucket(self._log_per_second)
        if len(reason) > MAX_REASON_CHARS:
            reason = reason[:MAX_REASON_CHARS] + "…"
        if bucket.take():
            suppressed = self._suppressed.pop(kind, 0)
            # The ids go in ``extra``: shared.logs puts them in brackets (text) or fields (JSON).
            log.warning(
                "%s: %s%s",
                kind,
                reason,
                f" (and {suppressed} more {kind} not logged)" if suppressed else "",
                extra={
                    "user_id": user_id,
                    "connection_id": connection_id,
                    "ip": ip,
                    "gateway_id": self.gateway_id,
                    "security_event": kind,
                },
            )
        else:
            self._suppressed[kind] += 1
        if kind in NOT_BURSTY:
            return
        now = time.monotonic()
        if ip:
            self._ips.add(ip)
        if user_id:
            self._users.add(user_id)
        if self.burst.add(kind, now):
            self._raise(now)

    def tick(self) -> None:
        """Called about once a second: clears a burst that has calmed down."""
        now = time.monotonic()
        if self.burst.check_clear(now):
            self._ips.clear()
            self._users.clear()
            self._publish(
                _alert(
                    "info",
                    f"security events on gateway {self.gateway_id} are back to normal",
                    {"gatewayId": self.gateway_id, "windowS": self.burst.window_s},
                )
            )
        elif not self.burst.raised and self.burst.count == 0:
            self._ips.clear()
            self._users.clear()

    def _raise(self, now: float) -> None:
        kinds = self.burst.kinds()
        log.error(
            "burst of security events: %d in %.0fs (%s) from %d address(es), %d user(s)",
            self.burst.count,
            self.burst.window_s,
            ", ".join(f"{k}={n}" for k, n in sorted(kinds.items())),
            len(self._ips),
            len(self._users),
            extra={"gateway_id": self.gateway_id},
        )
        # Addresses and user ids stay in the audit log: every subscriber of ``logs``
        # (viewers included) sees the alert.
        self._publish(
            _alert(
                "warning",
                f"{self.burst.count} security events in {self.burst.window_s:g}s on gateway "
                f"{self.gateway_id}: see the ws.audit log",
                {
                    "gatewayId": self.gateway_id,
                    "count": self.burst.count,
                    "windowS": self.burst.window_s,
                    "kinds": kinds,
                    "addresses": len(self._ips),
                    "users": len(self._users),
                },
            )
        )


def _alert(
    level: Literal["info", "warning"], message: str, details: dict[str, object]
) -> SystemAlertMessage:
    return SystemAlertMessage(
        type="system:alert",
        payload=SystemAlertPayload(
            level=level, category="security", message=message, details=details
        ),
        metadata=Metadata(priority="high" if level == "warning" else "normal"),
    )
