"""CollectorSettings: defaults, overrides and validation errors."""

from __future__ import annotations

import pytest

from metrics_collector.alerts import Thresholds
from metrics_collector.settings import CollectorSettings
from shared.settings import ConfigError, Env


def settings(**env: str) -> CollectorSettings:
    return CollectorSettings.from_env(Env(env))


def test_defaults() -> None:
    s = settings()
    assert s.interval_s == 1.0
    assert s.disk_path == "/"
    assert s.alert_window_s == 30.0
    assert s.cpu == Thresholds(70, 90)
    assert s.memory == Thresholds(80, 95)
    assert s.disk == Thresholds(85, 95)
    assert s.alert_clear_margin == 5.0
    assert s.alert_sample_slow_ms == 500.0
    assert s.window_samples == 30
    rules = s.alert_rules()
    assert rules.window_samples == 30
    assert rules.thresholds["memory"] == Thresholds(80, 95)


def test_overrides(tmp_path: object) -> None:
    s = settings(
        TEAMDASH_METRICS_INTERVAL_S="0.5",
        TEAMDASH_DISK_PATH=str(tmp_path),
        TEAMDASH_ALERT_WINDOW_S="10",
        TEAMDASH_ALERT_CPU_WARNING="50",
        TEAMDASH_ALERT_CPU_CRITICAL="75",
        TEAMDASH_ALERT_CLEAR_MARGIN="2.5",
        TEAMDASH_ALERT_SAMPLE_SLOW_MS="250",
        TEAMDASH_REDIS_PREFIX="x",
    )
    assert s.interval_s == 0.5
    assert s.disk_path == str(tmp_path)
    assert s.cpu == Thresholds(50, 75)
    assert s.window_samples == 20
    assert s.alert_clear_margin == 2.5
    assert s.alert_sample_slow_ms == 250
    assert s.common.redis_prefix == "x"


def test_window_shorter_than_an_interval_judges_each_sample() -> None:
    assert settings(TEAMDASH_ALERT_WINDOW_S="0").window_samples == 1


@pytest.mark.parametrize(
    ("env", "error"),
    [
        (
            {"TEAMDASH_ALERT_CPU_WARNING": "90", "TEAMDASH_ALERT_CPU_CRITICAL": "90"},
            "TEAMDASH_ALERT_CPU_CRITICAL (90) must be above TEAMDASH_ALERT_CPU_WARNING (90)",
        ),
        (
            {"TEAMDASH_ALERT_DISK_CRITICAL": "50"},
            "TEAMDASH_ALERT_DISK_CRITICAL (50) must be above TEAMDASH_ALERT_DISK_WARNING (85)",
        ),
        (
            {"TEAMDASH_ALERT_MEMORY_WARNING": "-1"},
            "TEAMDASH_ALERT_MEMORY_WARNING must be at least 0.0",
        ),
        ({"TEAMDASH_ALERT_CPU_WARNING": "lots"}, "TEAMDASH_ALERT_CPU_WARNING must be a number"),
        ({"TEAMDASH_ALERT_CPU_CRITICAL": "nan"}, "TEAMDASH_ALERT_CPU_CRITICAL must be a number"),
        ({"TEAMDASH_METRICS_INTERVAL_S": "nan"}, "TEAMDASH_METRICS_INTERVAL_S must be a number"),
        (
            {"TEAMDASH_ALERT_CLEAR_MARGIN": "70"},
            "TEAMDASH_ALERT_CLEAR_MARGIN (70) must be below TEAMDASH_ALERT_CPU_WARNING (70)",
        ),
        ({"TEAMDASH_METRICS_INTERVAL_S": "0"}, "TEAMDASH_METRICS_INTERVAL_S must be at least"),
        ({"TEAMDASH_ALERT_WINDOW_S": "-5"}, "TEAMDASH_ALERT_WINDOW_S must be at least 0"),
        ({"TEAMDASH_ALERT_SAMPLE_SLOW_MS": "0"}, "TEAMDASH_ALERT_SAMPLE_SLOW_MS must be above 0"),
        ({"TEAMDASH_DISK_PATH": "data"}, "TEAMDASH_DISK_PATH must be an absolute path"),
        ({"TEAMDASH_DISK_PATH": "/no/such/dir/here"}, "does not exist"),
    ],
)
def test_invalid_values_name_the_variable(env: dict[str, str], error: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        settings(**env)
    assert error in str(excinfo.value)
