"""Settings of the metrics collector, read once from the environment.

Besides the common settings (``REDIS_URL``, ``TEAMDASH_REDIS_PREFIX``, … in
:class:`shared.settings.CommonSettings`), the collector reads:

| variable | default | meaning |
|---|---|---|
| `TEAMDASH_METRICS_INTERVAL_S` | `1.0` | Seconds between two `metrics:update` events (at least 0.05). CPU usage is measured over this interval. |
| `TEAMDASH_DISK_PATH` | `/` | Absolute path of the filesystem whose usage is reported as `disk`. |
| `TEAMDASH_ALERT_WINDOW_S` | `30` | Resource alerts judge the average over this many seconds of samples; nothing is raised before the window is full. Less than one interval = judge each sample alone. |
| `TEAMDASH_ALERT_CPU_WARNING` | `70` | CPU usage (%) above which a `warning` alert is raised. |
| `TEAMDASH_ALERT_CPU_CRITICAL` | `90` | CPU usage (%) above which a `critical` alert is raised. |
| `TEAMDASH_ALERT_MEMORY_WARNING` | `80` | Memory usage (%) for a `warning` alert. |
| `TEAMDASH_ALERT_MEMORY_CRITICAL` | `95` | Memory usage (%) for a `critical` alert. |
| `TEAMDASH_ALERT_DISK_WARNING` | `85` | Disk usage (%) for a `warning` alert. |
| `TEAMDASH_ALERT_DISK_CRITICAL` | `95` | Disk usage (%) for a `critical` alert. |
| `TEAMDASH_ALERT_CLEAR_MARGIN` | `5` | Hysteresis in percentage points: a level is left (and the alert cleared, announced as `info`) only when the average falls below threshold − margin. |
| `TEAMDASH_ALERT_SAMPLE_SLOW_MS` | `500` | A sample that takes longer than this many milliseconds raises a `performance` warning. |

Thresholds are percentages; a threshold above 100 never fires (a way to switch a level off).
Each critical threshold must be above its warning threshold, and the clear margin below every
warning threshold (or an alert could never clear).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from metrics_collector.alerts import AlertRules, Resource, Thresholds
from shared.settings import CommonSettings, ConfigError, Env

#: Default (warning, critical) thresholds in percent, close to glances' and netdata's.
DEFAULT_THRESHOLDS: dict[Resource, tuple[float, float]] = {
    "cpu": (70.0, 90.0),
    "memory": (80.0, 95.0),
    "disk": (85.0, 95.0),
}


def _number(env: Env, name: str, default: float, *, min: float) -> float:
    value = env.float(name, default, min=min)
    if math.isnan(value):  # float() accepts "nan", and every comparison with it is false
        raise ConfigError(f"{name} must be a number, not {env.raw(name)!r}")
    return value


def _thresholds(env: Env, resource: Resource) -> Thresholds:
    warning_default, critical_default = DEFAULT_THRESHOLDS[resource]
    name = f"TEAMDASH_ALERT_{resource.upper()}"
    warning = _number(env, f"{name}_WARNING", warning_default, min=0.0)
    critical = _number(env, f"{name}_CRITICAL", critical_default, min=0.0)
    if critical <= warning:
        raise ConfigError(
            f"{name}_CRITICAL ({critical:g}) must be above {name}_WARNING ({warning:g})"
        )
    return Thresholds(warning=warning, critical=critical)


@dataclass(frozen=True, slots=True)
class CollectorSettings:
    """Everything the collector needs, validated; build with :meth:`from_env`."""

    common: CommonSettings
    #: Seconds between samples (and ``metrics:update`` events).
    interval_s: float
    #: The filesystem whose usage is reported.
    disk_path: str
    #: Length of the alert averaging window.
    alert_window_s: float
    cpu: Thresholds
    memory: Thresholds
    disk: Thresholds
    #: Hysteresis, in percentage points below a threshold.
    alert_clear_margin: float
    #: A sample slower than this raises a ``performance`` warning.
    alert_sample_slow_ms: float
    #: Port of the collector's Prometheus ``/metrics`` (None = not served).
    metrics_port: int | None = None

    @classmethod
    def from_env(cls, env: Env) -> CollectorSettings:
        """Read and validate; raises :class:`ConfigError` naming the variable at fault."""
        common = CommonSettings.from_env(env)
        interval_s = _number(env, "TEAMDASH_METRICS_INTERVAL_S", 1.0, min=0.05)
        disk_path = env.str("TEAMDASH_DISK_PATH", "/")
        if not Path(disk_path).is_absolute():
            raise ConfigError(f"TEAMDASH_DISK_PATH must be an absolute path, not {disk_path!r}")
        if not Path(disk_path).exists():
            raise ConfigError(f"TEAMDASH_DISK_PATH {disk_path!r} does not exist")
        window_s = _number(env, "TEAMDASH_ALERT_WINDOW_S", 30.0, min=0.0)
        cpu = _thresholds(env, "cpu")
        memory = _thresholds(env, "memory")
        disk = _thresholds(env, "disk")
        margin = _number(env, "TEAMDASH_ALERT_CLEAR_MARGIN", 5.0, min=0.0)
        for resource, thresholds in (("CPU", cpu), ("MEMORY", memory), ("DISK", disk)):
            if margin >= thresholds.warning:
                raise ConfigError(
                    f"TEAMDASH_ALERT_CLEAR_MARGIN ({margin:g}) must be below "
                    f"TEAMDASH_ALERT_{resource}_WARNING ({thresholds.warning:g}), "
                    "or that alert could never clear"
                )
        slow_ms = _number(env, "TEAMDASH_ALERT_SAMPLE_SLOW_MS", 500.0, min=0.0)
        if slow_ms <= 0:
            raise ConfigError("TEAMDASH_ALERT_SAMPLE_SLOW_MS must be above 0")
        return cls(
            common=common,
            interval_s=interval_s,
            disk_path=disk_path,
            alert_window_s=window_s,
            cpu=cpu,
            memory=memory,
            disk=disk,
            alert_clear_margin=margin,
            alert_sample_slow_ms=slow_ms,
            metrics_port=(
                env.int("TEAMDASH_COLLECTOR_METRICS_PORT", 0, min=0)
                if env.raw("TEAMDASH_COLLECTOR_METRICS_PORT") is not None
                else None
            ),
        )

    @property
    def window_samples(self) -> int:
        """Samples in the averaging window (one per interval, at least one)."""
        return max(1, round(self.alert_window_s / self.interval_s))

    def alert_rules(self) -> AlertRules:
        return AlertRules(
            thresholds={"cpu": self.cpu, "memory": self.memory, "disk": self.disk},
            clear_margin=self.alert_clear_margin,
            window_s=self.alert_window_s,
            window_samples=self.window_samples,
            sample_slow_ms=self.alert_sample_slow_ms,
            disk_path=self.disk_path,
        )
