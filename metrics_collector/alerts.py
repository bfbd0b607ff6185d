"""Alert rules of the collector: averaging windows and hysteresis. No I/O.

How it works
------------
Each watched resource (``cpu``, ``memory``, ``disk``) has a :class:`ResourceWatch` holding the
last ``window_samples`` values (one per tick) and a level, ``ok < warning < critical``. On
every sample the watch averages its window and moves to the level given by this table
(rows are tried top to bottom, the first match wins; ``a`` is the window average, ``w`` and
``c`` the warning and critical thresholds, ``m`` the clear margin):

=================  ======================  ============
level now          average                 next level
=================  ======================  ============
any                ``a > c``               critical
critical           ``a >= c - m``          critical
any                ``a > w``               warning
warning, critical  ``a >= w - m``          warning
any                otherwise               ok
=================  ======================  ============

So a level is raised when the average goes *above* its threshold and is left only when the
average falls *below threshold − margin*: a value hovering at a threshold does not flap.
Nothing is raised until the window is full, so a single spike right after start-up (or
anywhere else, once averaged) does not alert. Every change of level yields one
:class:`Alert`: raising and escalating (``warning``/``critical``), de-escalating from
critical to warning (``warning``), and clearing (``info``), all in category ``resource``.

Sampling itself is watched too (:class:`SamplingWatch`, category ``performance``): a sample
slower than ``sample_slow_ms`` raises a warning once; it clears (``info``) when a whole
window of samples has passed with none slow.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Literal

from shared.protocol import (
    AlertCategory,
    AlertLevel,
    Metadata,
    Priority,
    SystemAlertMessage,
    SystemAlertPayload,
    SystemMetrics,
)

Resource = Literal["cpu", "memory", "disk"]

#: Names of the resources in alert messages.
RESOURCE_LABELS: dict[Resource, str] = {
    "cpu": "CPU usage",
    "memory": "Memory usage",
    "disk": "Disk usage",
}


class Level(IntEnum):
    """Alert level of one resource; ordered, so ``>`` means "more severe"."""

    OK = 0
    WARNING = 1
    CRITICAL = 2

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Percentages above which a resource's window average is a warning or critical."""

    warning: float
    critical: float

    def of(self, level: Level) -> float:
        return self.critical if level is Level.CRITICAL else self.warning


@dataclass(frozen=True, slots=True)
class AlertRules:
    """Everything the alert core needs to know; built from ``CollectorSettings``."""

    thresholds: dict[Resource, Thresholds]
    #: Percentage points below a threshold the average must fall to leave its level.
    clear_margin: float
    #: Length of the averaging window, for messages (seconds).
    window_s: float
    #: Samples in the averaging window (one per tick; at least 1).
    window_samples: int
    #: A sample slower than this raises a ``performance`` warning (milliseconds).
    sample_slow_ms: float
    #: The filesystem the disk figures are about (named in disk alerts).
    disk_path: str = "/"


@dataclass(frozen=True, slots=True)
class Alert:
    """One transition, ready to be published as a ``system:alert``."""

    level: AlertLevel
    category: AlertCategory
    message: str
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def priority(self) -> Priority:
        return "high" if self.level in ("warning", "error", "critical") else "normal"

    @property
    def tags(self) -> tuple[str, str]:
        """Filter tags of the event in the logs topic: level and category."""
        return (self.level, self.category)

    def to_message(self) -> SystemAlertMessage:
        return SystemAlertMessage(
            type="system:alert",
            payload=SystemAlertPayload(
                level=self.level,
                category=self.category,
                message=self.message,
                details=self.details,
            ),
            metadata=Metadata(priority=self.priority),
        )


def next_level(level: Level, average: float, thresholds: Thresholds, margin: float) -> Level:
    """The level after seeing ``average`` at ``level`` (the table at the top of the module)."""
    if average > thresholds.critical:
        return Level.CRITICAL
    if level is Level.CRITICAL and average >= thresholds.critical - margin:
        return Level.CRITICAL
    if average > thresholds.warning:
        return Level.WARNING
    if level >= Level.WARNING and average >= thresholds.warning - margin:
        return Level.WARNING
    return Level.OK


#: The alert level that announces entering a level.
_RAISED_LEVEL: dict[Level, AlertLevel] = {
    Level.OK: "info",
    Level.WARNING: "warning",
    Level.CRITICAL: "critical",
}


def _window_text(rules: AlertRules) -> str:
    if rules.window_samples <= 1:
        return ""
    return f" ({rules.window_s:g}s average)"


class ResourceWatch:
    """The window and level of one resource. Feed it one value per tick with :meth:`observe`."""

    def __init__(self, resource: Resource, rules: AlertRules) -> None:
        self.resource: Resource = resource
        self.rules = rules
        self.thresholds = rules.thresholds[resource]
        self.level = Level.OK
        self._window: deque[float] = deque(maxlen=rules.window_samples)

    @property
    def average(self) -> float | None:
        if not self._window:
            return None
        return sum(self._window) / len(self._window)

    def observe(self, value: float) -> Alert | None:
        """Add a sample; returns the alert announcing a change of level, if any."""
        self._window.append(value)
        if len(self._window) < self.rules.window_samples:
            return None  # not enough history yet: never judge a partial window
        average = sum(self._window) / len(self._window)
        new = next_level(self.level, average, self.thresholds, self.rules.clear_margin)
        old, self.level = self.level, new
        if new is old:
            return None
        return self._announce(old, new, average)

    def _announce(self, old: Level, new: Level, average: float) -> Alert:
        label = RESOURCE_LABELS[self.resource]
        if self.resource == "disk":
            label = f"{label} of {self.rules.disk_path}"
        window = _window_text(self.rules)
        margin = self.rules.clear_margin
        if new > old:
            threshold = self.thresholds.of(new)
            message = f"{label} {average:.1f}% above {threshold:g}%{window}"
            level: AlertLevel = _RAISED_LEVEL[new]
        elif new is Level.WARNING:  # critical → warning
            threshold = self.thresholds.critical - margin
            message = (
                f"{label} {average:.1f}% back below {threshold:g}%, "
                f"down from critical to warning{window}"
            )
            level = "warning"
        else:  # warning or critical → ok
            threshold = self.thresholds.warning - margin
            message = f"{label} back to normal: {average:.1f}% below {threshold:g}%{window}"
            level = "info"
        details: dict[str, Any] = {
            "resource": self.resource,
            "value": round(average, 2),
            "threshold": threshold,
            "window": self.rules.window_s,
            "state": new.label,
            "previous": old.label,
        }
        if self.resource == "disk":
            details["path"] = self.rules.disk_path
        return Alert(level=level, category="resource", message=message, details=details)


class SamplingWatch:
    """Watches how long sampling takes: raises once when a sample is slow, clears after a
    whole window of samples with none slow (so a sampler that is slow every other tick does
    not flap)."""

    def __init__(self, rules: AlertRules) -> None:
        self.rules = rules
        self.slow = False
        self._fast_in_a_row = 0

    def observe(self, duration_ms: float) -> Alert | None:
        threshold = self.rules.sample_slow_ms
        details: dict[str, Any] = {
            "resource": "sampler",
            "value": round(duration_ms, 1),
            "threshold": threshold,
            "window": self.rules.window_s,
            "unit": "ms",
        }
        if duration_ms > threshold:
            self._fast_in_a_row = 0
            if self.slow:
                return None
            self.slow = True
            return Alert(
                level="warning",
                category="performance",
                message=f"Sampling system metrics took {duration_ms:.0f} ms, "
                f"above {threshold:g} ms",
                details=details,
            )
        self._fast_in_a_row += 1
        if not self.slow or self._fast_in_a_row < self.rules.window_samples:
            return None
        self.slow = False
        return Alert(
            level="info",
            category="performance",
            message=f"Sampling system metrics back under {threshold:g} ms",
            details=details,
        )


class AlertEngine:
    """All the watches of one collector. Feed it every sample with :meth:`observe`."""

    def __init__(self, rules: AlertRules) -> None:
        self.rules = rules
        self.resources: dict[Resource, ResourceWatch] = {
            resource: ResourceWatch(resource, rules) for resource in ("cpu", "memory", "disk")
        }
        self.sampling = SamplingWatch(rules)

    def observe(self, metrics: SystemMetrics, sample_ms: float) -> list[Alert]:
        """Alerts caused by one sample (most often none), in a stable order."""
        return list(self._observe(metrics, sample_ms))

    def _observe(self, metrics: SystemMetrics, sample_ms: float) -> Iterator[Alert]:
        values: dict[Resource, float] = {
            "cpu": metrics.cpu.usage,
            "memory": metrics.memory.percent,
            "disk": metrics.disk.percent,
        }
        for resource, watch in self.resources.items():
            alert = watch.observe(values[resource])
            if alert is not None:
                yield alert
        alert = self.sampling.observe(sample_ms)
        if alert is not None:
            yield alert
