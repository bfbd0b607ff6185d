"""The collector's Prometheus metrics (``/metrics`` on ``TEAMDASH_COLLECTOR_METRICS_PORT``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

SAMPLE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class CollectorMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.sample_duration = Histogram(
            "teamdash_collector_sample_duration_seconds",
            "Time to take one system sample",
            buckets=SAMPLE_BUCKETS,
            registry=r,
        )
        self.alerts = Counter(
            "teamdash_collector_alerts_total",
            "Alerts raised, by level and category",
            ["level", "category"],
            registry=r,
        )
