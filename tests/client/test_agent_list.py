"""``agent:list`` and ``subscribe`` from a position, end to end: a real gateway, a real agent
runner process with the fixture agents, real Redis, the SDK and the CLI. What a dashboard
opening late needs: which agents exist (live, and ended within the history TTL), their
limits and usage, who may see which, and the ``agents`` topic's position to follow the
changes from without a gap or a duplicate, even while agents start and stop meanwhile."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from shared.client import ClientError, DashboardClient, DashboardEvent
from shared.errors import ErrorCode
from shared.keys import Keys
from shared.protocol import AgentCreatedMessage, AgentInfo, AgentStatusMessage, StreamPosition
from tests.client.conftest import Stack
from tests.client.helpers import run_cli
from tests.client.test_agents import is_status, until
from tests.gateway.conftest import token, ws_url
from tests.helpers import wait_for


async def all_agents(c: DashboardClient, **filters: object) -> list[AgentInfo]:
    page = await c.list_agents(**filters)  # type: ignore[arg-type]
    agents = list(page.agents)
    while page.next is not None:
        page = await c.list_agents(after=page.next, **filters)  # type: ignore[arg-type]
        agents += page.agents
    return agents


async def test_live_and_ended_agents_with_limits_usage_filters_and_pages(
    gateway, runner, redis: aioredis.Redis, keys: Keys
) -> None:
    async with DashboardClient(ws_url(gateway), token("alice", ("operator",))) as c:
        first = await c.create_agent("one", "echo", "ws1", memory_mb=256, cpu=1)
        second = await c.create_agent("two", "echo", "ws2")
        third = await c.create_agent("three", "echo", "ws3")
        sub = await c.subscribe_agent(third.agent_id)
        await c.terminate(third.agent_id)
        await until(sub, is_status("stopped"))

        live = await c.list_agents()
        assert [a.agentId for a in live.agents] == [first.agent_id, second.agent_id]
        assert live.total == 2 and live.next is None
        one = live.agents[0]
        assert (one.name, one.model, one.owner, one.status) == ("one", "echo", "alice", "running")
        assert one.pid == first.pid and one.runner and one.startTime and one.uptime is not None
        assert one.limits.memory == 256 and one.limits.cpu == 1
        assert live.agents[1].limits.memory is None  # unlimited
        assert one.lastActivity is not None and one.lastActivity >= one.startTime

        async def sampled() -> bool:
            page = await c.list_agents()
            return all(a.usage is not None and a.usage.threads >= 1 for a in page.agents)

        await wait_for(sampled, timeout=15, what="the runner's first usage sample")

        ended = await c.list_agents(include_ended=True)
        assert [a.agentId for a in ended.agents] == [a.agent_id for a in (first, second, third)]
        gone = ended.agents[2]
        assert gone.status == "stopped" and gone.reason == "terminated" and gone.endTime
        assert gone.usage is None and gone.uptime == gone.endTime - (gone.startTime or 0)
        only = await c.list_agents(status=["stopped"])
        assert [a.agentId for a in only.agents] == [third.agent_id]

        page = await c.list_agents(include_ended=True, limit=2)
        assert len(page.agents) == 2 and page.next is not None and page.total == 3
        rest = await c.list_agents(include_ended=True, limit=2, after=page.next)
        assert [a.agentId for a in rest.agents] == [third.agent_id] and rest.next is None

        # The history TTL runs out (shortened here): the ended agent leaves the list and
        # its index entry is dropped.
        await redis.pexpire(keys.agent(third.agent_id), 1)
        await wait_for(lambda: _gone(redis, keys.agent(third.agent_id)), timeout=5, what="expiry")
        after = await c.list_agents(include_ended=True)
        assert third.agent_id not in {a.agentId for a in after.agents}
        assert await redis.zscore(keys.agent_index, third.agent_id) is None

        with pytest.raises(ClientError) as e:
            await c.list_agents(after="not-a-cursor")
        assert e.value.code == ErrorCode.INVALID_MESSAGE


async def _gone(redis: aioredis.Redis, key: str) -> bool:
    return not await redis.exists(key)


async def test_operators_list_their_own_agents_viewers_every_agent_but_control_none(
    gateway, runner
) -> None:
    url = ws_url(gateway)
    async with (
        DashboardClient(url, token("alice", ("operator",))) as alice,
        DashboardClient(url, token("bob", ("operator",))) as bob,
        DashboardClient(url, token("vic", ("viewer",))) as viewer,
        DashboardClient(url, token("root", ("admin",))) as admin,
    ):
        mine = await alice.create_agent("alices", "echo", "wa")
        bobs = await bob.create_agent("bobs", "echo", "wb")
        assert [a.agentId for a in await all_agents(alice)] == [mine.agent_id]
        assert [a.agentId for a in await all_agents(bob)] == [bobs.agent_id]
        with pytest.raises(ClientError) as e:
            await alice.list_agents(owner="bob")
        assert e.value.code == ErrorCode.INSUFFICIENT_PERMISSIONS
        everyone = {mine.agent_id, bobs.agent_id}
        assert {a.agentId for a in await all_agents(viewer)} == everyone
        assert {a.agentId for a in await all_agents(admin)} == everyone
        assert [a.agentId for a in await all_agents(viewer, owner="bob")] == [bobs.agent_id]
        with pytest.raises(ClientError) as e:
            await viewer.terminate(bobs.agent_id)
        assert e.value.code == ErrorCode.INSUFFICIENT_PERMISSIONS


async def test_a_list_then_a_subscription_from_its_position_misses_nothing_while_agents_churn(
    gateway, runner
) -> None:
    """Agents start and stop while another client lists them and subscribes from the list's
    position: the list plus what the subscription delivers is every agent's every change,
    each event once, the offsets contiguous from the position on."""
    url = ws_url(gateway)
    churned: list[str] = []
    async with (
        DashboardClient(url, token("alice", ("operator",))) as worker,
        DashboardClient(url, token("root", ("admin",))) as watcher,
    ):

        async def churn() -> None:
            for i in range(6):
                created = await worker.create_agent(f"c{i}", "echo", f"w{i}")
                churned.append(created.agent_id)
                if i % 2 == 0:
                    await worker.terminate(created.agent_id)

        views: list[tuple[list[AgentInfo], StreamPosition, list[DashboardEvent]]] = []
        task = asyncio.create_task(churn())
        try:
            subs = []
            for _ in range(3):
                await asyncio.sleep(0)  # let the churn move between the lists
                page = await watcher.list_agents(include_ended=True, limit=1000)
                sub = await watcher.subscribe_agent(since=page.position)
                assert sub.missed == 0
                subs.append((page, sub))
                await wait_for(
                    lambda: task.done() or len(churned) >= 2 * len(subs),
                    timeout=30,
                    what="the churn to go on",
                )
            await task
        finally:
            task.cancel()
        # The marker: the last agent's end, published after every other change.
        await worker.terminate(churned[-1])
        for page, sub in subs:
            events = await until(
                sub,
                lambda e: (
                    isinstance(e, AgentStatusMessage)
                    and e.payload.agentId == churned[-1]
                    and e.payload.status == "stopped"
                ),
                timeout=30,
            )
            views.append((list(page.agents), page.position, events))
        final = {a.agentId: a.status for a in await all_agents(watcher, include_ended=True)}
    assert [final[a] for a in churned] == ["stopped", "running"] * 2 + ["stopped"] * 2

    for agents, position, events in views:
        offsets = [e.metadata.offset for e in events if e.metadata is not None]
        assert offsets == list(range(position.offset + 1, position.offset + 1 + len(offsets)))
        assert all(e.metadata is not None and e.metadata.epoch for e in events)
        listed = {a.agentId for a in agents}
        created_later = {e.payload.agentId for e in events if isinstance(e, AgentCreatedMessage)}
        assert listed | created_later >= set(churned), "an agent neither listed nor announced"
        # An agent created after the position is announced by agent:created, never only
        # by a later status.
        for agent_id in set(churned) - listed:
            assert agent_id in created_later
        # Replaying the events over the list gives every agent's real final status.
        status = {a.agentId: a.status for a in agents}
        for e in events:
            if isinstance(e, AgentStatusMessage):
                status[e.payload.agentId] = e.payload.status
        assert {a: status[a] for a in churned} == {a: final[a] for a in churned}


async def test_cli_agents_list(stack: Stack, runner) -> None:
    async with DashboardClient(stack.url, token("dev", ("admin",))) as c:
        created = await c.create_agent("listed", "echo", "wl")
        gone = await c.create_agent("gone", "echo", "wg")
        sub = await c.subscribe_agent(gone.agent_id)
        await c.terminate(gone.agent_id)
        await until(sub, is_status("stopped"))
    rc, out, err = await run_cli(stack.cli_env, "agents", "list", "--page-size", "1")
    assert rc == 0, err
    lines = out.splitlines()
    assert len(lines) == 1 and created.agent_id in lines[0] and "running" in lines[0]
    assert "1 agents" in err
    rc, out, err = await run_cli(stack.cli_env, "agents", "list", "--all", "--json")
    assert rc == 0, err
    rows = [AgentInfo.model_validate_json(line) for line in out.splitlines()]
    assert [(r.agentId, r.status) for r in rows] == [
        (created.agent_id, "running"),
        (gone.agent_id, "stopped"),
    ]
