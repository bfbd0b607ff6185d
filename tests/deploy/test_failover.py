"""Sessions survive gateways dying and being restarted, through the real load balancer:
three gateways behind HAProxy (deploy/haproxy.cfg), a real runner with a steadily printing
agent, and the project's SDK as the client."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shared.client import DashboardClient
from shared.protocol import AgentOutputMessage, AgentStatusMessage
from shared.topology import LocalTopology
from tests.deploy.conftest import require
from tests.gateway.conftest import token
from tests.helpers import AGENTS_DIR, t

TICKS = 3000


@pytest.fixture
async def topology(service_env: dict[str, str], tmp_path: Path) -> AsyncIterator[LocalTopology]:
    async with started_topology(service_env, tmp_path) as topo:
        yield topo


@contextlib.asynccontextmanager
async def started_topology(
    service_env: dict[str, str], tmp_path: Path, **env: str
) -> AsyncIterator[LocalTopology]:
    """Three gateways behind HAProxy, a runner with the test agents and a collector, on the
    test's Redis prefix; stopped (nothing left) when the block ends."""
    require("haproxy", "haproxy")
    env = {
        **service_env,
        "TEAMDASH_CURSOR_FLUSH_INTERVAL_S": "0.1",
        "TEAMDASH_MODELS_FILE": str(AGENTS_DIR / "models.toml"),
        "TEAMDASH_WORKSPACE_ROOT": str(tmp_path / "workspaces"),
        **env,
    }
    topo = LocalTopology(3, env=env, log_dir=tmp_path / "logs", start_timeout_s=t(30))
    await asyncio.to_thread(topo.start)
    try:
        yield topo
    finally:
        await asyncio.to_thread(topo.stop)


async def read_ticks(sub, until: int, ticks: list[int], sequences: list[int]) -> None:
    """Collect ``tick N`` lines (in arrival order) until ``until`` ticks or the agent ends."""
    pending = ""
    while len(ticks) < until:
        event = await sub.next(timeout=t(20))
        if isinstance(event, AgentStatusMessage):
            if event.payload.status in ("stopped", "crashed"):
                return
            continue
        assert isinstance(event, AgentOutputMessage)
        sequences.append(event.payload.sequence)
        pending += event.payload.data
        *lines, pending = pending.split("\n")
        ticks.extend(int(line.split()[1]) for line in lines if line.startswith("tick "))


def client_for(topology: LocalTopology) -> DashboardClient:
    return DashboardClient(
        topology.lb_url,
        lambda: token("alice"),
        backoff=(0.05, 0.1, 0.2, 0.4, 0.8, 1.0),
        request_timeout=t(20),
    )


async def test_gateway_killed_mid_stream_client_gets_every_event_once(topology):
    async with client_for(topology) as client:
        agent = await client.create_agent("ticker", "ticker", "ticker")
        sub = await client.subscribe_agent(agent.agent_id, filters=["stdout", "status"])
        ticks: list[int] = []
        sequences: list[int] = []
        await read_ticks(sub, 400, ticks, sequences)
        victim = topology.gateway_index(client.gateway_id)
        topology.kill_gateway(victim)
        await read_ticks(sub, TICKS, ticks, sequences)
        assert client.reconnects >= 1
        assert topology.gateway_index(client.gateway_id) != victim
    assert ticks == list(range(1, TICKS + 1)), "every event exactly once, in order"
    assert sequences == sorted(set(sequences))


async def test_rolling_restart_of_every_gateway_loses_nothing(topology):
    async with client_for(topology) as client:
        agent = await client.create_agent("ticker", "ticker", "ticker")
        sub = await client.subscribe_agent(agent.agent_id, filters=["stdout", "status"])
        ticks: list[int] = []
        sequences: list[int] = []
        await read_ticks(sub, 200, ticks, sequences)
        reader = asyncio.create_task(read_ticks(sub, TICKS, ticks, sequences))
        try:
            # One at a time, each back in the balancer before the next; the client's own
            # gateway first, so the cut is sure to fall in the middle of the stream.
            first = topology.gateway_index(client.gateway_id)
            for i in [first, *(i for i in range(3) if i != first)]:
                await asyncio.to_thread(topology.restart_gateway, i)
                if i == first:
                    assert len(ticks) < TICKS, "the restart must cut the stream"
            await asyncio.wait_for(reader, t(60))
        finally:
            reader.cancel()
        assert client.reconnects >= 1
    assert ticks == list(range(1, TICKS + 1))
    assert sequences == sorted(set(sequences))
