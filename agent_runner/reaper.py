"""Agents whose runner is gone: mark them ``crashed`` so nothing stays "running" with no
process behind it.

:func:`reap_dead_runners` is called periodically by every runner (and may be called by the
metrics collector: importing this module has no side effects). A runner counts as dead when
its heartbeat key (``Keys.runner(rid)``, written with a TTL) has expired *and* its score in
``Keys.runners`` is older than the TTL; the key's server-side expiry keeps clock skew between
hosts from killing a live runner. One caller at a time handles a given runner (a
``SET NX PX`` lock, :meth:`shared.keys.Keys.runner_lock`). Each of its agents still
``starting``/``running``/``paused``/``stopping`` becomes ``crashed`` (reason
``runner-lost``, ``details.runnerId``) with an ``agent:error`` (``AGENT_LOST``) and a
``system:alert`` — after its score was set to 0, so that nobody reacting to those events
still takes the runner for alive; then the runner's heartbeat, zset entry, agent set,
command stream and stats are removed.

A caller that tracks its own Redis failures passes ``redis_ok_for_ms`` (and
``heartbeat_ms``): nothing is reaped until it has been talking to Redis without a failure
for a TTL plus a heartbeat, so heartbeats that aged during an outage kill nobody.

:func:`mark_agent_lost` does the marking for one agent; restart reconciliation
(:meth:`agent_runner.runner.Runner.reconcile`) uses it too, with reason
``runner-restarted`` when it found and killed the agent's leftover process.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from agent_runner import events
from agent_runner.process import kill_orphaned
from agent_runner.registry import Registry, protocol_status
from agent_runner.state import LIVE, Event, Status, next_status
from shared.agent_record import AgentUpdate
from shared.bus import EventBus, as_text
from shared.keys import RUNNERS_GROUP, Keys
from shared.protocol import now_ms

log = logging.getLogger("runner.reaper")

LOCK_TTL_MS = 30_000

_RELEASE_LUA = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


async def acquire_lock(redis: aioredis.Redis, key: str, ttl_ms: int = LOCK_TTL_MS) -> str | None:
    """Take a lock; returns its token, or None when someone else holds it."""
    token = secrets.token_hex(8)
    ok = await redis.set(key, token, nx=True, px=ttl_ms)
    return token if ok else None


async def release_lock(redis: aioredis.Redis, key: str, token: str) -> None:
    await redis.eval(_RELEASE_LUA, 1, key, token)


async def mark_agent_lost(
    redis: aioredis.Redis,
    keys: Keys,
    bus: EventBus,
    runner_id: str,
    agent_id: str,
    *,
    reason: str,
    history_ttl_s: int = 24 * 3600,
    local_host: str | None = None,
) -> bool:
    """Mark one agent of ``runner_id`` as ``crashed`` (if it is still live in the registry)
    and publish its events. When ``local_host`` is this agent's host, leftovers of its
    process (pid + create time, or its orphaned group) are killed first. Returns True if the
    agent was marked."""
    registry = Registry(redis, keys, history_ttl_s=history_ttl_s)
    record = await registry.get(agent_id)
    state = Status(record.status) if record is not None and record.status else Status.CRASHED
    if record is None or state not in LIVE:
        await redis.srem(keys.runner_agents(runner_id), agent_id)
        return False
    pid, owner = record.pid, record.owner
    if local_host is not None and record.host == local_host and pid:
        if kill_orphaned(
            pid,
            record.proc_create_time or 0.0,
            keeper_pid=record.keeper_pid,
            keeper_create_time=record.keeper_create_time or 0.0,
        ):
            log.warning("killed the leftovers of agent %s (pid %d)", agent_id, pid)
    new = next_status(state, Event.LOST)
    end = AgentUpdate(status=protocol_status(new), end_time=now_ms(), reason=reason)
    await registry.finish(agent_id, owner, runner_id, end)
    details = events.ended_details(
        pid=pid, start_time=record.start_time, reason=reason, runner_id=runner_id
    )
    name = record.name or agent_id
    if reason == "runner-restarted":
        text = f"agent {name!r} was lost: its runner {runner_id} restarted and cannot re-attach it"
    else:
        text = f"agent {name!r} was lost: its runner {runner_id} stopped responding"
    items = [
        *events.status(agent_id, owner, new.value, None, **details),
        *events.error(agent_id, owner, events.CODE_LOST, text, None),
        events.alert(
            "error",
            text,
            owner=owner or None,
            agent_id=agent_id,
            details={"agentId": agent_id, "name": name, "reason": reason, "runnerId": runner_id},
        ),
    ]
    await bus.publish_many(items)
    return True


async def _drop_pending_creates(redis: aioredis.Redis, keys: Keys, runner_id: str) -> None:
    """Creates the dead runner took but never acknowledged: their gateway has answered
    SERVICE_UNAVAILABLE long ago; remove them and the runner's consumer."""
    stream = keys.create_stream
    try:
        pending: list[Any] = await redis.xpending_range(
            stream, RUNNERS_GROUP, min="-", max="+", count=1000, consumername=runner_id
        )
        ids = [p["message_id"] for p in pending]
        if ids:
            await redis.xack(stream, RUNNERS_GROUP, *ids)
            await redis.xdel(stream, *ids)
        await redis.xgroup_delconsumer(stream, RUNNERS_GROUP, runner_id)
    except ResponseError:  # no stream or no group yet
        pass


async def reap_dead_runners(
    redis: aioredis.Redis,
    keys: Keys,
    bus: EventBus,
    ttl_ms: int,
    *,
    exclude: str | None = None,
    local_host: str | None = None,
    history_ttl_s: int = 24 * 3600,
    redis_ok_for_ms: float | None = None,
    heartbeat_ms: int = 0,
) -> int:
    """Find runners whose heartbeat is older than ``ttl_ms``, mark their live agents
    ``crashed`` (``runner-lost``) and remove the runners' entries. Returns the number of
    agents marked. ``exclude``: a runner id never to reap (the caller's own).

    ``redis_ok_for_ms``: how long the caller has been talking to Redis without a failure
    (see :class:`agent_runner.health.RedisHealth`; None = not tracked). Unless that is at
    least ``ttl_ms + heartbeat_ms``, nothing is reaped: heartbeats that aged while Redis
    was unreachable (for the caller, and so maybe for everyone) say nothing about the
    runners, which beat again within a heartbeat once Redis is back."""
    if redis_ok_for_ms is not None and redis_ok_for_ms < ttl_ms + heartbeat_ms:
        return 0
    cutoff = now_ms() - ttl_ms
    found: list[Any] = await redis.zrangebyscore(keys.runners, "-inf", f"({cutoff}")
    dead = [as_text(r) for r in found]
    marked = 0
    for runner_id in dead:
        if runner_id == exclude:
            continue
        lock = keys.runner_lock(runner_id)
        token = await acquire_lock(redis, lock)
        if token is None:
            continue
        try:
            score = await redis.zscore(keys.runners, runner_id)
            if score is None or score >= cutoff or await redis.exists(keys.runner(runner_id)):
                continue  # reaped meanwhile, or alive after all
            # Score 0 before anything is reported: a gateway that learns of the crash and
            # sends a request at once must already see this runner as gone (not wait for
            # its reply); the entry stays, so a reaper that dies half-way is followed.
            await redis.zadd(keys.runners, {runner_id: 0}, xx=True)
            agent_ids = sorted(
                as_text(a) for a in await redis.smembers(keys.runner_agents(runner_id))
            )
            for agent_id in agent_ids:
                if await mark_agent_lost(
                    redis,
                    keys,
                    bus,
                    runner_id,
                    agent_id,
                    reason="runner-lost",
                    history_ttl_s=history_ttl_s,
                    local_host=local_host,
                ):
                    marked += 1
            await _drop_pending_creates(redis, keys, runner_id)
            async with redis.pipeline(transaction=True) as pipe:
                pipe.zrem(keys.runners, runner_id)
                pipe.delete(
                    keys.runner(runner_id),
                    keys.runner_agents(runner_id),
                    keys.runner_commands(runner_id),
                )
                pipe.hdel(keys.agent_stats, runner_id)
                await pipe.execute()
            log.warning("runner %s is dead: %d agent(s) marked crashed", runner_id, len(agent_ids))
        finally:
            await release_lock(redis, lock, token)
    return marked
