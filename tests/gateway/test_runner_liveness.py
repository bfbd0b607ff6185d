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

from gateway.runners import OUTCOME_LOST, OUTCOME_UNKNOWN, RunnerClient
from shared.client import ClientError, DashboardClient
from shared.errors import ErrorCode, TeamdashError
from shared.protocol import AgentCommandPayload, AgentOutputMessage, AgentStatusMessage
from shared.runner_protocol import RunnerReply
from shared.tokens import Identity
from tests.e2e.conftest import runner_env, start_runner  # noqa: F401 - fixtures
from tests.gateway.conftest import token, ws_url
from tests.helpers import t, wait_for

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


async def test_a_runner_killed_mid_turn_ends_a_command_waiting_for_it(
    make_gateway: Callable[..., Any],
    start_runner: Callable[..., Any],  # noqa: F811 - the fixture imported above
) -> None:
    """A command waiting for its turn (no ``timeout``: nothing else would end the wait)
    whose runner is SIGKILLed mid-turn: SERVICE_UNAVAILABLE once its heartbeat expires."""
    gateway = await make_gateway(
        TEAMDASH_RUNNER_TTL_S="2",
        TEAMDASH_RUNNER_HEARTBEAT_S="0.5",
        TEAMDASH_RUNNER_REPLY_TIMEOUT_S=str(REPLY_TIMEOUT_S),
    )
    runner = await start_runner("r-mid-turn")
    async with DashboardClient(ws_url(gateway), token("alice")) as client:
        created = await client.create_agent("asker", "claude-ask", "ws")
        sub = await client.subscribe_agent(created.agent_id)
        waiting = asyncio.create_task(
            client.send_command(created.agent_id, "write f.txt", wait="completed")
        )
        try:
            # Its turn waits for a permission decision: it cannot end by itself.
            while True:
                event = await sub.next(t(15))
                if isinstance(event, AgentOutputMessage) and event.payload.event is not None:
                    if event.payload.event.kind == "permission_request":
                        break
            runner.kill()
            with pytest.raises(ClientError) as lost:
                await asyncio.wait_for(waiting, t(20))
        finally:
            waiting.cancel()
    assert lost.value.code == ErrorCode.SERVICE_UNAVAILABLE
    assert lost.value.message.startswith(
        "runner r-mid-turn is gone (its heartbeat expired while the command's turn ran)"
    )


async def test_a_command_waiting_for_its_turn_fails_at_once_on_an_outage(redis, keys) -> None:
    """The first reply came (delivered), then this gateway lost Redis: the outcome may have
    been published in the outage and lost, so the wait ends at once, saying so — and a
    later outcome reply completes a wait with the first reply's result merged in."""
    outages = [0]
    client = RunnerClient(
        redis,
        keys,
        "gw-test",
        reply_timeout_s=REPLY_TIMEOUT_S,
        runner_ttl_s=REPLY_TIMEOUT_S,
        commands_per_second=10,
        outages=lambda: outages[0],
    )
    await redis.zadd(keys.runners, {"r1": time.time() * 1000})  # alive for the watch
    identity = Identity("alice", frozenset({"operator"}), expires_at=time.time() + 60)
    payload = {"agentId": "a1", "command": "x", "wait": "completed"}

    def reply(request_id: str, **fields: Any) -> None:
        doc = {"requestId": request_id, "success": True, "runnerId": "r1", **fields}
        client.on_reply(RunnerReply.model_validate(doc).model_dump_json().encode())

    watch = asyncio.create_task(client.watch_pending(0.05))
    try:
        lost = asyncio.create_task(
            client.request(
                "command",
                request_id="m1",
                identity=identity,
                agent_id="a1",
                payload=AgentCommandPayload.model_validate(payload),
                runner_id="r1",
            )
        )
        await wait_for(lambda: client.pending_count == 1, what="the request sent")
        reply("m1", result={"agentId": "a1", "timeoutEnforced": False}, outcomeFollows=True)
        await wait_for(
            lambda: client._pending["m1"][0].turn_outages is not None,
            what="the wait for the outcome (so the watch, not the request, sees the outage)",
        )
        outages[0] += 1
        with pytest.raises(TeamdashError) as failed:
            await asyncio.wait_for(lost, t(10))
        assert failed.value.code == ErrorCode.SERVICE_UNAVAILABLE
        assert failed.value.message == OUTCOME_LOST

        done = asyncio.create_task(
            client.request(
                "command",
                request_id="m2",
                identity=identity,
                agent_id="a1",
                payload=AgentCommandPayload.model_validate(payload),
                runner_id="r1",
            )
        )
        await wait_for(lambda: client.pending_count == 1, what="the request sent")
        reply("m2", result={"agentId": "a1", "timeoutEnforced": False}, outcomeFollows=True)
        turn = {"kind": "turn_end", "success": True, "durationMs": 5}
        reply("m2", result={"agentId": "a1", "turn": turn})
        outcome = await asyncio.wait_for(done, t(10))
        assert outcome.success
        assert outcome.result == {"agentId": "a1", "timeoutEnforced": False, "turn": turn}
        assert client.pending_count == 0
    finally:
        watch.cancel()
        await asyncio.gather(watch, return_exceptions=True)
