"""``gateway/metrics.py`` without a gateway: the fan-out counts, kept in plain ints between
batches, come out exactly as prometheus-client's own types would show them."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import LATENCY_BUCKETS, GatewayMetrics, LatencyHistogram


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.name.endswith("_created")
    }


def test_latency_histogram_matches_prometheus_client() -> None:
    ours_registry, theirs_registry = CollectorRegistry(), CollectorRegistry()
    ours = LatencyHistogram("lat_seconds", "doc", LATENCY_BUCKETS, ours_registry)
    theirs = Histogram("lat_seconds", "doc", buckets=LATENCY_BUCKETS, registry=theirs_registry)
    for value in (0.0, 0.0005, 0.0007, 0.01, 0.3, 2.5, 3.0, 100.0):
        ours.observe(value)
        theirs.observe(value)
    assert samples(ours_registry) == samples(theirs_registry)


def test_fan_out_counts_reach_the_counters_at_flush() -> None:
    m = GatewayMetrics()
    m.observe_event(b'{"id":"1","type":"agent:output","timestamp":1}', 3, latency=False)
    m.observe_event(b'{"id":"2","type":"agent:output","timestamp":1}', 2, latency=True)
    m.observe_event(b'{"id":"3","type":"metrics:update","timestamp":1}', 1, latency=False)
    key = ("teamdash_gateway_messages_out_total", (("type", "agent:output"),))
    assert samples(m.registry).get(key, 0) == 0  # not before the batch is done
    m.flush_events()
    counts = samples(m.registry)
    assert counts[key] == 5
    assert counts[("teamdash_gateway_messages_out_total", (("type", "metrics:update"),))] == 1
    assert counts[("teamdash_gateway_delivery_latency_seconds_count", ())] == 1
