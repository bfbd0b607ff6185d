"""A gateway SIGKILLed under load: many SDK clients follow a fast agent through HAProxy; the
gateway holding most of them dies mid-stream; every client resumes on another gateway and
gets every line exactly once, in order."""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shared.client import DashboardClient, StateChange
from shared.protocol import ConnectionStatusPayload
from shared.topology import LocalTopology
from tests.deploy.test_failover import read_ticks, started_topology
from tests.gateway.conftest import token
from tests.helpers import t, wait_for

#: SDK clients following the agent (``TEAMDASH_FAULT_CLIENTS`` for a heavier run).
CLIENTS = int(os.environ.get("TEAMDASH_FAULT_CLIENTS", "40"))
TICKS = 3000  # the ticker-4ms model prints 3000 lines, one every 4 ms (12 s; 4 s of replay)


@pytest.fixture
async def topology(service_env: dict[str, str], tmp_path: Path) -> AsyncIterator[LocalTopology]:
    # Every client comes from 127.0.0.1: lift the per-address handshake limit.
    async with started_topology(
        service_env, tmp_path, TEAMDASH_IP_CONNECTIONS_PER_MINUTE="0"
    ) as topo:
        yield topo


def sdk_client(topology: LocalTopology, resumes: list[ConnectionStatusPayload]) -> DashboardClient:
    def on_state(change: StateChange) -> None:
        if change.state == "reconnected" and change.status is not None:
            resumes.append(change.status)

    return DashboardClient(
        topology.lb_url,
        lambda: token("alice"),
        backoff=(0.05, 0.1, 0.2, 0.4, 0.8, 1.0),
        request_timeout=t(20),
        queue_size=10_000,
        on_state=on_state,
    )


async def test_gateway_killed_under_load_every_client_gets_every_line_once(topology):
    resumes: list[list[ConnectionStatusPayload]] = [[] for _ in range(CLIENTS)]
    clients = [sdk_client(topology, resumes[i]) for i in range(CLIENTS)]
    await asyncio.gather(*(c.connect() for c in clients))
    try:
        creator = clients[0]
        agent = await creator.create_agent("ticker", "ticker-4ms", "ticker")
        subs = await asyncio.gather(
            *(c.subscribe_agent(agent.agent_id, filters=["stdout", "status"]) for c in clients)
        )
        ticks: list[list[int]] = [[] for _ in clients]
        sequences: list[list[int]] = [[] for _ in clients]
        # Everyone is live and has seen the stream start before the cut.
        await asyncio.gather(
            *(read_ticks(s, 300, ticks[i], sequences[i]) for i, s in enumerate(subs))
        )
        readers = [
            asyncio.create_task(read_ticks(s, TICKS, ticks[i], sequences[i]))
            for i, s in enumerate(subs)
        ]
        on = Counter(topology.gateway_index(c.gateway_id) for c in clients)
        victim, moved = on.most_common(1)[0]
        topology.kill_gateway(victim)
        # The kill falls in the middle of the stream (the agent prints for 12 s), so every
        # client of the victim must reconnect to get the rest.
        assert all(len(ticks[i]) < TICKS - 100 for i in range(CLIENTS)), "a cut mid-stream"
        try:
            await asyncio.wait_for(asyncio.gather(*readers), t(60))
        finally:
            for r in readers:
                r.cancel()
        await wait_for(
            lambda: sum(c.reconnects for c in clients) >= moved, what="every moved client back"
        )
        for i, c in enumerate(clients):
            assert c.gateway_id is not None
            assert topology.gateway_index(c.gateway_id) != victim
            assert subs[i].dropped == 0
            assert sequences[i] == sorted(set(sequences[i])), f"client {i}: a duplicate"
            # Others subscribed after the agent started (live "from now"), so they start a
            # few lines in. From there on, a line is missing only if the resume said so:
            # within the replay window (1000 events, here 4 s of output) nothing is.
            first = 1 if c is creator else ticks[i][0]
            missing = sorted(set(range(first, TICKS + 1)) - set(ticks[i]))
            told = sum(status.missed for status in resumes[i])
            # (``missed`` may count a few events more than the client lacked, never fewer.)
            assert len(missing) <= told, f"client {i}: {len(missing)} lines lost, {told} announced"
            if all(status.recovered for status in resumes[i]):
                assert ticks[i] == list(range(first, TICKS + 1)), f"client {i}: every line once"
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
