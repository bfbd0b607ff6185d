"""The runner's and the collector's own Prometheus endpoints."""

from __future__ import annotations

import asyncio
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.test_agents import CREATE, create, status
from tests.gateway.conftest import token, ws_url
from tests.helpers import free_port, t, wait_for
from tests.wsclient import WSClient


async def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    def get() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=t(5)) as r:
            return r.read().decode()

    text = await asyncio.to_thread(get)
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_runner_metrics_count_agents_and_spawn_failures(gateway, start_runner):
    port = free_port()
    await start_runner(TEAMDASH_RUNNER_METRICS_PORT=str(port))
    client = await WSClient.authed(ws_url(gateway), token())
    agent_id, _ = await create(client)
    await status(client, agent_id, "running")
    ack = await client.request("agent:create", {**CREATE, "model": "missing"}, timeout=20)
    assert not ack["success"]
    m = await scrape(port)
    assert m[("teamdash_runner_agents", (("status", "running"),))] == 1
    assert m[("teamdash_runner_spawn_failures_total", (("reason", "AGENT_SPAWN_FAILED"),))] == 1
    assert m[("teamdash_runner_agents_started_total", ())] == 1
    await client.request("agent:terminate", {"agentId": agent_id, "force": True})
    await status(client, agent_id, "stopped")

    async def ended() -> bool:
        return (await scrape(port)).get(
            ("teamdash_runner_agents_ended_total", (("status", "stopped"),))
        ) == 1

    await wait_for(ended, what="the ended agent counted")
    await client.close()


async def test_collector_metrics_time_the_samples(service_env, start_service):
    port = free_port()
    start_service(
        "collector",
        {
            **service_env,
            "TEAMDASH_METRICS_INTERVAL_S": "0.1",
            "TEAMDASH_COLLECTOR_METRICS_PORT": str(port),
        },
    )

    async def sampled() -> bool:
        try:
            m = await scrape(port)
        except OSError:
            return False
        return m.get(("teamdash_collector_sample_duration_seconds_count", ()), 0) >= 2

    await wait_for(sampled, timeout=15, what="collector samples timed")
