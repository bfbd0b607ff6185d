"""Fixtures of the fault suite: a Redis of the test's own that can be SIGKILLed and
restarted on the same port (with or without its data), and a stack of real service
processes (gateway, runner, collector) pointed at it.

The session-wide Redis of ``tests/conftest.py`` is shared by every other test, so a fault
test never kills that one: it starts its own with :func:`fault_redis`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from shared.redis_server import EmbeddedRedis
from tests.conftest import JWT_SECRET
from tests.helpers import AGENTS_DIR, ServiceProcess, free_port, http_get, t


class FaultRedis:
    """A private Redis on a fixed loopback port: ``kill()`` is a crash (SIGKILL),
    ``start()`` brings it back on the same port — with its data when ``persistent``
    (append-only file, fsync always), empty otherwise (a fresh replica, no persistence)."""

    def __init__(self, workdir: Path, *, persistent: bool) -> None:
        self.persistent = persistent
        self._server = EmbeddedRedis(port=free_port(), workdir=workdir, persistent=persistent)

    @property
    def url(self) -> str:
        return self._server.url

    @property
    def port(self) -> int:
        assert self._server.port is not None
        return self._server.port

    def start(self) -> None:
        self._server.start()

    def kill(self) -> None:
        self._server.kill()

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        self._server.stop()


@pytest.fixture
def fault_redis(tmp_path: Path) -> Iterator[Callable[..., FaultRedis]]:
    """``fault_redis(persistent=False)`` → a started :class:`FaultRedis`; stopped after."""
    made: list[FaultRedis] = []

    def make(*, persistent: bool = False) -> FaultRedis:
        server = FaultRedis(tmp_path / f"redis-{len(made)}", persistent=persistent)
        made.append(server)
        server.start()
        return server

    yield make
    for server in made:
        server.stop()


@dataclass
class FaultStack:
    """Service processes started on one :class:`FaultRedis` (each stopped, and checked for
    leftover processes, by ``start_service`` when the test ends)."""

    redis: FaultRedis
    env: dict[str, str]
    start_service: Callable[..., ServiceProcess]
    gateways: list[tuple[ServiceProcess, int]] = field(default_factory=list)
    runners: list[ServiceProcess] = field(default_factory=list)
    collectors: list[ServiceProcess] = field(default_factory=list)

    def gateway(self, **env: str) -> tuple[ServiceProcess, int]:
        port = free_port()
        proc = self.start_service(
            "gateway", {**self.env, "TEAMDASH_GATEWAY_PORT": str(port), **env}
        )
        self.gateways.append((proc, port))
        return proc, port

    def runner(self, runner_id: str, **env: str) -> ServiceProcess:
        proc = self.start_service("runner", {**self.env, "TEAMDASH_RUNNER_ID": runner_id, **env})
        self.runners.append(proc)
        return proc

    def collector(self, **env: str) -> ServiceProcess:
        proc = self.start_service("collector", {**self.env, **env})
        self.collectors.append(proc)
        return proc

    @staticmethod
    def ws_url(port: int) -> str:
        return f"ws://127.0.0.1:{port}/ws"

    @staticmethod
    def ready(port: int) -> bool:
        try:
            return http_get(f"http://127.0.0.1:{port}/readyz")[0] == 200
        except OSError:
            return False


@pytest.fixture
def fault_stack(
    fault_redis: Callable[..., FaultRedis],
    start_service: Callable[..., ServiceProcess],
    tmp_path: Path,
) -> Callable[..., FaultStack]:
    """``fault_stack(persistent=False, **env)`` → a :class:`FaultStack` on a new Redis, with
    short runner heartbeats so that faults show within seconds."""

    def make(*, persistent: bool = False, **env: str) -> FaultStack:
        server = fault_redis(persistent=persistent)
        base = {
            "REDIS_URL": server.url,
            "TEAMDASH_REDIS_PREFIX": "fault",
            "TEAMDASH_STATE_DIR": str(tmp_path / "state"),
            "TEAMDASH_JWT_SECRET": JWT_SECRET,
            "TEAMDASH_MODELS_FILE": str(AGENTS_DIR / "models.toml"),
            "TEAMDASH_WORKSPACE_ROOT": str(tmp_path / "workspaces"),
            "TEAMDASH_CURSOR_FLUSH_INTERVAL_S": "0.1",
            "TEAMDASH_RUNNER_HEARTBEAT_S": "0.5",
            "TEAMDASH_RUNNER_TTL_S": "2",
            "PYTHONUNBUFFERED": "1",
            **env,
        }
        return FaultStack(server, base, start_service)

    return make


#: A fault test may wait this long for the system to notice a fault (scaled).
NOTICE_S = t(15)
