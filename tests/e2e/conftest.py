"""A real gateway (in-process) and real agent runner processes on the test's Redis."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.gateway.conftest import gateway, make_gateway  # noqa: F401 - fixtures
from tests.helpers import AGENTS_DIR, ServiceProcess, wait_for

MODELS_FILE = AGENTS_DIR / "models.toml"


@pytest.fixture
def runner_env(service_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    return {
        **service_env,
        "TEAMDASH_MODELS_FILE": str(MODELS_FILE),
        "TEAMDASH_WORKSPACE_ROOT": str(tmp_path / "workspaces"),
        "TEAMDASH_RUNNER_HEARTBEAT_S": "0.5",
        "TEAMDASH_RUNNER_TTL_S": "2",
        "TEAMDASH_TERMINATE_GRACE_S": "1",
        "TEAMDASH_STATS_INTERVAL_S": "0.3",
    }


@pytest.fixture
def start_runner(
    start_service: Callable[..., ServiceProcess], runner_env: dict[str, str], redis: Any, keys: Any
) -> Callable[..., Any]:
    """``await start_runner(runner_id, **env)`` → a runner process, once its heartbeat is seen."""

    async def start(runner_id: str = "r1", **overrides: str) -> ServiceProcess:
        proc = start_service("runner", {**runner_env, "TEAMDASH_RUNNER_ID": runner_id, **overrides})

        async def registered() -> bool:
            if not proc.alive():
                raise AssertionError(f"runner exited:\n{proc.log_text()}")
            return await redis.zscore(keys.runners, runner_id) is not None

        await wait_for(registered, timeout=20, what=f"runner {runner_id} heartbeat")
        return proc

    return start
