"""``teamdash up`` and ``teamdash token`` as a user runs them: one command starts the
stack, a token from another terminal is accepted, Ctrl-C leaves no process behind."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

from tests.helpers import ROOT, free_port, http_get, port_open, t, wait_for
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
        descendants = _services(up)

        # The banner's Dashboard line: the page on the gateway's port, the dev token in the
        # fragment (never sent to the server), good for a WebSocket session.
        banner = (tmp_path / "up.log").read_text()
        url = next(
            line.split("Dashboard: ", 1)[1] for line in banner.splitlines() if "Dashboard: " in line
        )
        page, _, fragment = url.strip().partition("#token=")
        assert page == f"http://127.0.0.1:{port}/dashboard/"
        status, body = http_get(page)
        assert status == 200 and "Team Dashboard" in body
        dashboard = await WSClient.authed(f"ws://127.0.0.1:{port}/ws", fragment)
        assert dashboard.status["userId"] == "dev"
        await dashboard.close()

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
    await _gone(descendants, "every process of `up` to end with it")


def _start_up(tmp_path: Path, port: int, *args: str, **extra: str) -> subprocess.Popen[bytes]:
    """``teamdash up`` with its output on a pipe (as under ``| tee``), in its own group."""
    return subprocess.Popen(
        [sys.executable, "-m", "shared.cli", "up", *args],
        cwd=ROOT,
        env={**_env(tmp_path, port), **extra},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _read_until(up: subprocess.Popen[bytes], marker: bytes, timeout: float) -> bytes:
    assert up.stdout is not None
    out = b""
    deadline = time.monotonic() + t(timeout)
    os.set_blocking(up.stdout.fileno(), False)
    while marker not in out:
        if time.monotonic() > deadline or up.poll() is not None:
            raise AssertionError(
                f"no {marker!r} from `teamdash up`: {out.decode(errors='replace')}"
            )
        try:
            chunk = os.read(up.stdout.fileno(), 65536)
        except BlockingIOError:
            time.sleep(0.05)
            continue
        out += chunk
    return out


def _services(up: subprocess.Popen[bytes]) -> list[psutil.Process]:
    found = psutil.Process(up.pid).children(recursive=True)
    names = " ".join(" ".join(p.cmdline()) for p in found)
    for service in (
        "redis-server",
        "shared.cli gateway",
        "shared.cli runner",
        "shared.cli collector",
    ):
        assert service in names, names
    return found


async def _gone(processes: list[psutil.Process], what: str) -> None:
    def all_gone() -> bool:
        return not [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]

    try:
        # A service stops by itself here: the runner gives its agents their grace (5 s) and
        # more (10 s), then flushes its events (5 s) — to a Redis that may be gone too.
        await wait_for(all_gone, timeout=60, what=what)
    except AssertionError as e:
        left = []
        for p in processes:
            with contextlib.suppress(psutil.Error):  # a zombie has no command line
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    left.append(" ".join(p.cmdline()[:4]))
        raise AssertionError(f"{e}; still running: {left}") from None
    finally:
        for p in processes:  # never leave one behind, even when the test fails
            if p.is_running():
                p.kill()


async def test_ctrl_c_through_a_pipe_whose_reader_died_stops_everything(tmp_path: Path) -> None:
    """``teamdash up 2>&1 | tee log``, then Ctrl-C: the terminal's SIGINT reaches the whole
    foreground group, so tee dies and every later write of ``up`` hits a broken pipe."""
    port = free_port()
    up = _start_up(tmp_path, port)
    services: list[psutil.Process] = []
    try:
        _read_until(up, b"Press Ctrl-C", timeout=30)
        services = _services(up)
        state = json.loads((tmp_path / "state" / "up.json").read_text())
        assert state["pid"] == up.pid and state["gatewayPort"] == port
        assert up.stdout is not None
        up.stdout.close()  # the reader (tee) is gone
        os.killpg(up.pid, signal.SIGINT)
        code = up.wait(t(40))
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()
        await _gone(services, "every service of `up` to exit")
    assert code == 0
    assert not (tmp_path / "state" / "up.json").exists()
    assert not port_open(port)


async def test_sigkill_of_up_takes_every_service_and_agent_with_it(tmp_path: Path) -> None:
    port = free_port()
    up = _start_up(tmp_path, port)
    services: list[psutil.Process] = []
    try:
        _read_until(up, b"Press Ctrl-C", timeout=30)
        services = _services(up)
        token = subprocess.run(
            [sys.executable, "-m", "shared.cli", "token", "--user", "dave"],
            cwd=ROOT,
            env=_env(tmp_path, port),
            capture_output=True,
            text=True,
            timeout=t(30),
            check=True,
        ).stdout.split()[-1]
        client = await WSClient.authed(f"ws://127.0.0.1:{port}/ws", token)
        ack = await client.request(
            "agent:create", {"name": "demo", "model": "demo", "workspace": "demo"}, timeout=20
        )
        assert ack["success"], ack
        services.append(psutil.Process(int(ack["result"]["pid"])))  # the agent
        await client.close()
    finally:
        up.kill()  # SIGKILL: `up` cannot stop anything itself
        up.wait()
        await _gone(services, "every service and agent to follow the SIGKILLed `up`")
    assert not port_open(port)


def test_a_taken_port_is_one_clear_line_and_nothing_starts(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        out = subprocess.run(
            [sys.executable, "-m", "shared.cli", "up"],
            cwd=ROOT,
            env=_env(tmp_path, port),
            capture_output=True,
            text=True,
            timeout=t(30),
        )
    assert out.returncode == 1, out
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert f"port {port} on 127.0.0.1 (gateway) is not available" in lines[0]
    assert "--port" in lines[0]
    assert not (tmp_path / "state" / "redis").exists()  # no Redis was started


async def test_health_and_agent_tail_against_the_up_stack(tmp_path: Path) -> None:
    """From another terminal (same state folder, no ``REDIS_URL``): the health commands find
    the stack's Redis through ``up.json``; ``agent tail`` sees its agent's final status when
    the stack stops (the runner stops first, the gateways after a drain) and exits 0."""
    from tests.client.helpers import CliProcess, run_cli

    port = free_port()
    # run_cli lays this over the test's own environment: blank what would point elsewhere.
    env = {**_env(tmp_path, port), "REDIS_URL": "", "TEAMDASH_URL": "", "TEAMDASH_TOKEN": ""}
    up = _start_up(tmp_path, port)
    services: list[psutil.Process] = []
    tail: CliProcess | None = None

    async def healthy(service: str) -> bool:
        rc, _, _ = await run_cli(env, "health", service)
        return rc == 0

    try:
        _read_until(up, b"Press Ctrl-C", timeout=30)
        services = _services(up)
        for service in ("runner", "collector", "gateway"):
            await wait_for(lambda s=service: healthy(s), timeout=20, what=f"{service} healthy")
            rc, out, err = await run_cli(env, "health", service)
            assert rc == 0, (service, out, err)
            assert out.startswith(f"ok: {service}"), out

        client_env = {**env, "TEAMDASH_URL": f"ws://127.0.0.1:{port}/ws"}
        rc, out, err = await run_cli(
            client_env, "agent", "create", "tailed", "--model", "demo", "--workspace", "demo"
        )
        assert rc == 0, err
        agent_id = out.split()[-1]
        tail = await CliProcess.start(client_env, "agent", "tail", agent_id)
        # A tail follows from the moment it is subscribed ("tailing agent …" comes after the
        # subscription's ack): command the agent only then, or its answer may come first.
        await wait_for(lambda: "tailing agent" in tail.stderr, timeout=20, what="the tail")
        rc, _, err = await run_cli(client_env, "agent", "command", agent_id, "ping")
        assert rc == 0, err
        await wait_for(lambda: "you said: ping" in tail.stdout, timeout=20, what="tail output")

        os.killpg(up.pid, signal.SIGINT)
        assert await tail.wait(40) == 0, tail.stderr
        last_line = tail.stderr.strip().splitlines()[-1]
        assert last_line == f"teamdash: agent {agent_id} stopped (runner-stopped)"
        assert up.wait(t(40)) == 0
    finally:
        if tail is not None:
            await tail.kill()
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()
        await _gone(services, "every service of `up` to exit")
    assert not (tmp_path / "state" / "up.json").exists()
