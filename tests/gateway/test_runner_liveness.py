"""Runner liveness at the gateway: a request to an agent whose runner stopped answering
fails once the runner's heartbeat expires (not after the reply timeout), later requests
fail at once, and with no runner alive the gateway itself marks the agents ``crashed``."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest

from gateway.runners import OUTCOME_UNKNOWN, RunnerClient
from shared.client import ClientError, DashboardClient
from shared.errors import ErrorCode, TeamdashError
from shared.protocol import AgentStatusMessage
from shared.tokens import Identity
from tests.e2e.conftest import runner_env, start_runner  # noqa: F401 - fixtures
from tests.gateway.conftest import token, ws_url
from tests.helpers import t

#: Far longer than the runner TTL: a request failing before it proves the heartbeat watch.
REPLY_TIMEOUT_S = 60


async def test_a_frozen_then_killed_runner_fails_requests_and_its_agents_crash(
    make_gateway: Callable[..., Any],
    start_runner: Callable[..., Any],  # noqa: F811 - the fixture imported above
) -> None:
    gateway = await make_gateway(
        TEAMDASH_RUNNER_TTL_S="2",
        TEAMDASH_RUNNER_HEARTBEAT_S="0.5",
        TEAMDASH_RUNNER_REPLY_TIMEOUT_S=str(REPLY_TIMEOUT_S),
    )
    runner = await start_runner("r-frozen")
    async with DashboardClient(
        ws_url(gateway), token("alice"), request_timeout=REPLY_TIMEOUT_S + 10
    ) as client:
        created = await client.create_agent("worker", "slow", "ws")
        sub = await client.subscribe_agent(created.agent_id, filters=["status"])
        # Frozen: connected to nothing, answers nothing, its heartbeat ages.
        os.kill(runner.pid, signal.SIGSTOP)
        try:
            with pytest.raises(ClientError) as waiting:
                await client.send_command(created.agent_id, "0")
        finally:
            runner.kill()
        assert waiting.value.code == ErrorCode.SERVICE_UNAVAILABLE
        assert "runner r-frozen is gone" in waiting.value.message
        assert "waited for its reply" in waiting.value.message
        with pytest.raises(ClientError) as at_once:
            await client.pause(created.agent_id)
        assert at_once.value.code == ErrorCode.SERVICE_UNAVAILABLE
        assert at_once.value.message.startswith("runner r-frozen is gone")
        # No runner is left to reap: the gateway marks the agent crashed (runner-lost).
        while True:
            event = await sub.next(t(20))
            if isinstance(event, AgentStatusMessage) and event.payload.status == "crashed":
                break
        assert event.payload.details is not None
        assert event.payload.details.reason == "runner-lost"
        assert event.payload.details.runnerId == "r-frozen"


async def test_a_reply_lost_in_an_outage_is_an_unknown_outcome(redis, keys) -> None:
    """A request whose wait saw a Redis outage and got no reply: the runner may have done
    it, and the answer says so (not the plain "no runner answered")."""
    outages = [0]
    client = RunnerClient(
        redis,
        keys,
        "gw-test",
        reply_timeout_s=t(0.5),
        runner_ttl_s=2,
        commands_per_second=10,
        outages=lambda: outages[0],
    )
    identity = Identity("alice", frozenset({"operator"}), expires_at=time.time() + 60)

    async def outage_meanwhile() -> None:
        await asyncio.sleep(0.05)
        outages[0] += 1

    bump = asyncio.create_task(outage_meanwhile())
    with pytest.raises(TeamdashError) as lost:
        await client.request(
            "command",
            request_id="m1",
            identity=identity,
            agent_id="a1",
            payload={"agentId": "a1", "command": "x"},
            runner_id="r1",
        )
    await bump
    assert lost.value.code == ErrorCode.SERVICE_UNAVAILABLE
    assert lost.value.message == OUTCOME_UNKNOWN
    with pytest.raises(TeamdashError) as plain:  # no outage this time
        await client.request(
            "command",
            request_id="m2",
            identity=identity,
            agent_id="a1",
            payload={"agentId": "a1", "command": "x"},
            runner_id="r1",
        )
    assert plain.value.message.startswith("no agent runner answered within")
