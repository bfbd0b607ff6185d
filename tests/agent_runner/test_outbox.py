"""The outbox and the runner's replies across connection failures, on a real Redis behind
a TCP proxy that cuts the connection at a chosen moment: a publish whose reply was lost
after Redis ran it is not sent again (no duplicate), one that never reached Redis is
(nothing lost), in order; a reply to a gateway is sent again on a new connection."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from urllib.parse import urlparse

import pytest
import redis.asyncio as aioredis

from agent_runner import events
from agent_runner.events import Item
from agent_runner.outbox import Outbox
from agent_runner.runner import Runner
from agent_runner.settings import RunnerSettings
from shared.bus import EventBus
from shared.keys import AGENTS_TOPIC, Keys, agent_topic
from shared.protocol import now_ms
from shared.runner_protocol import RunnerReply, RunnerRequest
from shared.settings import Env
from tests.helpers import t


class CuttingProxy:
    """A TCP proxy to Redis. ``cut = "reply"``: the next reply Redis sends is swallowed
    and both connections are closed (the command ran, the client never learns it);
    ``cut = "request"``: the next request is not forwarded (the command never ran)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.cut: str | None = None
        self.cuts = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for w in self._writers:
            w.close()
        await self._server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        self._writers += [writer, up_writer]

        def hang_up() -> None:
            self.cut = None
            self.cuts += 1
            writer.close()
            up_writer.close()

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, kind: str) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    if self.cut == kind:
                        hang_up()
                        return
                    dst.write(data)
                    await dst.drain()
            dst.close()

        with contextlib.suppress(asyncio.CancelledError):  # the proxy closed under it
            await asyncio.gather(
                pump(reader, up_writer, "request"), pump(up_reader, writer, "reply")
            )


@pytest.fixture
async def proxied(redis_url: str) -> AsyncIterator[tuple[CuttingProxy, aioredis.Redis]]:
    url = urlparse(redis_url)
    proxy = CuttingProxy(url.hostname or "127.0.0.1", url.port or 6379)
    port = await proxy.start()
    # from_url, as the services connect: no command retries inside redis-py (a retried
    # EVALSHA whose first reply was lost would publish twice, unseen by the outbox).
    client = aioredis.Redis.from_url(f"redis://127.0.0.1:{port}")
    yield proxy, client
    await client.aclose()
    await proxy.close()


def batch(agent_id: str, first: int, n: int) -> list[Item]:
    """``n`` output events of one agent, then its status (on its topic and ``agents``)."""
    items = events.outputs(
        agent_id, "alice", "stdout", [f"line {i}\n" for i in range(first, first + n)], first, 1
    )
    return items + events.status(agent_id, "alice", "running", None, pid=first)


async def stored(redis: aioredis.Redis, keys: Keys, topic: str) -> list[bytes]:
    entries = await redis.xrange(keys.topic_stream(topic))
    return [fields[b"d"] for _, fields in entries]


@pytest.mark.parametrize("cut", ["reply", "request"])
async def test_a_failed_publish_is_sent_again_only_if_it_did_not_run(
    proxied: tuple[CuttingProxy, aioredis.Redis], redis: aioredis.Redis, keys: Keys, cut: str
) -> None:
    proxy, client = proxied
    failures: list[BaseException] = []
    outbox = Outbox(EventBus(client, keys), on_failure=failures.append)
    task = asyncio.create_task(outbox.run())
    try:
        outbox.put_many(batch("a1", 1, 3))
        await asyncio.wait_for(outbox.drain(), t(5))
        proxy.cut = cut
        outbox.put_many(batch("a1", 4, 3))
        await asyncio.wait_for(outbox.drain(), t(10))
        outbox.put_many(batch("a1", 7, 1))  # and the outbox goes on normally
        await asyncio.wait_for(outbox.drain(), t(5))
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert proxy.cuts == 1 and len(failures) == 1  # the fault did happen
    # 5 events in the failed batch: 3 outputs + the status on agent:a1, the status on agents.
    assert outbox.found_published == (5 if cut == "reply" else 0)
    data = await stored(redis, keys, agent_topic("a1"))
    texts = [d.split(b'"data":"')[1].split(b'"')[0] for d in data if b"agent:output" in d]
    assert texts == [f"line {i}\\n".encode() for i in range(1, 8)]  # once each, in order
    assert [b'"offset":%d,' % i in d for i, d in enumerate(data, 1)] == [True] * len(data)
    assert len(await stored(redis, keys, AGENTS_TOPIC)) == 3


async def test_found_published_counts_only_what_reached_the_stream(
    redis: aioredis.Redis, keys: Keys
) -> None:
    """:meth:`Outbox._unpublished` itself: of a batch, the calls whose last event is in its
    topic's stream are dropped, the others kept, in order."""
    bus = EventBus(redis, keys)
    outbox = Outbox(bus)
    sent, unsent = batch("b1", 1, 2), batch("b2", 1, 2)
    await bus.publish_many(sent)
    left = await outbox._unpublished([*sent, *unsent])
    assert left == unsent
    assert outbox.found_published == len(sent)


async def test_interleaved_agents_the_calls_that_ran_are_a_prefix(
    redis: aioredis.Redis, keys: Keys
) -> None:
    """Agents printing at once give batches of many short calls on alternating topics; the
    calls that reached Redis are a prefix of the pipeline, found with one tail per topic."""
    bus = EventBus(redis, keys)
    outbox = Outbox(bus)
    interleaved = [item for i in range(1, 41) for a in ("c1", "c2") for item in batch(a, i, 1)]
    ran = 36  # items: 12 whole groups of (output + status on agent:X, status on agents)
    await bus.publish_many(interleaved[:ran])
    left = await outbox._unpublished(interleaved)
    assert left == interleaved[ran:]
    assert outbox.found_published == ran


async def test_a_reply_is_retried_on_a_new_connection_until_its_deadline(
    proxied: tuple[CuttingProxy, aioredis.Redis],
    redis: aioredis.Redis,
    keys: Keys,
    runner_env: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The connection drops under a reply (Redis restarted, a blip): the reply is sent again
    on a new connection, so the gateway gets it; past its deadline it is only logged."""
    proxy, client = proxied
    runner = Runner(RunnerSettings.from_env(Env(runner_env)), client)
    pubsub = redis.pubsub()
    await pubsub.subscribe(keys.reply_channel("gw-test"))
    await client.ping()

    def request(request_id: str, deadline_ms: int) -> RunnerRequest:
        return RunnerRequest(
            kind="command",
            requestId=request_id,
            gatewayId="gw-test",
            userId="alice",
            roles=["operator"],
            agentId="a1",
            payload={"agentId": "a1", "command": "x"},
            deadlineMs=deadline_ms,
        )

    async def next_reply() -> RunnerReply:
        deadline = time.monotonic() + t(5)
        while time.monotonic() < deadline:
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
            if msg is not None:
                return RunnerReply.model_validate_json(msg["data"])
        raise AssertionError("no reply")

    try:
        proxy.cut = "request"
        await runner.reply(request("req-1", now_ms() + 5000))
        assert proxy.cuts == 1
        assert (await next_reply()).requestId == "req-1"
        proxy.cut = "request"
        await runner.reply(request("req-2", now_ms() - 1))  # the gateway no longer waits
        assert proxy.cuts == 2
        assert "req-2 not sent (past its deadline" in caplog.text
        await runner.reply(request("req-3", now_ms() + 5000))  # marker: req-2 never came
        assert (await next_reply()).requestId == "req-3"
        assert runner.health.ok_for(time.monotonic()) < 60  # the failures were recorded
    finally:
        await pubsub.aclose()
