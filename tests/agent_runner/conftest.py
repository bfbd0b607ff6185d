"""Fixtures for the agent runner tests: runners in-process (``main()``) or as real processes
(``teamdash runner``), a gateway stand-in that sends RunnerRequests and waits for the
replies, and topic readers. Every test checks that no agent process is left behind."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psutil
import pytest
import redis.asyncio as aioredis

from agent_runner.process import live_group_members
from agent_runner.service import main
from agent_runner.settings import RunnerSettings
from shared.bus import EventBus, Position
from shared.keys import Keys
from shared.protocol import new_id, now_ms
from shared.runner_protocol import REQUEST_FIELD, RunnerReply, RunnerRequest
from shared.settings import Env
from tests.helpers import AGENTS_DIR, ROOT, t, wait_for

MODELS_FILE = AGENTS_DIR / "models.toml"


@pytest.fixture
def runner_env(service_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    return {
        **service_env,
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "TEAMDASH_MODELS_FILE": str(MODELS_FILE),
        "TEAMDASH_WORKSPACE_ROOT": str(tmp_path / "workspaces"),
        # Never the machine's /run/secrets: the tests' runners have no credentials.
        "TEAMDASH_SECRETS_DIR": str(tmp_path / "no-secrets"),
        "TEAMDASH_RUNNER_HEARTBEAT_S": "0.3",
        "TEAMDASH_RUNNER_TTL_S": "1.5",
        "TEAMDASH_TERMINATE_GRACE_S": "1",
        "TEAMDASH_STATS_INTERVAL_S": "0.3",
    }


@dataclass
class InProcessRunner:
    settings: RunnerSettings
    stop_event: asyncio.Event
    task: asyncio.Task[None]

    @property
    def runner_id(self) -> str:
        return self.settings.runner_id

    async def stop(self) -> None:
        self.stop_event.set()
        await asyncio.wait_for(asyncio.shield(self.task), t(30))


@dataclass
class RunnerProcess:
    runner_id: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(t(30))
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@dataclass
class Tracker:
    """Agent pids seen by a test, to check that none of their groups survive."""

    pids: set[int] = field(default_factory=set)


@pytest.fixture
def tracker() -> Iterator[Tracker]:
    tr = Tracker()
    yield tr
    deadline = time.monotonic() + t(10)
    left: list[int] = []
    while time.monotonic() < deadline:
        left = [pid for pgid in tr.pids for pid in live_group_members(pgid)]
        if not left:
            break
        time.sleep(0.05)
    for pgid in tr.pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
    assert not left, f"agent processes left behind: {left}"


def _leftover_children() -> list[psutil.Process]:
    out = []
    for p in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            if p.status() != psutil.STATUS_ZOMBIE and "redis-server" not in p.name():
                out.append(p)
    return out


@pytest.fixture
async def start_runner(
    runner_env: dict[str, str], tracker: Tracker
) -> AsyncIterator[Callable[..., Awaitable[InProcessRunner]]]:
    """``await start_runner(**env_overrides)`` → a runner running ``main()`` in this process."""
    started: list[InProcessRunner] = []

    async def start(**overrides: Any) -> InProcessRunner:
        env = {**runner_env, **{k: str(v) for k, v in overrides.items()}}
        settings = RunnerSettings.from_env(Env(env))
        stop = asyncio.Event()
        task = asyncio.create_task(main(settings, stop))
        runner = InProcessRunner(settings, stop, task)
        started.append(runner)
        client = aioredis.Redis.from_url(settings.common.redis_url)
        keys = Keys(settings.common.redis_prefix)
        try:
            await wait_for(
                lambda: task.done() or client.exists(keys.runner(settings.runner_id)),
                what="the runner's heartbeat",
            )
        finally:
            await client.aclose()
        if task.done():
            task.result()
        return runner

    yield start
    for runner in started:
        if not runner.task.done():
            await runner.stop()
        else:
            runner.task.result()
    await wait_for(lambda: not _leftover_children(), timeout=10, what="child processes to end")


@pytest.fixture
def start_runner_process(
    runner_env: dict[str, str], tmp_path: Path, tracker: Tracker
) -> Iterator[Callable[..., RunnerProcess]]:
    """``start_runner_process(runner_id, **env)`` → a real ``teamdash runner`` process."""
    started: list[RunnerProcess] = []

    def start(runner_id: str, **overrides: Any) -> RunnerProcess:
        env = {
            **os.environ,
            **runner_env,
            "TEAMDASH_RUNNER_ID": runner_id,
            **{k: str(v) for k, v in overrides.items()},
        }
        log_path = tmp_path / f"runner-{runner_id}-{len(started)}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "shared.cli", "runner"],
                env=env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        rp = RunnerProcess(runner_id, proc, log_path)
        started.append(rp)
        return rp

    yield start
    for rp in started:
        rp.stop()


class Gateway:
    """Stands in for the gateway: XADDs RunnerRequests and collects RunnerReplies."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, tracker: Tracker) -> None:
        self.redis = redis
        self.keys = keys
        self.tracker = tracker
        self.gateway_id = f"gw-{new_id()[:8]}"
        self.replies: dict[str, RunnerReply] = {}
        #: Every reply of each request, in arrival order (a waiting command gets two).
        self.all_replies: dict[str, list[RunnerReply]] = {}
        self._pubsub: Any = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._pubsub = self.redis.pubsub()
        await self._pubsub.subscribe(self.keys.reply_channel(self.gateway_id))
        self._task = asyncio.create_task(self._listen())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._pubsub is not None:
            await self._pubsub.aclose()

    async def _listen(self) -> None:
        while True:
            msg = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if msg is not None and msg["type"] == "message":
                reply = RunnerReply.model_validate_json(msg["data"])
                self.replies[reply.requestId] = reply
                self.all_replies.setdefault(reply.requestId, []).append(reply)

    async def send(
        self,
        kind: str,
        agent_id: str,
        payload: dict[str, Any],
        *,
        user: str = "alice",
        runner_id: str | None = None,
        deadline_s: float = 15.0,
        wait: bool = True,
    ) -> RunnerReply | str:
        request = RunnerRequest(
            kind=kind,  # type: ignore[arg-type]
            requestId=new_id(),
            gatewayId=self.gateway_id,
            userId=user,
            roles=["operator"],
            agentId=agent_id,
            payload=payload,
            deadlineMs=now_ms() + int(t(deadline_s) * 1000),
        )
        if kind == "create":
            stream = self.keys.create_stream
        else:
            if runner_id is None:
                raw = await self.redis.hget(self.keys.agent(agent_id), "runnerId")
                assert raw is not None, f"agent {agent_id} is not in the registry"
                runner_id = raw.decode()
            stream = self.keys.runner_commands(runner_id)
        await self.redis.xadd(stream, {REQUEST_FIELD: request.model_dump_json()})
        if not wait:
            return request.requestId
        return await self.reply(request.requestId)

    async def reply(self, request_id: str, timeout: float = 15.0) -> RunnerReply:
        await wait_for(
            lambda: request_id in self.replies, timeout=timeout, what="the runner's reply"
        )
        return self.replies[request_id]

    async def create(
        self, model: str = "echo", *, name: str = "a1", workspace: str = "ws1", **payload: Any
    ) -> tuple[str, RunnerReply]:
        agent_id = f"ag-{new_id()[:12]}"
        user = payload.pop("user", "alice")
        reply = await self.send(
            "create",
            agent_id,
            {"name": name, "model": model, "workspace": workspace, **payload},
            user=user,
        )
        assert isinstance(reply, RunnerReply)
        if reply.success and reply.result:
            self.tracker.pids.add(int(reply.result["pid"]))
        return agent_id, reply

    async def command(self, agent_id: str, command: str, **payload: Any) -> RunnerReply:
        reply = await self.send(
            "command", agent_id, {"agentId": agent_id, "command": command, **payload}
        )
        assert isinstance(reply, RunnerReply)
        return reply

    async def control(self, kind: str, agent_id: str, **payload: Any) -> RunnerReply:
        reply = await self.send(kind, agent_id, {"agentId": agent_id, **payload})
        assert isinstance(reply, RunnerReply)
        return reply


@pytest.fixture
async def gateway(redis: aioredis.Redis, keys: Keys, tracker: Tracker) -> AsyncIterator[Gateway]:
    gw = Gateway(redis, keys, tracker)
    await gw.start()
    yield gw
    await gw.close()


async def topic_events(bus: EventBus, topic: str) -> list[dict[str, Any]]:
    replay = await bus.read_since(topic, Position(0, None), limit=100_000)
    return [orjson.loads(e.data) | {"_tags": e.tags} for e in replay.events]


async def wait_events(
    bus: EventBus,
    topic: str,
    predicate: Callable[[list[dict[str, Any]]], bool],
    *,
    timeout: float = 10.0,
    what: str = "events",
) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []

    async def check() -> bool:
        nonlocal found
        found = await topic_events(bus, topic)
        return predicate(found)

    try:
        await wait_for(check, timeout=timeout, what=what)
    except AssertionError as e:
        summary = [
            (ev["type"], ev["payload"].get("status") or ev["payload"].get("data", "")[:40])
            for ev in found
        ][-30:]
        raise AssertionError(f"{e}; last events: {summary}") from None
    return found


def statuses(evs: list[dict[str, Any]]) -> list[str]:
    return [e["payload"]["status"] for e in evs if e["type"] == "agent:status"]


def has_status(status: str) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda evs: status in statuses(evs)


def outputs(evs: list[dict[str, Any]], stream: str | None = None) -> list[dict[str, Any]]:
    return [
        e["payload"]
        for e in evs
        if e["type"] == "agent:output" and (stream is None or e["payload"]["stream"] == stream)
    ]


def output_text(evs: list[dict[str, Any]], stream: str = "stdout") -> str:
    return "".join(p["data"] for p in outputs(evs, stream))
