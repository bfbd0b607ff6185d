"""The system under test: gateway processes (``teamdash gateway``) and optionally an agent
runner (``teamdash runner``), on the run's Redis, each stack with its own key prefix.

Gateways listen on ports of their own (no load balancer): the load generator splits its
clients across ``Stack.urls`` itself, client ``i`` → gateway ``i % n``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

import redis.asyncio as aioredis

from bench.procs import BenchError, Child
from shared.keys import Keys
from shared.redis_server import free_port

BENCH_DIR = Path(__file__).resolve().parent
MODELS_FILE = BENCH_DIR / "agents" / "models.toml"

#: Limits lifted for the benchmark. Every generator client comes from 127.0.0.1, so the
#: per-IP limits would refuse all but the first 120 connections a minute; the per
#: connection / user / agent rates would throttle the request scenario's closed loop
#: (defaults: 100 msg/s per connection, 300 per user, 500 per IP, 10 commands/s per agent).
BENCH_LIMITS = {
    "TEAMDASH_MESSAGES_PER_SECOND": "1000000",
    "TEAMDASH_AGENT_COMMANDS_PER_SECOND": "1000000",
    "TEAMDASH_USER_MESSAGES_PER_SECOND": "1000000",
    "TEAMDASH_IP_MESSAGES_PER_SECOND": "1000000",
    "TEAMDASH_IP_CONNECTIONS_PER_MINUTE": "0",
    # The agent-output scenario measures how fast output can go, not the runner's pace.
    "TEAMDASH_AGENT_OUTPUT_EVENTS_PER_SECOND": "0",
    "TEAMDASH_AGENT_OUTPUT_BYTES_PER_SECOND": "0",
}


class Stack:
    def __init__(
        self,
        name: str,
        *,
        redis_url: str,
        secret: str,
        run_dir: Path,
        gateways: int = 1,
        runner: bool = False,
        runner_slots: int = 8,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.redis_url = redis_url
        self.prefix = f"b{uuid.uuid4().hex[:8]}"
        self.keys = Keys(self.prefix)
        self.run_dir = run_dir
        self.log_dir = run_dir / "logs" / name
        self.n_gateways = gateways
        self.want_runner = runner
        self.runner_slots = runner_slots
        self.common_env = {
            "REDIS_URL": redis_url,
            "TEAMDASH_REDIS_PREFIX": self.prefix,
            "TEAMDASH_STATE_DIR": str(run_dir / "state"),
            "TEAMDASH_JWT_SECRET": secret,
            "PYTHONUNBUFFERED": "1",
            **BENCH_LIMITS,
            **(env or {}),
        }
        self.gateways: list[Child] = []
        self.ports: list[int] = []
        self.runner: Child | None = None
        self.runner_id = f"{self.prefix}-runner"

    @property
    def urls(self) -> list[str]:
        return [f"ws://127.0.0.1:{port}/ws" for port in self.ports]

    @property
    def gateway_pids(self) -> list[int]:
        return [g.pid for g in self.gateways]

    @property
    def env(self) -> dict[str, str]:
        """The settings the services of this stack ran with (for the report)."""
        return {k: v for k, v in self.common_env.items() if k != "TEAMDASH_JWT_SECRET"}

    async def start(self) -> Stack:
        try:
            for i in range(self.n_gateways):
                port = free_port()
                gw = Child(
                    f"gateway{i + 1}",
                    ["-m", "shared.cli", "gateway"],
                    {
                        **self.common_env,
                        "TEAMDASH_GATEWAY_PORT": str(port),
                        "TEAMDASH_GATEWAY_ID": f"{self.prefix}-gw{i + 1}",
                    },
                    self.log_dir,
                )
                self.gateways.append(await gw.start())
                self.ports.append(port)
            if self.want_runner:
                self.runner = Child(
                    "runner",
                    ["-m", "shared.cli", "runner"],
                    {
                        **self.common_env,
                        "TEAMDASH_RUNNER_ID": self.runner_id,
                        "TEAMDASH_MODELS_FILE": str(MODELS_FILE),
                        "TEAMDASH_WORKSPACE_ROOT": str(self.run_dir / "workspaces"),
                        "TEAMDASH_RUNNER_MAX_AGENTS": str(self.runner_slots),
                        "TEAMDASH_MAX_AGENTS_PER_USER": str(self.runner_slots),
                        "TEAMDASH_TERMINATE_GRACE_S": "1",
                    },
                    self.log_dir,
                )
                await self.runner.start()
            await asyncio.gather(
                *(self._gateway_ready(g, p) for g, p in zip(self.gateways, self.ports, strict=True))
            )
            if self.runner is not None:
                await self._runner_ready()
        except BaseException:
            await self.stop()
            raise
        return self

    async def _gateway_ready(self, gw: Child, port: int, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not gw.alive():
                raise BenchError(f"{gw.name} exited at start:\n{gw.log_tail()}")
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"GET /readyz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                status = await asyncio.wait_for(reader.readline(), 5)
                writer.close()
                if b" 200 " in status:
                    return
            except OSError:
                pass
            await asyncio.sleep(0.1)
        raise BenchError(f"{gw.name} not ready within {timeout_s:g}s:\n{gw.log_tail()}")

    async def _runner_ready(self, timeout_s: float = 30.0) -> None:
        assert self.runner is not None
        redis = aioredis.Redis.from_url(self.redis_url)
        try:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                if not self.runner.alive():
                    raise BenchError(f"runner exited at start:\n{self.runner.log_tail()}")
                if await redis.zscore(self.keys.runners, self.runner_id) is not None:
                    return
                await asyncio.sleep(0.1)
        finally:
            await redis.aclose()
        raise BenchError(f"runner not ready within {timeout_s:g}s:\n{self.runner.log_tail()}")

    def gateway_rss(self) -> int:
        return sum(g.rss() for g in self.gateways)

    def check_alive(self) -> None:
        for child in [*self.gateways, *([self.runner] if self.runner else [])]:
            if not child.alive():
                raise BenchError(f"{child.name} died:\n{child.log_tail()}")

    async def stop(self) -> None:
        # Gateways first (clients go), then the runner (it stops its agents).
        await asyncio.gather(*(g.stop() for g in self.gateways))
        if self.runner is not None:
            await self.runner.stop(timeout_s=20)
