"""The alert core: windows, levels, hysteresis, performance alerts. No I/O."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

import pytest

from metrics_collector.alerts import (
    Alert,
    AlertEngine,
    AlertRules,
    Level,
    ResourceWatch,
    SamplingWatch,
    Thresholds,
    next_level,
)
from shared.protocol import (
    CpuMetrics,
    DiskMetrics,
    MemoryMetrics,
    NetworkMetrics,
    SystemMetrics,
    decode_server_message,
    encode,
)


def rules(*, window_samples: int = 1, margin: float = 5.0, slow_ms: float = 500.0) -> AlertRules:
    return AlertRules(
        thresholds={
            "cpu": Thresholds(70, 90),
            "memory": Thresholds(80, 95),
            "disk": Thresholds(85, 95),
        },
        clear_margin=margin,
        window_s=float(window_samples),
        window_samples=window_samples,
        sample_slow_ms=slow_ms,
    )


def feed(watch: ResourceWatch, values: Iterable[float]) -> list[Alert]:
    return [a for v in values if (a := watch.observe(v)) is not None]


def metrics(cpu: float = 10.0, memory: float = 10.0, disk: float = 10.0) -> SystemMetrics:
    return SystemMetrics(
        cpu=CpuMetrics(usage=cpu, cores=2),
        memory=MemoryMetrics(
            total=100, used=int(memory), available=100 - int(memory), percent=memory
        ),
        disk=DiskMetrics(total=100, used=int(disk), percent=disk),
        network=NetworkMetrics(bytesIn=0, bytesOut=0, packetsIn=0, packetsOut=0),
    )


@pytest.mark.parametrize(
    ("level", "average", "expected"),
    [
        (Level.OK, 70.0, Level.OK),  # at the threshold is not above it
        (Level.OK, 70.1, Level.WARNING),
        (Level.OK, 90.1, Level.CRITICAL),  # straight to critical
        (Level.WARNING, 66.0, Level.WARNING),  # inside the margin: stays
        (Level.WARNING, 65.0, Level.WARNING),  # at threshold - margin: stays
        (Level.WARNING, 64.9, Level.OK),
        (Level.CRITICAL, 86.0, Level.CRITICAL),
        (Level.CRITICAL, 84.9, Level.WARNING),
        (Level.CRITICAL, 64.9, Level.OK),  # straight back to ok
    ],
)
def test_transition_table(level: Level, average: float, expected: Level) -> None:
    assert next_level(level, average, Thresholds(70, 90), 5.0) is expected


def test_raise_at_warning_then_escalate_to_critical() -> None:
    watch = ResourceWatch("cpu", rules())
    alerts = feed(watch, [50, 75, 76, 93.1, 95])
    assert [(a.level, a.category) for a in alerts] == [
        ("warning", "resource"),
        ("critical", "resource"),
    ]
    warning, critical = alerts
    assert warning.message == "CPU usage 75.0% above 70%"
    assert warning.details == {
        "resource": "cpu",
        "value": 75.0,
        "threshold": 70,
        "window": 1.0,
        "state": "warning",
        "previous": "ok",
    }
    assert critical.message == "CPU usage 93.1% above 90%"
    assert critical.details["previous"] == "warning"
    assert critical.priority == "high"
    assert critical.tags == ("critical", "resource")


def test_hovering_at_the_threshold_does_not_flap() -> None:
    watch = ResourceWatch("memory", rules())
    # Above 80 once, then wobbling around the threshold but never below 80 - 5.
    alerts = feed(watch, [79, 81, 79.5, 80.5, 78, 82, 76, 80.2, 75.1, 81])
    assert [a.level for a in alerts] == ["warning"]
    assert watch.level is Level.WARNING


def test_clear_is_info_and_only_below_threshold_minus_margin() -> None:
    watch = ResourceWatch("cpu", rules())
    assert [a.level for a in feed(watch, [75])] == ["warning"]
    assert feed(watch, [66, 65.0]) == []  # below 70 but not below 65
    (cleared,) = feed(watch, [64.9])
    assert cleared.level == "info"
    assert cleared.category == "resource"
    assert cleared.priority == "normal"
    assert cleared.message == "CPU usage back to normal: 64.9% below 65%"
    assert cleared.details["threshold"] == 65
    assert cleared.details["previous"] == "warning"
    assert watch.level is Level.OK


def test_deescalation_from_critical_to_warning_is_announced() -> None:
    watch = ResourceWatch("cpu", rules())
    assert [a.level for a in feed(watch, [95])] == ["critical"]
    assert feed(watch, [88, 85]) == []  # within the margin of 90
    (down,) = feed(watch, [80])
    assert down.level == "warning"
    assert down.message == "CPU usage 80.0% back below 85%, down from critical to warning"
    assert down.details["previous"] == "critical"
    (cleared,) = feed(watch, [10])
    assert cleared.level == "info"


def test_window_average_single_spike_does_not_alert() -> None:
    watch = ResourceWatch("cpu", rules(window_samples=5))
    # Nothing is judged before the window is full, not even a spike right at start-up.
    assert feed(watch, [100, 10, 10, 10]) == []
    # A spike is averaged away: (10 + 10 + 10 + 10 + 100) / 5 = 28.
    assert feed(watch, [10, 10, 10, 100, 10, 10]) == []
    assert watch.level is Level.OK
    # Sustained load raises once the average crosses, with the window in the message.
    alerts = feed(watch, [95, 95, 95, 95, 95])
    assert [a.level for a in alerts] == ["warning", "critical"]
    # The 4th 95 makes (10 + 4 × 95) / 5 = 78; the 5th makes 95.
    assert alerts[0].message == "CPU usage 78.0% above 70% (5s average)"
    assert alerts[0].details["window"] == 5.0


def test_disk_alert_names_the_path() -> None:
    (alert,) = feed(ResourceWatch("disk", replace(rules(), disk_path="/data")), [90])
    assert alert.message == "Disk usage of /data 90.0% above 85%"
    assert alert.details["path"] == "/data"


def test_performance_alert_raised_once_and_cleared_after_a_quiet_window() -> None:
    watch = SamplingWatch(rules(window_samples=3, slow_ms=500))
    assert watch.observe(100) is None
    slow = watch.observe(812.4)
    assert slow is not None
    assert (slow.level, slow.category) == ("warning", "performance")
    assert slow.message == "Sampling system metrics took 812 ms, above 500 ms"
    assert slow.details == {
        "resource": "sampler",
        "value": 812.4,
        "threshold": 500,
        "window": 3.0,
        "unit": "ms",
    }
    assert watch.observe(900) is None  # still slow: no repeat
    assert watch.observe(100) is None
    assert watch.observe(700) is None  # slow again: the quiet window starts over
    assert watch.observe(100) is None
    assert watch.observe(100) is None
    cleared = watch.observe(100)
    assert cleared is not None
    assert (cleared.level, cleared.category) == ("info", "performance")


def test_engine_reports_every_resource_and_sampling_in_order() -> None:
    engine = AlertEngine(rules())
    alerts = engine.observe(metrics(cpu=95, memory=85, disk=10), sample_ms=600)
    assert [(a.level, a.category, a.details["resource"]) for a in alerts] == [
        ("critical", "resource", "cpu"),
        ("warning", "resource", "memory"),
        ("warning", "performance", "sampler"),
    ]
    assert engine.observe(metrics(cpu=95, memory=85, disk=10), sample_ms=600) == []


def test_alert_message_round_trips_through_the_codec() -> None:
    (alert,) = AlertEngine(rules()).observe(metrics(cpu=93.1), sample_ms=1)
    message = alert.to_message()
    decoded = decode_server_message(encode(message))
    assert decoded.type == "system:alert"
    assert decoded.payload.level == "critical"
    assert decoded.payload.message == "CPU usage 93.1% above 90%"
    assert decoded.metadata is not None and decoded.metadata.priority == "high"
