"""Timeouts in shared/ that never swallow a cancellation (see tests/gateway/test_timeouts.py).

On Python 3.11 ``asyncio.wait_for`` returns the inner result when the waiting task is
cancelled in the same loop step as that result arrives. These tests land the cancellation
exactly with the result and check that it wins."""

from __future__ import annotations

import asyncio
import logging

import pytest
import redis.asyncio as aioredis

from shared.bus import PubSubHub
from shared.keys import Keys
from shared.redis_conn import wait_for_redis
from tests.helpers import free_port, t, wait_for


class Flag(logging.Handler):
    """Sets an event when something is logged."""

    def __init__(self) -> None:
        super().__init__()
        self.logged = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.logged.set()


async def test_waiting_for_redis_cancelled_as_stop_is_set_is_cancelled() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nobody listens: every PING fails
    redis = aioredis.Redis.from_url(url)
    logger = logging.getLogger("test.wait-for-redis")
    flag = Flag()
    logger.addHandler(flag)
    stop = asyncio.Event()
    task = asyncio.create_task(wait_for_redis(redis, url, stop=stop, logger=logger))
    try:
        # The warning is logged just before the wait for ``stop``, with no await between.
        async with asyncio.timeout(t(10)):
            await flag.logged.wait()
        stop.set()  # the wait ends...
        task.cancel()  # ...and the cancellation lands in the same step
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        logger.removeHandler(flag)
        await redis.aclose()


async def test_a_subscribe_cancelled_as_its_confirmation_arrives_is_cancelled(
    redis_url: str, keys: Keys
) -> None:
    hub = PubSubHub(redis_url, lambda messages: None)
    await hub.start()
    assert hub._protocol is not None and hub._protocol.transport is not None
    transport = hub._protocol.transport
    channel = keys.topic_channel("raced")
    try:
        transport.pause_reading()  # Redis's own confirmation waits in the socket meanwhile
        task = asyncio.create_task(hub.subscribe(channel))
        # Registered, sent and waited for without a yield in between: it is waiting now.
        await wait_for(lambda: channel in hub._confirmations, what="the subscribe to wait")
        hub._confirm(channel)  # the confirmation resolves the wait...
        task.cancel()  # ...and the cancellation lands in the same step
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        transport.resume_reading()
        await hub.close()
