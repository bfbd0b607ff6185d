"""The agent runner service: ``main(settings, stop)``.

Started by the CLI as ``shared.service.run("runner", settings.common, lambda stop:
main(settings, stop))`` (or ``python -m agent_runner``). Runs until ``stop`` is set, then
terminates its agents, removes its heartbeat and closes Redis.
"""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from agent_runner.runner import Runner
from agent_runner.settings import RunnerSettings
from shared.metrics_http import serve_metrics


async def main(settings: RunnerSettings, stop: asyncio.Event) -> None:
    redis = aioredis.Redis.from_url(settings.common.redis_url, health_check_interval=30)
    runner = Runner(settings, redis)
    try:
        with serve_metrics(
            runner.metrics.registry, settings.common.metrics_host, settings.metrics_port
        ):
            await runner.run(stop)
    finally:
        await redis.aclose()
