"""The collector service: once per interval, sample, merge agent stats, publish, alert.

How it works
------------
:func:`main` owns one Redis client and one :class:`Collector`, whose loop task it starts,
and cancels and awaits when ``stop`` is set. The loop runs on a fixed schedule (tick *n* is
due at ``start + n × interval``, whatever the work took; ticks that could not run in time
are skipped, not bunched up). Each tick:

1. samples the system (:class:`~metrics_collector.sampler.Sampler`) and feeds the sample and
   the time it took to the alert core (:class:`~metrics_collector.alerts.AlertEngine`);
2. in one round trip reads the runners' agent stats (``Keys.agent_stats``) and refreshes the
   collector's heartbeat (``Keys.collector(id)``, a string with a TTL of a few intervals);
3. in one round trip publishes the ``metrics:update`` (topic ``metrics``, tags ``system`` and
   ``agents``, priority ``low``) and any pending alerts (topic ``logs``, tags level and
   category, priority ``high`` for warnings and worse).

Sampling and alerting do not depend on Redis. When Redis fails the tick logs it (the first
failures, then sparsely), skips Redis for an exponentially growing pause (up to
:data:`BACKOFF_MAX_S`), and keeps sampling; alerts raised meanwhile wait in a bounded queue
and are published when Redis is back, so no level change goes unannounced. Metrics updates
are not queued: a stale one is worth nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections import deque

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from metrics_collector.agent_stats import merge_agent_stats
from metrics_collector.alerts import AlertEngine
from metrics_collector.metrics import CollectorMetrics
from metrics_collector.sampler import SampleError, Sampler
from metrics_collector.settings import CollectorSettings
from shared.bus import LOW_PRIORITY_TAG
from shared.keys import LOGS_TOPIC, METRICS_TOPIC, Keys
from shared.metrics_http import serve_metrics, watch_tasks
from shared.protocol import (
    Metadata,
    MetricsUpdateMessage,
    MetricsUpdatePayload,
    SystemAlertMessage,
    SystemMetrics,
    now_ms,
)
from shared.redis_conn import redis_client, wait_for_redis
from shared.tasks import raise_if_cancelled

log = logging.getLogger("collector")

#: Filter tags of every ``metrics:update`` (the spec's metrics filters).
METRICS_TAGS = ("system", "agents", LOW_PRIORITY_TAG)
#: Agent stats older than this many intervals are left out of the update…
AGENT_STATS_MAX_AGE_INTERVALS = 3
#: …but never less than this, so runners reporting every second are not dropped by a
#: collector configured to sample faster.
AGENT_STATS_MIN_MAX_AGE_S = 3.0
#: Agent stats entries older than this are deleted from the hash (runner long gone).
AGENT_STATS_EXPIRE_S = 60.0
#: The heartbeat key lives this many intervals (at least HEARTBEAT_MIN_TTL_S).
HEARTBEAT_TTL_INTERVALS = 3
HEARTBEAT_MIN_TTL_S = 5.0
#: The longest one tick may spend talking to Redis before it gives up on that tick.
REDIS_TICK_TIMEOUT_S = 10.0
#: Pause after a Redis failure: doubles from MIN to MAX while failures go on.
BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 10.0
#: Alerts waiting for Redis; the oldest are dropped beyond this (and that is logged).
PENDING_ALERTS_MAX = 100


class FailureLog:
    """Logs a repeating failure without a line per tick: the 1st, 2nd, 4th, 8th… occurrence
    and every 60th, then one line when it recovers."""

    def __init__(self, logger: logging.Logger, what: str) -> None:
        self.logger = logger
        self.what = what
        self.count = 0

    def failed(self, error: BaseException, *, traceback: bool = False) -> None:
        self.count += 1
        n = self.count
        if n & (n - 1) == 0 or n % 60 == 0:
            self.logger.warning(
                "%s failed (%d in a row): %s: %s",
                self.what,
                n,
                type(error).__name__,
                error,
                exc_info=error if traceback else None,
            )

    def succeeded(self) -> None:
        if self.count:
            self.logger.info("%s works again after %d failures", self.what, self.count)
            self.count = 0


def collector_id() -> str:
    """This process's id among collectors: ``{hostname}-{pid}``."""
    return f"{socket.gethostname()}-{os.getpid()}"


class Collector:
    """One collector: the tick loop and its state. Built and driven by :func:`main`."""

    def __init__(
        self,
        settings: CollectorSettings,
        redis: aioredis.Redis,
        *,
        sampler: Sampler | None = None,
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.keys = Keys(settings.common.redis_prefix)
        self.bus = settings.common.event_bus(redis, self.keys)
        self.id = collector_id()
        interval = settings.interval_s
        # The slow part of a sample may use most of a tick, not more, so the schedule holds
        # (but a very short interval still gives the disk half a second).
        self.sampler = sampler or Sampler(
            settings.disk_path, slow_read_timeout_s=max(0.8 * interval, 0.5)
        )
        self.engine = AlertEngine(settings.alert_rules())
        self.metrics = CollectorMetrics()
        self.pending_alerts: deque[SystemAlertMessage] = deque()
        self.started_ms = now_ms()
        self._agent_max_age_ms = int(
            1000 * max(AGENT_STATS_MAX_AGE_INTERVALS * interval, AGENT_STATS_MIN_MAX_AGE_S)
        )
        self._heartbeat_ttl_ms = int(
            1000 * max(HEARTBEAT_TTL_INTERVALS * interval, HEARTBEAT_MIN_TTL_S)
        )
        self._redis_retry_at = 0.0
        self._backoff_s = BACKOFF_MIN_S
        self._sample_failures = FailureLog(log, "sampling system metrics")
        self._redis_failures = FailureLog(log, "publishing metrics to Redis")
        self._warned_invalid: set[str] = set()

    # -- the loop ---------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Tick until ``stop`` is set; then stop the loop, remove the heartbeat, return."""
        self.sampler.prime()
        loop_task = asyncio.create_task(self._loop(), name="collector-loop")
        stop_task = asyncio.create_task(stop.wait(), name="collector-stop")
        try:
            await asyncio.wait({loop_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (loop_task, stop_task):
                task.cancel()
            await asyncio.wait({loop_task, stop_task})
            await self.sampler.aclose()
            await self._remove_heartbeat()
        error = None if loop_task.cancelled() else loop_task.exception()
        if error is not None:
            raise error  # the loop never raises on its own: a bug, let it be seen

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.settings.interval_s
        due = loop.time() + interval
        while True:
            await asyncio.sleep(max(0.0, due - loop.time()))
            await self.tick()
            raise_if_cancelled()
            due += interval
            late = loop.time() - due
            if late >= 0:
                skipped = int(late // interval) + 1
                due += skipped * interval
                log.debug("tick took too long; skipping %d tick(s)", skipped)

    async def tick(self) -> None:
        """One round: sample, alert, publish. Never raises (but for cancellation)."""
        started = time.perf_counter()
        try:
            metrics = await self.sampler.sample()
        except SampleError as e:
            self._sample_failures.failed(e)
            return
        except Exception as e:  # noqa: BLE001 - a bug: say so loudly, keep the service alive
            self._sample_failures.failed(e, traceback=True)
            return
        sample_ms = (time.perf_counter() - started) * 1000
        self.metrics.sample_duration.observe(sample_ms / 1000)
        self._sample_failures.succeeded()
        for alert in self.engine.observe(metrics, sample_ms):
            log.info("alert (%s, %s): %s", alert.level, alert.category, alert.message)
            self.metrics.alerts.labels(alert.level, alert.category).inc()
            self._queue_alert(alert.to_message())

        loop = asyncio.get_running_loop()
        if loop.time() < self._redis_retry_at:
            return  # backing off after a Redis failure
        try:
            async with asyncio.timeout(REDIS_TICK_TIMEOUT_S):
                await self._publish(metrics)
        except (RedisError, OSError, TimeoutError) as e:
            self._redis_failed(loop, e, traceback=False)
        except Exception as e:  # noqa: BLE001 - a bug: say so loudly, keep the service alive
            self._redis_failed(loop, e, traceback=True)
        else:
            self._redis_failures.succeeded()
            self._backoff_s = BACKOFF_MIN_S

    def _redis_failed(
        self, loop: asyncio.AbstractEventLoop, error: BaseException, *, traceback: bool
    ) -> None:
        self._redis_failures.failed(error, traceback=traceback)
        self._redis_retry_at = loop.time() + self._backoff_s
        self._backoff_s = min(self._backoff_s * 2, BACKOFF_MAX_S)

    def _queue_alert(self, message: SystemAlertMessage) -> None:
        if len(self.pending_alerts) >= PENDING_ALERTS_MAX:
            dropped = self.pending_alerts.popleft()
            log.warning("alert queue full; dropped: %s", dropped.payload.message)
        self.pending_alerts.append(message)

    # -- Redis ------------------------------------------------------------------

    def _heartbeat(self, ts_ms: int) -> bytes:
        return orjson.dumps(
            {
                "id": self.id,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "intervalS": self.settings.interval_s,
                "startedAt": self.started_ms,
                "lastSampleAt": ts_ms,
            }
        )

    async def _publish(self, metrics: SystemMetrics) -> None:
        ts = now_ms()
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.keys.agent_stats)
            pipe.set(self.keys.collector(self.id), self._heartbeat(ts), px=self._heartbeat_ttl_ms)
            raw_stats, _ = await pipe.execute()
        merged = merge_agent_stats(
            raw_stats,
            now_ms=ts,
            max_age_ms=self._agent_max_age_ms,
            expire_after_ms=int(AGENT_STATS_EXPIRE_S * 1000),
        )
        for runner, reason in merged.invalid.items():
            if runner not in self._warned_invalid:  # once per runner, not once per tick
                self._warned_invalid.add(runner)
                log.warning("ignoring unreadable agent stats of runner %s: %s", runner, reason)
        update = MetricsUpdateMessage(
            type="metrics:update",
            payload=MetricsUpdatePayload(system=metrics, agents=merged.agents),
            metadata=Metadata(priority="low"),
        )
        alerts = list(self.pending_alerts)
        await self.bus.publish_many(
            [
                (METRICS_TOPIC, update, METRICS_TAGS),
                *((LOGS_TOPIC, a, (a.payload.level, a.payload.category)) for a in alerts),
            ]
        )
        for _ in alerts:
            self.pending_alerts.popleft()
        if merged.expired:
            # A runner that comes back between HGETALL and here loses one report; it
            # rewrites its entry on its next measurement.
            await self.redis.hdel(self.keys.agent_stats, *merged.expired)
            log.info("removed agent stats of runners gone for good: %s", merged.expired)

    async def _remove_heartbeat(self) -> None:
        try:
            async with asyncio.timeout(1.0):
                await self.redis.delete(self.keys.collector(self.id))
        except (RedisError, OSError, TimeoutError) as e:
            log.debug("could not remove the heartbeat (it expires anyway): %s", e)


async def main(settings: CollectorSettings, stop: asyncio.Event) -> None:
    """Run the collector until ``stop`` is set, then clean up and return."""
    redis = redis_client(settings.common.redis_url)
    collector = Collector(settings, redis)
    log.info(
        "collector %s: every %gs, disk %s, redis prefix %r",
        collector.id,
        settings.interval_s,
        settings.disk_path,
        settings.common.redis_prefix,
    )
    # The same start-up wait and message as every service, but beside the ticks, not
    # before them: the collector samples and queues alerts while Redis is still away.
    waiting = asyncio.create_task(
        wait_for_redis(redis, settings.common.redis_url, stop=stop), name="wait-for-redis"
    )
    watch_tasks(collector.metrics.registry, asyncio.get_running_loop())
    try:
        with serve_metrics(
            collector.metrics.registry, settings.common.metrics_host, settings.metrics_port
        ):
            await collector.run(stop)
    finally:
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        await redis.aclose()
