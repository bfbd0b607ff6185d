"""Topic events from Redis to subscribed WebSocket clients: fan-out, filters, unsubscribe,
and gaps (offset jumps, a killed pub/sub connection) that are resynced, never silent."""

from __future__ import annotations

import asyncio
from typing import Any

from shared.keys import LOGS_TOPIC, METRICS_TOPIC
from shared.protocol import (
    AgentMetrics,
    CpuMetrics,
    DiskMetrics,
    MemoryMetrics,
    MetricsUpdateMessage,
    MetricsUpdatePayload,
    NetworkMetrics,
    SystemAlertMessage,
    SystemAlertPayload,
    SystemMetrics,
)
from tests.gateway.conftest import token, ws_url
from tests.helpers import wait_for
from tests.wsclient import WSClient


def metrics(usage: float = 12.5) -> MetricsUpdateMessage:
    return MetricsUpdateMessage(
        type="metrics:update",
        payload=MetricsUpdatePayload(
            system=SystemMetrics(
                cpu=CpuMetrics(usage=usage, cores=2),
                memory=MemoryMetrics(total=100, used=50, available=50, percent=50.0),
                disk=DiskMetrics(total=10, used=5, percent=50.0),
                network=NetworkMetrics(bytesIn=1, bytesOut=2, packetsIn=3, packetsOut=4),
            ),
            agents=[AgentMetrics(agentId="a1", cpu=1.0, memory=1000, threads=3, owner="alice")],
        ),
    )


def alert(level: str, category: str = "resource", message: str = "") -> SystemAlertMessage:
    return SystemAlertMessage(
        type="system:alert",
        payload=SystemAlertPayload(
            level=level,  # type: ignore[arg-type]
            category=category,  # type: ignore[arg-type]
            message=message or f"{level} {category}",
        ),
    )


async def until_barrier(client: WSClient) -> list[dict[str, Any]]:
    """What the client received before the alert whose message is ``barrier`` (published
    after everything the test looks at: one connection gets its events in order)."""
    await client.recv_where(lambda m: m.get("payload", {}).get("message") == "barrier")
    return client.drain()


async def test_fanout_to_many_clients_in_order(gateway, bus):
    clients = [await WSClient.authed(ws_url(gateway), token(f"u{i}")) for i in range(20)]
    for c in clients:
        await c.subscribe("metrics")
    for i in range(50):
        await bus.publish(METRICS_TOPIC, metrics(float(i)), ("system", "agents"))
    for c in clients:
        got = [await c.recv_type("metrics:update") for _ in range(50)]
        assert [m["payload"]["system"]["cpu"]["usage"] for m in got] == [
            float(i) for i in range(50)
        ]
        offsets = [m["metadata"]["offset"] for m in got]
        assert offsets == list(range(offsets[0], offsets[0] + 50))
        assert all(m["metadata"]["topic"] == "metrics" for m in got)
        await c.close()


async def test_unsubscribe_stops_delivery(gateway, bus):
    client = await WSClient.authed(ws_url(gateway), token())
    sid = await client.subscribe("metrics")
    await client.subscribe("logs")  # the barrier's topic
    await bus.publish(METRICS_TOPIC, metrics(), ("system", "agents"))
    await client.recv_type("metrics:update")
    ack = await client.request("unsubscribe", {"subscriptionId": sid})
    assert ack["success"]
    await bus.publish(METRICS_TOPIC, metrics(), ("system", "agents"))
    await bus.publish(LOGS_TOPIC, alert("info", message="barrier"), ("info", "resource"))
    assert not [m for m in await until_barrier(client) if m["type"] == "metrics:update"]
    assert METRICS_TOPIC not in gateway.routes
    await client.close()


async def test_metrics_section_filters(gateway, bus):
    client = await WSClient.authed(ws_url(gateway), token())
    await client.subscribe("metrics", filters=["system"])
    await bus.publish(METRICS_TOPIC, metrics(), ("system", "agents"))
    msg = await client.recv_type("metrics:update")
    assert "system" in msg["payload"] and "agents" not in msg["payload"]
    await client.close()


async def test_logs_filters_by_level_and_category(gateway, bus):
    warnings = await WSClient.authed(ws_url(gateway), token())
    await warnings.subscribe("logs", filters=["warning", "critical"])
    security = await WSClient.authed(ws_url(gateway), token())
    await security.subscribe("logs", filters=["security"])
    everything = await WSClient.authed(ws_url(gateway), token())
    await everything.subscribe("logs")
    for level, category in [
        ("info", "resource"),
        ("warning", "resource"),
        ("critical", "security"),
        ("warning", "agent"),
    ]:
        await bus.publish(LOGS_TOPIC, alert(level, category), (level, category))
    got_all = [await everything.recv_type("system:alert") for _ in range(4)]
    assert [m["payload"]["level"] for m in got_all] == ["info", "warning", "critical", "warning"]
    # The barrier: an alert both filters take, published last.
    await bus.publish(
        LOGS_TOPIC, alert("critical", "security", "barrier"), ("critical", "security")
    )
    got_w = [m["payload"] for m in await until_barrier(warnings) if m["type"] == "system:alert"]
    assert [(p["level"], p["category"]) for p in got_w] == [
        ("warning", "resource"),
        ("critical", "security"),
        ("warning", "agent"),
    ]
    got_s = [m["payload"] for m in await until_barrier(security) if m["type"] == "system:alert"]
    assert [(p["level"], p["category"]) for p in got_s] == [("critical", "security")]
    for c in (warnings, security, everything):
        await c.close()


async def test_offset_jump_is_resynced_from_the_stream(gateway, bus, redis, keys):
    client = await WSClient.authed(ws_url(gateway), token())
    await client.subscribe("metrics")
    await bus.publish(METRICS_TOPIC, metrics(1.0), ("system",))
    first = await client.recv_type("metrics:update")
    # Events 2-4 reach the stream but not the channel (as if pub/sub lost them).
    for usage in (2.0, 3.0, 4.0):
        await _xadd_without_publish(bus, redis, keys, usage)
    await bus.publish(METRICS_TOPIC, metrics(5.0), ("system",))
    got = [await client.recv_type("metrics:update") for _ in range(4)]
    assert [m["payload"]["system"]["cpu"]["usage"] for m in got] == [2.0, 3.0, 4.0, 5.0]
    assert [m["metadata"]["offset"] for m in got] == [
        first["metadata"]["offset"] + i for i in range(1, 5)
    ]
    await client.close()


async def _xadd_without_publish(bus, redis, keys, usage: float) -> None:
    """Publish through the real script into a scratch channel nobody listens to."""
    stream, meta = keys.topic_stream(METRICS_TOPIC), keys.topic_meta(METRICS_TOPIC)
    script_keys, argv = bus._args(METRICS_TOPIC, metrics(usage), ("system",))
    assert script_keys[:2] == [stream, meta]
    argv[0] = "nobody-listens"
    await bus._script(keys=script_keys, args=argv)


async def test_killed_pubsub_connection_is_recovered_without_loss(gateway, bus, redis):
    client = await WSClient.authed(ws_url(gateway), token())
    await client.subscribe("metrics")
    await bus.publish(METRICS_TOPIC, metrics(0.0), ("system",))
    await client.recv_type("metrics:update")
    await redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    for i in range(1, 6):
        await bus.publish(METRICS_TOPIC, metrics(float(i)), ("system",))
    got = [await client.recv_type("metrics:update", timeout=10) for _ in range(5)]
    assert [m["payload"]["system"]["cpu"]["usage"] for m in got] == [1.0, 2.0, 3.0, 4.0, 5.0]
    await wait_for(lambda: gateway.hub.connected.is_set(), what="hub reconnected")
    await bus.publish(METRICS_TOPIC, metrics(6.0), ("system",))
    assert (await client.recv_type("metrics:update"))["payload"]["system"]["cpu"]["usage"] == 6.0
    await client.close()


async def test_closing_a_connection_releases_its_subscriptions(gateway):
    client = await WSClient.authed(ws_url(gateway), token())
    await client.subscribe("metrics")
    await client.subscribe("logs")
    assert {METRICS_TOPIC, LOGS_TOPIC} <= gateway.routes.keys()
    await client.close()
    await wait_for(lambda: not gateway.routes, what="routes released")
    await wait_for(lambda: not gateway.connections, what="connection released")
    await asyncio.sleep(0)
