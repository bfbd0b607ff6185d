"""``agent:history`` and ``subscribe:agent`` from the start of the transcript, end to end:
real gateways (in-process and as processes), a real runner with the fixture agents, real
Redis, the SDK and the CLI. What a dashboard opening on an agent needs: everything it
printed, beyond the 1000-event replay window, page by page in both directions, then live
with no gap and no duplicate, from any gateway, for those allowed to see it."""

from __future__ import annotations

import re

import pytest
import redis.asyncio as aioredis

from shared.client import ClientError, DashboardClient, DashboardEvent
from shared.errors import ErrorCode
from shared.keys import Keys, agent_topic
from shared.protocol import AgentOutputMessage, AgentStatusMessage, StreamPosition
from tests.client.conftest import Stack
from tests.client.helpers import run_cli
from tests.client.test_agents import is_status, until
from tests.gateway.conftest import token, ws_url
from tests.helpers import free_port, port_open, wait_for
from tests.wsclient import WSClient

ALICE = token("alice", ("operator",))


def lines(events: list[DashboardEvent], stream: str = "stdout") -> list[str]:
    text = "".join(
        e.payload.data
        for e in events
        if isinstance(e, AgentOutputMessage) and e.payload.stream == stream
    )
    return text.splitlines()


def offsets(events: list[DashboardEvent]) -> list[int]:
    return [e.metadata.offset for e in events if e.metadata and e.metadata.offset is not None]


async def ended_agent(c: DashboardClient, model: str, name: str = "h") -> str:
    """Create an agent and wait until it ended by itself."""
    created = await c.create_agent(name, model, f"w-{name}")
    sub = await c.subscribe_agent(created.agent_id, ["status"])
    await until(sub, is_status("stopped"), timeout=60)
    await c.unsubscribe(sub.id)
    return created.agent_id


async def test_history_spans_the_replay_window_both_ways_with_filters(gateway, runner) -> None:
    async with DashboardClient(ws_url(gateway), ALICE) as c:
        agent_id = await ended_agent(c, "chatty")  # 4,000 lines + 40 on stderr
        events: list[DashboardEvent] = []
        pages = 0
        async for page in c.history(agent_id, page_size=1000):
            events += page.events
            pages += 1
            assert page.missed == 0
        assert pages >= 5
        assert lines(events) == [f"line {i}" for i in range(1, 4001)]
        assert lines(events, "stderr") == [f"err {i}" for i in range(100, 4001, 100)]
        assert offsets(events) == list(range(1, len(events) + 1))
        assert isinstance(events[-1], AgentStatusMessage)
        assert events[-1].payload.status == "stopped"
        assert page.next is None and page.position.offset == len(events)

        # Scrolling back from the newest: pages of 700, each before the previous one.
        back: list[DashboardEvent] = []
        before: int | None = page.position.offset + 1
        while before is not None:
            older = await c.agent_history(agent_id, before=before, limit=700)
            back = older.events + back
            before = older.prev
        assert offsets(back) == offsets(events)

        # The first 1000 events, stderr only (stderr is a pipe of its own: how its lines
        # interleave with stdout's varies).
        errs = await c.agent_history(agent_id, filters=["stderr"], limit=1000)
        got = lines(errs.events, "stderr")
        assert 5 <= len(got) and got == [f"err {i}" for i in range(100, 4001, 100)][: len(got)]
        assert all(isinstance(e, AgentOutputMessage) for e in errs.events)
        assert errs.next is not None  # pages advance over what the filter left out

        with pytest.raises(ClientError) as e:
            await c.agent_history("no-such-agent")
        assert e.value.code == ErrorCode.AGENT_NOT_FOUND

        # The same transcript by subscribing from its start: five pages on the raw wire,
        # each event exactly once.
        raw = await WSClient.authed(ws_url(gateway), ALICE)
        try:
            ack = await raw.request(
                "subscribe:agent", {"agentId": agent_id, "since": {"offset": 0}}
            )
            assert ack["success"] and ack["result"]["missed"] == 0
            wire = [await raw.recv(timeout=15) for _ in range(len(events))]
        finally:
            await raw.close()
        assert [m["metadata"]["offset"] for m in wire] == offsets(events)


async def test_subscribe_from_the_start_while_the_agent_prints_fast(gateway, runner) -> None:
    """A second client subscribes from the start of a ticker's transcript after 1,500
    lines: the transcript a page at a time, then live, every event once and in order on
    the wire (a raw client: nothing deduplicated)."""
    url = ws_url(gateway)
    async with DashboardClient(url, ALICE) as owner:
        created = await owner.create_agent("ticker", "ticker", "wt")
        watch = await owner.subscribe_agent(created.agent_id, ["stdout"])
        await until(watch, lambda e: "tick 1500" in lines([e]))
        late = await WSClient.authed(url, token("root", ("admin",)))
        try:
            ack = await late.request(
                "subscribe:agent", {"agentId": created.agent_id, "since": {"offset": 0}}
            )
            assert ack["success"] and ack["result"]["missed"] == 0, ack
            wire: list[dict[str, object]] = []
            while not (
                wire
                and wire[-1]["type"] == "agent:status"
                and wire[-1]["payload"]["status"] == "stopped"  # type: ignore[index]
            ):
                wire.append(await late.recv(timeout=30))
        finally:
            await late.close()
    events = [m for m in wire if m["type"] != "ack"]
    assert [m["metadata"]["offset"] for m in events] == list(range(1, len(events) + 1))  # type: ignore[index]
    ticks = [
        m["payload"]["data"]  # type: ignore[index]
        for m in events
        if m["type"] == "agent:output"
    ]
    assert "".join(ticks).splitlines() == [f"tick {i}" for i in range(1, 3001)]  # type: ignore[arg-type]


async def test_permissions_and_an_ended_agent_beyond_the_registry_and_the_retention(
    gateway, runner, redis: aioredis.Redis, keys: Keys
) -> None:
    url = ws_url(gateway)
    async with (
        DashboardClient(url, ALICE) as alice,
        DashboardClient(url, token("bob", ("operator",))) as bob,
        DashboardClient(url, token("vic", ("viewer",))) as viewer,
    ):
        agent_id = await ended_agent(alice, "chatty")
        with pytest.raises(ClientError) as e:
            await bob.agent_history(agent_id)
        assert e.value.code == ErrorCode.INSUFFICIENT_PERMISSIONS
        with pytest.raises(ClientError) as e:
            await bob.subscribe_agent(agent_id, since=StreamPosition(offset=0))
        assert e.value.code == ErrorCode.INSUFFICIENT_PERMISSIONS
        seen = await viewer.agent_history(agent_id)
        assert seen.events and seen.events == (await alice.agent_history(agent_id)).events

        # The registry forgets the ended agent (its history TTL): the transcript, kept
        # longer, is still read, and still only by those its events say may see it.
        await redis.delete(keys.agent(agent_id))
        assert (await alice.agent_history(agent_id)).events == seen.events
        with pytest.raises(ClientError) as e:
            await bob.agent_history(agent_id)
        assert e.value.code == ErrorCode.INSUFFICIENT_PERMISSIONS

        # Its retention ends: the agent is gone.
        await redis.delete(keys.transcript(agent_topic(agent_id)))
        await redis.delete(keys.topic_stream(agent_topic(agent_id)))
        with pytest.raises(ClientError) as e:
            await alice.agent_history(agent_id)
        assert e.value.code == ErrorCode.AGENT_NOT_FOUND


async def test_a_gateway_killed_mid_paging_the_client_goes_on_from_next_elsewhere(
    stack: Stack, runner, start_service
) -> None:
    async with DashboardClient(stack.url, ALICE) as c:
        agent_id = await ended_agent(c, "chatty")
        first = await c.agent_history(agent_id, limit=1000)
        second = await c.agent_history(agent_id, after=first.next, limit=1000)
    assert stack.gateway is not None
    stack.gateway.kill()
    # Another gateway (and no runner: history is Redis's, not the runner's).
    runner.stop()
    port = free_port()
    start_service("gateway", {**stack.env, "TEAMDASH_GATEWAY_PORT": str(port)})
    await wait_for(lambda: port_open(port), timeout=15, what="the second gateway")
    events = first.events + second.events
    async with DashboardClient(f"ws://127.0.0.1:{port}/ws", ALICE) as c:
        async for page in c.history(agent_id, after=second.next):
            events += page.events
    assert lines(events) == [f"line {i}" for i in range(1, 4001)]
    assert offsets(events) == list(range(1, len(events) + 1))


async def test_cli_agent_logs_and_follow(stack: Stack, runner) -> None:
    async with DashboardClient(stack.url, token("dev", ("admin",))) as c:
        done = await ended_agent(c, "chatty")
        slow = await c.create_agent("slow", "ticker-slow", "ws")  # 400 ticks over 8 s
        sub = await c.subscribe_agent(slow.agent_id, ["stdout"])
        await until(sub, lambda e: "tick 20" in lines([e]))
    rc, out, err = await run_cli(stack.cli_env, "agent", "logs", done, "--page-size", "700")
    assert rc == 0, err
    assert out.splitlines() == [f"line {i}" for i in range(1, 4001)]
    assert "stopped" in err
    # --follow: what it printed so far, then live until it ends, every tick once.
    rc, out, err = await run_cli(
        stack.cli_env, "agent", "logs", slow.agent_id, "--follow", timeout=60
    )
    assert rc == 0, err
    assert out.splitlines() == [f"tick {i}" for i in range(1, 401)]
    assert re.search(r"stopped", err)
