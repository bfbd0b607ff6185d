"""Fault tests of the agent runner, on real processes: a private Redis (SIGKILLed and
restarted, with or without its data), a real gateway, real runners, real agents, real
WebSocket clients.

* (a) Redis restarts empty while an agent prints: the agent keeps running, its registry
  is back, its status is published again, a command to it works;
* (b) Redis restarts with its data after a 10 s outage, two runners: nothing is reaped or
  killed, every output event is stored exactly once, in order;
* (c) a runner is SIGKILLed with an agent that scattered processes out of its group: none
  is left, and the other runner marks the agent ``crashed`` within the TTL;
* (d) an agent writes tens of MiB without a newline: its subscriber is not closed (1013)
  and gets every byte, in order;
* (e) Redis dies while a command waits for its turn (``wait: "completed"``): its ack comes
  at once, SERVICE_UNAVAILABLE, saying that the outcome may have been lost.

Longer variants, opt-in: ``TEAMDASH_FAULT_OUTAGE_S`` (default 10) sets the outage of (b),
``TEAMDASH_FAULT_FLOOD_MIB`` (default 24) the size of (d)'s flood.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import psutil
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.runners import OUTCOME_LOST, OUTCOME_UNKNOWN
from shared.errors import ErrorCode
from shared.keys import Keys, agent_topic
from shared.protocol import now_ms
from tests.faults.conftest import FaultStack
from tests.gateway.conftest import token
from tests.helpers import ServiceProcess, wait_for
from tests.wsclient import WSClient

KEYS = Keys("fault")
OUTAGE_S = float(os.environ.get("TEAMDASH_FAULT_OUTAGE_S", "10"))
FLOOD_MIB = float(os.environ.get("TEAMDASH_FAULT_FLOOD_MIB", "24"))
#: The fault stack's runner heartbeat and TTL (tests/faults/conftest.py).
HEARTBEAT_S, TTL_S = 0.5, 2.0
#: What the flood's subscriber spends on each output event it receives.
RENDER_S = 0.002


async def quietly(call: Callable[[], Awaitable[Any]]) -> Any:
    """``call()``, or None while Redis is down or the connection is being replaced."""
    try:
        return await call()
    except (RedisError, OSError):
        return None


async def boot(
    stack: FaultStack, runner_ids: list[str], **runner_env: str
) -> tuple[int, aioredis.Redis]:
    """A gateway and runners on the stack's Redis, once all are up."""
    _, port = stack.gateway()
    for runner_id in runner_ids:
        stack.runner(runner_id, **runner_env)
    redis = aioredis.Redis.from_url(stack.redis.url)
    await wait_for(lambda: FaultStack.ready(port), timeout=20, what="the gateway")
    for runner_id in runner_ids:
        await wait_for(
            lambda rid=runner_id: redis.zscore(KEYS.runners, rid),
            timeout=20,
            what=f"runner {runner_id}'s heartbeat",
        )
    return port, redis


async def create(client: WSClient, model: str, **payload: Any) -> tuple[str, int]:
    ack = await client.request(
        "agent:create", {"name": model, "model": model, "workspace": "ws", **payload}, 20
    )
    assert ack["success"], ack
    return ack["result"]["agentId"], ack["result"]["pid"]


async def stored(redis: aioredis.Redis, topic: str) -> list[dict[str, Any]]:
    """Every event in the topic's stream (its replay buffer), oldest first."""
    entries = await redis.xrange(KEYS.topic_stream(topic))
    return [orjson.loads(fields[b"d"]) for _, fields in entries]


def outputs(evs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e["payload"] for e in evs if e["type"] == "agent:output"]


def statuses(evs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e["payload"] for e in evs if e["type"] == "agent:status"]


def ticks(outs: list[dict[str, Any]]) -> list[int]:
    return [int(o["data"].split()[1]) for o in outs if o["data"].startswith("tick ")]


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def field(redis: aioredis.Redis, agent_id: str, name: str) -> str | None:
    value = await quietly(lambda: redis.hget(KEYS.agent(agent_id), name))
    return value.decode() if value is not None else None


async def command_echoes(port: int, agent_id: str, text: str) -> None:
    """A new client's ``agent:command`` succeeds and the agent's answer reaches it."""
    client = await WSClient.authed(FaultStack.ws_url(port), token(), client_id="after")
    try:
        await client.subscribe("agent", agentId=agent_id, filters=["stdout"])
        ack = await client.request("agent:command", {"agentId": agent_id, "command": text}, 20)
        assert ack["success"], ack
        await client.recv_where(
            lambda m: m["type"] == "agent:output" and f"echo: {text}" in m["payload"]["data"],
            10,
            f"the echo of {text!r}",
        )
    finally:
        await client.close()


async def test_redis_restarted_empty_keeps_the_agent_and_its_registry(fault_stack) -> None:
    stack = fault_stack(persistent=False)
    port, redis = await boot(stack, ["r1"])
    runner = stack.runners[0]
    client = await WSClient.authed(stack.ws_url(port), token())
    try:
        agent_id, pid = await create(client, "ticking")
        topic = agent_topic(agent_id)
        await wait_for(
            lambda: quietly(lambda: stored(redis, topic)),
            what="the agent's first events",
        )
        stack.redis.kill()
        # The agent goes on printing: the runner cannot publish it (it keeps it).
        await wait_for(
            lambda: "events failed" in runner.log_text(), what="a failed publish while down"
        )
        stack.redis.start()
        await wait_for(
            lambda: field(redis, agent_id, "status"), timeout=15, what="the registry back"
        )
        # The runner logs once every lost agent is restored: the hash may be back first.
        await wait_for(
            lambda: (
                "registry lost (Redis restarted empty?): re-registered 1 agents"
                in runner.log_text()
            ),
            what="the runner's re-registration notice",
        )
        fields = {
            k.decode(): v.decode() for k, v in (await redis.hgetall(KEYS.agent(agent_id))).items()
        }
        assert fields["status"] == "running" and fields["runnerId"] == "r1"
        assert fields["owner"] == "alice" and fields["pid"] == str(pid)
        assert await redis.sismember(KEYS.agents, agent_id)
        assert await redis.sismember(KEYS.runner_agents("r1"), agent_id)
        assert await redis.sismember(KEYS.user_agents("alice"), agent_id)
        assert alive(pid)  # not killed
        # Its status was published again, in the new epoch, and the output printed while
        # Redis was down follows in order, with no duplicates.
        await wait_for(
            lambda: quietly(lambda: _has_status(redis, topic, "running")),
            what="the status published again",
        )
        await command_echoes(port, agent_id, "after the restart")
        outs = outputs(await stored(redis, topic))
        seqs = [o["sequence"] for o in outs]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
        numbers = ticks(outs)
        assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
        assert "taken for dead" not in runner.log_text()
    finally:
        await client.close()
        await redis.aclose()


async def _has_status(redis: aioredis.Redis, topic: str, state: str) -> bool:
    return any(s["status"] == state for s in statuses(await stored(redis, topic)))


async def test_redis_restarted_with_its_data_after_an_outage_reaps_nothing(fault_stack) -> None:
    stack = fault_stack(persistent=True)
    port, redis = await boot(stack, ["r1", "r2"], TEAMDASH_RUNNER_MAX_AGENTS="1")
    client = await WSClient.authed(stack.ws_url(port), token())
    try:
        agents = [await create(client, "ticking") for _ in range(2)]
        owners = {await field(redis, agent_id, "runnerId") for agent_id, _ in agents}
        assert owners == {"r1", "r2"}
        for agent_id, _ in agents:
            await wait_for(
                lambda a=agent_id: quietly(lambda: stored(redis, agent_topic(a))),
                what="the agents' output",
            )
        stack.redis.kill()
        await asyncio.sleep(OUTAGE_S)  # the outage itself: every heartbeat ages past the TTL
        stack.redis.start()
        # Marker: a runner that really is dead (no heartbeat key, an old score) with a live
        # agent. Once it is reaped, the live runners' reapers have run with their guard
        # open — and must have left each other alone.
        await wait_for(lambda: quietly(lambda: _ghost(redis)), timeout=15, what="Redis back")
        await wait_for(
            lambda: _is(redis, "ghost-agent", "crashed"), timeout=15, what="the ghost reaped"
        )
        for agent_id, pid in agents:
            assert await field(redis, agent_id, "status") == "running"
            assert alive(pid)
            evs = await stored(redis, agent_topic(agent_id))
            assert [s["status"] for s in statuses(evs)] == ["starting", "running"]
            # Nothing lost, nothing twice: every output event in the stream once, in order.
            seqs = [o["sequence"] for o in outputs(evs)]
            assert seqs == list(range(1, len(seqs) + 1))
            numbers = ticks(outputs(evs))  # after its "ready" line
            assert numbers == list(range(1, len(numbers) + 1)) and len(numbers) == len(seqs) - 1
        for runner in stack.runners:
            log = runner.log_text()
            assert "taken for dead" not in log
            assert "runner r1 is dead" not in log and "runner r2 is dead" not in log
        await command_echoes(port, agents[0][0], "after the outage")
    finally:
        await client.close()
        await redis.aclose()


async def _ghost(redis: aioredis.Redis) -> bool:
    async with redis.pipeline(transaction=True) as pipe:
        pipe.zadd(KEYS.runners, {"ghost": now_ms() - 60_000})
        pipe.sadd(KEYS.runner_agents("ghost"), "ghost-agent")
        pipe.hset(
            KEYS.agent("ghost-agent"),
            mapping={
                "agentId": "ghost-agent",
                "name": "ghost",
                "owner": "alice",
                "runnerId": "ghost",
                "status": "running",
            },
        )
        await pipe.execute()
    return True


async def _is(redis: aioredis.Redis, agent_id: str, state: str) -> bool:
    return await field(redis, agent_id, "status") == state


def marked(marker: str) -> list[psutil.Process]:
    """Live processes whose environment holds ``TD_FAULT_MARK=marker``."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.environ().get("TD_FAULT_MARK") == marker and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


async def test_runner_sigkill_leaves_no_agent_process_and_is_reaped(fault_stack) -> None:
    stack = fault_stack()
    port, redis = await boot(stack, ["r1", "r2"], TEAMDASH_RUNNER_MAX_AGENTS="1")
    marker = f"sigkill-{os.getpid()}-{time.monotonic_ns()}"
    client = await WSClient.authed(stack.ws_url(port), token())
    try:
        agent_id, pid = await create(client, "forker", environment={"TD_FAULT_MARK": marker})
        topic = agent_topic(agent_id)
        await wait_for(
            lambda: quietly(lambda: _printed(redis, topic, "ready ")), what="its processes"
        )
        # 40 sleeps (20 in sessions of their own, 20 double-forked away), the agent, its
        # keeper.
        assert len(marked(marker)) == 42
        owner = await field(redis, agent_id, "runnerId")
        victim: ServiceProcess = stack.runners[0 if owner == "r1" else 1]
        victim.kill()
        await wait_for(lambda: not marked(marker), timeout=5, what="no agent process left")
        assert not alive(pid)
        await wait_for(
            lambda: _is(redis, agent_id, "crashed"),
            timeout=TTL_S + 2 * HEARTBEAT_S + 1,
            what="the other runner to mark the agent crashed",
        )
        assert await field(redis, agent_id, "reason") == "runner-lost"

        async def crashed_event() -> dict[str, Any] | None:
            # Published right after the record is marked: not in the same instant.
            last = statuses(await stored(redis, topic))[-1]
            return last if last["status"] == "crashed" else None

        await wait_for(crashed_event, timeout=5, what="the crashed event")
        last = await crashed_event()
        assert last is not None and last["details"]["runnerId"] == owner
    finally:
        for p in marked(marker):
            p.kill()
        await client.close()
        await redis.aclose()


async def _printed(redis: aioredis.Redis, topic: str, text: str) -> bool:
    return any(text in o["data"] for o in outputs(await stored(redis, topic)))


async def test_output_without_newlines_is_paced_to_the_subscriber(fault_stack) -> None:
    stack = fault_stack()
    rate = 3 * 1024 * 1024  # a second's burst stays under the 4 MiB send buffer
    port, redis = await boot(stack, ["r1"], TEAMDASH_AGENT_OUTPUT_BYTES_PER_SECOND=str(rate))
    client = await WSClient.authed(stack.ws_url(port), token())
    try:
        agent_id, _ = await create(client, "torrent", environment={"TORRENT_MIB": str(FLOOD_MIB)})
        await client.subscribe("agent", agentId=agent_id, filters=["stdout", "status"])
        ack = await client.request("agent:command", {"agentId": agent_id, "command": "go"})
        assert ack["success"], ack
        parts: list[str] = []
        deadline = FLOOD_MIB * 1024 * 1024 / rate + 20
        while True:
            msg = await client.recv_where(
                lambda m: m["type"] in ("agent:output", "agent:status"), deadline, "output"
            )
            if msg["type"] == "agent:status":
                if msg["payload"]["status"] == "stopped":
                    break
                continue
            parts.append(msg["payload"]["data"])
            # A dashboard renders what it gets: ~2 ms per 16 KiB event (at most ~8 MiB/s,
            # far below an unpaced flood, well above the paced rate).
            await asyncio.sleep(RENDER_S)
        assert client.ws.close_code is None  # not closed as a slow consumer (1013)
        data = "".join(parts)
        size = int(FLOOD_MIB * 1024 * 1024)
        alphabet = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-_"
        assert len(data) == size
        assert data == (alphabet * (size // 64 + 1))[:size]
    finally:
        await client.close()
        await redis.aclose()


async def test_redis_lost_while_a_command_waits_for_its_turn_ends_the_wait(fault_stack) -> None:
    stack = fault_stack(persistent=False)
    port, redis = await boot(stack, ["r1"])
    client = await WSClient.authed(stack.ws_url(port), token())
    try:
        agent_id, _ = await create(client, "claude-ask")
        await client.subscribe("agent", agentId=agent_id, filters=["stdout"])
        # No timeout: only the outage can end this wait (the turn waits for a decision).
        command_id = await client.send(
            "agent:command",
            {"agentId": agent_id, "command": "write w.txt", "wait": "completed"},
        )
        await client.recv_where(
            lambda m: (
                m["type"] == "agent:output"
                and m["payload"].get("event", {}).get("kind") == "permission_request"
            ),
            20,
            "the turn waiting for a permission decision",
        )
        stack.redis.kill()
        ack = await client.ack_for(command_id, timeout=20)
        assert not ack["success"]
        assert ack["code"] == ErrorCode.SERVICE_UNAVAILABLE
        # The runner's first reply ("written, its outcome follows") and the agent's output
        # come on different channels: the gateway may not have read the reply yet when
        # Redis goes, and then says it does not know whether the command ran at all.
        assert ack["error"] in (OUTCOME_LOST, OUTCOME_UNKNOWN)
        stack.redis.start()
    finally:
        await client.close()
        await redis.aclose()
