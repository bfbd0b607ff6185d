"""Health, readiness and Prometheus metrics of a real gateway."""

from __future__ import annotations

import asyncio

from prometheus_client.parser import text_string_to_metric_families

from shared.keys import LOGS_TOPIC
from shared.redis_server import EmbeddedRedis
from tests.gateway.conftest import token, ws_url
from tests.gateway.test_fanout import alert
from tests.helpers import http_get, wait_for
from tests.wsclient import WSClient


async def get(gw, path: str) -> tuple[int, str]:
    return await asyncio.to_thread(http_get, f"http://127.0.0.1:{gw.port}{path}")


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_metrics_parse_and_move_with_traffic(gateway, bus):
    status, text = await get(gateway, "/metrics")
    assert status == 200
    before = samples(text)
    assert before[("teamdash_gateway_connections", ())] == 0

    client = await WSClient.authed(ws_url(gateway), token())
    await client.subscribe("logs")
    await client.request("agent:teleport", {})
    for _ in range(3):
        await bus.publish(LOGS_TOPIC, alert("warning"), ("warning", "resource"))
    for _ in range(3):
        await client.recv_type("system:alert")

    after = samples((await get(gateway, "/metrics"))[1])
    assert after[("teamdash_gateway_connections", ())] == 1
    assert after[("teamdash_gateway_messages_in_total", (("type", "subscribe:logs"),))] == 1
    assert after[("teamdash_gateway_messages_in_total", (("type", "auth"),))] == 1
    assert after[("teamdash_gateway_messages_out_total", (("type", "system:alert"),))] == 3
    assert after[("teamdash_gateway_errors_total", (("code", "UNSUPPORTED_TYPE"),))] == 1
    assert after[("teamdash_gateway_delivery_latency_seconds_count", ())] == 3
    assert after[("teamdash_gateway_sessions_total", (("kind", "new"),))] == 1
    assert after[("teamdash_redis_stream_length", (("topic_kind", "logs"),))] == 3
    assert ("teamdash_gateway_send_buffer_bytes", (("stat", "max"),)) in after
    assert ("teamdash_gateway_pending_runner_requests", ()) in after
    # The connection's own tasks at least (the soak watches this line for leaks).
    assert after[("teamdash_asyncio_tasks", ())] >= 1
    await client.close()


async def test_readyz_follows_redis_down_and_back(make_gateway, tmp_path):
    private = EmbeddedRedis(workdir=tmp_path / "redis")
    url = private.start()
    try:
        gw = await make_gateway(REDIS_URL=url)
        assert (await get(gw, "/readyz"))[0] == 200
        private.stop()
        status, body = await get(gw, "/readyz")
        assert status == 503, body
        assert (await get(gw, "/healthz"))[0] == 200  # alive, just not ready
        private = EmbeddedRedis(port=private.port, workdir=tmp_path / "redis")
        private.start()

        async def ready() -> bool:
            return (await get(gw, "/readyz"))[0] == 200

        await wait_for(ready, timeout=20, interval=0.2, what="ready again after Redis restart")
    finally:
        private.stop()
