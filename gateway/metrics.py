"""The gateway's Prometheus metrics (served at ``/metrics`` on the gateway port).

Counters are bumped where things happen; the queue depths (send buffers, stream lengths,
pending runner requests) are read when the endpoint is scraped. Each gateway has its own
registry, so several gateways can live in one process (tests).

The fan-out path runs per event, up to ~100,000 times a second: there :meth:`observe_event`
only adds to plain ints (a dict per type, the latency histogram's own bucket list — the
gateway is one thread), and :meth:`flush_events`, called once per batch of events, moves the
counts into the counters. prometheus-client would take a lock and walk the buckets for every
observation.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Iterator
from typing import Literal, get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.utils import floatToGoString

__all__ = ["GatewayMetrics", "CONTENT_TYPE_LATEST"]

#: What gateway.audit records; the ``kind`` label of ``teamdash_gateway_security_events_total``.
SecurityEventKind = Literal[
    "auth_failed",
    "token_expired",
    "permission_denied",
    "rate_limited",
    "flood_disconnect",
    "connection_rate_limited",
    "origin_refused",
    "frame_refused",
]
SECURITY_EVENT_KINDS: tuple[str, ...] = get_args(SecurityEventKind)

#: Publish → socket write, in seconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class LatencyHistogram:
    """A histogram updated with plain arithmetic and exposed through prometheus-client's
    collector interface at scrape time (single-threaded use only)."""

    def __init__(
        self, name: str, documentation: str, buckets: tuple[float, ...], registry: CollectorRegistry
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = (*buckets, math.inf)
        self.counts = [0] * len(self.bounds)
        self.sum = 0.0
        registry.register(self)

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds

    def collect(self) -> Iterator[Metric]:
        cumulative, buckets = 0, []
        for bound, count in zip(self.bounds, self.counts, strict=True):
            cumulative += count
            buckets.append((floatToGoString(bound), cumulative))  # type: ignore[no-untyped-call]
        yield HistogramMetricFamily(
            self.name, self.documentation, buckets=buckets, sum_value=self.sum
        )


class GatewayMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.connections = Gauge(
            "teamdash_gateway_connections", "Open WebSocket connections", registry=r
        )
        self.messages_in = Counter(
            "teamdash_gateway_messages_in_total",
            "Client messages received, by type",
            ["type"],
            registry=r,
        )
        self.messages_out = Counter(
            "teamdash_gateway_messages_out_total",
            "Messages written to clients, by type (one per recipient)",
            ["type"],
            registry=r,
        )
        self.errors = Counter(
            "teamdash_gateway_errors_total",
            "Failed acks and auth refusals, by error code",
            ["code"],
            registry=r,
        )
        self.delivery_latency = LatencyHistogram(
            "teamdash_gateway_delivery_latency_seconds",
            "From an event's creation by its publisher to its write to the sockets",
            LATENCY_BUCKETS,
            r,
        )
        self.sessions = Counter(
            "teamdash_gateway_sessions_total",
            "Authenticated sessions, new or resumed",
            ["kind"],
            registry=r,
        )
        self.replayed = Counter(
            "teamdash_gateway_replayed_events_total",
            "Events replayed to resumed sessions",
            registry=r,
        )
        self.missed = Counter(
            "teamdash_gateway_missed_events_total",
            "Events a resumed session missed because they had left the replay buffer",
            registry=r,
        )
        self.resyncs = Counter(
            "teamdash_gateway_resyncs_total",
            "Gaps in live delivery repaired from the streams",
            registry=r,
        )
        self.slow_consumers = Counter(
            "teamdash_gateway_slow_consumer_disconnects_total",
            "Connections closed with 1013 because their send buffer overflowed",
            registry=r,
        )
        self.low_priority_skipped = Counter(
            "teamdash_gateway_low_priority_skipped_total",
            "Low-priority events skipped for connections under pressure",
            registry=r,
        )
        self.send_buffer_bytes = Gauge(
            "teamdash_gateway_send_buffer_bytes",
            "Bytes waiting in send buffers",
            ["stat"],
            registry=r,
        )
        self.stream_length = Gauge(
            "teamdash_redis_stream_length",
            "Entries in the replay streams of routed topics",
            ["topic_kind"],
            registry=r,
        )
        self.pending_requests = Gauge(
            "teamdash_gateway_pending_runner_requests",
            "Agent requests waiting for a runner",
            registry=r,
        )
        self.routed_topics = Gauge(
            "teamdash_gateway_routed_topics", "Topics with local subscribers", registry=r
        )
        self.security_events = Counter(
            "teamdash_gateway_security_events_total",
            "Security events (auth failures, permission denials, rate-limit trips, refused "
            "origins and handshakes, refused frames, flood disconnects), by kind",
            ["kind"],
            registry=r,
        )
        for kind in SECURITY_EVENT_KINDS:  # present at 0, so rate() works from the start
            self.security_events.labels(kind)
        self._out_children: dict[str, Counter] = {}
        #: Recipients per event type (raw bytes) since the last flush_events().
        self._out_pending: dict[bytes, int] = {}
        self._in_children: dict[str, Counter] = {}

    def count_in(self, type_: str) -> None:
        child = self._in_children.get(type_)
        if child is None:
            child = self._in_children[type_] = self.messages_in.labels(type_)
        child.inc()

    def count_out(self, type_: str, n: int = 1) -> None:
        child = self._out_children.get(type_)
        if child is None:
            child = self._out_children[type_] = self.messages_out.labels(type_)
        child.inc(n)

    def observe_event(self, data: bytes, recipients: int, *, latency: bool) -> None:
        """Count one fan-out of an event, and with ``latency`` its delivery latency (from
        the ``timestamp`` in its JSON; replays are old by design and not observed). The
        counts reach the counters at the next :meth:`flush_events`."""
        start = data.find(b'"type":"', 0, 96)
        if start < 0:
            return
        start += 8
        end = data.find(b'"', start)
        type_ = data[start:end]
        pending = self._out_pending
        pending[type_] = pending.get(type_, 0) + recipients
        if not latency:
            return
        ts = data.find(b'"timestamp":', end)
        if ts > 0:
            ts += 12
            stop = data.find(b",", ts)
            try:
                created_ms = int(data[ts:stop])
            except ValueError:
                return
            self.delivery_latency.observe(max(0.0, time.time() - created_ms / 1000))

    def flush_events(self) -> None:
        """Add what :meth:`observe_event` counted to the ``messages_out`` counters."""
        pending, self._out_pending = self._out_pending, {}
        for type_, n in pending.items():
            self.count_out(type_.decode(errors="replace"), n)

    def render(self) -> bytes:
        return generate_latest(self.registry)
