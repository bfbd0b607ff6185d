"""Integration tests of the runner, driven the way the gateway drives it: RunnerRequests on
the Redis streams, RunnerReplies on the reply channel, events read back from the topics.
Real Redis, real agent processes (tests/agents/), the runner's ``main()`` in this process."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import psutil
import pytest
import redis.asyncio as aioredis
from pydantic import ValidationError

from agent_runner.output import OutputPacer
from agent_runner.process import live_group_members
from shared.bus import EventBus
from shared.errors import ErrorCode
from shared.keys import AGENTS_TOPIC, LOGS_TOPIC, Keys, agent_topic
from shared.protocol import decode_server_message, new_id, now_ms
from shared.runner_protocol import REQUEST_FIELD, RunnerRequest
from tests.agent_runner.conftest import (
    Gateway,
    has_status,
    output_text,
    outputs,
    statuses,
    topic_events,
    wait_events,
)
from tests.agent_runner.test_pty import turn_ends
from tests.helpers import t, wait_for


def group_statuses(pgid: int) -> set[str]:
    out = set()
    for pid in live_group_members(pgid):
        try:
            out.add(psutil.Process(pid).status())
        except psutil.NoSuchProcess:
            pass
    return out


async def test_create_registers_replies_then_announces(
    start_runner, gateway: Gateway, bus: EventBus, redis: aioredis.Redis, keys: Keys
) -> None:
    runner = await start_runner()
    agent_id, reply = await gateway.create(
        "echo", name="helper", workspace="team/one", environment={"GREETING": "hi there"}
    )
    assert reply.success, reply
    assert reply.runnerId == runner.runner_id
    assert reply.result is not None and reply.result["agentId"] == agent_id
    pid = reply.result["pid"]
    proc = psutil.Process(pid)
    workspace = runner.settings.workspace_root / "team" / "one"
    assert proc.cwd() == str(workspace)
    assert os.getpgid(pid) == pid and os.getsid(pid) == pid
    env = proc.environ()
    # Its own home, outside the workspace (the CLI's configuration goes there, not into
    # the user's files).
    home = runner.settings.agent_home_root / agent_id
    assert env["HOME"] == str(home) and home.is_dir() and env["TERM"] == "dumb"
    assert not home.is_relative_to(workspace) and not workspace.is_relative_to(home)
    assert env["GREETING"] == "hi there" and env["FIXTURE"] == "echo"
    assert "REDIS_URL" not in env and "TEAMDASH_REDIS_PREFIX" not in env

    fields = {
        k.decode(): v.decode() for k, v in (await redis.hgetall(keys.agent(agent_id))).items()
    }
    assert fields["owner"] == "alice" and fields["runnerId"] == runner.runner_id
    assert fields["name"] == "helper" and fields["model"] == "echo"
    assert fields["workspace"] == "team/one" and fields["pid"] == str(pid)
    assert abs(float(fields["procCreateTime"]) - proc.create_time()) < 0.01
    assert int(fields["startTime"]) <= now_ms()
    assert await redis.sismember(keys.agents, agent_id)
    assert await redis.sismember(keys.runner_agents(runner.runner_id), agent_id)
    assert await redis.sismember(keys.user_agents("alice"), agent_id)

    evs = await wait_events(bus, agent_topic(agent_id), has_status("running"))
    assert [e["type"] for e in evs] == ["agent:created", "agent:status", "agent:status"]
    assert statuses(evs) == ["starting", "running"]
    created = evs[0]
    assert created["payload"] == {
        "agentId": agent_id,
        "name": "helper",
        "pid": pid,
        "startTime": int(fields["startTime"]),
    }
    request_id = next(rid for rid, r in gateway.replies.items() if r is reply)
    for ev in evs:
        assert ev["metadata"]["correlationId"] == request_id
        assert ev["metadata"]["agentId"] == agent_id
        decode_server_message(orjson.dumps({k: v for k, v in ev.items() if k != "_tags"}))
    assert evs[0]["_tags"] == ("created", "user:alice")
    assert evs[1]["_tags"] == ("status", "user:alice")
    assert fields["status"] in ("starting", "running")
    await wait_for(lambda: redis.hget(keys.agent(agent_id), "status"), what="status")
    assert await redis.hget(keys.agent(agent_id), "status") == b"running"

    lifecycle = await topic_events(bus, AGENTS_TOPIC)
    assert [e["type"] for e in lifecycle if e["payload"]["agentId"] == agent_id] == [
        "agent:created",
        "agent:status",
        "agent:status",
    ]
    await runner.stop()
    evs = await wait_events(bus, agent_topic(agent_id), has_status("stopped"))
    assert evs[-1]["payload"]["details"]["reason"] == "runner-stopped"
    assert not await redis.exists(keys.runner(runner.runner_id))
    assert await redis.zscore(keys.runners, runner.runner_id) is None
    assert not await redis.sismember(keys.user_agents("alice"), agent_id)
    assert await redis.hget(keys.agent(agent_id), "status") == b"stopped"


async def test_commands_output_and_completion(
    start_runner, gateway: Gateway, bus: EventBus
) -> None:
    await start_runner()
    agent_id, reply = await gateway.create("echo-json")
    assert reply.success
    ids = []
    for i in range(3):
        ids.append(
            await gateway.send(
                "command",
                agent_id,
                {"agentId": agent_id, "command": f"hello {i}\x00\x07 ✓", "timeout": 10_000},
                wait=False,
            )
        )
    for request_id in ids:
        assert (await gateway.reply(request_id)).success
    evs = await wait_events(
        bus,
        agent_topic(agent_id),
        lambda e: [o.get("event", {}).get("kind") for o in outputs(e)].count("turn_end") == 3,
        what="three turns ended",
    )
    out = outputs(evs)
    seqs = [o["sequence"] for o in out]
    assert seqs == list(range(1, len(seqs) + 1))
    assert all(o["stream"] == "stdout" for o in out)
    # Readable: the text itself (control bytes stripped), not the CLI's JSON, which stays
    # available in ``raw``.
    assert [o["data"] for o in out] == [
        x for i in range(3) for x in (f"hello {i} \u2713\n", "[done]\n")
    ]
    assert out[0]["event"] == {"kind": "text", "text": "hello 0 \u2713"}
    assert orjson.loads(out[0]["raw"])["type"] == "assistant"
    assert out[1]["event"] == {"kind": "turn_end", "success": True}
    turns = [e for e in evs if e["type"] == "agent:output"]
    for e in turns:
        assert e["_tags"] == ("stdout", "user:alice")
        assert e["metadata"]["agentId"] == agent_id
        decoded = decode_server_message(orjson.dumps({k: v for k, v in e.items() if k != "_tags"}))
        assert decoded.type == "agent:output"
    # Each turn's events carry the id of the command they answer.
    assert [e["metadata"]["correlationId"] for e in turns] == [x for i in ids for x in (i, i)]
    assert not [e for e in evs if e["type"] == "agent:error"]
    # Output stays on the agent's topic; the lifecycle topic has no output.
    assert not [e for e in await topic_events(bus, AGENTS_TOPIC) if e["type"] == "agent:output"]


async def test_command_timeout(start_runner, gateway: Gateway, bus: EventBus) -> None:
    await start_runner()
    agent_id, reply = await gateway.create("slow")
    assert reply.success
    late = await gateway.send(
        "command", agent_id, {"agentId": agent_id, "command": "1.0", "timeout": 200}, wait=False
    )
    on_time = await gateway.send(
        "command",
        agent_id,
        {"agentId": agent_id, "command": "0", "timeout": int(t(20) * 1000)},
        wait=False,
    )
    assert (await gateway.reply(late)).success
    assert (await gateway.reply(on_time)).success
    evs = await wait_events(
        bus,
        agent_topic(agent_id),
        lambda e: output_text(e).count("__DONE__") == 2,
        what="both commands done",
    )
    errors = [e for e in evs if e["type"] == "agent:error"]
    assert len(errors) == 1
    err = errors[0]
    assert err["payload"]["error"]["code"] == "AGENT_COMMAND_TIMEOUT"
    assert err["payload"]["error"]["errorCode"] == ErrorCode.AGENT_COMMAND_TIMEOUT == 2004
    assert err["metadata"]["correlationId"] == late
    assert "200 ms" in err["payload"]["error"]["message"]
    # The timeout came before the late command completed.
    first_done = next(
        i
        for i, e in enumerate(evs)
        if e["type"] == "agent:output" and "__DONE__" in e["payload"]["data"]
    )
    assert evs.index(err) < first_done


async def test_a_waiting_command_is_replied_to_twice(
    start_runner, gateway: Gateway, bus: EventBus
) -> None:
    """``wait: "completed"``: a first reply once written (``outcomeFollows``), then the
    outcome with the turn's ``turn_end``; a model without turn ends refuses at once."""
    await start_runner()
    agent_id, reply = await gateway.create("echo-json")
    assert reply.success
    request_id = await gateway.send(
        "command", agent_id, {"agentId": agent_id, "command": "hi", "wait": "completed"},
        wait=False,
    )  # fmt: skip
    await wait_for(
        lambda: len(gateway.all_replies.get(request_id, [])) == 2, what="the two replies"
    )
    first, outcome = gateway.all_replies[request_id]
    assert first.success and first.outcomeFollows
    assert first.result == {"agentId": agent_id}
    assert outcome.success and outcome.outcomeFollows is None
    assert outcome.result == {
        "agentId": agent_id,
        "turn": {"kind": "turn_end", "success": True},
    }
    evs = await wait_events(bus, agent_topic(agent_id), turn_ends, what="the turn_end event")
    [end] = turn_ends(evs)
    assert end["metadata"]["correlationId"] == request_id

    plain, _ = await gateway.create("echo-untracked", name="a2", workspace="ws2")
    refused = await gateway.command(plain, "hi", wait="completed")
    assert not refused.success and refused.code == ErrorCode.INVALID_MESSAGE
    assert refused.outcomeFollows is None


async def test_pause_resume_whole_group(start_runner, gateway: Gateway, bus: EventBus) -> None:
    await start_runner()
    agent_id, reply = await gateway.create("spawner")
    assert reply.success and reply.result
    pgid = reply.result["pid"]
    await wait_events(bus, agent_topic(agent_id), lambda e: "children" in output_text(e))
    assert len(live_group_members(pgid)) >= 5

    r = await gateway.control(["agent", "pause"][1], agent_id)
    assert r.success, r
    await wait_for(lambda: group_statuses(pgid) == {psutil.STATUS_STOPPED}, what="group stopped")
    again = await gateway.control("pause", agent_id)
    assert not again.success and again.code == ErrorCode.INVALID_MESSAGE
    assert "already paused" in (again.error or "")
    cmd = await gateway.command(agent_id, "x")
    assert (
        not cmd.success and cmd.code == ErrorCode.INVALID_MESSAGE and "paused" in (cmd.error or "")
    )

    r = await gateway.control("resume", agent_id)
    assert r.success
    await wait_for(lambda: psutil.STATUS_STOPPED not in group_statuses(pgid), what="group resumed")
    r = await gateway.control("resume", agent_id)
    assert not r.success and r.code == ErrorCode.INVALID_MESSAGE
    assert (await gateway.command(agent_id, "ping")).success
    evs = await wait_events(bus, agent_topic(agent_id), lambda e: "got ping" in output_text(e))
    assert statuses(evs) == ["starting", "running", "paused", "running"]


@pytest.mark.parametrize("force", [False, True])
async def test_terminate_kills_whole_group(
    start_runner, gateway: Gateway, bus: EventBus, force: bool
) -> None:
    await start_runner()
    agent_id, reply = await gateway.create("spawner")
    assert reply.success and reply.result
    pgid = reply.result["pid"]
    evs = await wait_events(bus, agent_topic(agent_id), lambda e: "children" in output_text(e))
    children = [int(p) for p in output_text(evs).split("children ")[1].split()]
    grandchildren = [c for pid in children for c in psutil.Process(pid).children()]
    r = await gateway.control("terminate", agent_id, force=force)
    assert r.success, r
    evs = await wait_events(bus, agent_topic(agent_id), has_status("stopped"))
    assert statuses(evs)[-2:] == ["stopping", "stopped"]
    details = evs[-1]["payload"]["details"]
    assert details["reason"] == ("killed" if force else "terminated")
    assert details["signal"] == ("SIGKILL" if force else "SIGTERM")
    assert evs[-1]["metadata"]["correlationId"] in gateway.replies
    assert live_group_members(pgid) == []
    for pid in children + [g.pid for g in grandchildren]:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    again = await gateway.control("terminate", agent_id)
    assert not again.success and again.code == ErrorCode.AGENT_NOT_FOUND


async def test_terminate_paused_and_escalation(
    start_runner, gateway: Gateway, bus: EventBus
) -> None:
    await start_runner(TEAMDASH_TERMINATE_GRACE_S="0.5")
    paused_id, reply = await gateway.create("spawner", name="p")
    stubborn_id, reply2 = await gateway.create("stubborn", name="s", workspace="ws2")
    assert reply.success and reply2.success and reply.result and reply2.result
    await wait_events(bus, agent_topic(paused_id), lambda e: "children" in output_text(e))
    await wait_events(bus, agent_topic(stubborn_id), lambda e: "children" in output_text(e))
    assert (await gateway.control("pause", paused_id)).success
    await wait_for(lambda: group_statuses(reply.result["pid"]) == {psutil.STATUS_STOPPED})
    assert (await gateway.control("terminate", paused_id)).success
    assert (await gateway.control("terminate", stubborn_id)).success
    evs = await wait_events(bus, agent_topic(paused_id), has_status("stopped"))
    assert evs[-1]["payload"]["details"]["signal"] == "SIGTERM"  # SIGCONT let it see SIGTERM
    evs = await wait_events(bus, agent_topic(stubborn_id), has_status("stopped"))
    assert evs[-1]["payload"]["details"]["signal"] == "SIGKILL"  # ignored SIGTERM: escalated
    assert evs[-1]["payload"]["details"]["reason"] == "terminated"
    assert live_group_members(reply.result["pid"]) == []
    assert live_group_members(reply2.result["pid"]) == []


async def test_crash_reported(
    start_runner, gateway: Gateway, bus: EventBus, redis: aioredis.Redis, keys: Keys
) -> None:
    await start_runner()
    agent_id, reply = await gateway.create("crash", name="fragile")
    assert reply.success
    await wait_events(bus, agent_topic(agent_id), lambda e: "ready" in output_text(e))
    assert (await gateway.command(agent_id, "go")).success
    evs = await wait_events(bus, agent_topic(agent_id), has_status("crashed"))
    crashed = next(
        e for e in evs if e["type"] == "agent:status" and e["payload"]["status"] == "crashed"
    )
    assert crashed["payload"]["details"]["exitCode"] == 3
    assert crashed["payload"]["details"]["reason"] == "error"
    evs = await wait_events(
        bus, agent_topic(agent_id), lambda e: any(x["type"] == "agent:error" for x in e)
    )
    err = next(e for e in evs if e["type"] == "agent:error")["payload"]["error"]
    assert err["code"] == "AGENT_EXITED" and "code 3" in err["message"] and "errorCode" not in err
    # All output came before the final status.
    assert "fatal: something went wrong" in output_text(evs, "stderr")
    assert evs.index(crashed) > max(i for i, e in enumerate(evs) if e["type"] == "agent:output")
    alerts = await wait_events(bus, LOGS_TOPIC, lambda e: len(e) >= 1)
    alert = alerts[-1]
    assert alert["type"] == "system:alert"
    assert alert["payload"]["level"] == "error" and alert["payload"]["category"] == "agent"
    assert alert["payload"]["details"]["agentId"] == agent_id
    assert alert["_tags"] == ("error", "agent", "user:alice")
    assert await redis.hget(keys.agent(agent_id), "status") == b"crashed"
    assert await redis.hget(keys.agent(agent_id), "exitCode") == b"3"
    assert not await redis.sismember(keys.agents, agent_id)
    r = await gateway.command(agent_id, "again")
    assert not r.success and r.code == ErrorCode.AGENT_NOT_FOUND


async def test_chatty_agent_order_and_sequence(
    start_runner, gateway: Gateway, bus: EventBus
) -> None:
    await start_runner(TEAMDASH_HISTORY_SIZE="20000")
    agent_id, reply = await gateway.create("chatty")
    assert reply.success
    evs = await wait_events(bus, agent_topic(agent_id), has_status("stopped"), timeout=30)
    final = evs[-1]
    assert (
        final["payload"]["status"] == "stopped"
        and final["payload"]["details"]["reason"] == "exited"
    )
    out = outputs(evs)
    seqs = [o["sequence"] for o in out]
    assert seqs == list(range(1, len(seqs) + 1))  # strictly increasing, no gaps, both streams
    assert output_text(evs, "stdout") == "".join(f"line {i}\n" for i in range(1, 4001))
    assert output_text(evs, "stderr") == "".join(f"err {i}\n" for i in range(100, 4001, 100))
    # Lines are whole: every piece ends a line.
    assert all(o["data"].endswith("\n") for o in out)
    offsets = [e["metadata"]["offset"] for e in evs]
    assert offsets == sorted(offsets)


async def test_output_is_paced_not_dropped(start_runner, gateway: Gateway, bus: EventBus) -> None:
    """Over TEAMDASH_AGENT_OUTPUT_EVENTS_PER_SECOND the runner reads the agent's pipe later:
    40,400 lines at 10,000/s (a second's burst, then the pace) span over 1.5 s, all there."""
    await start_runner(
        TEAMDASH_HISTORY_SIZE="50000", TEAMDASH_AGENT_OUTPUT_EVENTS_PER_SECOND="10000"
    )
    agent_id, reply = await gateway.create("flood")
    assert reply.success
    evs = await wait_events(bus, agent_topic(agent_id), has_status("stopped"), timeout=60)
    out = outputs(evs)
    assert output_text(evs, "stdout") == "".join(f"line {i}\n" for i in range(1, 40001))
    assert [o["sequence"] for o in out] == list(range(1, len(out) + 1))
    span_ms = out[-1]["timestamp"] - out[0]["timestamp"]
    assert span_ms >= 1500, span_ms  # unpaced, ~0.5 s here


async def test_a_paced_agent_s_last_pipeful_is_read_after_it_exits(
    start_runner, gateway: Gateway, bus: EventBus
) -> None:
    """At 1,000 lines/s the runner paces its reads of the agent's pipe; the agent has
    written its last lines into the pipe and exited meanwhile. Once the process is gone the
    pipe is drained unpaced (the drain used to give up after 2 s, inside a pacing pause,
    and the last few hundred lines were lost)."""
    await start_runner(
        TEAMDASH_HISTORY_SIZE="10000", TEAMDASH_AGENT_OUTPUT_EVENTS_PER_SECOND="1000"
    )
    agent_id, reply = await gateway.create("pipeful")
    assert reply.success
    evs = await wait_events(bus, agent_topic(agent_id), has_status("stopped"), timeout=60)
    assert output_text(evs, "stdout") == "".join(f"line {i}\n" for i in range(1, 8001))


def test_output_pacer_allows_a_burst_then_the_rate() -> None:
    pacer = OutputPacer(1000)
    assert pacer.delay_after(1000, now=10.0) == 0.0  # one second's worth at once
    assert pacer.delay_after(500, now=10.0) == pytest.approx(0.5)
    assert pacer.delay_after(0, now=10.5) == pytest.approx(0.0, abs=1e-9)  # paid back
    assert pacer.delay_after(100, now=10.6) == pytest.approx(0.0, abs=1e-9)
    assert pacer.delay_after(10_000, now=100.0) == pytest.approx(9.0)  # refill capped at 1 s


async def test_binary_output_is_valid_utf8(start_runner, gateway: Gateway, bus: EventBus) -> None:
    await start_runner()
    agent_id, reply = await gateway.create("binary")
    assert reply.success
    evs = await wait_events(bus, agent_topic(agent_id), lambda e: "__DONE__" in output_text(e))
    text = output_text(evs)
    assert text == "café ok\nbad \ufffd\ufffd bytes\nsnow \u2603 \nsmile \U0001f600 end\n__DONE__\n"
    # The partial writes were flushed on their own (not held until the newline)…
    assert any(o["data"] == "caf" for o in outputs(evs))
    # …and no piece holds a broken character.
    for o in outputs(evs):
        o["data"].encode("utf-8")
        assert "\ufffd" not in o["data"] or o["data"].startswith("bad")


async def test_hungry_agent_is_oom(start_runner, gateway: Gateway, bus: EventBus) -> None:
    await start_runner()
    agent_id, reply = await gateway.create("hungry", resourceLimits={"memory": 64, "cpu": 1})
    assert reply.success, reply
    evs = await wait_events(bus, agent_topic(agent_id), has_status("crashed"), timeout=20)
    crashed = [e for e in evs if e["type"] == "agent:status"][-1]
    assert crashed["payload"]["details"]["reason"] == "oom"
    evs = await wait_events(
        bus, agent_topic(agent_id), lambda e: any(x["type"] == "agent:error" for x in e)
    )
    err = next(e for e in evs if e["type"] == "agent:error")["payload"]["error"]
    assert err["code"] == "AGENT_OOM" and "memory limit of 64 MB" in err["message"]
    alerts = await wait_events(bus, LOGS_TOPIC, lambda e: len(e) >= 1)
    assert alerts[-1]["payload"]["level"] == "critical"
    assert alerts[-1]["payload"]["details"]["reason"] == "oom"
    # It got somewhere before failing, but not far past its limit.
    assert "allocated 32 MB" in output_text(evs)
    assert "allocated 96 MB" not in output_text(evs)


async def test_cpu_limit_pins_affinity(start_runner, gateway: Gateway, bus: EventBus) -> None:
    await start_runner()
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs")
    _, reply = await gateway.create("echo", resourceLimits={"memory": 256, "cpu": 0.5})
    assert reply.success and reply.result
    assert len(psutil.Process(reply.result["pid"]).cpu_affinity()) == 1


async def test_spawn_failures(
    start_runner, gateway: Gateway, redis: aioredis.Redis, keys: Keys
) -> None:
    await start_runner()
    cases = [
        (
            {"model": "missing"},
            (
                "model 'missing' runs 'teamdash-no-such-agent-program', which "
                "is not installed or not on PATH"
            ),
        ),
        ({"model": "gpt-9"}, "unknown model 'gpt-9'"),
        ({"workspace": "../x"}, "workspace '../x' escapes the workspace root"),
        ({"workspace": "/etc"}, "escapes the workspace root"),
        ({"environment": {"LD_PRELOAD": "/x.so"}}, "'LD_PRELOAD' may not be set"),
        ({"environment": {"FIXTURE": "x"}}, "set by the model configuration"),
    ]
    for change, message in cases:
        payload = {"name": "x", "model": "echo", "workspace": "w", **change}
        reply = await gateway.send("create", f"ag-{new_id()[:8]}", payload)
        assert not reply.success, change
        assert reply.code == ErrorCode.AGENT_SPAWN_FAILED, reply
        assert message in (reply.error or ""), reply.error
    assert await redis.scard(keys.user_agents("alice")) == 0
    assert await redis.scard(keys.agents) == 0


async def test_default_models_claude_missing_and_demo(
    start_runner, gateway: Gateway, bus: EventBus, runner_env, tmp_path: Path
) -> None:
    # The agents' PATH is an empty folder, so `claude` is missing even on a machine that has
    # the Claude Code CLI installed (in /usr/bin, say); the demo model needs no PATH.
    empty_bin = tmp_path / "empty-bin"
    empty_bin.mkdir()
    runner = await start_runner(TEAMDASH_MODELS_FILE="", PATH=str(empty_bin))
    assert "demo" in runner.settings.models.models
    _, reply = await gateway.create("claude-3-opus")
    assert not reply.success and reply.code == ErrorCode.AGENT_SPAWN_FAILED
    assert (
        reply.error == "model 'claude-3-opus' runs 'claude', which is not installed or not on PATH"
    )
    agent_id, reply = await gateway.create("demo")
    assert reply.success, reply
    assert (await gateway.command(agent_id, "hello demo", timeout=int(t(10) * 1000))).success
    evs = await wait_events(bus, agent_topic(agent_id), lambda e: "[done]" in output_text(e))
    assert "[demo] you said: hello demo" in output_text(evs)
    assert not [e for e in evs if e["type"] == "agent:error"]


async def test_per_user_limit(start_runner, gateway: Gateway, bus: EventBus) -> None:
    await start_runner(TEAMDASH_MAX_AGENTS_PER_USER="2")
    a1, r1 = await gateway.create("echo", workspace="1")
    _, r2 = await gateway.create("echo", workspace="2")
    assert r1.success and r2.success
    _, r3 = await gateway.create("echo", workspace="3")
    assert not r3.success and r3.code == ErrorCode.AGENT_LIMIT_EXCEEDED
    assert "per-user limit" in (r3.error or "")
    _, r4 = await gateway.create("echo", workspace="4", user="bob")
    assert r4.success
    assert (await gateway.control("terminate", a1)).success
    await wait_events(bus, agent_topic(a1), has_status("stopped"))
    _, r5 = await gateway.create("echo", workspace="5")
    assert r5.success, r5


async def test_runner_takes_creates_only_with_free_slots(
    start_runner, gateway: Gateway, bus: EventBus
) -> None:
    full = await start_runner(TEAMDASH_RUNNER_MAX_AGENTS="1")
    first, reply = await gateway.create("echo")
    assert reply.success
    waiting = await gateway.send(
        "create", "ag-second", {"name": "b", "model": "echo", "workspace": "b"}, wait=False
    )
    # The barrier: a runner started after the create was queued takes it. The group hands an
    # entry to one consumer only, so the full runner never read it meanwhile.
    roomy = await start_runner(TEAMDASH_RUNNER_MAX_AGENTS="1", TEAMDASH_RUNNER_ID="r-roomy")
    second = await gateway.reply(waiting)
    assert second.success and second.result and second.result["agentId"] == "ag-second"
    assert second.runnerId == roomy.runner_id
    gateway.tracker.pids.add(second.result["pid"])
    # With a slot free again, the first runner takes creates (the other one is full now).
    assert (await gateway.control("terminate", first)).success
    _, third = await gateway.create("echo", workspace="c")
    assert third.success and third.runnerId == full.runner_id


async def test_unknown_agent_and_expired_requests(
    start_runner, gateway: Gateway, redis: aioredis.Redis, keys: Keys
) -> None:
    runner = await start_runner()
    r = await gateway.send(
        "command", "ag-nope", {"agentId": "ag-nope", "command": "x"}, runner_id=runner.runner_id
    )
    assert not r.success and r.code == ErrorCode.AGENT_NOT_FOUND
    # A payload naming another agent is refused where the request is built (and parsed).
    with pytest.raises(ValidationError, match="does not match the request's agentId"):
        await gateway.send("pause", "ag-nope", {"agentId": "ag-other"}, runner_id="r")
    expired = RunnerRequest(
        kind="create",
        requestId=new_id(),
        gatewayId=gateway.gateway_id,
        userId="alice",
        roles=[],
        agentId="ag-expired",
        payload={"name": "x", "model": "echo", "workspace": "w"},
        deadlineMs=now_ms() - 1,
    )
    await redis.xadd(keys.create_stream, {REQUEST_FIELD: expired.model_dump_json()})
    await wait_for(lambda: _stream_empty(redis, keys.create_stream), what="the create to be taken")
    # Deleted once handled; a request sent now is answered on the same channel after any
    # answer to the expired one.
    marker = await gateway.send(
        "command", "ag-nope", {"agentId": "ag-nope", "command": "x"}, runner_id=runner.runner_id
    )
    assert not marker.success
    assert expired.requestId not in gateway.replies
    assert not await redis.exists(keys.agent("ag-expired"))


async def _stream_empty(redis: aioredis.Redis, stream: str) -> bool:
    return await redis.xlen(stream) == 0


async def test_stats_cover_the_process_tree(
    start_runner, gateway: Gateway, bus: EventBus, redis: aioredis.Redis, keys: Keys
) -> None:
    runner = await start_runner()
    agent_id, reply = await gateway.create("spawner")
    assert reply.success
    await wait_events(bus, agent_topic(agent_id), lambda e: "children" in output_text(e))

    async def sampled() -> dict[str, object] | None:
        raw = await redis.hget(keys.agent_stats, runner.runner_id)
        if raw is None:
            return None
        doc = orjson.loads(raw)
        mine = [a for a in doc["agents"] if a["agentId"] == agent_id]
        return mine[0] if mine and mine[0]["threads"] >= 6 else None

    stats = await wait_for(sampled, what="stats with the whole tree")
    assert isinstance(stats, dict)
    assert stats["memory"] > 4 * 5_000_000  # four python processes and more
    assert isinstance(stats["cpu"], float)
    assert stats["owner"] == "alice"  # the gateway filters operators' updates by it


async def test_restart_reconciles_leftovers(
    start_runner, gateway: Gateway, bus: EventBus, redis: aioredis.Redis, keys: Keys, tracker
) -> None:
    runner_id = f"r-{new_id()[:6]}"
    # A process the "previous run" left behind, and an entry whose process is long gone.
    orphan = subprocess.Popen(  # noqa: ASYNC220 - starts at once, nothing to wait for
        [sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True
    )
    tracker.pids.add(orphan.pid)
    try:
        host = __import__("socket").gethostname()
        entries = {
            "ag-alive": {
                "pid": orphan.pid,
                "procCreateTime": repr(psutil.Process(orphan.pid).create_time()),
                "status": "running",
            },
            "ag-gone": {"pid": 999_999, "procCreateTime": "1.0", "status": "paused"},
            "ag-done": {"pid": 999_998, "procCreateTime": "1.0", "status": "stopped"},
        }
        for agent_id, fields in entries.items():
            await redis.hset(
                keys.agent(agent_id),
                mapping={
                    **fields,
                    "agentId": agent_id,
                    "owner": "alice",
                    "runnerId": runner_id,
                    "host": host,
                    "name": agent_id,
                    "startTime": now_ms() - 1000,
                },
            )
            await redis.sadd(keys.runner_agents(runner_id), agent_id)
            await redis.sadd(keys.user_agents("alice"), agent_id)
        await start_runner(TEAMDASH_RUNNER_ID=runner_id)
        await asyncio.get_running_loop().run_in_executor(None, orphan.wait, t(5))
        assert orphan.returncode == -signal.SIGKILL
        for agent_id, reason in (("ag-alive", "runner-restarted"), ("ag-gone", "runner-lost")):
            evs = await wait_events(bus, agent_topic(agent_id), has_status("crashed"))
            assert evs[0]["payload"]["details"]["reason"] == reason
            assert any(
                e["type"] == "agent:error" and e["payload"]["error"]["code"] == "AGENT_LOST"
                for e in evs
            )
            assert await redis.hget(keys.agent(agent_id), "status") == b"crashed"
        assert await topic_events(bus, agent_topic("ag-done")) == []
        assert await redis.scard(keys.runner_agents(runner_id)) == 0
        assert await redis.scard(keys.user_agents("alice")) == 1  # ag-done was never removed by us
    finally:
        if orphan.poll() is None:
            orphan.kill()
            orphan.wait()


async def test_dead_runner_is_reaped(
    start_runner, gateway: Gateway, bus: EventBus, redis: aioredis.Redis, keys: Keys
) -> None:
    from agent_runner.reaper import reap_dead_runners

    # A runner that vanished without cleaning up: heartbeat expired, score old.
    await redis.zadd(keys.runners, {"r-dead": now_ms() - 60_000})
    await redis.hset(
        keys.agent("ag-x"),
        mapping={
            "agentId": "ag-x",
            "owner": "bob",
            "runnerId": "r-dead",
            "status": "running",
            "pid": 999_997,
            "host": "elsewhere",
            "name": "x",
        },
    )
    await redis.sadd(keys.runner_agents("r-dead"), "ag-x")
    await redis.sadd(keys.user_agents("bob"), "ag-x")
    await redis.sadd(keys.agents, "ag-x")
    # It had taken a create it never acknowledged.
    await redis.xgroup_create(keys.create_stream, "runners", id="0", mkstream=True)
    await redis.xadd(keys.create_stream, {REQUEST_FIELD: b"{}"})
    assert await redis.xreadgroup("runners", "r-dead", {keys.create_stream: ">"}, count=1)
    # A live runner (fresh heartbeat) is left alone.
    await redis.zadd(keys.runners, {"r-alive": now_ms()})
    await redis.set(keys.runner("r-alive"), b"{}", px=10_000)
    assert await reap_dead_runners(redis, keys, bus, 1500) == 1
    evs = await topic_events(bus, agent_topic("ag-x"))
    assert [e["type"] for e in evs] == ["agent:status", "agent:error"]
    assert evs[0]["payload"]["status"] == "crashed"
    assert evs[0]["payload"]["details"] == {
        "reason": "runner-lost",
        "runnerId": "r-dead",
        "pid": 999_997,
    }
    assert (await topic_events(bus, LOGS_TOPIC))[0]["payload"]["details"]["runnerId"] == "r-dead"
    assert await redis.zscore(keys.runners, "r-dead") is None
    assert await redis.zscore(keys.runners, "r-alive") is not None
    assert await redis.scard(keys.user_agents("bob")) == 0
    assert await redis.xlen(keys.create_stream) == 0
    assert await redis.xinfo_consumers(keys.create_stream, "runners") == []
    assert await reap_dead_runners(redis, keys, bus, 1500) == 0  # idempotent


async def test_runner_reaped_while_alive_kills_its_lost_agents(
    start_runner, gateway: Gateway, bus: EventBus, redis: aioredis.Redis, keys: Keys
) -> None:
    from agent_runner.reaper import mark_agent_lost

    runner = await start_runner()
    agent_id, reply = await gateway.create("echo")
    assert reply.success and reply.result
    pid = reply.result["pid"]
    await wait_events(bus, agent_topic(agent_id), has_status("running"))
    # What another runner's reaper does when this runner's heartbeat is late:
    await redis.zrem(keys.runners, runner.runner_id)
    assert await mark_agent_lost(redis, keys, bus, runner.runner_id, agent_id, reason="runner-lost")
    # The next heartbeat notices and kills the agent that is no longer accounted for, and
    # says so (after the reaper's own AGENT_LOST error).
    await wait_for(lambda: not live_group_members(pid), what="the lost agent to be killed")

    def killed(evs: list[dict]) -> bool:
        return any(
            e["type"] == "agent:error" and "was killed" in e["payload"]["error"]["message"]
            for e in evs
        )

    evs = await wait_events(bus, agent_topic(agent_id), killed, what="the fence's agent:error")
    errors = [e["payload"]["error"] for e in evs if e["type"] == "agent:error"]
    assert [e["code"] for e in errors] == ["AGENT_LOST", "AGENT_LOST"]
    assert "taken for dead" in errors[1]["message"]
    assert statuses(evs) == ["starting", "running", "crashed"]  # no second status
    assert await redis.hget(keys.agent(agent_id), "status") == b"crashed"
    _, again = await gateway.create("echo", workspace="again")
    assert again.success
