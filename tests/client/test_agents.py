"""Agents end to end through the SDK and the CLI: a real gateway, a real agent runner process
and the fixture agents of ``tests/agents`` (models ``echo``, ``crash``, ``slow``, and
``claude-ask``: the Claude Code contract asking the dashboard before it writes a file)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from shared.client import ClientError, DashboardClient, DashboardEvent, Subscription
from shared.errors import ErrorCode
from shared.protocol import (
    AgentCreatedMessage,
    AgentErrorMessage,
    AgentOutputMessage,
    AgentStatusMessage,
    PermissionRequestEvent,
    PermissionResolvedEvent,
    TurnEndEvent,
)
from tests.client.conftest import Stack
from tests.client.helpers import CliProcess, live, run_cli
from tests.gateway.conftest import token, ws_url
from tests.helpers import t, wait_for


async def until(
    sub: Any, done: Callable[[DashboardEvent], bool], timeout: float = 15.0
) -> list[DashboardEvent]:
    """Events of ``sub`` up to and including the first one for which ``done`` is true."""
    got: list[DashboardEvent] = []
    while True:
        event = await sub.next(t(timeout))
        got.append(event)
        if done(event):
            return got


def is_status(state: str) -> Callable[[DashboardEvent], bool]:
    return lambda e: isinstance(e, AgentStatusMessage) and e.payload.status == state


def stdout_text(events: list[DashboardEvent]) -> str:
    return "".join(
        e.payload.data
        for e in events
        if isinstance(e, AgentOutputMessage) and e.payload.stream == "stdout"
    )


async def test_agent_lifecycle_through_the_sdk(gateway, runner) -> None:
    async with (
        DashboardClient(ws_url(gateway), token("alice", ("operator",))) as c,
        c.events() as stream,
    ):
        lifecycle = await c.subscribe_agent()
        assert lifecycle.topic == "agents"
        await live(gateway, lifecycle)
        created = await c.create_agent("bot", "echo", "ws1", environment={"GREETING": "hi"})
        assert created.agent_id and created.pid
        agent_id = created.agent_id
        # The session created it: the subscription starts from its very first event,
        # although the client already received some of them (agent association).
        sub: Subscription = await c.subscribe_agent(agent_id)
        assert sub.topic == f"agent:{agent_id}"
        first = await until(sub, is_status("running"))
        assert isinstance(first[0], AgentCreatedMessage)
        assert first[0].payload.pid == created.pid

        await c.send_command(agent_id, "hello")
        out = await until(sub, lambda e: "__DONE__" in stdout_text([e]))
        assert "echo: hello\n" in stdout_text(out)

        await c.pause(agent_id)
        rest = await until(sub, is_status("paused"))
        await c.resume(agent_id)
        rest += await until(sub, is_status("running"))
        await c.terminate(agent_id)
        rest += await until(sub, is_status("stopped"))
        offsets = [e.metadata.offset for e in first + out + rest if e.metadata is not None]
        assert offsets == sorted(set(offsets))  # in order, no duplicates

        seen = await until(lifecycle, is_status("stopped"))
        assert isinstance(seen[0], AgentCreatedMessage)
        assert not any(isinstance(e, AgentOutputMessage) for e in seen)

        # The client-wide stream: every event once, although each lifecycle event came
        # on two topics and the agent's history was replayed to the new subscription.
        events = await until(stream, is_status("stopped"))
        ids = [e.id for e in events]
        assert len(ids) == len(set(ids))
        assert "echo: hello\n" in stdout_text(events)


async def test_command_timeout_arrives_as_agent_error(gateway, runner) -> None:
    async with DashboardClient(ws_url(gateway), token("alice", ("operator",))) as c:
        agent_id = (await c.create_agent("sleepy", "slow", "ws2")).agent_id
        sub = await c.subscribe_agent(agent_id, ["error"])
        await c.send_command(agent_id, "30", timeout_ms=200)
        (err,) = await until(sub, lambda e: isinstance(e, AgentErrorMessage))
        assert isinstance(err, AgentErrorMessage)
        assert (
            err.payload.error.code == "AGENT_COMMAND_TIMEOUT"
            and err.payload.error.errorCode == 2004
        )
        await c.terminate(agent_id, force=True)


async def test_agent_commands_through_the_cli(stack: Stack, runner) -> None:
    env = stack.cli_env
    rc, out, err = await run_cli(
        env,
        "agent",
        "create",
        "bot",
        "--model",
        "echo",
        "--workspace",
        "w1",
        "--env",
        "GREETING=hi",
    )
    assert rc == 0, err
    agent_id = out.strip().splitlines()[-1]
    assert agent_id and " " not in agent_id
    assert "waiting for a runner" in err

    tail = await CliProcess.start(env, "agent", "tail", agent_id)
    try:
        await tail.wait_stderr("tailing agent")
        rc, _, err = await run_cli(env, "agent", "command", agent_id, "hello")
        assert rc == 0, err
        await wait_for(lambda: "echo: hello" in tail.stdout, what="the echo in tail's output")
        for action, state in (("pause", "paused"), ("resume", "running")):
            rc, _, err = await run_cli(env, "agent", action, agent_id)
            assert rc == 0, err
            await tail.wait_stderr(f"agent {state}")
        rc, _, err = await run_cli(env, "agent", "terminate", agent_id)
        assert rc == 0, err
        assert await tail.wait() == 0, tail.stderr
    finally:
        await tail.kill()
    assert tail.stdout.splitlines()[:2] == ["echo: hello", "__DONE__"]
    assert "agent stopped" in tail.stderr


async def test_cli_tail_of_a_crashing_agent(stack: Stack, runner) -> None:
    env = stack.cli_env
    rc, out, err = await run_cli(
        env, "agent", "create", "doomed", "--model", "crash", "--workspace", "w2"
    )
    assert rc == 0, err
    agent_id = out.strip().splitlines()[-1]
    tail = await CliProcess.start(env, "agent", "tail", agent_id)
    try:
        await tail.wait_stderr("tailing agent")
        rc, _, err = await run_cli(env, "agent", "command", agent_id, "go")
        assert rc == 0, err
        assert await tail.wait() == 1
    finally:
        await tail.kill()
    assert "crashing now" in tail.stdout
    assert "fatal: something went wrong" in tail.stderr  # the agent's stderr goes to stderr
    assert "fatal" not in tail.stdout
    assert "crashed" in tail.stderr and "exit code 3" in tail.stderr


def agent_event(kind: str) -> Callable[[DashboardEvent], bool]:
    """The ``agent:output`` event whose readable ``event`` is of ``kind``."""
    return lambda e: (
        isinstance(e, AgentOutputMessage)
        and e.payload.event is not None
        and e.payload.event.kind == kind
    )


async def test_permission_prompt_answered_through_the_sdk(gateway, runner, tmp_path) -> None:
    async with DashboardClient(ws_url(gateway), token("alice", ("operator",))) as c:
        agent_id = (await c.create_agent("asker", "claude-ask", "perm")).agent_id
        sub = await c.subscribe_agent(agent_id)
        await c.send_command(agent_id, "write a.txt")
        seen = await until(sub, agent_event("permission_request"))
        ask = seen[-1]
        assert isinstance(ask, AgentOutputMessage)
        request = ask.payload.event
        assert isinstance(request, PermissionRequestEvent)
        assert request.tool == "Write" and request.summary.endswith("a.txt")
        assert "allow or deny" in ask.payload.data
        assert not (tmp_path / "ws" / "perm" / "a.txt").exists()  # the turn waits for it

        # A request that is not waiting is refused with the spec's code.
        with pytest.raises(ClientError) as refused:
            await c.answer_permission(agent_id, "no-such-request", allow=True)
        assert refused.value.code == ErrorCode.INVALID_MESSAGE

        result = await c.answer_permission(agent_id, request.requestId, allow=True)
        assert result == {"agentId": agent_id, "tool": "Write"}
        rest = await until(sub, agent_event("turn_end"))
        resolved = [e for e in rest if agent_event("permission_resolved")(e)]
        assert [e.payload.event for e in resolved if isinstance(e, AgentOutputMessage)] == [
            PermissionResolvedEvent(
                kind="permission_resolved", requestId=request.requestId, decision="allow"
            )
        ]
        end = rest[-1]
        assert isinstance(end, AgentOutputMessage) and isinstance(end.payload.event, TurnEndEvent)
        assert end.payload.event.success
        assert (tmp_path / "ws" / "perm" / "a.txt").read_text() == "hi\n"
        # Answered once: the same request cannot be answered again.
        with pytest.raises(ClientError) as again:
            await c.answer_permission(agent_id, request.requestId, allow=False)
        assert again.value.code == ErrorCode.INVALID_MESSAGE
        await c.terminate(agent_id)


async def test_permission_prompt_answered_through_the_cli(stack: Stack, runner, tmp_path) -> None:
    env = stack.cli_env
    rc, out, err = await run_cli(
        env, "agent", "create", "asker", "--model", "claude-ask", "--workspace", "perm-cli"
    )
    assert rc == 0, err
    agent_id = out.strip().splitlines()[-1]
    tail = await CliProcess.start(env, "agent", "tail", agent_id)
    try:
        await tail.wait_stderr("tailing agent")
        rc, _, err = await run_cli(env, "agent", "command", agent_id, "write b.txt")
        assert rc == 0, err
        await wait_for(lambda: "  answer: " in tail.stdout, what="the answer line in tail")
        # The tail prints the request readably, and the very command that answers it.
        [asked] = [line for line in tail.stdout.splitlines() if line.startswith("[permission]")]
        assert asked.startswith("[permission] Write ") and asked.endswith(": allow or deny?")
        [answer] = [line for line in tail.stdout.splitlines() if line.startswith("  answer: ")]
        words = answer.split()[1:]
        assert words[:4] == ["teamdash", "agent", "permission", agent_id]
        assert words[5] == "allow|deny"
        rc, _, err = await run_cli(env, *words[1:5], "deny", "--message", "not in this workspace")
        assert rc == 0, err
        assert "Write denied" in err
        await wait_for(lambda: "[permission] Write: deny" in tail.stdout, what="the decision")
        await wait_for(lambda: "[done]" in tail.stdout, what="the end of the turn")
        # Denied: the agent was told why, and wrote nothing.
        assert "[tool failed] not in this workspace" in tail.stdout
        assert not (tmp_path / "ws" / "perm-cli" / "b.txt").exists()
        # A request id that is not waiting: exit 1 with the spec's code.
        rc, _, err = await run_cli(env, *words[1:5], "allow")
        assert rc == 1 and "INVALID_MESSAGE (4001)" in err, err
        rc, _, err = await run_cli(env, "agent", "terminate", agent_id)
        assert rc == 0, err
        assert await tail.wait() == 0, tail.stderr
    finally:
        await tail.kill()
