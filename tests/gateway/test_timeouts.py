"""Timeouts that never swallow a cancellation.

On Python 3.11 ``asyncio.wait_for`` returns the inner result when the waiting task is
cancelled in the same loop step as that result arrives: the cancellation is lost, and an
owner that cancels and awaits the task (a connection's or the gateway's close) waits for
work that goes on. The gateway and the SDK use anyio's cancel scopes instead; these tests
land the cancellation exactly with the result and check that it wins."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.runners import RunnerClient
from shared.client import DashboardClient, Subscription
from shared.protocol import AgentRef
from shared.runner_protocol import RunnerReply
from shared.tokens import Identity
from tests.helpers import t


class SentBarrier:
    """The Redis client, with an event set when an XADD has returned to its caller."""

    def __init__(self, redis: Any) -> None:
        self._redis = redis
        self.sent = asyncio.Event()

    async def xadd(self, *args: Any, **kwargs: Any) -> Any:
        result = await self._redis.xadd(*args, **kwargs)
        self.sent.set()
        return result


async def test_a_request_cancelled_as_its_reply_arrives_is_cancelled(redis, keys):
    barrier = SentBarrier(redis)
    runners = RunnerClient(
        barrier,  # type: ignore[arg-type]
        keys,
        "gw-1",
        reply_timeout_s=30,
        runner_ttl_s=5,
        commands_per_second=10,
    )
    task = asyncio.create_task(
        runners.request(
            "pause",
            request_id="m-1",
            identity=Identity("alice", frozenset({"operator"}), 0),
            agent_id="a-1",
            payload=AgentRef(agentId="a-1"),
            runner_id="r-1",
        )
    )
    # The request is on the runner's stream and the task, which set the event, went on
    # to wait for the reply without yielding in between: it is waiting now.
    async with asyncio.timeout(t(5)):
        await barrier.sent.wait()
    reply = RunnerReply(requestId="m-1", success=True, result={"agentId": "a-1"})
    runners.on_reply(reply.model_dump_json().encode())  # the reply resolves the wait...
    task.cancel()  # ...and the cancellation lands in the same step
    with pytest.raises(asyncio.CancelledError):
        await task
    assert runners.pending_count == 0


async def test_an_sdk_wait_cancelled_as_its_event_arrives_is_cancelled():
    client = DashboardClient("ws://127.0.0.1:9/ws", "token")
    sub = Subscription(
        client,
        subscription_id="s-1",
        kind="metrics",
        topic="metrics",
        agent_id=None,
        filters=(),
        queue_size=10,
    )
    task = asyncio.create_task(sub.next(timeout=30))
    await asyncio.sleep(0)  # the task waits on the queue
    sub._queue.put(object())  # type: ignore[arg-type]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
