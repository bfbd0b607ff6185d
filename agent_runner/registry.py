"""The agent registry in Redis (the adapter; key names from :mod:`shared.keys`).

``Keys.agent(id)`` is a hash holding an :class:`shared.agent_record.AgentRecord` (its fields
in that module's docstring); everything written to it or read from it goes through that
record, and :class:`~shared.agent_record.AgentUpdate` for the fields that change.

Every agent is a member of ``Keys.agent_index`` (scored by ``startTime``, what ``agent:list``
reads) until its hash expires. Live agents are members of ``Keys.agents``,
``Keys.runner_agents(runnerId)`` and ``Keys.user_agents(owner)``. When an agent ends it is
removed from the three sets and its hash expires after the history TTL (so a late request
finds ``status: stopped``). The per-user limit is one Lua script: check ``SCARD`` and
``SADD`` atomically.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from agent_runner.state import Status
from shared.agent_record import AGENT_STATES, AgentRecord, AgentUpdate
from shared.bus import as_text
from shared.keys import Keys
from shared.protocol import AgentState

_RESERVE_LUA = """
-- KEYS[1] user's live agents set; ARGV[1] agent id, ARGV[2] limit
if redis.call('sismember', KEYS[1], ARGV[1]) == 1 then return 1 end
if redis.call('scard', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('sadd', KEYS[1], ARGV[1])
return 1
"""


def _mapping(fields: Mapping[str, str]) -> dict[Any, Any]:
    # redis-py's stubs want Mapping[<every key type>, ...], which a dict[str, ...] is not.
    return dict(fields)


def protocol_status(status: Status) -> AgentState:
    """The protocol's name of ``status``: the same string (tests/agent_runner/test_cores.py
    checks every one)."""
    return AGENT_STATES[status.value]


class Registry:
    def __init__(self, redis: aioredis.Redis, keys: Keys, *, history_ttl_s: int) -> None:
        self.redis = redis
        self.keys = keys
        self.history_ttl_s = history_ttl_s
        self._reserve = redis.register_script(_RESERVE_LUA)

    async def reserve(self, owner: str, agent_id: str, limit: int) -> bool:
        """Count ``agent_id`` against ``owner``'s limit; False when the user is at the limit."""
        ok = await self._reserve(keys=[self.keys.user_agents(owner)], args=[agent_id, limit])
        return bool(int(ok))

    async def release(self, owner: str, agent_id: str) -> None:
        await self.redis.srem(self.keys.user_agents(owner), agent_id)

    async def exists(self, agent_id: str) -> bool:
        return bool(await self.redis.exists(self.keys.agent(agent_id)))

    async def register(self, record: AgentRecord) -> None:
        """Write the hash of a started agent and add it to the live sets."""
        async with self.redis.pipeline(transaction=True) as pipe:
            self._write(pipe, record)
            await pipe.execute()

    async def restore(self, record: AgentRecord) -> None:
        """Write the record of a live agent and (re-)add it to the live sets, its owner's
        too: after Redis lost its data (restarted empty, a replica without recent writes) or
        missed an update while it was unreachable. Idempotent."""
        async with self.redis.pipeline(transaction=True) as pipe:
            self._write(pipe, record)
            pipe.sadd(self.keys.user_agents(record.owner), record.agent_id)
            await pipe.execute()

    def _write(self, pipe: Pipeline, record: AgentRecord) -> None:
        key = self.keys.agent(record.agent_id)
        pipe.hset(key, mapping=_mapping(record.to_fields()))
        pipe.persist(key)
        pipe.zadd(self.keys.agent_index, {record.agent_id: record.start_time or 0})
        pipe.sadd(self.keys.agents, record.agent_id)
        pipe.sadd(self.keys.runner_agents(record.runner_id), record.agent_id)

    async def update(self, agent_id: str, change: AgentUpdate) -> None:
        await self.redis.hset(self.keys.agent(agent_id), mapping=_mapping(change.to_fields()))

    async def finish(self, agent_id: str, owner: str, runner_id: str, end: AgentUpdate) -> None:
        """Record the end of an agent and drop it from the live sets."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.keys.agent(agent_id), mapping=_mapping(end.to_fields()))
            pipe.expire(self.keys.agent(agent_id), self.history_ttl_s)
            pipe.srem(self.keys.agents, agent_id)
            pipe.srem(self.keys.runner_agents(runner_id), agent_id)
            pipe.srem(self.keys.user_agents(owner), agent_id)
            await pipe.execute()

    async def get(self, agent_id: str) -> AgentRecord | None:
        """The agent's record; None when there is none, or only updates written after
        Redis lost it."""
        return AgentRecord.from_fields(
            agent_id, await self.redis.hgetall(self.keys.agent(agent_id))
        )

    async def runner_agent_ids(self, runner_id: str) -> list[str]:
        return sorted(
            as_text(m) for m in await self.redis.smembers(self.keys.runner_agents(runner_id))
        )
