"""The load-balanced topology on one machine, without Docker (``teamdash up --lb``, tests).

::

    client ──ws──▶ haproxy :lb_port ──▶ gateway ×N (127.0.0.1, one port each) ──┐
                   (deploy/haproxy.cfg)                                          ├── Redis
                                              agent runner, metrics collector ──┘

The same shape as compose.yaml, with the same HAProxy configuration: ``deploy/haproxy.cfg``
holds every setting (balancing, health checks on ``GET /readyz``, WebSocket timeouts), and
only the backend's server lines differ. Here they are one ``server`` line per local gateway
port, written to a small file in a private work folder and given to HAProxy after the main
file (``haproxy -f deploy/haproxy.cfg -f <workdir>/gateways.cfg``); compose uses
``deploy/haproxy-compose.cfg`` instead. HAProxy's runtime API socket is in the work folder too,
so :meth:`LocalTopology.server_states` can tell which gateways HAProxy considers up.

Every service is a ``teamdash <service>`` process (HAProxy the ``haproxy`` binary from PATH)
in its own session, so a terminal's Ctrl-C reaches only the supervisor. :meth:`~LocalTopology.stop`
stops them in order — runner (which stops its agents), collector, gateways after a short
drain, HAProxy, Redis — escalates to SIGKILL after a grace period, and kills whatever a
service left behind; every process is started through :func:`shared.lifeline.die_with_parent`,
so even a SIGKILLed supervisor leaves nothing running.
"""

from __future__ import annotations

import contextlib
import csv
import http.client
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

import psutil

from shared.lifeline import die_with_parent
from shared.redis_server import EmbeddedRedis, free_port
from shared.settings import Env, default_state_dir

#: The HAProxy configuration shared with compose.yaml (a source checkout's ``deploy/``).
HAPROXY_CONFIG = Path(__file__).resolve().parent.parent / "deploy" / "haproxy.cfg"
#: Name of the backend (in deploy/haproxy.cfg) and prefix of its servers (gw1, gw2, …).
BACKEND = "gateways"
SERVER_PREFIX = "gw"
#: Seconds the gateways keep running after the runner stopped, so its last events (every
#: agent's ``stopped``) reach the clients.
DRAIN_S = 1.0


class TopologyError(RuntimeError):
    """The topology cannot be started (a binary is missing, a service did not come up)."""


def find_haproxy() -> str:
    """Path of the ``haproxy`` binary on PATH, or :class:`TopologyError` saying how to get it."""
    found = shutil.which("haproxy")
    if found is None:
        raise TopologyError(
            "haproxy is not installed (no `haproxy` on PATH); install it, e.g. apt-get install haproxy"
        )
    return found


def render_backend(host: str, ports: list[int]) -> str:
    """The per-environment part of the HAProxy configuration for gateways on ``ports``."""
    lines = [
        "# Written by shared/topology.py: the local gateways, one server per port.",
        "# Everything else (balancing, checks, timeouts) comes from deploy/haproxy.cfg.",
        f"backend {BACKEND}",
    ]
    lines += [f"    server {SERVER_PREFIX}{i + 1} {host}:{port}" for i, port in enumerate(ports)]
    return "\n".join(lines) + "\n"


class Process:
    """One child process in its own session; its output goes to ``log_path`` or is inherited."""

    def __init__(
        self, name: str, argv: list[str], env: Mapping[str, str], log_path: Path | None = None
    ) -> None:
        self.name = name
        self.argv = argv
        self.env = dict(env)
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        log = open(self.log_path, "ab") if self.log_path else None  # noqa: SIM115 - the child keeps it
        try:
            self.proc = subprocess.Popen(
                # SIGTERM (a clean stop) to the service if the supervisor dies without
                # stopping it: nothing outlives the topology, even a SIGKILLed ``up --lb``.
                die_with_parent(self.argv),
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT if log else None,
                start_new_session=True,
            )
        finally:
            if log is not None:
                log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was not started"
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def terminate(self) -> None:
        """Send SIGTERM (a clean stop) without waiting."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL the process and its process group at once (a crash, as far as others can tell)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM, wait up to ``grace_s``, then SIGKILL; then kill anything it left behind
        (its process group, and descendants that moved to sessions of their own)."""
        if self.proc is None:
            return
        try:
            leftovers = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            leftovers = []
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                print(
                    f"teamdash: {self.name} did not stop in {grace_s:g}s; killing it",
                    file=sys.stderr,
                )
        self.kill()
        for p in leftovers:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()


class LocalTopology:
    """Redis, N gateways, HAProxy, a runner and a collector as local processes.

    ``env`` is laid over ``os.environ`` for every service (``REDIS_URL`` there means: use that
    Redis instead of starting one). Use as a context manager, or call :meth:`start` and, in
    any case, :meth:`stop`. ``log_dir`` collects each process's output (``gateway-1.log``,
    ``haproxy.log``, …); without it the output goes to this process's terminal.
    """

    def __init__(
        self,
        gateways: int = 3,
        lb_port: int | None = None,
        env: Mapping[str, str] | None = None,
        *,
        host: str = "127.0.0.1",
        log_dir: Path | None = None,
        haproxy_config: Path = HAPROXY_CONFIG,
        start_timeout_s: float = 30.0,
    ) -> None:
        if gateways < 1:
            raise ValueError("a topology needs at least one gateway")
        self.gateways = gateways
        self.lb_port = lb_port if lb_port is not None else free_port(host)
        self.host = host
        self.log_dir = log_dir
        self.haproxy_config = haproxy_config
        self.start_timeout_s = start_timeout_s
        self._env = {**os.environ, **(env or {})}
        base = Env(self._env)
        self.path = base.str("TEAMDASH_GATEWAY_PATH", "/ws")
        self.state_dir = default_state_dir(base)
        self.gateway_ports: list[int] = []
        self.gateway_ids: list[str] = []
        self.gateway_processes: list[Process] = []
        self.haproxy: Process | None = None
        self.runner: Process | None = None
        self.collector: Process | None = None
        self.redis: EmbeddedRedis | None = None
        self.redis_url: str = ""
        self.jwt_secret: str = ""
        self.workdir: Path | None = None
        self._restarts = 0

    # -- addresses ------------------------------------------------------------------------
    @property
    def lb_url(self) -> str:
        """The WebSocket URL clients use: HAProxy's port."""
        return f"ws://{self.host}:{self.lb_port}{self.path}"

    def gateway_url(self, i: int) -> str:
        """The WebSocket URL of gateway ``i`` itself, bypassing HAProxy."""
        return f"ws://{self.host}:{self.gateway_ports[i]}{self.path}"

    @property
    def stats_socket(self) -> Path:
        assert self.workdir is not None, "the topology is not started"
        return self.workdir / "haproxy.sock"

    def gateway_index(self, gateway_id: str) -> int:
        """Which gateway has this id (``connection:status.gatewayId``)."""
        return self.gateway_ids.index(gateway_id)

    def processes(self) -> list[Process]:
        """Every process of the topology that was started (Redis aside)."""
        found = [self.haproxy, *self.gateway_processes, self.runner, self.collector]
        return [p for p in found if p is not None and p.proc is not None]

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> Self:
        """Start everything and return when HAProxy routes to every gateway. On failure,
        what was started is stopped again and :class:`TopologyError` is raised."""
        haproxy = find_haproxy()
        if not self.haproxy_config.is_file():
            raise TopologyError(f"no HAProxy configuration at {self.haproxy_config}")
        try:
            self._start(haproxy)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, haproxy: str) -> None:
        from shared.tokens import jwt_secret

        env = Env(self._env)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.jwt_secret = jwt_secret(env, self.state_dir)
        self.workdir = Path(tempfile.mkdtemp(prefix="teamdash-lb-"))
        redis_url = env.opt_str("REDIS_URL")
        if redis_url is None:
            self.redis = EmbeddedRedis(workdir=self.workdir / "redis")
            redis_url = self.redis.start()
        self.redis_url = redis_url
        self._env.pop("TEAMDASH_JWT_SECRET_FILE", None)
        self._env.update(
            REDIS_URL=redis_url,
            TEAMDASH_JWT_SECRET=self.jwt_secret,
            TEAMDASH_STATE_DIR=str(self.state_dir),
            TEAMDASH_GATEWAY_HOST=self.host,
            TEAMDASH_GATEWAY_REUSE_PORT="false",
            PYTHONUNBUFFERED="1",
        )
        self.gateway_ports = _distinct_free_ports(self.host, self.gateways, avoid={self.lb_port})
        self.gateway_ids = ["" for _ in self.gateway_ports]
        self.gateway_processes = [self._gateway(i) for i in range(self.gateways)]
        self.runner = self._service("agent-runner", "runner").start()
        self.collector = self._service("metrics-collector", "collector").start()
        for i in range(self.gateways):
            self._wait_gateway_ready(i)

        backend = self.workdir / "gateways.cfg"
        backend.write_text(render_backend(self.host, self.gateway_ports))
        lb_env = {
            **self._env,
            "TEAMDASH_LB_BIND": f"{self.host}:{self.lb_port}",
            "TEAMDASH_LB_STATS_SOCKET": str(self.stats_socket),
        }
        lb_env.pop("TEAMDASH_LB_STATS_BIND", None)
        argv = [haproxy, "-db", "-f", str(self.haproxy_config), "-f", str(backend)]
        self.haproxy = Process("haproxy", argv, lb_env, self._log("haproxy")).start()
        self._wait(
            lambda: _all_up(self._states_or_empty(self.gateways)),
            "HAProxy to route to every gateway",
            self.haproxy,
        )

    def stop(self) -> None:
        """Stop everything (idempotent); nothing is left running afterwards."""
        # The runner first (it stops its agents and publishes their final status), then the
        # collector; the gateways after a short drain, so those last events reach the
        # clients; HAProxy after the gateways (their 1001 close frames pass through it), and
        # Redis last.
        for service in (self.runner, self.collector):
            if service is not None:
                service.stop(30)
        if any(g.alive() for g in self.gateway_processes):
            time.sleep(DRAIN_S)
        for gateway in self.gateway_processes:
            gateway.terminate()  # all at once; stop() below waits for each
        for gateway in self.gateway_processes:
            gateway.stop(15)
        if self.haproxy is not None:
            self.haproxy.stop(10)
        if self.redis is not None:
            self.redis.stop()
            self.redis = None
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- failures and restarts -------------------------------------------------------------
    def kill_gateway(self, i: int) -> None:
        """SIGKILL gateway ``i`` (no clean close: its clients just lose the connection)."""
        self.gateway_processes[i].kill()

    def restart_gateway(self, i: int, *, wait_lb: bool = True) -> None:
        """Stop gateway ``i`` (SIGTERM, or nothing if it is dead) and start a new one on the
        same port; return when it is ready (and, with ``wait_lb``, routed to by HAProxy)."""
        self.gateway_processes[i].stop(15)
        self.gateway_processes[i] = self._gateway(i)
        self._wait_gateway_ready(i)
        if wait_lb:
            self.wait_server_state(i, "UP")

    def restart_runner(self, *, kill: bool = False) -> None:
        """Stop the runner (SIGKILL with ``kill``: a crash) and start a new one with the same
        environment (so the same ``TEAMDASH_RUNNER_ID``, if one is set)."""
        assert self.runner is not None, "the topology is not started"
        if kill:
            self.runner.kill()
        self.runner.stop(30)
        self.runner = self._service("agent-runner", "runner").start()

    def restart_collector(self, *, kill: bool = False) -> None:
        """Stop the collector (SIGKILL with ``kill``) and start a new one."""
        assert self.collector is not None, "the topology is not started"
        if kill:
            self.collector.kill()
        self.collector.stop(15)
        self.collector = self._service("metrics-collector", "collector").start()

    def dead(self) -> list[Process]:
        """Started processes that have exited."""
        return [p for p in self.processes() if not p.alive()]

    # -- what HAProxy thinks ---------------------------------------------------------------
    def server_states(self) -> dict[int, str]:
        """HAProxy's status of each gateway (``UP``, ``DOWN``, ``UP 1/2``, ``MAINT``…), by index."""
        rows = csv.reader(self._runtime_api("show stat").lstrip("# ").splitlines())
        header = next(rows, [])
        out: dict[int, str] = {}
        for row in rows:
            fields = dict(zip(header, row, strict=False))
            name = fields.get("svname", "")
            if fields.get("pxname") == BACKEND and name.startswith(SERVER_PREFIX):
                with contextlib.suppress(ValueError):
                    out[int(name[len(SERVER_PREFIX) :]) - 1] = fields.get("status", "")
        return out

    def wait_server_state(self, i: int, state: str, timeout_s: float | None = None) -> None:
        """Wait until HAProxy reports gateway ``i`` as ``state`` (``UP`` or ``DOWN``)."""
        self._wait(
            lambda: self._states_or_empty(self.gateways).get(i, "") == state,
            f"HAProxy to report gateway {i + 1} {state}",
            self.haproxy,
            timeout_s,
        )

    def _runtime_api(self, command: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2.0)
            s.connect(str(self.stats_socket))
            s.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")

    def _states_or_empty(self, expected: int) -> dict[int, str]:
        try:
            states = self.server_states()
        except OSError:
            return {}
        return states if len(states) == expected else {}

    # -- helpers ---------------------------------------------------------------------------
    def _log(self, name: str) -> Path | None:
        if self.log_dir is None:
            return None
        self.log_dir.mkdir(parents=True, exist_ok=True)
        return self.log_dir / f"{name}.log"

    def _service(self, name: str, service: str, **env: str) -> Process:
        argv = [sys.executable, "-m", "shared.cli", service]
        return Process(name, argv, {**self._env, **env}, self._log(name))

    def _gateway(self, i: int) -> Process:
        self._restarts += 1
        # A fresh id per process, so a client's connection:status tells which one it reached.
        self.gateway_ids[i] = f"gw{i + 1}-{self._restarts}-{secrets.token_hex(2)}"
        return self._service(
            f"gateway-{i + 1}",
            "gateway",
            TEAMDASH_GATEWAY_PORT=str(self.gateway_ports[i]),
            TEAMDASH_GATEWAY_ID=self.gateway_ids[i],
            # HAProxy runs on loopback: trust its X-Forwarded-For for the client address.
            TEAMDASH_TRUSTED_PROXIES=self._env.get("TEAMDASH_TRUSTED_PROXIES", "127.0.0.1/32"),
        ).start()

    def _wait_gateway_ready(self, i: int) -> None:
        self._wait(
            lambda: _http_status(self.host, self.gateway_ports[i], "/readyz") == 200,
            f"gateway {i + 1} to be ready on port {self.gateway_ports[i]}",
            self.gateway_processes[i],
        )

    def _wait(
        self,
        condition: Callable[[], bool],
        what: str,
        watched: Process | None,
        timeout_s: float | None = None,
    ) -> None:
        deadline = time.monotonic() + (timeout_s or self.start_timeout_s)
        while not condition():
            dead = [
                p
                for p in (watched, self.runner, self.collector)
                if p is not None and p.proc and not p.alive()
            ]
            if dead:
                p = dead[0]
                tail = p.log_text()[-2000:]
                raise TopologyError(
                    f"{p.name} exited with code {p.returncode} while waiting for {what}\n{tail}"
                )
            if time.monotonic() > deadline:
                raise TopologyError(f"timed out waiting for {what}")
            time.sleep(0.05)


def _all_up(states: dict[int, str]) -> bool:
    return bool(states) and all(s == "UP" for s in states.values())


def _distinct_free_ports(host: str, n: int, avoid: set[int]) -> list[int]:
    ports: list[int] = []
    while len(ports) < n:
        port = free_port(host)
        if port not in ports and port not in avoid:
            ports.append(port)
    return ports


def _http_status(host: str, port: int, path: str) -> int | None:
    conn = http.client.HTTPConnection(host, port, timeout=2.0)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


__all__ = ["LocalTopology", "Process", "TopologyError", "find_haproxy", "render_backend"]
