"""Agents end to end: WebSocket client → gateway → Redis → agent runner → agent process
→ back, with real processes everywhere (fixture agents in tests/agents/)."""

from __future__ import annotations

import json
import os

import psutil

from shared.errors import ErrorCode
from tests.gateway.conftest import token, ws_url
from tests.helpers import wait_for
from tests.wsclient import WSClient

CREATE = {"name": "a", "model": "echo", "workspace": "ws"}


async def create(client: WSClient, **payload) -> tuple[str, str]:
    """Create an agent; returns (agentId, request id). Fails on a failed ack."""
    mid = await client.send("agent:create", {**CREATE, **payload})
    ack = await client.ack_for(mid, timeout=20)
    assert ack["success"], ack
    return ack["result"]["agentId"], mid


def of_agent(agent_id: str, type_: str, **payload):
    return lambda m: (
        m["type"] == type_
        and m["payload"].get("agentId") == agent_id
        and all(m["payload"].get(k) == v for k, v in payload.items())
    )


async def status(client: WSClient, agent_id: str, state: str, timeout: float = 10) -> dict:
    return await client.recv_where(
        of_agent(agent_id, "agent:status", status=state), timeout, f"status {state}"
    )


async def output_lines(
    client: WSClient, agent_id: str, until: str, timeout: float = 10
) -> list[dict]:
    got = []
    while True:
        msg = await client.recv_where(of_agent(agent_id, "agent:output"), timeout, "agent output")
        got.append(msg)
        if until in msg["payload"]["data"]:
            return got


def group_members(pgid: int) -> list[psutil.Process]:
    """Live (non-zombie) processes of a process group."""
    members = []
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                members.append(p)
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass
    return members


async def test_create_acks_after_start_then_created_and_running(gateway, start_runner):
    await start_runner()
    client = await WSClient.authed(ws_url(gateway), token("alice"))
    mid = await client.send(
        "agent:create", {**CREATE, "name": "first", "environment": {"GREETING": "hi"}}
    )
    first = await client.recv_where(
        lambda m: m["type"] in ("ack", "agent:created", "agent:status"), 20
    )
    assert first["type"] == "ack", "the ack comes before any agent event"
    ack = first["payload"]
    assert ack["success"] and ack["messageId"] == mid
    agent_id = ack["result"]["agentId"]
    pid = ack["result"]["pid"]
    assert psutil.pid_exists(pid)
    created = await client.recv_type("agent:created")
    assert created["payload"]["agentId"] == agent_id
    assert created["payload"]["name"] == "first" and created["payload"]["pid"] == pid
    assert created["payload"]["startTime"] > 0
    assert created["metadata"]["correlationId"] == mid
    starting = await status(client, agent_id, "starting")
    running = await status(client, agent_id, "running")
    assert starting["metadata"]["offset"] < running["metadata"]["offset"]
    assert running["payload"]["details"]["pid"] == pid
    await client.close()


async def test_command_output_and_sequence(gateway, start_runner):
    await start_runner()
    client = await WSClient.authed(ws_url(gateway), token())
    agent_id, _ = await create(client)
    await client.subscribe("agent", agentId=agent_id)
    for word in ("hello", "wörld ✓"):
        ack = await client.request("agent:command", {"agentId": agent_id, "command": word})
        assert ack["success"], ack
    got = await output_lines(client, agent_id, "wörld ✓")
    text = "".join(m["payload"]["data"] for m in got)
    assert "echo: hello" in text and "echo: wörld ✓" in text
    seqs = [m["payload"]["sequence"] for m in got]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert all(m["payload"]["stream"] == "stdout" for m in got)
    assert all(m["metadata"]["topic"] == f"agent:{agent_id}" for m in got)
    await client.close()


async def test_command_timeout_gives_agent_error_2004(gateway, start_runner):
    await start_runner()
    client = await WSClient.authed(ws_url(gateway), token())
    agent_id, _ = await create(client, model="slow")
    mid = await client.send("agent:command", {"agentId": agent_id, "command": "5", "timeout": 300})
    assert (await client.ack_for(mid))["success"]
    err = await client.recv_where(of_agent(agent_id, "agent:error"), 10, "timeout error")
    assert err["payload"]["error"]["code"] == "AGENT_COMMAND_TIMEOUT"
    assert err["payload"]["error"]["errorCode"] == ErrorCode.AGENT_COMMAND_TIMEOUT
    assert err["metadata"]["correlationId"] == mid
    await client.close()


async def test_pause_resume_terminate_reach_the_whole_group(gateway, start_runner):
    await start_runner()
    client = await WSClient.authed(ws_url(gateway), token())
    mid = await client.send("agent:create", {**CREATE, "model": "spawner"})
    ack = await client.ack_for(mid, timeout=20)
    agent_id, pgid = ack["result"]["agentId"], ack["result"]["pid"]
    await status(client, agent_id, "running")
    await wait_for(lambda: len(group_members(pgid)) >= 3, what="the agent's children")
    members = group_members(pgid)

    assert (await client.request("agent:pause", {"agentId": agent_id}))["success"]
    await status(client, agent_id, "paused")
    await wait_for(
        lambda: all(p.status() == psutil.STATUS_STOPPED for p in members),
        what="whole group stopped",
    )
    assert (await client.request("agent:resume", {"agentId": agent_id}))["success"]
    await status(client, agent_id, "running")
    await wait_for(
        lambda: all(p.status() != psutil.STATUS_STOPPED for p in members),
        what="whole group continued",
    )
    # A paused agent can be terminated; nothing of its group survives.
    assert (await client.request("agent:pause", {"agentId": agent_id}))["success"]
    await status(client, agent_id, "paused")
    ack = await client.request("agent:terminate", {"agentId": agent_id}, timeout=20)
    assert ack["success"], ack
    await status(client, agent_id, "stopping")
    await status(client, agent_id, "stopped")
    assert not group_members(pgid)
    await client.close()


async def test_force_terminate_kills_a_stubborn_agent_at_once(gateway, start_runner):
    await start_runner(TEAMDASH_TERMINATE_GRACE_S="30")
    client = await WSClient.authed(ws_url(gateway), token())
    mid = await client.send("agent:create", {**CREATE, "model": "stubborn"})
    ack = await client.ack_for(mid, timeout=20)
    agent_id, pgid = ack["result"]["agentId"], ack["result"]["pid"]
    await status(client, agent_id, "running")
    await wait_for(lambda: len(group_members(pgid)) >= 2, what="the agent's children")
    ack = await client.request("agent:terminate", {"agentId": agent_id, "force": True}, timeout=10)
    assert ack["success"], ack
    await status(client, agent_id, "stopped", timeout=5)
    assert not group_members(pgid)
    await client.close()


async def test_crash_is_reported_with_exit_code_error_and_alert(gateway, start_runner):
    await start_runner()
    client = await WSClient.authed(ws_url(gateway), token())
    await client.subscribe("logs", filters=["agent"])
    agent_id, _ = await create(client, model="crash")
    await client.request("agent:command", {"agentId": agent_id, "command": "crash"})
    crashed = await status(client, agent_id, "crashed")
    assert crashed["payload"]["details"]["exitCode"] == 3
    err = await client.recv_where(of_agent(agent_id, "agent:error"), 10, "crash error")
    assert err["payload"]["error"]["code"] == "AGENT_EXITED"
    alert = await client.recv_type("system:alert")
    assert alert["payload"]["category"] == "agent" and alert["payload"]["level"] in (
        "error",
        "critical",
    )
    assert agent_id in json.dumps(alert["payload"])
    # an ended agent cannot be commanded
    ack = await client.request("agent:command", {"agentId": agent_id, "command": "x"})
    assert ack["code"] == ErrorCode.AGENT_NOT_FOUND
    await client.close()


async def test_memory_limit_is_enforced_and_named_oom(gateway, start_runner):
    await start_runner()
    client = await WSClient.authed(ws_url(gateway), token())
    agent_id, _ = await create(client, model="hungry", resourceLimits={"memory": 64, "cpu": 1})
    crashed = await status(client, agent_id, "crashed", timeout=20)
    assert crashed["payload"]["details"]["reason"] == "oom"
    err = await client.recv_where(of_agent(agent_id, "agent:error"), 10, "oom error")
    assert "memory" in err["payload"]["error"]["message"].lower()
    await client.close()


async def test_chatty_agent_output_in_order_without_gaps_then_stopped(gateway, start_runner):
    await start_runner()
    client = await WSClient.authed(ws_url(gateway), token())
    mid = await client.send("agent:create", {**CREATE, "model": "chatty"})
    ack = await client.ack_for(mid, timeout=20)
    agent_id = ack["result"]["agentId"]
    # The creator's subscription replays from the agent's first event: nothing is missed,
    # even though the agent may have printed everything before this subscribe.
    await client.subscribe("agent", agentId=agent_id, filters=["stdout", "stderr", "status"])
    out: list[dict] = []
    while True:
        msg = await client.recv_where(
            lambda m: (
                m["type"] in ("agent:output", "agent:status")
                and m["payload"]["agentId"] == agent_id
            ),
            20,
            "chatty output",
        )
        if msg["type"] == "agent:status":
            if msg["payload"]["status"] == "stopped":
                assert msg["payload"]["details"].get("exitCode", 0) == 0
                break
            continue
        out.append(msg["payload"])
    seqs = [p["sequence"] for p in out]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    stdout = "".join(p["data"] for p in out if p["stream"] == "stdout").splitlines()
    assert stdout == [f"line {i}" for i in range(1, 4001)]
    stderr = "".join(p["data"] for p in out if p["stream"] == "stderr").splitlines()
    assert stderr == [f"err {i}" for i in range(100, 4001, 100)]
    await client.close()


async def test_spawn_failures_are_agent_spawn_failed_with_a_clear_message(gateway, start_runner):
    await start_runner()
    client = await WSClient.authed(ws_url(gateway), token())
    ack = await client.request("agent:create", {**CREATE, "model": "missing"}, timeout=20)
    assert ack["code"] == ErrorCode.AGENT_SPAWN_FAILED
    assert "teamdash-no-such-agent-program" in ack["error"]
    for workspace in ("../outside", "/etc", "a/../../b"):
        ack = await client.request("agent:create", {**CREATE, "workspace": workspace}, timeout=20)
        assert ack["code"] == ErrorCode.AGENT_SPAWN_FAILED, (workspace, ack)
        assert "workspace" in ack["error"]
    ack = await client.request("agent:create", {**CREATE, "model": "no-such-model"}, timeout=20)
    assert ack["code"] == ErrorCode.AGENT_SPAWN_FAILED and "echo" in ack["error"]
    ack = await client.request(
        "agent:create", {**CREATE, "environment": {"LD_PRELOAD": "/x.so"}}, timeout=20
    )
    assert not ack["success"] and "LD_PRELOAD" in ack["error"]
    await client.close()


async def test_agent_limits(gateway, start_runner):
    await start_runner(
        TEAMDASH_RUNNER_MAX_AGENTS="1", TEAMDASH_RUNNER_HEARTBEAT_S="10", TEAMDASH_RUNNER_TTL_S="30"
    )
    client = await WSClient.authed(ws_url(gateway), token())
    agent_id, _ = await create(client)
    # The runner announced its full capacity at once, not at its next (10 s) heartbeat.
    ack = await client.request("agent:create", CREATE, timeout=5)
    assert ack["code"] == ErrorCode.AGENT_LIMIT_EXCEEDED
    # A slot that frees up is announced at once too.
    assert (await client.request("agent:terminate", {"agentId": agent_id, "force": True}))[
        "success"
    ]
    await status(client, agent_id, "stopped")
    ack = await client.request("agent:create", CREATE, timeout=5)
    assert ack["success"], ack
    await client.close()


async def test_per_user_agent_limit(gateway, start_runner):
    await start_runner(TEAMDASH_MAX_AGENTS_PER_USER="1")
    alice = await WSClient.authed(ws_url(gateway), token("alice"))
    bob = await WSClient.authed(ws_url(gateway), token("bob"))
    await create(alice)
    ack = await alice.request("agent:create", CREATE, timeout=20)
    assert ack["code"] == ErrorCode.AGENT_LIMIT_EXCEEDED
    await create(bob)  # other users are not affected
    await alice.close()
    await bob.close()


async def test_unknown_agent_and_other_users_agents(gateway, start_runner):
    await start_runner()
    alice = await WSClient.authed(ws_url(gateway), token("alice"))
    agent_id, _ = await create(alice)
    for kind in ("agent:pause", "agent:resume", "agent:terminate"):
        ack = await alice.request(kind, {"agentId": "no-such-agent"})
        assert ack["code"] == ErrorCode.AGENT_NOT_FOUND, kind
    mallory = await WSClient.authed(ws_url(gateway), token("mallory"))
    ack = await mallory.request("agent:command", {"agentId": agent_id, "command": "hi"})
    assert ack["code"] == ErrorCode.INSUFFICIENT_PERMISSIONS
    ack = await mallory.request("subscribe:agent", {"agentId": agent_id})
    assert ack["code"] == ErrorCode.INSUFFICIENT_PERMISSIONS
    admin = await WSClient.authed(ws_url(gateway), token("root", roles=("admin",)))
    assert (await admin.request("agent:command", {"agentId": agent_id, "command": "hi"}))["success"]
    for c in (alice, mallory, admin):
        await c.close()


async def test_command_rate_limit_is_shared_by_all_gateways(make_gateway, start_runner):
    await start_runner()
    gw1, gw2 = await make_gateway(), await make_gateway()
    a = await WSClient.authed(ws_url(gw1), token())
    b = await WSClient.authed(ws_url(gw2), token())
    agent_id, _ = await create(a)
    ids = []
    for i in range(8):
        ids.append((a, await a.send("agent:command", {"agentId": agent_id, "command": f"a{i}"})))
        ids.append((b, await b.send("agent:command", {"agentId": agent_id, "command": f"b{i}"})))
    acks = [await c.ack_for(mid) for c, mid in ids]
    limited = [x for x in acks if not x["success"]]
    # 16 commands within about a second, 10 allowed per second across both gateways.
    assert limited and all(x["code"] == ErrorCode.RATE_LIMIT_EXCEEDED for x in limited)
    assert sum(x["success"] for x in acks) <= 10 + 10  # at most two one-second windows
    await a.close()
    await b.close()


async def test_lifecycle_subscription_sees_own_agents_only_and_filters(gateway, start_runner):
    await start_runner()
    alice = await WSClient.authed(ws_url(gateway), token("alice"))
    await alice.subscribe("agent", filters=["status"])
    viewer = await WSClient.authed(ws_url(gateway), token("vera", roles=("viewer",)))
    await viewer.subscribe("agent")
    bob = await WSClient.authed(ws_url(gateway), token("bob"))
    bob_agent, _ = await create(bob)
    alice_agent, _ = await create(alice)
    await status(alice, alice_agent, "running")
    # a viewer sees every agent's lifecycle, output excluded
    await viewer.recv_where(of_agent(bob_agent, "agent:created"), 10, "bob's agent created")
    await viewer.recv_where(of_agent(bob_agent, "agent:status", status="running"), 10, "bob's")
    await viewer.recv_where(
        of_agent(alice_agent, "agent:status", status="running"), 10, "alice's running"
    )
    assert not [m for m in viewer.drain() if m["type"] == "agent:output"]
    # The barrier: the end of her agent, published after every event above.
    assert (await alice.request("agent:terminate", {"agentId": alice_agent}))["success"]
    await status(alice, alice_agent, "stopped")
    events = [m for m in alice.drain() if m["type"].startswith("agent:")]
    # Nothing of bob's agent; of her own, what her filter lets through (plus agent:created,
    # which a creator always gets).
    assert all(m["payload"]["agentId"] == alice_agent for m in events)
    assert {m["type"] for m in events} <= {"agent:status", "agent:created"}
    for c in (alice, viewer, bob):
        await c.close()


async def test_agent_usage_appears_in_metrics(gateway, start_runner, start_service, service_env):
    await start_runner()
    start_service("collector", {**service_env, "TEAMDASH_METRICS_INTERVAL_S": "0.2"})
    client = await WSClient.authed(ws_url(gateway), token())
    agent_id, _ = await create(client, model="spawner")
    await client.subscribe("metrics", filters=["agents"])

    def has_agent(m: dict) -> bool:
        return m["type"] == "metrics:update" and any(
            a["agentId"] == agent_id for a in m["payload"].get("agents") or []
        )

    update = await client.recv_where(has_agent, 15, "metrics with the agent")
    assert "system" not in update["payload"]
    usage = next(a for a in update["payload"]["agents"] if a["agentId"] == agent_id)
    # The spawner and its children: the whole tree is measured.
    assert usage["threads"] >= 3
    assert usage["memory"] > 3 * 1024 * 1024
    assert usage["cpu"] >= 0
    await client.close()


async def test_two_runners_share_work_and_a_killed_runner_s_agents_crash(gateway, start_runner):
    r1 = await start_runner("r1", TEAMDASH_RUNNER_MAX_AGENTS="1")
    await start_runner("r2", TEAMDASH_RUNNER_MAX_AGENTS="1")
    client = await WSClient.authed(ws_url(gateway), token())
    first, _ = await create(client)
    await status(client, first, "running")
    second, _ = await create(client)
    await status(client, second, "running")
    runners = {
        gateway_record.runner_id
        for gateway_record in [
            await gateway.runners.agent(first),
            await gateway.runners.agent(second),
        ]
    }
    assert runners == {"r1", "r2"}, "one agent per runner: creation follows capacity"
    # commands reach each agent through its owner
    await client.subscribe("agent", agentId=first)
    await client.subscribe("agent", agentId=second)
    for agent_id in (first, second):
        assert (await client.request("agent:command", {"agentId": agent_id, "command": agent_id}))[
            "success"
        ]
        await client.recv_where(
            lambda m, a=agent_id: m["type"] == "agent:output" and a in m["payload"]["data"],
            10,
            "echo",
        )
    # SIGKILL r1: its agent is reported crashed within the heartbeat expiry
    victim = first if (await gateway.runners.agent(first)).runner_id == "r1" else second
    r1.kill()
    crashed = await status(client, victim, "crashed", timeout=15)
    assert crashed["payload"]["details"]["reason"] == "runner-lost"
    ack = await client.request("agent:command", {"agentId": victim, "command": "x"})
    assert not ack["success"]
    await client.close()
