"""The runner: takes requests from Redis, starts agents, keeps its heartbeat and stats.

How it works
------------
* **Creates** come from the shared stream ``Keys.create_stream`` through the consumer group
  ``runners``. The runner asks for at most as many entries as it has free slots, and only
  when it has one, so a create always goes to a runner with capacity. Each entry is acked
  and deleted once handled; one past its ``deadlineMs`` is dropped (the gateway already
  answered SERVICE_UNAVAILABLE).
* **Agent requests** (command, pause, resume, terminate) come from the runner's own stream
  ``Keys.runner_commands(runnerId)``, read with a blocking XREAD from the last id seen
  (the runner is its only reader; handled entries are deleted). Each is queued to its agent,
  which handles its requests in order; an unknown agent gets AGENT_NOT_FOUND at once.
* **Replies** (:class:`shared.runner_protocol.RunnerReply`) are PUBLISHed on the
  requesting gateway's reply channel once the outcome is real, before the events that
  follow.
* **Heartbeat**: every ``heartbeat_s``, ``SET Keys.runner(rid)`` (JSON, PX = TTL) and
  ``ZADD Keys.runners``; then :func:`agent_runner.reaper.reap_dead_runners`.
* **Stats**: every ``stats_interval_s``, each agent's process tree is sampled and written
  to ``HSET Keys.agent_stats <runnerId>`` for the metrics collector.
* **Start**: agents left in the registry by an earlier run with the same runner id are
  reconciled first (killed if still there, marked ``crashed``).
* **Stop**: intake stops, every agent is terminated (grace, then SIGKILL) and reported
  ``stopped`` (reason ``runner-stopped``), events are flushed, the heartbeat is removed.

Every task is started, cancelled and awaited here (:meth:`Runner.run`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis
from pydantic import ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from agent_runner.agent import Agent, AgentInfo
from agent_runner.errors import AgentNotFound, InvalidRequest, LimitExceeded, SpawnFailed
from agent_runner.health import RedisHealth
from agent_runner.metrics import RunnerMetrics
from agent_runner.outbox import Outbox
from agent_runner.policy import (
    agent_environment,
    memory_limit_mb,
    pick_cpus,
    resolve_workspace,
    validate_environment,
)
from agent_runner.process import AgentProcess, LaunchSpec, become_subreaper, process_matches
from agent_runner.reaper import acquire_lock, mark_agent_lost, reap_dead_runners, release_lock
from agent_runner.registry import Registry, protocol_status
from agent_runner.settings import RunnerSettings
from agent_runner.stats import TreeSampler
from shared.agent_record import AgentRecord, AgentUpdate
from shared.errors import ErrorCode, TeamdashError
from shared.keys import RUNNERS_GROUP, Keys
from shared.logs import bind
from shared.protocol import CreateAgentPayload, now_ms
from shared.runner_protocol import REQUEST_FIELD, RunnerReply, RunnerRequest
from shared.tasks import raise_if_cancelled

log = logging.getLogger("runner")

#: Blocking reads wait at most this long (ms), so stopping is prompt.
BLOCK_MS = 1000
#: Longest the runner waits for its agents to end when it stops (beyond the grace period).
STOP_EXTRA_S = 10.0
#: Pauses between attempts to send a reply after a connection error (the last one repeats
#: until the request's deadline).
REPLY_RETRY_S = (0.05, 0.2, 0.5, 1.0)
#: Errors after which the outcome of a Redis call is unknown and the connection is new.
CONNECTION_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)


Entry = tuple[bytes, dict[bytes, bytes] | None]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _entries(response: Any) -> list[Entry]:
    """The entries of a one-stream XREAD/XREADGROUP reply (RESP2: [[stream, entries]])."""
    if not response:
        return []
    entries: list[Entry] = response[0][1]
    return entries


class Runner:
    def __init__(self, settings: RunnerSettings, redis: aioredis.Redis) -> None:
        common = settings.common
        self.settings = settings
        self.redis = redis
        self.runner_id = settings.runner_id
        self.keys = Keys(common.redis_prefix)
        self.bus = common.event_bus(redis, self.keys)
        #: When this runner last failed to talk to Redis (the reaper's guard).
        self.health = RedisHealth()
        self.outbox = Outbox(self.bus, on_failure=self._redis_failed)
        self.registry = Registry(redis, self.keys, history_ttl_s=common.history_ttl_s)
        self.metrics = RunnerMetrics(
            lambda: [a.state.status.value for a in list(self.agents.values())]
        )
        self.agents: dict[str, Agent] = {}
        self._ended: asyncio.Queue[Agent] = asyncio.Queue()
        self._closing: set[Agent] = set()
        self._starting = 0
        self._slot_freed = asyncio.Event()
        self._cpu_use: Counter[int] = Counter()
        self._cpus = sorted(os.sched_getaffinity(0))
        self._sampler = TreeSampler()
        self._started_ms = now_ms()
        self._beats = 0
        #: A Redis call failed since the registry was last checked against our agents.
        self._registry_suspect = False
        #: Each live agent's registry record as written at its start (to re-register it).
        self._records: dict[str, AgentRecord] = {}
        #: Ends of agents that could not be recorded (Redis was unreachable): agent id →
        #: (owner, record); written again after the next good heartbeat.
        self._unrecorded: dict[str, tuple[str, AgentUpdate]] = {}
        #: Command stream entries handled but not yet deleted (XDEL failed): skipped when
        #: read again, deleted on the next pass.
        self._handled: set[str] = set()
        #: Create stream entries handled but not yet acknowledged (XACK failed).
        self._unacked: set[str] = set()

    # -- capacity -------------------------------------------------------------------
    @property
    def free_slots(self) -> int:
        return max(0, self.settings.max_agents - len(self.agents) - self._starting)

    # -- lifecycle --------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set (or this task is cancelled), then shut down cleanly."""
        bind(runner_id=self.runner_id)
        become_subreaper()
        await self.reconcile()
        await self._heartbeat()
        background = [
            self._spawn(self.outbox.run, "outbox"),
            self._spawn(self._heartbeat_loop, "heartbeat"),
            self._spawn(self._stats_loop, "stats"),
            self._spawn(self._collect_loop, "collect"),
        ]
        intake = [
            self._spawn(self._create_loop, "creates"),
            self._spawn(self._command_loop, "commands"),
        ]
        log.info(
            "runner %s ready: %d slots, models: %s",
            self.runner_id,
            self.settings.max_agents,
            ", ".join(sorted(self.settings.models.models)),
        )
        try:
            await stop.wait()
        finally:
            await self._shutdown(intake, background)

    def _redis_failed(self, error: BaseException | None = None) -> None:
        """A Redis call failed: remember when (no reaping for a while) and check the
        registry against our agents after the next good heartbeat."""
        self.health.failed(time.monotonic())
        self._registry_suspect = True

    def _spawn(self, loop_fn: Callable[[], Awaitable[None]], name: str) -> asyncio.Task[None]:
        return asyncio.create_task(self._forever(loop_fn, name), name=f"runner-{name}")

    async def _forever(self, loop_fn: Callable[[], Awaitable[None]], name: str) -> None:
        """Run a loop; if it fails, log and restart it with backoff (never die silently)."""
        backoff = 0.1
        while True:
            try:
                await loop_fn()
                return
            except asyncio.CancelledError:
                raise
            except CONNECTION_ERRORS as e:
                self._redis_failed(e)
                log.warning(
                    "runner loop %s: Redis unreachable (%s); retrying in %.1fs", name, e, backoff
                )
            except Exception:
                log.exception("runner loop %s failed; restarting in %.1fs", name, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    async def _shutdown(
        self, intake: list[asyncio.Task[None]], background: list[asyncio.Task[None]]
    ) -> None:
        await _cancel(intake)
        agents = list(self.agents.values())
        if agents:
            log.info("stopping %d agent(s)", len(agents))
            stops = [a.stop(reason="runner-stopped") for a in agents]
            try:
                async with asyncio.timeout(self.settings.terminate_grace_s + STOP_EXTRA_S):
                    await asyncio.gather(*stops, return_exceptions=True)
            except TimeoutError:
                log.error("agents did not stop in time; killing them")
        for agent in [*agents, *self._closing]:
            await agent.close()
        self._closing.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5.0):
                await self.outbox.drain()
        await _cancel(background)
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.zrem(self.keys.runners, self.runner_id)
                pipe.delete(
                    self.keys.runner(self.runner_id), self.keys.runner_commands(self.runner_id)
                )
                pipe.hdel(self.keys.agent_stats, self.runner_id)
                await pipe.execute()
        except RedisError as e:
            log.warning("could not remove the heartbeat: %s", e)
        log.info("runner %s stopped", self.runner_id)

    # -- replies --------------------------------------------------------------------------
    async def reply(
        self,
        request: RunnerRequest,
        *,
        error: TeamdashError | None = None,
        result: dict[str, Any] | None = None,
        outcome_follows: bool = False,
        deadline_ms: int | None = None,
    ) -> None:
        """Publish the reply to ``request`` on its gateway's channel, retried on a new
        connection after a connection error until ``deadline_ms`` (default: the request's
        deadline). ``outcome_follows``: a first reply, the command's outcome comes later."""
        deadline_ms = request.deadlineMs if deadline_ms is None else deadline_ms
        message = RunnerReply(
            requestId=request.requestId,
            success=error is None,
            code=int(error.code) if error is not None else None,
            error=error.message if error is not None else None,
            # The agent id is always there: the gateway matches replies by it too.
            result=result if result is not None else {"agentId": request.agentId},
            runnerId=self.runner_id,
            outcomeFollows=outcome_follows or None,
        )
        channel = self.keys.reply_channel(request.gatewayId)
        data = message.model_dump_json(exclude_none=True)
        attempt = 0
        while True:
            try:
                await self.redis.publish(channel, data)
                return
            except CONNECTION_ERRORS as e:
                # The pooled connection died (Redis restarted, a blip): the gateway waits
                # for this reply until the deadline, and a client retrying a command that
                # ran would run it twice, so try again on a new connection meanwhile.
                self._redis_failed(e)
                pause = REPLY_RETRY_S[min(attempt, len(REPLY_RETRY_S) - 1)]
                left_s = (deadline_ms - now_ms()) / 1000
                if left_s <= 0:
                    log.error(
                        "reply to %s for %s %s not sent (past its deadline, %d attempts): %s",
                        request.gatewayId,
                        request.kind,
                        request.requestId,
                        attempt + 1,
                        e,
                    )
                    return
                attempt += 1
                await asyncio.sleep(min(pause, left_s))
            except RedisError as e:
                log.error(
                    "reply to %s for %s %s not sent: %s",
                    request.gatewayId,
                    request.kind,
                    request.requestId,
                    e,
                )
                return

    # -- creates ----------------------------------------------------------------------------
    async def _ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(
                self.keys.create_stream, RUNNERS_GROUP, id="0", mkstream=True
            )
        except ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    async def _create_loop(self) -> None:
        await self._ensure_group()
        stream = self.keys.create_stream
        if self._unacked:
            await self._ack_creates(list(self._unacked))
        # First our own unacknowledged entries (an earlier run's, or ones read before a
        # connection error), then new ones. After a Redis restart that lost the stream, the
        # group is created again (NOGROUP below) and this starts over.
        cursor = "0"
        while True:
            free = self.free_slots
            if free <= 0:
                self._slot_freed.clear()
                if self.free_slots <= 0:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(BLOCK_MS / 1000):
                            await self._slot_freed.wait()
                continue
            try:
                response = await self.redis.xreadgroup(
                    RUNNERS_GROUP,
                    self.runner_id,
                    {stream: cursor},
                    count=free,
                    block=None if cursor == "0" else BLOCK_MS,
                )
                raise_if_cancelled()
            except ResponseError as e:
                if "NOGROUP" not in str(e):
                    raise
                await self._ensure_group()
                continue
            entries = _entries(response)
            if cursor == "0":
                entries = [(eid, f) for eid, f in entries if _text(eid) not in self._unacked]
                if not entries:
                    cursor = ">"
                    continue
            if entries:
                await asyncio.gather(*(self._take_create(eid, fields) for eid, fields in entries))

    async def _take_create(self, entry_id: bytes, fields: dict[bytes, bytes] | None) -> None:
        try:
            raw = (fields or {}).get(REQUEST_FIELD.encode())
            if raw is None:
                log.warning("create entry %s has no %r field", _text(entry_id), REQUEST_FIELD)
                return
            try:
                request = RunnerRequest.model_validate_json(raw)
            except ValidationError as e:
                log.warning("invalid runner request %s: %s", _text(entry_id), e)
                return
            if request.deadlineMs < now_ms():
                log.info("dropping create %s: past its deadline", request.requestId)
                return
            await self._create(request)
        finally:
            await self._ack_creates([_text(entry_id)])

    async def _ack_creates(self, entry_ids: list[str]) -> None:
        """Acknowledge and delete handled create entries; remember those that could not be
        (so that they are never handled twice) and try again when the loop restarts."""
        self._unacked.update(entry_ids)
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.xack(self.keys.create_stream, RUNNERS_GROUP, *entry_ids)
                pipe.xdel(self.keys.create_stream, *entry_ids)
                await pipe.execute()
        except ResponseError as e:  # NOGROUP: the stream is gone with its entries
            log.info("create entries %s not acknowledged: %s", ", ".join(entry_ids), e)
        self._unacked.difference_update(entry_ids)

    async def _create(self, request: RunnerRequest) -> None:
        replied = False
        try:
            agent = await self._start_agent(request)
            self.metrics.agents_started.inc()
            await self.reply(request, result={"agentId": agent.agent_id, "pid": agent.process.pid})
            replied = True
            await agent.announce()
        except TeamdashError as e:
            if replied:
                raise
            log.info("create %s refused: %s", request.agentId, e.message)
            self.metrics.spawn_failures.labels(e.code.name).inc()
            await self.reply(request, error=e)
        except Exception as e:
            log.exception("create %s failed", request.agentId)
            if not replied:
                self.metrics.spawn_failures.labels(ErrorCode.INTERNAL_ERROR.name).inc()
                await self.reply(request, error=TeamdashError(ErrorCode.INTERNAL_ERROR, str(e)))

    async def _start_agent(self, request: RunnerRequest) -> Agent:
        """Validate, check limits, spawn and register; raises the error to reply with."""
        settings = self.settings
        if request.kind != "create":
            raise InvalidRequest(f"{request.kind!r} requests do not go to the create stream")
        payload = request.payload
        assert isinstance(payload, CreateAgentPayload)  # RunnerRequest checks it against kind
        model = settings.models.get(payload.model)
        argv = model.launch_argv(payload.permissions)
        for program in (model.program, *model.requires):
            _check_program(payload.model, program, settings.agent_path)
        user_env = validate_environment(
            payload.environment, reserved=model.reserved_env | set(settings.passthrough_env)
        )
        if self.free_slots <= 0:
            raise LimitExceeded(
                f"runner {self.runner_id} already runs its maximum of {settings.max_agents} agents"
            )
        workspace = resolve_workspace(settings.workspace_root, payload.workspace)
        agent_id, owner = request.agentId, request.userId
        if agent_id in self.agents or await self.registry.exists(agent_id):
            raise InvalidRequest(f"agent id {agent_id!r} is already in use")
        if not await self.registry.reserve(owner, agent_id, settings.max_agents_per_user):
            raise LimitExceeded(
                f"user {owner!r} already has {settings.max_agents_per_user} live agents "
                "(the per-user limit)"
            )
        limits = payload.resourceLimits
        memory_mb = memory_limit_mb(limits.memory if limits else None, settings.default_memory_mb)
        cpus = pick_cpus(self._cpus, limits.cpu, self._cpu_use) if limits else None
        home = settings.agent_home_root / agent_id
        env = agent_environment(
            workspace=workspace,
            home=home,
            path=settings.agent_path,
            lang=settings.agent_lang,
            model_env=model.env,
            passthrough=settings.passthrough_env,
            user_env=user_env,
        )
        self._starting += 1
        try:
            try:
                home.mkdir(mode=0o700)
                process = await AgentProcess.start(
                    LaunchSpec(
                        argv=argv,
                        env=env,
                        cwd=workspace,
                        memory_mb=memory_mb,
                        cpus=cpus,
                        pty=model.pty,
                    )
                )
            except BaseException as e:
                _remove_home(home)
                await self.registry.release(owner, agent_id)
                if isinstance(e, OSError):
                    raise SpawnFailed(f"cannot make the agent's home {home}: {e}") from e
                raise
            info = AgentInfo(
                agent_id=agent_id,
                name=payload.name,
                owner=owner,
                model=model,
                workspace=payload.workspace,
                workspace_path=workspace,
                runner_id=self.runner_id,
                start_time=now_ms(),
                request_id=request.requestId,
                memory_mb=memory_mb,
                cpu_cores=limits.cpu if limits else None,
                cpus=tuple(cpus) if cpus else None,
            )
            agent = Agent(
                info,
                process,
                outbox=self.outbox,
                registry=self.registry,
                reply=self.reply,
                grace_s=settings.terminate_grace_s,
                on_ended=self._agent_ended,
                output_events_per_second=settings.output_events_per_second,
                output_bytes_per_second=settings.output_bytes_per_second,
            )
            self.agents[agent_id] = agent
            self._cpu_use.update(cpus or ())
        finally:
            self._starting -= 1
        record = AgentRecord(
            agent_id=agent_id,
            owner=owner,
            runner_id=self.runner_id,
            status=protocol_status(agent.status),
            name=payload.name,
            model=payload.model,
            workspace=payload.workspace,
            workspace_path=str(workspace),
            host=settings.host,
            pid=process.pid,
            start_time=info.start_time,
            proc_create_time=process.create_time,
            keeper_pid=process.keeper_pid,
            keeper_create_time=process.keeper_create_time,
            memory_mb=memory_mb,
            cpu_cores=limits.cpu if limits else None,
            cpus=tuple(cpus) if cpus else None,
            request_id=request.requestId,
        )
        self._records[agent_id] = record
        try:
            await self.registry.register(record)
        except BaseException:
            self._records.pop(agent_id, None)
            self.agents.pop(agent_id, None)
            await agent.close()
            await process.kill_everything()
            self._cpu_use.subtract(cpus or ())
            with contextlib.suppress(RedisError):
                await self.registry.release(owner, agent_id)
            raise
        log.info(
            "agent %s (%s, model %s) started: pid %d",
            agent_id,
            payload.name,
            model.name,
            process.pid,
        )
        return agent

    def _agent_ended(self, agent: Agent) -> None:
        self.metrics.agents_ended.labels(agent.state.status.value).inc()
        if agent.unrecorded_end is not None:
            self._unrecorded[agent.agent_id] = (agent.info.owner, agent.unrecorded_end)
            self._registry_suspect = True
        if self.agents.get(agent.agent_id) is agent:
            del self.agents[agent.agent_id]
            self._records.pop(agent.agent_id, None)
            self._cpu_use.subtract(agent.info.cpus or ())
            self._closing.add(agent)
            self._ended.put_nowait(agent)
        self._slot_freed.set()

    async def _collect_loop(self) -> None:
        while True:
            agent = await self._ended.get()
            await agent.close()
            # Its CLI's configuration and session files go with it (nothing else uses them).
            await asyncio.to_thread(_remove_home, self.settings.agent_home_root / agent.agent_id)
            self._closing.discard(agent)

    # -- agent requests ---------------------------------------------------------------------
    async def _command_loop(self) -> None:
        """Read from the start of the stream each time the loop (re)starts: handled entries
        are deleted, so what is there is new — also after a Redis restart or a fail-over,
        whose stream may hold ids lower than the last one seen. Entries handled but not yet
        deleted (the XDEL failed) are skipped and deleted first."""
        stream = self.keys.runner_commands(self.runner_id)
        if self._handled:
            await self.redis.xdel(stream, *self._handled)
            self._handled.clear()
        last_id = "0-0"
        while True:
            response = await self.redis.xread({stream: last_id}, count=100, block=BLOCK_MS)
            raise_if_cancelled()
            handled: list[str] = []
            for entry_id, fields in _entries(response):
                last_id = _text(entry_id)
                if last_id in self._handled:
                    continue
                handled.append(last_id)
                self._handled.add(last_id)
                await self._dispatch(entry_id, fields)
            if handled:
                await self.redis.xdel(stream, *handled)
                self._handled.difference_update(handled)

    async def _dispatch(self, entry_id: bytes, fields: dict[bytes, bytes] | None) -> None:
        raw = (fields or {}).get(REQUEST_FIELD.encode())
        try:
            request = RunnerRequest.model_validate_json(raw or b"")
        except ValidationError as e:
            log.warning("invalid runner request %s: %s", _text(entry_id), e)
            return
        if request.deadlineMs < now_ms():
            log.info("dropping %s %s: past its deadline", request.kind, request.requestId)
            return
        try:
            if request.kind == "create":
                raise InvalidRequest("create requests go to the shared create stream")
            agent = self.agents.get(request.agentId)
            if agent is None:
                raise AgentNotFound(f"agent {request.agentId} is not running on {self.runner_id}")
            agent.submit(request)
        except TeamdashError as e:
            await self.reply(request, error=e)

    # -- heartbeat, reaping, stats ------------------------------------------------------------
    async def _heartbeat(self) -> None:
        settings = self.settings
        ts = now_ms()
        doc = {
            "runnerId": self.runner_id,
            "host": settings.host,
            "pid": os.getpid(),
            "capacity": settings.max_agents,
            "running": len(self.agents),
            "free": self.free_slots,
            "startedAt": self._started_ms,
            "ts": ts,
        }
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self.keys.runner(self.runner_id), orjson.dumps(doc), px=settings.ttl_ms)
            pipe.zadd(self.keys.runners, {self.runner_id: ts})
            _, added = await pipe.execute()
        if self._beats and (added or self._registry_suspect):
            await self._check_registry(bool(added))
        self._beats += 1

    async def _check_registry(self, added: bool) -> None:
        """Our heartbeat entry was gone (``added``), or a Redis call failed: compare each
        local agent with its registry hash. A hash that is missing, or holds only fields
        written since it went missing (no record: no owner), means Redis lost its data (restarted
        empty, a replica without recent writes): the agent is registered again with its
        current status, which is published again on its topics (new epochs), so clients
        learn the truth. Only a hash that says ``crashed``/``stopped`` or names another
        runner is a real reap (this runner was taken for dead, its agents were reported
        crashed): those agents are fenced — killed, and the kill reported."""
        self._registry_suspect = False
        lost: list[Agent] = []
        fenced: list[Agent] = []
        for agent in list(self.agents.values()):
            if not agent.state.live:
                continue
            found = await self.registry.get(agent.agent_id)
            if found is None:
                lost.append(agent)
            elif found.ended or found.runner_id != self.runner_id:
                fenced.append(agent)
            elif found.status != agent.status.value:
                # An update that failed while Redis was unreachable.
                await self.registry.update(
                    agent.agent_id, AgentUpdate(status=protocol_status(agent.status))
                )
        for agent in lost:
            record = replace(self._records[agent.agent_id], status=protocol_status(agent.status))
            await self.registry.restore(record)
            agent.republish_status()
        if lost:
            log.warning(
                "registry lost (Redis restarted empty?): re-registered %d agents", len(lost)
            )
        if fenced:
            log.error(
                "runner %s was taken for dead (heartbeat late by more than %gs): killing %d "
                "agent(s) already reported crashed",
                self.runner_id,
                self.settings.ttl_s,
                len(fenced),
            )
        for agent in fenced:
            await agent.abandon()
        for agent_id, (owner, end) in list(self._unrecorded.items()):
            await self.registry.finish(agent_id, owner, self.runner_id, end)
            del self._unrecorded[agent_id]

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_s)
            try:
                await self._heartbeat()
                await reap_dead_runners(
                    self.redis,
                    self.keys,
                    self.bus,
                    self.settings.ttl_ms,
                    exclude=self.runner_id,
                    local_host=self.settings.host,
                    history_ttl_s=self.settings.common.history_ttl_s,
                    redis_ok_for_ms=self.health.ok_for(time.monotonic()) * 1000,
                    heartbeat_ms=int(self.settings.heartbeat_s * 1000),
                )
            except RedisError as e:
                self._redis_failed(e)
                log.warning("heartbeat failed: %s", e)
            raise_if_cancelled()

    async def _stats_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.stats_interval_s)
            await self.sample_stats()
            raise_if_cancelled()

    async def sample_stats(self) -> list[dict[str, object]]:
        """Sample every agent's process tree and publish it to ``Keys.agent_stats``."""
        targets = [
            (a.agent_id, a.process.keeper_pid, a.process.keeper_create_time)
            for a in self.agents.values()
        ]
        samples = await asyncio.to_thread(self._sampler.sample, targets, include_root=False)
        docs = []
        for sample in samples:
            agent = self.agents.get(sample.agent_id)
            if agent is not None:
                agent.peak_memory = max(agent.peak_memory, sample.memory)
                agent.process.descendants = [
                    p for p in sample.descendants if p.pid != agent.process.pid
                ]
                # The gateway shows an operator only their own agents' figures.
                docs.append({**sample.to_json(), "owner": agent.info.owner})
        try:
            await self.redis.hset(
                self.keys.agent_stats,
                self.runner_id,
                orjson.dumps({"ts": now_ms(), "runnerId": self.runner_id, "agents": docs}),
            )
        except RedisError as e:
            self._redis_failed(e)
            log.warning("writing agent stats failed: %s", e)
        return docs

    # -- restart reconciliation -------------------------------------------------------------
    async def reconcile(self) -> int:
        """Agents an earlier run of this runner id left in the registry: kill what is left
        of them on this host and mark them ``crashed`` (``runner-restarted`` when their
        process was still there, else ``runner-lost``). Returns how many were marked."""
        agent_ids = await self.registry.runner_agent_ids(self.runner_id)
        if not agent_ids:
            return 0
        lock = self.keys.runner_lock(self.runner_id)
        token = None
        for _ in range(50):
            token = await acquire_lock(self.redis, lock)
            if token is not None:
                break
            await asyncio.sleep(0.1)
        marked = 0
        try:
            for agent_id in agent_ids:
                record = await self.registry.get(agent_id)
                alive = (
                    record is not None
                    and record.host == self.settings.host
                    and record.pid is not None
                    and process_matches(record.pid, record.proc_create_time or 0.0)
                )
                if await mark_agent_lost(
                    self.redis,
                    self.keys,
                    self.bus,
                    self.runner_id,
                    agent_id,
                    reason="runner-restarted" if alive else "runner-lost",
                    history_ttl_s=self.settings.common.history_ttl_s,
                    local_host=self.settings.host,
                ):
                    marked += 1
        finally:
            if token is not None:
                await release_lock(self.redis, lock, token)
        log.warning("reconciled %d agent(s) left by an earlier run of %s", marked, self.runner_id)
        return marked


def _remove_home(home: Path) -> None:
    shutil.rmtree(home, ignore_errors=True)


def _check_program(model_name: str, program: str, path: str) -> None:
    if "/" in program:
        found = os.path.isfile(program) and os.access(program, os.X_OK)
    else:
        found = shutil.which(program, path=path) is not None
    if not found:
        raise SpawnFailed(
            f"model {model_name!r} runs {program!r}, which is not installed or not on PATH"
        )


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
