"""Metrics and alerts end to end: a real collector process → Redis → a real gateway →
WebSocket clients."""

from __future__ import annotations

import json
import subprocess
import sys

import psutil

from shared.protocol import MetricsUpdateMessage, decode_server_message
from shared.topics import LOGS_TOPIC, METRICS_TOPIC
from tests.gateway.conftest import token, ws_url
from tests.gateway.test_fanout import alert, until_barrier
from tests.helpers import wait_for
from tests.wsclient import WSClient


async def test_metrics_updates_reach_a_subscriber_and_stop_after_unsubscribe(
    gateway, bus, service_env, start_service
):
    start_service("collector", {**service_env, "TEAMDASH_METRICS_INTERVAL_S": "0.2"})
    client = await WSClient.authed(ws_url(gateway), token())
    sid = await client.subscribe("metrics")
    await client.subscribe("logs")  # the barrier's topic
    updates = [await client.recv_type("metrics:update", timeout=10) for _ in range(2)]
    for raw in updates:
        msg = decode_server_message(json.dumps(raw))
        assert isinstance(msg, MetricsUpdateMessage)
        system = raw["payload"]["system"]
        assert set(system) == {"cpu", "memory", "disk", "network"}
        assert 0 <= system["cpu"]["usage"] <= 100
        assert system["cpu"]["cores"] == psutil.cpu_count()
        mem = system["memory"]
        assert mem["total"] == psutil.virtual_memory().total
        assert 0 < mem["used"] <= mem["total"] and 0 < mem["available"] <= mem["total"]
        assert 0 <= mem["percent"] <= 100
        assert {"total", "used", "percent"} <= system["disk"].keys()
        assert {"bytesIn", "bytesOut", "packetsIn", "packetsOut"} <= system["network"].keys()
        assert raw["payload"]["agents"] == []
        assert raw["metadata"]["topic"] == "metrics"
    assert updates[1]["metadata"]["offset"] == updates[0]["metadata"]["offset"] + 1
    assert updates[1]["timestamp"] > updates[0]["timestamp"]

    ack = await client.request("unsubscribe", {"subscriptionId": sid})
    assert ack["success"]
    # The barrier: an alert published once the collector has published two more updates.
    head = (await bus.head(METRICS_TOPIC)).offset

    async def two_more() -> bool:
        return (await bus.head(METRICS_TOPIC)).offset >= head + 2

    await wait_for(two_more, what="two more metrics updates")
    await bus.publish(LOGS_TOPIC, alert("info", message="barrier"), ("info", "resource"))
    late = [m for m in await until_barrier(client) if m["type"] == "metrics:update"]
    # At most one update that was already on the wire when the ack was sent.
    assert len(late) <= 1
    await client.close()


async def test_memory_alert_raised_and_cleared_reaches_logs_subscribers(
    gateway, bus, service_env, start_service
):
    used = psutil.virtual_memory().percent
    hog_bytes = min(2 << 30, int(psutil.virtual_memory().available * 0.3))
    hog_percent = hog_bytes / psutil.virtual_memory().total * 100
    warning = used + hog_percent / 2
    start_service(
        "collector",
        {
            **service_env,
            "TEAMDASH_METRICS_INTERVAL_S": "0.1",
            "TEAMDASH_ALERT_WINDOW_S": "0.3",
            "TEAMDASH_ALERT_MEMORY_WARNING": f"{warning:.2f}",
            "TEAMDASH_ALERT_MEMORY_CRITICAL": "99.9",
            "TEAMDASH_ALERT_CLEAR_MARGIN": f"{hog_percent / 4:.2f}",
            # Only memory may alert in this test.
            "TEAMDASH_ALERT_CPU_WARNING": "101",
            "TEAMDASH_ALERT_CPU_CRITICAL": "102",
            "TEAMDASH_ALERT_DISK_WARNING": "101",
            "TEAMDASH_ALERT_DISK_CRITICAL": "102",
            "TEAMDASH_ALERT_SAMPLE_SLOW_MS": "60000",
        },
    )
    everything = await WSClient.authed(ws_url(gateway), token())
    await everything.subscribe("logs")
    warnings_only = await WSClient.authed(ws_url(gateway), token())
    await warnings_only.subscribe("logs", filters=["warning"])
    critical_only = await WSClient.authed(ws_url(gateway), token())
    await critical_only.subscribe("logs", filters=["critical"])

    hog = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import sys,time; b = b'x' * {hog_bytes}; print('ok', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert hog.stdout is not None and hog.stdout.readline() == b"ok\n"
        raised = await everything.recv_type("system:alert", timeout=15)
    finally:
        hog.kill()
        hog.wait()
    assert raised["payload"]["level"] == "warning"
    assert raised["payload"]["category"] == "resource"
    assert "memory" in raised["payload"]["message"].lower()
    cleared = await everything.recv_type("system:alert", timeout=15)
    assert cleared["payload"]["level"] == "info"
    assert cleared["payload"]["category"] == "resource"

    got = await warnings_only.recv_type("system:alert")
    assert got["payload"]["level"] == "warning"
    # The barriers, published after the cleared alert: one for each filter.
    for level in ("warning", "critical"):
        await bus.publish(LOGS_TOPIC, alert(level, message="barrier"), (level, "resource"))
    assert not [m for m in await until_barrier(warnings_only) if m["type"] == "system:alert"]
    assert not [m for m in await until_barrier(critical_only) if m["type"] == "system:alert"]
    for c in (everything, warnings_only, critical_only):
        await c.close()
