"""The agent runner service: ``main(settings, stop)``.

Started by the CLI as ``shared.service.run("runner", settings.common, lambda stop:
main(settings, stop))`` (or ``python -m agent_runner``). Runs until ``stop`` is set, then
terminates its agents, removes its heartbeat and closes Redis.
"""

from __future__ import annotations

import asyncio

from agent_runner.runner import Runner
from agent_runner.settings import RunnerSettings
from shared.metrics_http import serve_metrics, watch_tasks
from shared.redis_conn import redis_client, wait_for_redis


async def main(settings: RunnerSettings, stop: asyncio.Event) -> None:
    redis = redis_client(settings.common.redis_url)
    runner = Runner(settings, redis)
    try:
        # Started before Redis (compose, a reboot): wait for it instead of dying.
        if not await wait_for_redis(redis, settings.common.redis_url, stop=stop):
            return
        watch_tasks(runner.metrics.registry, asyncio.get_running_loop())
        with serve_metrics(
            runner.metrics.registry, settings.common.metrics_host, settings.metrics_port
        ):
            await runner.run(stop)
    finally:
        await redis.aclose()
