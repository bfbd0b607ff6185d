"""Fixtures for the client SDK tests: real gateways (in-process from the gateway tests'
fixtures, or as processes), a real agent runner process with the fixture agents, real Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from shared.keys import Keys
from tests.gateway.conftest import gateway, make_gateway  # noqa: F401
from tests.helpers import AGENTS_DIR, ServiceProcess, free_port, port_open, wait_for


class Stack:
    """A gateway process on a free port, and the environment the CLI needs to reach it."""

    def __init__(self, env: dict[str, str], start_service: Callable[..., Any]) -> None:
        self.port = free_port()
        self.env = {**env, "TEAMDASH_GATEWAY_PORT": str(self.port)}
        self.start_service = start_service
        self.gateway: ServiceProcess | None = None
        self.url = f"ws://127.0.0.1:{self.port}/ws"
        # The CLI mints its token from the stack's secret (TEAMDASH_JWT_SECRET) and finds
        # the gateway through TEAMDASH_URL.
        self.cli_env = {**env, "TEAMDASH_URL": self.url, "TEAMDASH_TOKEN": ""}

    async def start_gateway(self) -> ServiceProcess:
        self.gateway = self.start_service("gateway", self.env)
        await wait_for(lambda: port_open(self.port), timeout=15, what="the gateway port")
        return self.gateway


@pytest.fixture
async def stack(service_env: dict[str, str], start_service: Callable[..., Any]) -> Stack:
    s = Stack(service_env, start_service)
    await s.start_gateway()
    return s


@pytest.fixture
async def runner(
    service_env: dict[str, str],
    start_service: Callable[..., Any],
    redis: aioredis.Redis,
    keys: Keys,
    tmp_path: Path,
) -> AsyncIterator[ServiceProcess]:
    """An agent runner process (``teamdash runner``) with the fixture models of
    ``tests/agents/models.toml``; stopping it (at the end) terminates its agents."""
    env = {
        **service_env,
        "TEAMDASH_MODELS_FILE": str(AGENTS_DIR / "models.toml"),
        "TEAMDASH_WORKSPACE_ROOT": str(tmp_path / "ws"),
        "TEAMDASH_RUNNER_HEARTBEAT_S": "0.3",
        "TEAMDASH_RUNNER_TTL_S": "1.5",
        "TEAMDASH_TERMINATE_GRACE_S": "1",
    }
    proc: ServiceProcess = start_service("runner", env)

    async def up() -> bool:
        if not proc.alive():
            raise AssertionError(f"the runner exited:\n{proc.log_text()}")
        return bool(await redis.zcard(keys.runners))

    await wait_for(up, timeout=15, what="the runner's heartbeat")
    yield proc
