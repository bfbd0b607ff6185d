"""The collector service in-process against the real Redis of the test session."""

from __future__ import annotations

import asyncio
import logging

import orjson
import pytest
import redis.asyncio as aioredis

from metrics_collector import service as service_module
from metrics_collector.service import collector_id, main
from metrics_collector.settings import CollectorSettings
from shared.bus import EventBus, Position
from shared.keys import LOGS_TOPIC, METRICS_TOPIC, Keys
from shared.protocol import (
    MetricsUpdateMessage,
    SystemAlertMessage,
    decode_server_message,
    now_ms,
)
from shared.redis_server import EmbeddedRedis
from shared.settings import Env
from tests.helpers import free_port, t, wait_for


def collector_settings(redis_url: str, prefix: str, **extra: str) -> CollectorSettings:
    return CollectorSettings.from_env(
        Env(
            {
                "REDIS_URL": redis_url,
                "TEAMDASH_REDIS_PREFIX": prefix,
                "TEAMDASH_METRICS_INTERVAL_S": "0.2",
                "TEAMDASH_ALERT_WINDOW_S": "0",
                **extra,
            }
        )
    )


def agent(agent_id: str) -> dict[str, object]:
    return {"agentId": agent_id, "cpu": 12.5, "memory": 64 << 20, "threads": 4}


async def test_publishes_metrics_agents_and_alerts(
    redis_url: str, redis: aioredis.Redis, keys: Keys, bus: EventBus
) -> None:
    now = now_ms()
    await redis.hset(
        keys.agent_stats,
        mapping={
            "fresh": orjson.dumps({"ts": now, "agents": [agent("a2"), agent("a1")]}),
            "stale": orjson.dumps({"ts": now - 10_000, "agents": [agent("stale")]}),
            "gone": orjson.dumps({"ts": now - 120_000, "agents": [agent("gone")]}),
        },
    )
    settings = collector_settings(
        redis_url,
        keys.prefix,
        # Memory and disk are always above 0.01%: a warning fires on the first sample.
        TEAMDASH_ALERT_MEMORY_WARNING="0.01",
        TEAMDASH_ALERT_MEMORY_CRITICAL="200",
        TEAMDASH_ALERT_DISK_WARNING="0.01",
        TEAMDASH_ALERT_DISK_CRITICAL="200",
        TEAMDASH_ALERT_CPU_WARNING="150",
        TEAMDASH_ALERT_CPU_CRITICAL="200",
        TEAMDASH_ALERT_CLEAR_MARGIN="0",
        # Every sample is slower than a microsecond: a performance warning fires too.
        TEAMDASH_ALERT_SAMPLE_SLOW_MS="0.001",
    )
    stop = asyncio.Event()
    task = asyncio.create_task(main(settings, stop))
    try:
        await wait_for(
            lambda: _head_at_least(bus, METRICS_TOPIC, 2), timeout=t(10), what="two updates"
        )
        heartbeat = await redis.get(keys.collector(collector_id()))
        assert heartbeat is not None
        assert orjson.loads(heartbeat)["intervalS"] == 0.2
    finally:
        stop.set()
        await asyncio.wait_for(task, t(5))
    assert task.done() and task.exception() is None

    # -- metrics topic --
    replay = await bus.read_since(METRICS_TOPIC, Position(0, None))
    assert len(replay.events) >= 2
    for event in replay.events:
        assert event.tags == ("system", "agents", "p:low")
        message = decode_server_message(event.data)
        assert isinstance(message, MetricsUpdateMessage)
        assert message.metadata is not None
        assert message.metadata.priority == "low"
        assert message.metadata.topic == METRICS_TOPIC
        assert message.metadata.offset == event.offset
        system = message.payload.system
        assert system is not None
        assert 0 <= system.cpu.usage <= 100
        assert system.cpu.cores >= 1
        assert system.memory.total > 0 and 0 < system.memory.percent <= 100
        assert system.disk.total > 0
        assert system.network.bytesInPerSec is not None
        # The fresh runner's agents, sorted; the stale entry is left out.
        assert message.payload.agents is not None
        assert [a.agentId for a in message.payload.agents] == ["a1", "a2"]
        assert message.payload.agents[0].memory == 64 << 20
        # The wire form has the spec's fields.
        wire = orjson.loads(event.data)
        assert set(wire) == {"id", "type", "timestamp", "payload", "metadata"}
        assert set(wire["payload"]["system"]) == {"cpu", "memory", "disk", "network"}
        assert {"bytesIn", "bytesOut", "packetsIn", "packetsOut"} <= set(
            wire["payload"]["system"]["network"]
        )

    # Entries older than a minute are deleted, stale ones are only ignored.
    assert set(await redis.hkeys(keys.agent_stats)) == {b"fresh", b"stale"}

    # -- logs topic: each alert once, with level and category as tags --
    logs = await bus.read_since(LOGS_TOPIC, Position(0, None))
    alerts: dict[str, tuple[tuple[str, ...], SystemAlertMessage]] = {}
    for event in logs.events:
        message = decode_server_message(event.data)
        assert isinstance(message, SystemAlertMessage)
        resource = (message.payload.details or {})["resource"]
        assert resource not in alerts, "an alert was repeated"
        alerts[resource] = (event.tags, message)
    assert set(alerts) == {"memory", "disk", "sampler"}
    tags, memory = alerts["memory"]
    assert tags == ("warning", "resource")
    assert memory.payload.message.startswith("Memory usage ")
    assert memory.payload.message.endswith("% above 0.01%")
    assert memory.metadata is not None and memory.metadata.priority == "high"
    assert alerts["disk"][0] == ("warning", "resource")
    assert alerts["sampler"][0] == ("warning", "performance")

    # A clean stop removes the heartbeat.
    assert await redis.exists(keys.collector(collector_id())) == 0


async def _head_at_least(bus: EventBus, topic: str, n: int) -> bool:
    return (await bus.head(topic)).offset >= n


async def test_no_agents_gives_an_empty_list(redis_url: str, keys: Keys, bus: EventBus) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(main(collector_settings(redis_url, keys.prefix), stop))
    try:
        await wait_for(
            lambda: _head_at_least(bus, METRICS_TOPIC, 1), timeout=t(10), what="an update"
        )
    finally:
        stop.set()
        await asyncio.wait_for(task, t(5))
    (event, *_) = (await bus.read_since(METRICS_TOPIC, Position(0, None))).events
    assert orjson.loads(event.data)["payload"]["agents"] == []


async def test_keeps_going_while_redis_is_down_and_catches_up(
    keys: Keys, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service_module, "BACKOFF_MAX_S", 0.4)  # retry soon after Redis is back
    port = free_port()
    settings = collector_settings(
        f"redis://127.0.0.1:{port}/0",  # nothing listens there yet
        keys.prefix,
        TEAMDASH_ALERT_MEMORY_WARNING="0.01",
        TEAMDASH_ALERT_MEMORY_CRITICAL="200",
        TEAMDASH_ALERT_CLEAR_MARGIN="0",
        # Only the memory alert may fire, however busy the machine is.
        TEAMDASH_ALERT_CPU_WARNING="101",
        TEAMDASH_ALERT_CPU_CRITICAL="102",
        TEAMDASH_ALERT_DISK_WARNING="101",
        TEAMDASH_ALERT_DISK_CRITICAL="102",
    )
    caplog.set_level(logging.WARNING, logger="collector")
    server = EmbeddedRedis(port=port)
    stop = asyncio.Event()
    task = asyncio.create_task(main(settings, stop))
    try:

        def redis_failures() -> int:
            return sum(
                "publishing metrics to Redis failed" in r.getMessage() for r in caplog.records
            )

        await wait_for(lambda: redis_failures() >= 2, timeout=t(10), what="Redis failures")
        assert not task.done()  # it logs and keeps going instead of dying

        await asyncio.to_thread(server.start)
        client = aioredis.Redis.from_url(server.url)
        try:
            bus = EventBus(client, keys)
            await wait_for(
                lambda: _head_at_least(bus, METRICS_TOPIC, 1),
                timeout=t(10),
                what="metrics after Redis came back",
            )
            # The warning raised while Redis was down was kept and published, once.
            logs = await bus.read_since(LOGS_TOPIC, Position(0, None))
            decoded = [decode_server_message(e.data) for e in logs.events]
            alerts = [m for m in decoded if isinstance(m, SystemAlertMessage)]
            assert len(alerts) == len(decoded)
            assert [a.payload.message.split()[0] for a in alerts] == ["Memory"]
            assert [e.tags for e in logs.events] == [("warning", "resource")]
        finally:
            await client.aclose()
    finally:
        stop.set()
        await asyncio.wait_for(task, t(5))
        await asyncio.to_thread(server.stop)
    assert task.exception() is None
