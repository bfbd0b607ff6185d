"""The real Claude Code CLI (the pinned version, installed from npm into ``.cache/`` under
the project the first time) run by the packaged default models: not logged in, the first
command ends in an ``agent:error`` that says so, within seconds, without the network."""

from __future__ import annotations

import fcntl
import shutil
import subprocess
from pathlib import Path

from agent_runner.drivers.claude import CLAUDE_CODE_VERSION
from shared.bus import EventBus
from shared.keys import agent_topic
from tests.agent_runner.conftest import Gateway, wait_events
from tests.helpers import ROOT, t

CACHE = ROOT / ".cache" / f"claude-code-{CLAUDE_CODE_VERSION}"


def installed_claude() -> Path:
    """The pinned CLI's bin folder, installed with npm once (one installer at a time)."""
    bin_dir = CACHE / "node_modules" / ".bin"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (bin_dir / "claude").exists():
            npm = shutil.which("npm")
            assert npm is not None, "npm is needed to install the Claude Code CLI"
            subprocess.run(
                [npm, "install", "--prefix", str(CACHE), "--no-audit", "--no-fund",
                 f"@anthropic-ai/claude-code@{CLAUDE_CODE_VERSION}"],
                check=True,
                capture_output=True,
                timeout=600,
            )  # fmt: skip
    version = subprocess.run(
        [str(bin_dir / "claude"), "--version"], check=True, capture_output=True, timeout=60
    )
    assert version.stdout.decode().startswith(CLAUDE_CODE_VERSION), version.stdout
    return bin_dir


async def test_real_claude_not_logged_in_is_an_agent_error(
    start_runner, gateway: Gateway, bus: EventBus, tmp_path: Path
) -> None:
    bin_dir = installed_claude()
    (tmp_path / "no-secrets").mkdir()
    runner = await start_runner(
        TEAMDASH_MODELS_FILE="",  # the packaged default models
        PATH=f"{bin_dir}:/usr/bin:/bin",
        TEAMDASH_SECRETS_DIR=str(tmp_path / "no-secrets"),
    )
    agent_id, reply = await gateway.create("claude-3-sonnet", workspace="real")
    assert reply.success, reply
    request_id = await gateway.send(
        "command", agent_id, {"agentId": agent_id, "command": "say hi"}, wait=False
    )
    assert (await gateway.reply(request_id)).success
    evs = await wait_events(
        bus,
        agent_topic(agent_id),
        lambda e: any(x["type"] == "agent:error" for x in e),
        timeout=t(30),
        what="the not-logged-in error",
    )
    [error] = [e for e in evs if e["type"] == "agent:error"]
    assert error["payload"]["error"]["code"] == "AGENT_AUTH_REQUIRED"
    assert "Not logged in" in error["payload"]["error"]["message"]
    assert error["metadata"]["correlationId"] == request_id
    evs = await wait_events(
        bus,
        agent_topic(agent_id),
        lambda e: any(o["payload"].get("event", {}).get("kind") == "turn_end" for o in e
                      if o["type"] == "agent:output"),
        what="the failed turn",
    )  # fmt: skip
    [end] = [
        e["payload"]["event"]
        for e in evs
        if e["type"] == "agent:output" and e["payload"].get("event", {}).get("kind") == "turn_end"
    ]
    assert end["success"] is False and end["errorCode"] == "AGENT_AUTH_REQUIRED"
    # The CLI wrote its configuration into the agent's own home, not the workspace.
    assert (runner.settings.agent_home_root / agent_id / ".claude").is_dir()
    assert not (runner.settings.workspace_root / "real" / ".claude").exists()
