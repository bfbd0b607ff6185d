"""Drivers end to end through a real runner: fixture programs that reproduce each CLI's I/O
contract (tests/agents/claude_code.py, codex.py), readable events, surfaced failures,
permission prompts answered through the runner, the end of each turn."""

from __future__ import annotations

from typing import Any

import orjson

from shared.bus import EventBus
from shared.errors import ErrorCode
from shared.keys import LOGS_TOPIC, agent_topic
from tests.agent_runner.conftest import Gateway, outputs, wait_events


def kinds(evs: list[dict[str, Any]]) -> list[str]:
    return [o["event"]["kind"] for o in outputs(evs) if "event" in o]


def turn_ends(evs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o["event"] for o in outputs(evs) if o.get("event", {}).get("kind") == "turn_end"]


async def test_claude_not_logged_in_is_an_error_and_a_failed_turn(
    start_runner, gateway: Gateway, bus: EventBus
) -> None:
    await start_runner()
    agent_id, reply = await gateway.create("claude")
    assert reply.success, reply
    request_id = await gateway.send(
        "command", agent_id, {"agentId": agent_id, "command": "hello"}, wait=False
    )
    assert (await gateway.reply(request_id)).success
    evs = await wait_events(bus, agent_topic(agent_id), lambda e: bool(turn_ends(e)))
    [end] = turn_ends(evs)
    assert end["success"] is False and end["errorCode"] == "AGENT_AUTH_REQUIRED"
    [error] = [e for e in evs if e["type"] == "agent:error"]
    assert error["metadata"]["correlationId"] == request_id
    assert error["payload"]["error"]["code"] == "AGENT_AUTH_REQUIRED"
    message = error["payload"]["error"]["message"]
    assert "not logged in" in message and "ANTHROPIC_API_KEY" in message
    # The readable text says it too; no raw JSON in data.
    assert not any(o["data"].startswith("{") for o in outputs(evs))
    assert kinds(evs) == ["session", "notice", "turn_end"]
    alerts = await wait_events(
        bus, LOGS_TOPIC, lambda e: any(a["payload"]["category"] == "agent" for a in e)
    )
    [alert] = [a for a in alerts if a["payload"]["details"].get("agentId") == agent_id]
    assert alert["payload"]["level"] == "error"
    assert alert["payload"]["details"]["code"] == "AGENT_AUTH_REQUIRED"
    assert "user:alice" in alert["_tags"]


async def test_claude_text_tool_call_result_and_turn_end(
    start_runner, gateway: Gateway, bus: EventBus
) -> None:
    runner = await start_runner()
    agent_id, reply = await gateway.create("claude-key", workspace="edit")
    assert reply.success, reply
    assert (await gateway.command(agent_id, "write hello.txt")).success
    evs = await wait_events(bus, agent_topic(agent_id), lambda e: bool(turn_ends(e)))
    assert kinds(evs) == ["session", "text", "tool_call", "tool_result", "text", "turn_end"]
    out = outputs(evs)
    session = out[0]["event"]
    assert session["permissionMode"] == "acceptEdits"  # the model's default, unattended
    call = out[2]["event"]
    workspace = runner.settings.workspace_root / "edit"
    assert call == {
        "kind": "tool_call",
        "toolUseId": "toolu_01",
        "name": "Write",
        "summary": str(workspace / "hello.txt"),
    }
    assert out[2]["data"] == f"[tool] Write {workspace / 'hello.txt'}\n"
    assert out[3]["event"]["success"] is True
    assert (workspace / "hello.txt").read_text() == "hi\n"
    end = out[5]["event"]
    assert end["success"] is True and end["costUsd"] == 0.000398 and end["durationMs"] == 976
    assert end["usage"] == {"inputTokens": 12, "outputTokens": 5, "cachedInputTokens": 0}
    assert out[5]["data"] == "[done] 1.0 s, $0.0004, 12 in / 5 out tokens\n"
    for o in out:
        assert orjson.loads(o["raw"])["session_id"] == session["sessionId"]
    # The CLI's files went to the agent's own home, not into the workspace.
    assert sorted(p.name for p in workspace.iterdir()) == ["hello.txt"]
    assert not [e for e in evs if e["type"] == "agent:error"]


async def test_claude_permission_prompt_answered_through_the_runner(
    start_runner, gateway: Gateway, bus: EventBus
) -> None:
    runner = await start_runner()
    agent_id, reply = await gateway.create(
        "claude-key", workspace="ask", permissions={"mode": "default", "allowedTools": ["Read"]}
    )
    assert reply.success, reply
    assert (await gateway.command(agent_id, "write a.txt")).success
    evs = await wait_events(bus, agent_topic(agent_id), lambda e: "permission_request" in kinds(e))
    [ask] = [o["event"] for o in outputs(evs) if o["event"]["kind"] == "permission_request"]
    assert ask["tool"] == "Write" and ask["summary"].endswith("a.txt")
    alerts = await wait_events(
        bus, LOGS_TOPIC, lambda e: any("waits for permission" in a["payload"]["message"] for a in e)
    )
    assert any(a["payload"]["level"] == "warning" for a in alerts)
    # An unknown request id is refused; the real one is answered.
    bad = await gateway.send(
        "permission",
        agent_id,
        {"agentId": agent_id, "requestId": "nope", "decision": "allow"},
    )
    assert not bad.success and bad.code == ErrorCode.INVALID_MESSAGE
    answer = await gateway.send(
        "permission",
        agent_id,
        {"agentId": agent_id, "requestId": ask["requestId"], "decision": "allow"},
    )
    assert answer.success and answer.result == {"agentId": agent_id, "tool": "Write"}
    evs = await wait_events(bus, agent_topic(agent_id), lambda e: bool(turn_ends(e)))
    assert kinds(evs) == [
        "session",
        "text",
        "tool_call",
        "permission_request",
        "permission_resolved",
        "tool_result",
        "text",
        "turn_end",
    ]
    assert (runner.settings.workspace_root / "ask" / "a.txt").read_text() == "hi\n"
    # Within the operator's allow-list only.
    _, refused = await gateway.create(
        "claude-key", workspace="x", permissions={"mode": "bypassPermissions"}
    )
    assert not refused.success and refused.code == ErrorCode.AGENT_SPAWN_FAILED
    assert "bypassPermissions" in (refused.error or "") and "acceptEdits" in (refused.error or "")


async def test_claude_retries_summarised_and_storm_reported(
    start_runner, gateway: Gateway, bus: EventBus
) -> None:
    await start_runner()
    agent_id, reply = await gateway.create("claude-key")
    assert reply.success, reply
    assert (await gateway.command(agent_id, "retry 5")).success
    assert (await gateway.command(agent_id, "rate-limit")).success
    evs = await wait_events(bus, agent_topic(agent_id), lambda e: len(turn_ends(e)) == 2)
    retries = [o for o in outputs(evs) if o["event"]["kind"] == "retry"]
    assert [r["event"]["attempt"] for r in retries] == [1, 2, 3, 4, 5, 1, 2]
    assert retries[0]["data"] == "[retry] API call failed (unknown): attempt 1/10 in 0.6 s\n"
    errors = [e["payload"]["error"]["code"] for e in evs if e["type"] == "agent:error"]
    # One per kind and turn: the storm once (at attempt 3), the rate limit once.
    assert errors == ["AGENT_API_UNREACHABLE", "AGENT_RATE_LIMITED"]
    first, second = turn_ends(evs)
    assert first["success"] is False and first["errorCode"] == "AGENT_API_UNREACHABLE"
    assert second["success"] is True
    statuses = [e["payload"]["status"] for e in evs if e["type"] == "agent:status"]
    assert statuses == ["starting", "running"]


async def test_codex_one_process_per_command_resuming_its_thread(
    start_runner, gateway: Gateway, bus: EventBus
) -> None:
    await start_runner()
    agent_id, reply = await gateway.create("codex")
    assert reply.success, reply
    for command in ("hello", "run ls", "offline"):
        assert (await gateway.command(agent_id, command)).success
    evs = await wait_events(bus, agent_topic(agent_id), lambda e: len(turn_ends(e)) == 3)
    texts = [o["event"]["text"] for o in outputs(evs) if o["event"]["kind"] == "text"]
    # The second command resumed the first one's thread (turn 2 of it).
    assert texts == ["turn 1: hello", "turn 2: run ls"]
    sessions = {o["event"]["sessionId"] for o in outputs(evs) if o["event"]["kind"] == "session"}
    assert len(sessions) == 1
    calls = [o["event"] for o in outputs(evs) if o["event"]["kind"] in ("tool_call", "tool_result")]
    assert [c["kind"] for c in calls] == ["tool_call", "tool_result"]
    assert calls[0]["name"] == "shell" and calls[1]["success"] is True
    first, second, third = turn_ends(evs)
    assert first["success"] and second["success"]
    assert first["usage"] == {"inputTokens": 1200, "outputTokens": 34, "cachedInputTokens": 200}
    assert third["success"] is False and third["errorCode"] == "AGENT_API_UNREACHABLE"
    retries = [o["event"]["attempt"] for o in outputs(evs) if o["event"]["kind"] == "retry"]
    assert retries == [2, 3, 4, 5]
    errors = [e["payload"]["error"]["code"] for e in evs if e["type"] == "agent:error"]
    assert errors == ["AGENT_API_UNREACHABLE"]
