"""The runner's Prometheus metrics (``/metrics`` on ``TEAMDASH_RUNNER_METRICS_PORT``)."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from agent_runner.state import Status


class _AgentsByStatus(Collector):
    """``teamdash_runner_agents{status}``, read from the live agents at scrape time."""

    def __init__(self, statuses: Callable[[], Iterable[str]]) -> None:
        self._statuses = statuses

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "teamdash_runner_agents", "This runner's agents by status", labels=["status"]
        )
        for _ in range(3):  # the agents dict may change under us (scrapes run in a thread)
            try:
                tally = Tally(self._statuses())
                break
            except RuntimeError:
                continue
        else:
            tally = Tally()
        for status in Status:
            family.add_metric([status.value], tally.get(status.value, 0))
        yield family


class RunnerMetrics:
    def __init__(self, statuses: Callable[[], Iterable[str]]) -> None:
        r = self.registry = CollectorRegistry()
        r.register(_AgentsByStatus(statuses))
        self.spawn_failures = Counter(
            "teamdash_runner_spawn_failures_total",
            "agent:create requests refused or failed, by error code",
            ["reason"],
            registry=r,
        )
        self.agents_started = Counter(
            "teamdash_runner_agents_started_total", "Agents started", registry=r
        )
        self.agents_ended = Counter(
            "teamdash_runner_agents_ended_total",
            "Agents that ended, by final status",
            ["status"],
            registry=r,
        )
