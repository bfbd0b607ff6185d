"""compose.yaml gives every runner replica its own id: ``TEAMDASH_RUNNER_ID`` holds
``{hostname}``, which ``teamdash runner`` (and its health check) replace with the host name,
a container's own under Docker. The file is checked, and a real runner process started
with that value heartbeats under the expanded id."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis

from shared.keys import Keys
from tests.deploy.conftest import compose
from tests.deploy.conftest import service_env as compose_env
from tests.helpers import ROOT, t, wait_for


def test_compose_pins_no_runner_id() -> None:
    runner = compose_env(compose()["services"]["agent-runner"])
    assert runner["TEAMDASH_RUNNER_ID"] == "runner-{hostname}"


async def test_the_hostname_placeholder_gives_the_runner_its_hosts_id(
    service_env: dict[str, str],
    start_service: Callable[..., Any],
    redis: aioredis.Redis,
    keys: Keys,
    tmp_path: Any,
) -> None:
    env = {
        **service_env,
        "TEAMDASH_RUNNER_ID": "runner-{hostname}",
        "TEAMDASH_WORKSPACE_ROOT": str(tmp_path / "workspaces"),
        "TEAMDASH_RUNNER_HEARTBEAT_S": "0.3",
    }
    expected = f"runner-{socket.gethostname().split('.')[0]}"
    start_service("runner", env)
    await wait_for(lambda: redis.exists(keys.runner(expected)), what=f"a heartbeat of {expected}")
    health = subprocess.run(
        [sys.executable, "-m", "shared.cli", "health", "runner"],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=t(30),
    )
    assert health.returncode == 0, health.stderr
    assert health.stdout.strip() == f"ok: runner heartbeat fresh ({expected})"
