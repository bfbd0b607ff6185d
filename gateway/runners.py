"""The gateway's side of the runner contract (:mod:`shared.runner_protocol`): agent
requests from clients — who may ask (the agent's owner, or an admin), the per-agent command
rate (shared by all gateways), whether the agent's runner is alive, the request to that
runner and the wait for its real outcome, and the reply's error as the client's error.

:meth:`RunnerClient.create_agent` and :meth:`RunnerClient.control_agent` are what a
connection calls; each returns the ack's ``result`` or raises the error to answer with.

A command sent with ``wait: "completed"`` waits twice: for the runner's first reply (it was
delivered) within the reply timeout, then for its outcome — within the command's
``timeout`` plus the reply timeout, or as long as it takes without one. That second wait
ends early, with SERVICE_UNAVAILABLE, when the runner's heartbeat expires or this gateway's
Redis link fails (the outcome may be lost in the outage): :meth:`RunnerClient.watch_pending`."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
import orjson
import redis.asyncio as aioredis
from pydantic import ValidationError
from redis.commands.core import AsyncScript

from shared.agent_info import AgentSnapshot, agent_info
from shared.agent_record import AgentRecord
from shared.bus import Position, as_text
from shared.errors import ErrorCode, TeamdashError
from shared.keys import Keys
from shared.protocol import (
    AgentCommandMessage,
    AgentCommandPayload,
    AgentControlMessage,
    AgentPermissionMessage,
    AgentUsage,
    CreateAgentMessage,
    TerminateAgentMessage,
)
from shared.runner_protocol import (
    REQUEST_FIELD,
    RequestKind,
    RunnerPayload,
    RunnerReply,
    RunnerRequest,
)
from shared.tasks import raise_if_cancelled
from shared.tokens import Identity
from shared.topics import AGENTS_TOPIC, agent_topic

#: What a client may ask of an existing agent.
ControlMessage = (
    AgentCommandMessage | AgentControlMessage | TerminateAgentMessage | AgentPermissionMessage
)

log = logging.getLogger("ws.runners")

#: The answer to a request whose reply never came while Redis failed during its wait.
OUTCOME_UNKNOWN = (
    "the runner may have carried out this request; its reply was lost in a Redis outage "
    "— check the agent's status before retrying"
)


#: One read of the registry for ``agent:list``, atomic with the ``agents`` topic's position
#: (so the list reflects exactly the events up to it, and maybe some after it). Entries of
#: the index whose hash expired (ended agents past the history TTL) are dropped here.
_SNAPSHOT_LUA = """
-- KEYS[1] agents topic meta, KEYS[2] agent index, KEYS[3] live agents, KEYS[4] agent stats
-- ARGV[1] prefix of agent hashes, ARGV[2] prefix of agent topic streams
-- Returns {offset, epoch, stats (flat hash), id1, hash1 (flat), last event of 1 or false, ...}
local meta = redis.call('hmget', KEYS[1], 'offset', 'epoch')
local ids = redis.call('zrange', KEYS[2], 0, -1)
local seen = {}
for _, id in ipairs(ids) do seen[id] = true end
-- Agents registered before the index existed are in the live set only.
for _, id in ipairs(redis.call('smembers', KEYS[3])) do
  if not seen[id] then ids[#ids + 1] = id end
end
local out = {meta[1] or '0', meta[2] or '', redis.call('hgetall', KEYS[4])}
for _, id in ipairs(ids) do
  local h = redis.call('hgetall', ARGV[1] .. id)
  if #h == 0 then
    redis.call('zrem', KEYS[2], id)
  else
    local last = redis.call('xrevrange', ARGV[2] .. id, '+', '-', 'COUNT', 1)
    out[#out + 1] = id
    out[#out + 1] = h
    out[#out + 1] = last[1] and last[1][2][2] or false
  end
end
return out
"""


#: The answer to a command whose outcome this gateway may have missed in a Redis outage.
OUTCOME_LOST = (
    "this gateway lost Redis while the command's turn ran: its outcome may have been lost "
    "— the turn_end event on the agent's topic (correlationId = this request) tells it"
)


@dataclass(eq=False, slots=True)
class _Waiter:
    """One request waiting for its runner's replies (two for a command that waits for its
    turn: the first says it was delivered)."""

    agent_id: str
    runner_id: str | None
    replies: asyncio.Queue[RunnerReply | TeamdashError] = field(default_factory=asyncio.Queue)
    #: The first reply came: waiting for the command's outcome (``outages`` at that time).
    turn_outages: int | None = None

    def fail(self, error: TeamdashError) -> None:
        self.replies.put_nowait(error)

    async def next(self) -> RunnerReply:
        reply = await self.replies.get()
        if isinstance(reply, TeamdashError):
            raise reply
        return reply


class RunnerClient:
    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keys,
        gateway_id: str,
        *,
        reply_timeout_s: float,
        runner_ttl_s: float,
        commands_per_second: int,
        outages: Callable[[], int] = lambda: 0,
        heartbeats_trusted: Callable[[], bool] = lambda: True,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.gateway_id = gateway_id
        self.reply_timeout_s = reply_timeout_s
        self.runner_ttl_ms = int(runner_ttl_s * 1000)
        self.commands_per_second = commands_per_second
        # Client message ids are only unique per client: several requests may share one.
        # A reply goes to the waiter with the same agentId when it names one, else the
        # oldest waiter.
        self._pending: dict[str, list[_Waiter]] = {}
        #: How many Redis outages this gateway saw so far (see gateway.health).
        self._outages = outages
        #: False while heartbeats may have aged in an outage (nothing is judged dead then).
        self._heartbeats_trusted = heartbeats_trusted
        #: Registered on first use (tests hand in a partial Redis for other requests).
        self._snapshot: AsyncScript | None = None

    @property
    def pending_count(self) -> int:
        return sum(len(w) for w in self._pending.values())

    @property
    def reply_channel(self) -> str:
        return self.keys.reply_channel(self.gateway_id)

    def on_reply(self, data: bytes) -> None:
        """Called by the pub/sub hub for every message on this gateway's reply channel."""
        try:
            reply = RunnerReply.model_validate_json(data)
        except ValidationError:
            log.error("malformed runner reply: %r", data[:200])
            return
        waiters = self._pending.get(reply.requestId)
        if not waiters:
            log.debug("reply for a request nobody waits for: %s", reply.requestId)
            return
        agent_id = (reply.result or {}).get("agentId")
        index = next((i for i, w in enumerate(waiters) if w.agent_id == agent_id), 0)
        waiter = waiters[index] if reply.outcomeFollows else waiters.pop(index)
        waiter.replies.put_nowait(reply)

    async def alive_runners(self) -> list[dict[str, object]]:
        now = int(time.time() * 1000)
        ids = await self.redis.zrangebyscore(self.keys.runners, now - self.runner_ttl_ms, "+inf")
        if not ids:
            return []
        raw = await self.redis.mget([self.keys.runner(as_text(i)) for i in ids])
        return [orjson.loads(r) for r in raw if r is not None]

    async def check_capacity(self) -> None:
        """SERVICE_UNAVAILABLE when no runner is alive, AGENT_LIMIT_EXCEEDED when every
        alive runner is full. A runner's load is the size of its registry set, which it
        updates before announcing an agent's start or end (its heartbeat's ``free`` may be
        a beat late)."""
        runners = await self.alive_runners()
        if not runners:
            raise TeamdashError(ErrorCode.SERVICE_UNAVAILABLE, "no agent runner is available")
        async with self.redis.pipeline(transaction=False) as pipe:
            for r in runners:
                pipe.scard(self.keys.runner_agents(str(r["runnerId"])))
            loads = await pipe.execute()
        capacities = [int(str(r.get("capacity", 0))) for r in runners]
        if not any(cap > load for cap, load in zip(capacities, loads, strict=True)):
            raise TeamdashError(
                ErrorCode.AGENT_LIMIT_EXCEEDED, "every agent runner is at its agent limit"
            )

    async def agent(self, agent_id: str) -> AgentRecord:
        """The agent's registry record (AGENT_NOT_FOUND when there is none)."""
        record = AgentRecord.from_fields(
            agent_id, await self.redis.hgetall(self.keys.agent(agent_id))
        )
        if record is None:
            raise TeamdashError(ErrorCode.AGENT_NOT_FOUND, f"agent {agent_id!r} not found")
        return record

    async def owner_of(self, agent_id: str) -> str | None:
        """The agent's owner; None when the registry does not know it (any more)."""
        try:
            return (await self.agent(agent_id)).owner
        except TeamdashError as e:
            if e.code is not ErrorCode.AGENT_NOT_FOUND:
                raise
            return None

    async def agent_snapshot(self, now_ms: int) -> AgentSnapshot:
        """Every agent of the registry (live, and ended within the history TTL) with the
        ``agents`` topic's position it reflects, in one atomic read."""
        k = self.keys
        if self._snapshot is None:
            self._snapshot = self.redis.register_script(_SNAPSHOT_LUA)
        reply = await self._snapshot(
            keys=[k.topic_meta(AGENTS_TOPIC), k.agent_index, k.agents, k.agent_stats],
            args=[k.agent(""), k.topic_stream(agent_topic(""))],
        )
        offset, epoch, stats = int(reply[0]), as_text(reply[1]) or None, reply[2]
        usage = _usage(stats)
        agents = []
        for i in range(3, len(reply), 3):
            flat, last = reply[i + 1], reply[i + 2]
            record = AgentRecord.from_fields(
                as_text(reply[i]), dict(zip(flat[::2], flat[1::2], strict=True))
            )
            if record is not None:  # else only updates, written after Redis lost it
                agents.append(
                    agent_info(
                        record,
                        usage=usage.get(record.agent_id),
                        last_activity=_timestamp(last) if last else None,
                        now_ms=now_ms,
                    )
                )
        return AgentSnapshot(Position(offset, epoch), agents)

    async def runner_alive(self, runner_id: str) -> bool:
        score = await self.redis.zscore(self.keys.runners, runner_id)
        return self._fresh(score)

    def _fresh(self, score: float | None) -> bool:
        return score is not None and score >= time.time() * 1000 - self.runner_ttl_ms

    async def check_runner(self, runner_id: str) -> None:
        """SERVICE_UNAVAILABLE at once when the runner's heartbeat has expired (unless this
        gateway's own Redis connection failed too recently to trust heartbeats)."""
        if not self._heartbeats_trusted():
            return
        if not await self.runner_alive(runner_id):
            raise TeamdashError(
                ErrorCode.SERVICE_UNAVAILABLE,
                f"runner {runner_id} is gone (its heartbeat expired): the agent cannot be reached",
            )

    async def watch_pending(self, interval_s: float) -> None:
        """Fail the requests whose runner's heartbeat expired while they waited for its
        reply, instead of letting them wait for the whole reply timeout; and the commands
        waiting for their turn's outcome when this gateway's Redis link failed meanwhile."""
        while True:
            await asyncio.sleep(interval_s)
            waiting = [w for ws in self._pending.values() for w in ws if w.runner_id]
            outages = self._outages()
            for w in waiting:
                if w.turn_outages is not None and w.turn_outages != outages:
                    w.fail(TeamdashError(ErrorCode.SERVICE_UNAVAILABLE, OUTCOME_LOST))
            if not waiting or not self._heartbeats_trusted():
                continue
            runner_ids = sorted({w.runner_id for w in waiting if w.runner_id})
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for rid in runner_ids:
                        pipe.zscore(self.keys.runners, rid)
                    scores = await pipe.execute()
                raise_if_cancelled()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - Redis trouble: the reply timeout still holds
                log.debug("runner watch failed: %s", e)
                continue
            gone = {
                rid for rid, score in zip(runner_ids, scores, strict=True) if not self._fresh(score)
            }
            for w in waiting:
                if w.runner_id in gone:
                    w.fail(TeamdashError(ErrorCode.SERVICE_UNAVAILABLE, _gone(w)))

    # -- client requests -----------------------------------------------------------------
    async def create_agent(
        self, identity: Identity, message: CreateAgentMessage
    ) -> tuple[str, dict[str, object]]:
        """Have a runner with room start the agent: its id and the ack's ``result``."""
        await self.check_capacity()
        agent_id = str(uuid.uuid4())
        try:
            reply = await self.request(
                "create",
                request_id=message.id,
                identity=identity,
                agent_id=agent_id,
                payload=message.payload,
            )
        except TeamdashError as e:
            if e.code is ErrorCode.SERVICE_UNAVAILABLE:
                # Nobody took it: if that is because every runner is full, say so.
                await self.check_capacity()
            raise
        if not reply.success:
            raise reply_error(reply.code, reply.error)
        return agent_id, {"agentId": agent_id, **(reply.result or {})}

    async def control_agent(self, identity: Identity, message: ControlMessage) -> dict[str, object]:
        """Command, pause, resume, terminate the agent or answer its permission prompt
        through its runner: the ack's
        ``result``. Only its owner or an admin may; commands count against the agent's rate."""
        agent_id = message.payload.agentId
        record = await self.agent(agent_id)
        if not identity.is_admin and record.owner != identity.user_id:
            raise TeamdashError(
                ErrorCode.INSUFFICIENT_PERMISSIONS, f"agent {agent_id!r} belongs to another user"
            )
        if isinstance(message, AgentCommandMessage):
            await self.count_command(agent_id, time.time())
        await self.check_runner(record.runner_id)
        kind: RequestKind
        if isinstance(message, AgentCommandMessage):
            kind = "command"
        elif isinstance(message, TerminateAgentMessage):
            kind = "terminate"
        elif isinstance(message, AgentPermissionMessage):
            kind = "permission"
        else:
            kind = "pause" if message.type == "agent:pause" else "resume"
        reply = await self.request(
            kind,
            request_id=message.id,
            identity=identity,
            agent_id=agent_id,
            payload=message.payload,
            runner_id=record.runner_id,
        )
        if not reply.success:
            raise reply_error(reply.code, reply.error)
        return {"agentId": agent_id, **(reply.result or {})}

    async def count_command(self, agent_id: str, now: float) -> None:
        """Count one command for the agent in the second of ``now``, across all gateways."""
        key = self.keys.agent_command_rate(agent_id, int(now))
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.incr(key)
            pipe.expire(key, 2)
            count, _ = await pipe.execute()
        if count > self.commands_per_second:
            raise TeamdashError(
                ErrorCode.RATE_LIMIT_EXCEEDED,
                f"more than {self.commands_per_second} commands/s to agent {agent_id}",
            )

    async def request(
        self,
        kind: RequestKind,
        *,
        request_id: str,
        identity: Identity,
        agent_id: str,
        payload: RunnerPayload,
        runner_id: str | None = None,
    ) -> RunnerReply:
        """Send a request and wait for the runner's reply (SERVICE_UNAVAILABLE on timeout);
        for a command that waits for its turn, the reply with its outcome (the first
        reply's ``result`` merged in)."""
        deadline_ms = int((time.time() + self.reply_timeout_s) * 1000)
        req = RunnerRequest(
            kind=kind,
            requestId=request_id,
            gatewayId=self.gateway_id,
            userId=identity.user_id,
            roles=sorted(identity.roles),
            agentId=agent_id,
            payload=payload,
            deadlineMs=deadline_ms,
        )
        stream = (
            self.keys.create_stream if runner_id is None else self.keys.runner_commands(runner_id)
        )
        waiter = _Waiter(agent_id, runner_id)
        self._pending.setdefault(request_id, []).append(waiter)
        outages = self._outages()
        try:
            await self.redis.xadd(
                stream, {REQUEST_FIELD: req.model_dump_json()}, maxlen=10000, approximate=True
            )
            # A cancel scope, not wait_for: on 3.11 wait_for can swallow the connection's
            # cancellation when it lands as the reply does (tests/gateway/test_timeouts.py).
            first: RunnerReply | None = None
            with anyio.move_on_after(self.reply_timeout_s):
                first = await waiter.next()
            if first is None:
                if self._outages() != outages:
                    raise TeamdashError(ErrorCode.SERVICE_UNAVAILABLE, OUTCOME_UNKNOWN)
                raise TeamdashError(
                    ErrorCode.SERVICE_UNAVAILABLE,
                    f"no agent runner answered within {self.reply_timeout_s:g}s",
                )
            if not first.outcomeFollows:
                return first
            return await self._outcome(waiter, first, payload)
        finally:
            waiters = self._pending.get(request_id)
            if waiters is not None:
                if waiter in waiters:
                    waiters.remove(waiter)
                if not waiters:
                    del self._pending[request_id]

    async def _outcome(
        self, waiter: _Waiter, first: RunnerReply, payload: RunnerPayload
    ) -> RunnerReply:
        """The second reply of a command that waits for its turn: within its ``timeout``
        plus the reply timeout (the runner reports AGENT_COMMAND_TIMEOUT at the timeout),
        else as long as the runner lives and this gateway's Redis link holds."""
        # From now on: the first reply came through, and the outcome is published after it.
        waiter.turn_outages = self._outages()
        timeout_ms = payload.timeout if isinstance(payload, AgentCommandPayload) else None
        limit_s = None if timeout_ms is None else timeout_ms / 1000 + self.reply_timeout_s
        with anyio.move_on_after(limit_s):
            reply = await waiter.next()
            if reply.success:
                result = {**(first.result or {}), **(reply.result or {})}
                return reply.model_copy(update={"result": result})
            return reply
        raise TeamdashError(
            ErrorCode.SERVICE_UNAVAILABLE,
            f"runner {first.runnerId} did not report the command's outcome within "
            f"{self.reply_timeout_s:g}s after its timeout",
        )


def _gone(waiter: _Waiter) -> str:
    if waiter.turn_outages is not None:
        return (
            f"runner {waiter.runner_id} is gone (its heartbeat expired while the command's "
            "turn ran): the agent was lost with it, the turn did not end"
        )
    return (
        f"runner {waiter.runner_id} is gone (its heartbeat expired while this request waited "
        "for its reply): the request may or may not have been carried out"
    )


def _usage(stats: list[bytes]) -> dict[str, AgentUsage]:
    """Agent id → its latest sample, from the flat ``Keys.agent_stats`` hash."""
    out: dict[str, AgentUsage] = {}
    for doc in stats[1::2]:
        try:
            sample = orjson.loads(doc)
            for a in sample["agents"]:
                out[a["agentId"]] = AgentUsage(
                    cpu=float(a["cpu"]),
                    memory=int(a["memory"]),
                    threads=int(a["threads"]),
                    sampledAt=int(sample["ts"]),
                )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, ValidationError):
            log.warning("malformed agent stats: %r", doc[:200])
    return out


def _timestamp(event: bytes) -> int | None:
    try:
        value = orjson.loads(event).get("timestamp")
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, int) else None


def reply_error(code: int | None, error: str | None) -> TeamdashError:
    """The client's error for a runner's failed reply (INTERNAL_ERROR for an unknown code)."""
    try:
        ecode = ErrorCode(code) if code is not None else ErrorCode.INTERNAL_ERROR
    except ValueError:
        ecode = ErrorCode.INTERNAL_ERROR
    return TeamdashError(ecode, error or ecode.name)
