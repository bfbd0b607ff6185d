"""``teamdash up`` and ``teamdash token`` as a user runs them: one command starts the
stack, a token from another terminal is accepted, Ctrl-C leaves no process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from tests.helpers import ROOT, free_port, port_open, t, wait_for
from tests.wsclient import WSClient


def _env(tmp_path: Path, port: int) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("TEAMDASH_") and k != "REDIS_URL"
    }
    env.update(
        TEAMDASH_STATE_DIR=str(tmp_path / "state"),
        TEAMDASH_GATEWAY_PORT=str(port),
        TEAMDASH_METRICS_INTERVAL_S="0.3",
        PYTHONUNBUFFERED="1",
    )
    return env


async def test_up_serves_metrics_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    port = free_port()
    env = _env(tmp_path, port)
    log = open(tmp_path / "up.log", "wb")
    up = subprocess.Popen(
        [sys.executable, "-m", "shared.cli", "up"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        await wait_for(lambda: port_open(port), timeout=30, what="gateway port")
        await wait_for(
            lambda: b"Press Ctrl-C" in (tmp_path / "up.log").read_bytes(), timeout=10, what="banner"
        )
        descendants = psutil.Process(up.pid).children(recursive=True)
        names = " ".join(" ".join(p.cmdline()) for p in descendants)
        for service in (
            "redis-server",
            "shared.cli gateway",
            "shared.cli runner",
            "shared.cli collector",
        ):
            assert service in names, names

        # `teamdash token` in "another terminal": same state folder, token alone on the last line.
        out = subprocess.run(
            [sys.executable, "-m", "shared.cli", "token", "--user", "carol", "--role", "operator"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=t(30),
            check=True,
        )
        token = out.stdout.strip().splitlines()[-1]
        client = await WSClient.authed(f"ws://127.0.0.1:{port}/ws", token)
        assert client.status["userId"] == "carol"
        await client.subscribe("metrics")
        first = await client.recv_type("metrics:update", timeout=10)
        assert first["payload"]["system"]["cpu"]["cores"] >= 1

        # The configured demo model: create an agent, command it, stream its output.
        ack = await client.request(
            "agent:create", {"name": "demo", "model": "demo", "workspace": "demo"}, timeout=20
        )
        assert ack["success"], ack
        agent_id = ack["result"]["agentId"]
        await client.subscribe("agent", agentId=agent_id, filters=["stdout"])
        ack = await client.request("agent:command", {"agentId": agent_id, "command": "hello up"})
        assert ack["success"], ack
        answer = await client.recv_where(
            lambda m: m["type"] == "agent:output" and "you said: hello up" in m["payload"]["data"],
            timeout=15,
            what="the demo agent's answer",
        )
        assert answer["payload"]["stream"] == "stdout"
        demo_pid = psutil.Process(up.pid).children(recursive=True)
        descendants += [p for p in demo_pid if p not in descendants]
        await client.close()
    finally:
        up.send_signal(signal.SIGINT)
        try:
            code = up.wait(t(40))
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
            raise
        finally:
            log.close()
    text = (tmp_path / "up.log").read_text(errors="replace")
    assert code == 0, text
    assert "stopped" in text
    time.sleep(0.2)
    leftovers = [p for p in descendants if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not leftovers, leftovers
