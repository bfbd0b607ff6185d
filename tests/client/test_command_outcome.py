"""A command's outcome as its ack (``agent:command`` ``wait: "completed"``), end to end: the
SDK and the CLI on a real gateway, a real runner process and the fixture CLIs of
``tests/agents`` (``claude``: Claude Code not logged in; ``claude-key``: logged in;
``claude-ask``: a turn that waits for a permission decision, i.e. a turn that does not end
until something happens; ``codex``: the ``codex exec --json`` contract; ``echo-untracked``:
no completion marker; ``tui``: a terminal tool that asks a question)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import pytest

from shared.client import ClientError, DashboardClient, DashboardEvent, Subscription
from shared.errors import ErrorCode
from shared.protocol import AgentStatusMessage
from tests.client.conftest import Stack
from tests.client.helpers import run_cli
from tests.client.test_agents import agent_event, stdout_text, until
from tests.gateway.conftest import token, ws_url
from tests.helpers import t


async def waiting_for_permission(sub: Subscription) -> None:
    """Until the agent's turn waits for a permission decision (it cannot end by itself)."""
    await until(sub, agent_event("permission_request"))


@contextlib.asynccontextmanager
async def running(
    request: Coroutine[Any, Any, dict[str, Any]],
) -> AsyncIterator[asyncio.Task[dict[str, Any]]]:
    """``request`` in a task while the block runs (cancelled if the block leaves early)."""
    task = asyncio.create_task(request)
    try:
        yield task
    finally:
        if not task.done():
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_successful_turn_is_acked_with_its_summary(gateway, runner) -> None:
    async with DashboardClient(ws_url(gateway), token("alice", ("operator",))) as c:
        agent_id = (await c.create_agent("bot", "claude-key", "ok")).agent_id
        sub = await c.subscribe_agent(agent_id)
        result = await c.send_command(agent_id, "hello", wait="completed")
        assert result == {
            "agentId": agent_id,
            "turn": {
                "kind": "turn_end",
                "success": True,
                "durationMs": 976,
                "costUsd": 0.000398,
                "usage": {"inputTokens": 12, "outputTokens": 5, "cachedInputTokens": 0},
            },
        }
        # The same turn_end as the event, correlated with the command.
        seen = await until(sub, agent_event("turn_end"))
        assert "you said: hello" in stdout_text(seen)
        # The default is unchanged: the ack says "delivered" (no turn).
        delivered = await c.send_command(agent_id, "again")
        assert delivered == {"agentId": agent_id}
        await c.terminate(agent_id)


async def test_a_failed_turn_is_an_error_ack_with_the_failures_code(gateway, runner) -> None:
    async with DashboardClient(ws_url(gateway), token("alice", ("operator",))) as c:
        logged_out = (await c.create_agent("nologin", "claude", "auth")).agent_id
        with pytest.raises(ClientError) as auth:
            await c.send_command(logged_out, "hello", wait="completed", timeout_ms=60_000)
        assert auth.value.code == ErrorCode.AGENT_AUTH_REQUIRED == 2006
        assert auth.value.message.startswith("Claude Code is not logged in")
        assert "ANTHROPIC_API_KEY" in auth.value.message

        agent_id = (await c.create_agent("bot", "claude-key", "api")).agent_id
        # No network: three retries are a retry storm, reported before the turn failed.
        with pytest.raises(ClientError) as storm:
            await c.send_command(agent_id, "retry 3", wait="completed")
        assert storm.value.code == ErrorCode.AGENT_API_UNREACHABLE
        assert "cannot reach its API" in storm.value.message
        # A turn that ended with an error the CLI did not classify.
        with pytest.raises(ClientError) as failed:
            await c.send_command(agent_id, "retry 1", wait="completed")
        assert failed.value.code == ErrorCode.AGENT_TURN_FAILED
        assert failed.value.message == "Claude Code's turn failed: API Error: Connection error."
        # Each turn its own outcome: the next one succeeds.
        ok = await c.send_command(agent_id, "fine now", wait="completed")
        assert ok["turn"]["success"] is True
        await c.terminate(logged_out)
        await c.terminate(agent_id)


async def test_codex_turns_are_acked_with_their_outcome(gateway, runner) -> None:
    """The Codex driver (one process per command, its thread resumed): each command's ack
    is its own turn's outcome."""
    async with DashboardClient(ws_url(gateway), token("alice", ("operator",))) as c:
        agent_id = (await c.create_agent("coder", "codex", "codex")).agent_id
        done = await c.send_command(agent_id, "hello", wait="completed")
        assert done["turn"] == {
            "kind": "turn_end",
            "success": True,
            "usage": {"inputTokens": 1200, "outputTokens": 34, "cachedInputTokens": 200},
        }
        with pytest.raises(ClientError) as offline:
            await c.send_command(agent_id, "offline", wait="completed")
        assert offline.value.code == ErrorCode.AGENT_API_UNREACHABLE
        assert offline.value.message.startswith("Codex cannot reach its API")
        assert (await c.send_command(agent_id, "again", wait="completed"))["turn"]["success"]
        await c.terminate(agent_id)


async def test_the_command_timeout_ends_the_wait(gateway, runner) -> None:
    async with DashboardClient(ws_url(gateway), token("alice", ("operator",))) as c:
        agent_id = (await c.create_agent("asker", "claude-ask", "timeout")).agent_id
        # A client whose usual ack time is shorter than the command's timeout: the wait
        # for the outcome grows to match, so the timeout, not the client, ends it.
        timeout_ms = int(t(3) * 1000)
        async with DashboardClient(
            ws_url(gateway), token("alice", ("operator",)), request_timeout=t(1)
        ) as quick:
            with pytest.raises(ClientError) as late:
                await quick.send_command(
                    agent_id, "write t.txt", wait="completed", timeout_ms=timeout_ms
                )
        assert late.value.code == ErrorCode.AGENT_COMMAND_TIMEOUT
        assert late.value.message == f"the command did not complete within {timeout_ms} ms"
        await c.terminate(agent_id, force=True)


def is_status(state: str) -> Callable[[DashboardEvent], bool]:
    return lambda e: isinstance(e, AgentStatusMessage) and e.payload.status == state


async def test_an_agent_that_ends_mid_turn_ends_the_wait(gateway, runner) -> None:
    async with DashboardClient(ws_url(gateway), token("alice", ("operator",))) as c:
        # Terminated while its turn waits for a permission decision.
        created = await c.create_agent("asker", "claude-ask", "ended")
        sub = await c.subscribe_agent(created.agent_id)
        async with running(
            c.send_command(created.agent_id, "write e.txt", wait="completed")
        ) as waiting:
            await waiting_for_permission(sub)
            await c.terminate(created.agent_id)
            with pytest.raises(ClientError) as ended:
                await waiting
        assert ended.value.code == ErrorCode.AGENT_NOT_FOUND
        assert ended.value.message == (
            "agent 'asker' was terminated before the command's turn ended"
        )

        # Killed from outside (a crash): the same, saying how it ended.
        created = await c.create_agent("victim", "claude-ask", "killed")
        sub = await c.subscribe_agent(created.agent_id)
        async with running(
            c.send_command(created.agent_id, "write k.txt", wait="completed")
        ) as waiting:
            await waiting_for_permission(sub)
            assert created.pid is not None
            os.kill(created.pid, signal.SIGKILL)
            with pytest.raises(ClientError) as killed:
                await waiting
        assert killed.value.code == ErrorCode.AGENT_NOT_FOUND
        assert killed.value.message == (
            "agent 'victim' was killed by SIGKILL before the command's turn ended"
        )
        await until(sub, is_status("crashed"))


async def test_a_model_that_cannot_tell_turn_ends_refuses_to_wait(gateway, runner) -> None:
    async with DashboardClient(ws_url(gateway), token("alice", ("operator",))) as c:
        agent_id = (await c.create_agent("plain", "echo-untracked", "untracked")).agent_id
        sub = await c.subscribe_agent(agent_id, ["stdout"])
        with pytest.raises(ClientError) as refused:
            await c.send_command(agent_id, "first", wait="completed")
        assert refused.value.code == ErrorCode.INVALID_MESSAGE
        assert "cannot tell when a turn ends" in refused.value.message
        # Refused before it was written: the next command's echo is the first output.
        assert await c.send_command(agent_id, "second") == {"agentId": agent_id}
        seen = await until(sub, lambda e: "echo: second" in stdout_text([e]))
        assert "echo: first" not in stdout_text(seen)
        await c.terminate(agent_id)


async def test_a_reply_to_a_question_gets_the_outcome_of_the_turn_that_asked(
    gateway, runner
) -> None:
    async with DashboardClient(ws_url(gateway), token("alice", ("operator",))) as c:
        agent_id = (await c.create_agent("term", "tui", "question")).agent_id
        sub = await c.subscribe_agent(agent_id)
        await until(sub, agent_event("turn_end"))  # its first prompt: ready
        await c.send_command(agent_id, "ask")
        await until(sub, agent_event("input_request"))
        result = await c.send_command(agent_id, "n", wait="completed")
        assert result == {"agentId": agent_id, "turn": {"kind": "turn_end", "success": True}}
        seen = await until(sub, agent_event("turn_end"))
        assert "skipped" in stdout_text(seen)
        await c.terminate(agent_id)


async def test_agent_command_wait_through_the_cli(stack: Stack, runner) -> None:
    env = stack.cli_env
    rc, out, err = await run_cli(
        env, "agent", "create", "bot", "--model", "claude-key", "--workspace", "cli-ok"
    )
    assert rc == 0, err
    agent_id = out.strip().splitlines()[-1]
    rc, out, err = await run_cli(env, "agent", "command", agent_id, "hello", "--wait")
    assert rc == 0, err
    assert out.strip().splitlines()[-1] == "turn completed: 1.0 s, $0.0004, 12 in / 5 out tokens"
    rc, out, err = await run_cli(env, "agent", "command", agent_id, "retry 1", "--wait")
    assert rc == 1
    assert "AGENT_TURN_FAILED (2005): Claude Code's turn failed" in err, err
    rc, _, err = await run_cli(env, "agent", "terminate", agent_id)
    assert rc == 0, err


async def test_create_agent_with_permissions(gateway, runner, tmp_path) -> None:
    async with DashboardClient(ws_url(gateway), token("alice", ("operator",))) as c:
        # Outside the operator's allow-list: refused, naming what is allowed.
        with pytest.raises(ClientError) as refused:
            await c.create_agent("bot", "claude-key", "perm", permission_mode="plan")
        assert refused.value.code == ErrorCode.AGENT_SPAWN_FAILED
        assert "acceptEdits" in refused.value.message
        # Mode "default" with only Read allowed: a write asks first (the model's default,
        # acceptEdits, would just write).
        created = await c.create_agent(
            "bot", "claude-key", "perm", permission_mode="default", allowed_tools=["Read"]
        )
        sub = await c.subscribe_agent(created.agent_id)
        await c.send_command(created.agent_id, "write p.txt")
        await waiting_for_permission(sub)
        assert not (tmp_path / "ws" / "perm" / "p.txt").exists()
        await c.terminate(created.agent_id)


async def test_agent_create_permissions_through_the_cli(stack: Stack, runner, tmp_path) -> None:
    env = stack.cli_env
    args = ("agent", "create", "bot", "--model", "claude-key", "--workspace", "perm-cli")
    rc, out, err = await run_cli(env, *args, "--allow-tool", "Read", "--allow-tool", "Bash")
    assert rc == 0, err
    agent_id = out.strip().splitlines()[-1]
    rc, _, err = await run_cli(env, *args, "--permission-mode", "bypassPermissions")
    assert rc == 1 and "AGENT_SPAWN_FAILED (2002)" in err, err
    assert "does not allow permission mode 'bypassPermissions'" in err
    rc, _, err = await run_cli(env, "agent", "terminate", agent_id)
    assert rc == 0, err
