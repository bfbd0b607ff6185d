"""Runners as real processes (``teamdash runner``): scheduling across runners, routing
to the owner, a runner killed with SIGKILL (its agents die with it and are reaped as
``crashed``), and a runner restarted with the same id (it kills the leftovers)."""

from __future__ import annotations

import psutil
import redis.asyncio as aioredis

from agent_runner.process import live_group_members
from shared.bus import EventBus
from shared.keys import LOGS_TOPIC, Keys, agent_topic
from tests.agent_runner.conftest import (
    Gateway,
    has_status,
    output_text,
    topic_events,
    wait_events,
)
from tests.helpers import wait_for


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def _heartbeat(redis: aioredis.Redis, keys: Keys, runner_id: str, proc) -> None:
    async def up() -> bool:
        if proc.proc.poll() is not None:
            raise AssertionError(f"runner {runner_id} exited:\n{proc.log_text()}")
        return bool(await redis.exists(keys.runner(runner_id)))

    await wait_for(up, timeout=15, what=f"runner {runner_id} heartbeat")


async def test_two_runners_spread_route_and_reap(
    start_runner_process, gateway: Gateway, bus: EventBus, redis: aioredis.Redis, keys: Keys
) -> None:
    runners = {
        rid: start_runner_process(rid, TEAMDASH_RUNNER_MAX_AGENTS=1) for rid in ("r-a", "r-b")
    }
    for rid, proc in runners.items():
        await _heartbeat(redis, keys, rid, proc)
    first, r1 = await gateway.create("echo", workspace="one")
    second, r2 = await gateway.create("echo", workspace="two")
    assert r1.success and r2.success, (r1, r2)
    assert {r1.runnerId, r2.runnerId} == {"r-a", "r-b"}  # one each: capacity decides
    # Commands go to the runner that owns the agent (runnerId from the registry).
    for agent_id in (first, second):
        assert (await gateway.command(agent_id, f"for {agent_id}")).success
        await wait_events(
            bus, agent_topic(agent_id), lambda e, a=agent_id: f"echo: for {a}" in output_text(e)
        )

    victim_id = r1.runnerId
    assert victim_id is not None and r1.result is not None
    runners[victim_id].kill()  # SIGKILL: no cleanup at all
    pid = r1.result["pid"]
    await wait_for(lambda: _gone(pid), what="the agent to die with its runner")
    evs = await wait_events(bus, agent_topic(first), has_status("crashed"), timeout=15)
    crashed = evs[-2] if evs[-1]["type"] == "agent:error" else evs[-1]
    assert crashed["payload"]["details"]["reason"] == "runner-lost"
    assert crashed["payload"]["details"]["runnerId"] == victim_id
    evs = await wait_events(bus, agent_topic(first), lambda e: e[-1]["type"] == "agent:error")
    assert evs[-1]["payload"]["error"]["code"] == "AGENT_LOST"
    alerts = await topic_events(bus, LOGS_TOPIC)
    assert any(a["payload"]["details"].get("runnerId") == victim_id for a in alerts)
    assert await redis.zscore(keys.runners, victim_id) is None
    assert not await redis.exists(keys.runner_agents(victim_id))
    assert await redis.hget(keys.agent(first), "status") == b"crashed"
    # The survivor's agent is untouched.
    assert (await gateway.command(second, "still here")).success
    await wait_events(bus, agent_topic(second), lambda e: "echo: still here" in output_text(e))
    survivor = runners["r-b" if victim_id == "r-a" else "r-a"]
    survivor.stop()
    assert survivor.proc.returncode == 0, survivor.log_text()
    evs = await wait_events(bus, agent_topic(second), has_status("stopped"))
    assert evs[-1]["payload"]["details"]["reason"] == "runner-stopped"


async def test_restarted_runner_kills_leftovers(
    start_runner_process, gateway: Gateway, bus: EventBus, redis: aioredis.Redis, keys: Keys
) -> None:
    first = start_runner_process("r-restart")
    await _heartbeat(redis, keys, "r-restart", first)
    agent_id, reply = await gateway.create("spawner")
    assert reply.success and reply.result
    pgid = reply.result["pid"]
    await wait_events(bus, agent_topic(agent_id), lambda e: "children" in output_text(e))
    first.kill()
    # The agent and its children die with the runner: its keeper gets PDEATHSIG and kills
    # everything below it.
    await wait_for(
        lambda: _gone(pgid) and not live_group_members(pgid),
        what="the agent and its children to die with their runner",
    )
    second = start_runner_process("r-restart")
    await _heartbeat(redis, keys, "r-restart", second)
    evs = await wait_events(bus, agent_topic(agent_id), has_status("crashed"))
    status = [e for e in evs if e["type"] == "agent:status"][-1]
    assert status["payload"]["details"]["reason"] == "runner-lost"
    await wait_for(lambda: not live_group_members(pgid), what="the leftovers to be killed")
    assert await redis.hget(keys.agent(agent_id), "status") == b"crashed"
    assert await redis.scard(keys.runner_agents("r-restart")) == 0
    # The restarted runner works normally.
    _, reply = await gateway.create("echo")
    assert reply.success and reply.runnerId == "r-restart"
