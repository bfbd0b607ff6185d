"""The per-agent command rate of ``gateway/runners.py`` (shared by every gateway through one
counter per agent and second), on fakeredis: a fast unit test of a Redis-facing helper with
the clock given."""

from __future__ import annotations

import fakeredis
import pytest

from gateway.runners import RunnerClient
from shared.errors import ErrorCode, TeamdashError
from shared.keys import Keys


async def test_commands_per_agent_are_counted_per_second_across_gateways():
    redis = fakeredis.FakeAsyncRedis()
    keys = Keys("t")

    def gateway(gid: str) -> RunnerClient:
        return RunnerClient(
            redis, keys, gid, reply_timeout_s=1, runner_ttl_s=1, commands_per_second=3
        )

    gw1, gw2 = gateway("gw-1"), gateway("gw-2")
    now = 1_700_000_000.2
    await gw1.count_command("a-1", now)
    await gw2.count_command("a-1", now + 0.1)
    await gw1.count_command("a-1", now + 0.5)
    with pytest.raises(TeamdashError) as e:
        await gw2.count_command("a-1", now + 0.7)  # the fourth in the same second
    assert e.value.code is ErrorCode.RATE_LIMIT_EXCEEDED
    await gw2.count_command("a-2", now + 0.7)  # another agent has its own budget
    await gw2.count_command("a-1", now + 1.0)  # the next second
    assert await redis.ttl(keys.agent_command_rate("a-1", int(now))) == 2
    await redis.aclose()
