"""The load-balanced topology without Docker: HAProxy with deploy/haproxy.cfg in front of
three gateway processes, Redis, a runner and a collector. A client goes through HAProxy,
loses its gateway to SIGKILL, comes back through HAProxy on a live one and resumes; HAProxy
takes the dead gateway out; everything stops and leaves nothing behind."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from shared.topology import LocalTopology
from tests.deploy.conftest import require
from tests.gateway.conftest import token
from tests.helpers import ROOT, free_port, http_get, port_open, t, wait_for
from tests.wsclient import WSClient


def all_pids(topology: LocalTopology) -> list[psutil.Process]:
    found = []
    for p in topology.processes():
        try:
            proc = psutil.Process(p.pid)
            found += [proc, *proc.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    return found


def still_running(processes: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for p in processes:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
        except psutil.NoSuchProcess:
            pass
    return alive


@pytest.fixture
async def topology(service_env: dict[str, str], tmp_path: Path) -> AsyncIterator[LocalTopology]:
    require("haproxy", "haproxy")
    env = {
        **service_env,
        "TEAMDASH_METRICS_INTERVAL_S": "0.3",
        "TEAMDASH_CURSOR_FLUSH_INTERVAL_S": "0.1",
    }
    topo = LocalTopology(3, env=env, log_dir=tmp_path / "logs", start_timeout_s=t(30))
    await asyncio.to_thread(topo.start)
    started = all_pids(topo)
    try:
        yield topo
    finally:
        for p in topo.processes():
            if p.log_path is not None:
                sys.stderr.write(f"--- {p.name} (tail)\n{p.log_text()[-1500:]}\n")
        await asyncio.to_thread(topo.stop)
        assert not still_running(started + all_pids(topo)), "the topology left processes behind"
        assert topo.workdir is None


def teamdash(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``teamdash <args>`` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=t(30),
        check=False,
    )


def start_up_lb(env: dict[str, str], port: int, log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "shared.cli",
                "up",
                "--lb",
                "--gateways",
                "2",
                "--port",
                str(port),
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


async def resume(url: str, session_id: str) -> WSClient:
    client = await WSClient.open(url)
    await client.send("auth", {"token": token(), "clientId": "lb-test", "sessionId": session_id})
    return client


def offset(msg: dict[str, Any]) -> int:
    return int(msg["metadata"]["offset"]) if "offset" in msg.get("metadata", {}) else -1


async def test_a_client_survives_its_gateway_through_haproxy(topology: LocalTopology) -> None:
    assert topology.server_states() == {0: "UP", 1: "UP", 2: "UP"}
    assert len({p.pid for p in topology.gateway_processes}) == 3
    assert len(set(topology.gateway_ports)) == 3 and topology.lb_port not in topology.gateway_ports

    client = await WSClient.authed(topology.lb_url, token())
    session_id = client.status["sessionId"]
    victim = topology.gateway_index(client.status["gatewayId"])
    await client.subscribe("metrics")
    first = await client.recv_type("metrics:update", timeout=10)
    assert first["payload"]["system"]["cpu"]["cores"] >= 1
    await asyncio.sleep(0.3)  # the session's cursor is flushed

    await asyncio.to_thread(topology.kill_gateway, victim)
    # HAProxy closes the client's side when the gateway's side goes away.
    await asyncio.wait_for(client.ws.wait_closed(), t(10))

    # Right away (HAProxy may not have noticed yet: a refused connection is redispatched).
    again = await resume(topology.lb_url, session_id)
    status = (await again.recv_type("connection:status", timeout=10))["payload"]
    assert status["resumed"] is True and status["sessionId"] == session_id
    survivor = topology.gateway_index(status["gatewayId"])
    assert survivor != victim and topology.gateway_processes[survivor].alive()
    # The restored metrics subscription keeps delivering, newer than what came before.
    update = await again.recv_where(
        lambda m: m["type"] == "metrics:update" and offset(m) > offset(first),
        timeout=10,
        what="a newer metrics:update",
    )
    assert update["payload"]["system"]["memory"]["total"] > 0

    await asyncio.to_thread(topology.wait_server_state, victim, "DOWN", t(15))
    states = topology.server_states()
    assert [states[i] for i in range(3) if i != victim] == ["UP", "UP"]

    # New clients only land on live gateways now.
    landed = set()
    for _ in range(6):
        c = await WSClient.authed(topology.lb_url, token())
        landed.add(topology.gateway_index(c.status["gatewayId"]))
        await c.close()
    assert victim not in landed

    # Back on the same port: HAProxy brings it back into rotation.
    await asyncio.to_thread(topology.restart_gateway, victim)
    assert topology.server_states()[victim] == "UP"
    await again.close()


async def test_health_commands_report_the_running_services(
    topology: LocalTopology, service_env: dict[str, str]
) -> None:
    env = {**os.environ, **service_env}

    async def health(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(teamdash, {**env, **extra}, "health", *args)

    for service in ("runner", "collector"):
        result = await health(service)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"ok: {service} heartbeat fresh")
    assert (await health("runner", TEAMDASH_RUNNER_ID="no-such-runner")).returncode == 1
    assert (await health("collector", TEAMDASH_REDIS_PREFIX="nothing-here")).returncode == 1

    port = str(topology.gateway_ports[0])
    assert (await health("gateway", "--port", port)).returncode == 0
    await asyncio.to_thread(topology.kill_gateway, 0)
    failed = await health("gateway", TEAMDASH_GATEWAY_PORT=port)
    assert failed.returncode == 1 and "unhealthy" in failed.stderr


async def test_teamdash_up_lb_serves_through_haproxy_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    require("haproxy", "haproxy")
    port = free_port()
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("TEAMDASH_") and k != "REDIS_URL"
    }
    env.update(
        TEAMDASH_STATE_DIR=str(tmp_path / "state"),
        TEAMDASH_METRICS_INTERVAL_S="0.3",
        PYTHONUNBUFFERED="1",
    )
    log_path = tmp_path / "up.log"
    up = start_up_lb(env, port, log_path)
    try:
        await wait_for(
            lambda: b"Press Ctrl-C" in log_path.read_bytes(), timeout=40, what="the banner"
        )
        assert port_open(port)
        text = log_path.read_text()
        assert f"ws://127.0.0.1:{port}/ws" in text and "haproxy" in text
        descendants = psutil.Process(up.pid).children(recursive=True)
        names = " ".join(" ".join(p.cmdline()) for p in descendants)
        assert names.count("shared.cli gateway") == 2 and "haproxy" in names, names

        out = await asyncio.to_thread(teamdash, env, "token", "--user", "carol")
        assert out.returncode == 0, out.stderr
        client = await WSClient.authed(
            f"ws://127.0.0.1:{port}/ws", out.stdout.strip().splitlines()[-1]
        )
        assert client.status["userId"] == "carol"
        await client.subscribe("metrics")
        await client.recv_type("metrics:update", timeout=10)
        await client.close()
    finally:
        up.send_signal(signal.SIGINT)
        try:
            code = await asyncio.to_thread(up.wait, t(60))
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
            raise
    text = log_path.read_text(errors="replace")
    assert code == 0, text
    assert "teamdash: stopped" in text
    await wait_for(lambda: not still_running(descendants), what="every process of `up` to end")


async def test_the_public_frontend_refuses_the_gateways_metrics(topology: LocalTopology) -> None:
    """Clients reach the gateways through HAProxy; the gateways' /metrics is the operator's,
    scraped on each gateway's own port (docs/operations.md), and refused through HAProxy."""
    lb = f"http://127.0.0.1:{topology.lb_port}"
    for path in ("/metrics", "/metrics?format=prometheus", "/metrics/"):
        status, _ = await asyncio.to_thread(http_get, lb + path)
        assert status == 403, path
    status, body = await asyncio.to_thread(
        http_get, f"http://127.0.0.1:{topology.gateway_ports[0]}/metrics"
    )
    assert status == 200 and "teamdash_" in body
    status, _ = await asyncio.to_thread(http_get, lb + "/healthz")  # the rest still passes
    assert status == 200


async def test_sigkill_of_up_lb_leaves_no_process_behind(tmp_path: Path) -> None:
    """HAProxy and every service of ``up --lb`` start through the parent-death wrapper: a
    SIGKILLed ``up --lb`` (which cannot stop anything itself) takes them all with it."""
    require("haproxy", "haproxy")
    port = free_port()
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("TEAMDASH_") and k != "REDIS_URL"
    }
    env.update(TEAMDASH_STATE_DIR=str(tmp_path / "state"), PYTHONUNBUFFERED="1")
    log_path = tmp_path / "up.log"
    up = start_up_lb(env, port, log_path)
    descendants: list[psutil.Process] = []
    try:
        await wait_for(
            lambda: b"Press Ctrl-C" in log_path.read_bytes(), timeout=40, what="the banner"
        )
        descendants = psutil.Process(up.pid).children(recursive=True)
        names = " ".join(" ".join(p.cmdline()) for p in descendants)
        assert "haproxy" in names and names.count("shared.cli gateway") == 2, names
    finally:
        up.kill()
        await asyncio.to_thread(up.wait)
        try:
            await wait_for(
                lambda: not still_running(descendants), timeout=30, what="every process to exit"
            )
        finally:
            for p in still_running(descendants):
                p.kill()
    assert not port_open(port)
