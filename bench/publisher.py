"""The fan-out source of the real path: a process publishing ``agent:output`` events to one
agent's topic with :meth:`shared.bus.EventBus.publish_many`, built exactly as the agent
runner builds them (:func:`agent_runner.events.output`: same envelope, same tags, same
framing on the channel). Everything the gateway sees is what a chatty agent would cause.

Run by the orchestrator as ``python -m bench.publisher`` with ``REDIS_URL`` and
``TEAMDASH_REDIS_PREFIX`` set; commands on stdin (see :func:`bench.source.command_loop`):

``{"op": "publish", "agent_id", "owner", "step", "count", "rate", "batch", "size"}``
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import redis.asyncio as aioredis

from agent_runner import events
from bench.source import command_loop, event_data, new_loop, paced
from shared.bus import EventBus
from shared.keys import Keys
from shared.protocol import now_ms


async def main() -> None:
    redis = aioredis.Redis.from_url(os.environ["REDIS_URL"])
    bus = EventBus(redis, Keys(os.environ.get("TEAMDASH_REDIS_PREFIX", "td")))

    async def publish(cmd: dict[str, Any]) -> dict[str, Any]:
        agent_id, owner, size = cmd["agent_id"], cmd["owner"], int(cmd["size"])

        async def emit(step: int, first: int, n: int) -> None:
            items = []
            for seq in range(first, first + n):
                items.append(
                    events.output(
                        agent_id, owner, "stdout", event_data(step, seq, size), seq, now_ms()
                    )
                )
            await bus.publish_many(items)

        return await paced(
            emit,
            step=int(cmd["step"]),
            count=int(cmd["count"]),
            rate=float(cmd["rate"]),
            batch=int(cmd["batch"]),
        )

    try:
        await command_loop({"publish": publish})
    finally:
        await redis.aclose()


if __name__ == "__main__":
    with asyncio.Runner(loop_factory=new_loop) as runner:
        runner.run(main())
