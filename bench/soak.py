"""``python -m bench.soak``: a long run of mixed load with faults injected at random
intervals, then a report of each process's memory, file descriptors, threads and asyncio
tasks over time, and of events lost (the promise: 0).

The stack is the production shape on one machine (:class:`shared.topology.LocalTopology`:
HAProxy in front of N gateways, a runner, a collector) on a Redis of the soak's own that
persists every write (append-only file, fsync always), so that a Redis crash loses nothing
and the soak can demand that no event is ever lost. The load:

* ``--agents`` ticker agents, each printing ``tick N`` every ``--tick-s`` seconds for ever;
* ``--clients`` SDK clients (:class:`shared.client.DashboardClient`, through HAProxy), each
  following every agent's output and status, plus metrics and logs;
* one command per second to a random agent, from a random client (each must be acked).

Every ``--fault-min-s``..``--fault-max-s`` seconds one fault, chosen at random: a gateway
SIGKILLed and restarted; the runner SIGKILLed and restarted (its agents die with it — they
are reported ``crashed`` and the soak creates new ones); Redis SIGKILLed and restarted (with
its data); the collector SIGKILLed and restarted.

Each client checks, per agent, that the ticks it receives are consecutive: a tick seen
twice is a *duplicate*, a jump is *lost* (unless the gateway announced it: a
`subscription:gap` notice, or a resume with `recovered: false`). After each
runner kill the soak also looks for *orphans*: processes still running in a dead agent's
workspace. The report goes to ``bench/results/soak-<id>/`` (``report.json``, ``report.md``)
and to stdout; ``docs/reliability.md`` quotes the last one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import secrets
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from shared.client import ClientError, ConnectionLost, DashboardClient, StateChange, Subscription
from shared.protocol import AgentOutputMessage, AgentStatusMessage, SubscriptionGapMessage
from shared.redis_server import EmbeddedRedis, free_port
from shared.tokens import mint_token
from shared.topology import LocalTopology

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
MODELS = ROOT / "bench" / "agents" / "models.toml"
FAULTS = ("gateway", "runner", "redis", "collector")
TICK = re.compile(r"^tick (\d+)$")


# -- the checker ------------------------------------------------------------------------------
@dataclass
class Stream:
    """What one client received of one agent's ticks."""

    last: int | None = None
    received: int = 0
    duplicates: int = 0
    lost: int = 0
    announced: int = 0
    pending: str = ""

    def feed(self, data: str, *, gap_announced: bool) -> list[str]:
        """Take one event's text; returns a description of each anomaly found in it."""
        anomalies: list[str] = []
        self.pending += data
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            m = TICK.match(line)
            if m is None:
                continue
            n = int(m.group(1))
            self.received += 1
            if self.last is None or n == self.last + 1:
                self.last = n
            elif n <= self.last:
                self.duplicates += 1
                anomalies.append(f"duplicate tick {n} (after {self.last})")
            else:
                if gap_announced:
                    self.announced += n - self.last - 1
                else:
                    self.lost += n - self.last - 1
                    anomalies.append(f"lost ticks {self.last + 1}..{n - 1}")
                self.last = n
        return anomalies


@dataclass
class Totals:
    received: int = 0
    duplicates: int = 0
    lost: int = 0
    announced: int = 0
    commands: int = 0
    command_failures: Counter[str] = field(default_factory=Counter)
    orphans: int = 0
    client_reconnects: int = 0
    resumes: int = 0
    unrecovered_resumes: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    agents_created: int = 0
    agents_ended: Counter[str] = field(default_factory=Counter)


# -- process sampling ---------------------------------------------------------------------------
def _tasks_gauge(port: int | None) -> int | None:
    """``teamdash_asyncio_tasks`` from a service's /metrics, when it exposes one."""
    if port is None:
        return None
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("teamdash_asyncio_tasks "):
            return int(float(line.split()[1]))
    return None


def sample(name: str, pid: int | None, metrics_port: int | None) -> dict[str, Any] | None:
    if pid is None:
        return None
    try:
        p = psutil.Process(pid)
        with p.oneshot():
            return {
                "name": name,
                "pid": pid,
                "rss_mb": round(p.memory_info().rss / 2**20, 1),
                "fds": p.num_fds(),
                "threads": p.num_threads(),
                "tasks": _tasks_gauge(metrics_port),
            }
    except psutil.Error:
        return None


# -- the soak -------------------------------------------------------------------------------
class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{secrets.token_hex(2)}"
        self.out = Path(args.out) if args.out else RESULTS / f"soak-{self.run_id}"
        self.out.mkdir(parents=True, exist_ok=True)
        self.workspaces = self.out / "workspaces"
        self.redis = EmbeddedRedis(port=free_port(), workdir=self.out / "redis", persistent=True)
        self.runner_port = free_port()
        self.collector_port = free_port()
        self.topology: LocalTopology | None = None
        self.totals = Totals()
        self.samples: list[dict[str, Any]] = []
        self.log: list[str] = []
        # (client index, agent id) -> what that client received of that agent
        self.streams: dict[tuple[int, str], Stream] = {}
        self.gap_flags: dict[tuple[int, str], bool] = {}
        self.clients: list[DashboardClient] = []
        self.agents: dict[str, str] = {}  # agent id -> workspace
        self.ended: set[str] = set()
        self.readers: set[asyncio.Task[None]] = set()
        self.started = time.monotonic()

    def note(self, text: str) -> None:
        stamp = f"{time.monotonic() - self.started:7.1f}s"
        line = f"[{stamp}] {text}"
        self.log.append(line)
        print(line, flush=True)

    # -- setup ----------------------------------------------------------------------------
    def start_stack(self) -> LocalTopology:
        url = self.redis.start()
        env = {
            "REDIS_URL": url,
            "TEAMDASH_REDIS_PREFIX": "soak",
            "TEAMDASH_STATE_DIR": str(self.out / "state"),
            "TEAMDASH_MODELS_FILE": str(MODELS),
            "TEAMDASH_WORKSPACE_ROOT": str(self.workspaces),
            "TEAMDASH_RUNNER_ID": "soak-runner",
            "TEAMDASH_RUNNER_MAX_AGENTS": str(self.args.agents + 4),
            "TEAMDASH_MAX_AGENTS_PER_USER": str(self.args.agents + 4),
            "TEAMDASH_RUNNER_METRICS_PORT": str(self.runner_port),
            "TEAMDASH_COLLECTOR_METRICS_PORT": str(self.collector_port),
            "TEAMDASH_CURSOR_FLUSH_INTERVAL_S": "0.2",
            "TEAMDASH_IP_CONNECTIONS_PER_MINUTE": "0",
        }
        topology = LocalTopology(
            self.args.gateways, env=env, log_dir=self.out / "logs", start_timeout_s=60
        )
        topology.start()
        return topology

    def token(self) -> str:
        assert self.topology is not None
        return mint_token(self.topology.jwt_secret, "soak", roles=("admin",), ttl_s=3600)

    async def connect_clients(self) -> None:
        assert self.topology is not None
        for i in range(self.args.clients):
            client = DashboardClient(
                self.topology.lb_url,
                self.token,
                backoff=(0.1, 0.2, 0.5, 1.0, 2.0),
                request_timeout=30,
                queue_size=100_000,
                on_state=self._on_state(i),
            )
            await client.connect()
            self.clients.append(client)
            self._follow(i, client, await client.subscribe_metrics(), "metrics")
            self._follow(i, client, await client.subscribe_logs(), "logs")

    def _on_state(self, i: int) -> Callable[[StateChange], None]:
        def on_state(change: StateChange) -> None:
            status = change.status
            if change.state != "reconnected" or status is None:
                return
            self.totals.resumes += 1
            if status.recovered is False:
                # "recovered: false, missed: N": what this client lacks now was announced.
                self.totals.unrecovered_resumes += 1
                self.note(f"client {i} resumed with recovered: false, missed {status.missed}")
                for key in list(self.streams):
                    if key[0] == i:
                        self.gap_flags[key] = True

        return on_state

    def _follow(self, i: int, client: DashboardClient, sub: Subscription, what: str) -> None:
        task = asyncio.create_task(self._read(i, sub, what), name=f"soak-read-{i}-{what}")
        self.readers.add(task)
        task.add_done_callback(self.readers.discard)

    async def _read(self, i: int, sub: Subscription, what: str) -> None:
        with contextlib.suppress(ClientError, asyncio.CancelledError):
            async for event in sub:
                if isinstance(event, AgentOutputMessage):
                    key = (i, event.payload.agentId)
                    stream = self.streams.setdefault(key, Stream())
                    found = stream.feed(
                        event.payload.data, gap_announced=self.gap_flags.pop(key, False)
                    )
                    for anomaly in found:
                        meta = event.metadata
                        self.note(
                            f"client {i}, agent {self.agents.get(key[1], key[1])}: {anomaly} "
                            f"(sequence {event.payload.sequence}, offset "
                            f"{meta.offset if meta else '?'}, epoch {meta.epoch if meta else '?'})"
                        )
                elif isinstance(event, SubscriptionGapMessage):
                    # The gateway told this client that events of the topic are gone: the
                    # next jump in its ticks is an announced gap, not a silent one.
                    if event.payload.topic.startswith("agent:"):
                        self.gap_flags[(i, event.payload.topic.removeprefix("agent:"))] = True
                elif isinstance(event, AgentStatusMessage):
                    if event.payload.status in ("stopped", "crashed"):
                        self._agent_ended(event.payload.agentId, event.payload.status)
                        return

    def _agent_ended(self, agent_id: str, status: str) -> None:
        if agent_id not in self.ended:
            self.ended.add(agent_id)
            self.totals.agents_ended[status] += 1

    async def create_agent(self) -> None:
        client = self.clients[0]
        name = f"ticker-{len(self.agents) + 1}"
        for attempt in range(60):
            try:
                agent = await client.create_agent(name, "ticker", name)
                break
            except ClientError as e:
                if attempt == 59:
                    raise
                self.note(f"create {name} failed ({e}); retrying")
                await asyncio.sleep(1)
        self.agents[agent.agent_id] = name
        self.totals.agents_created += 1
        for i, c in enumerate(self.clients):
            sub = await self._subscribe(c, agent.agent_id)
            self._follow(i, c, sub, agent.agent_id)

    async def _subscribe(self, client: DashboardClient, agent_id: str) -> Subscription:
        """Subscribe, again if the connection dropped before the ack (the SDK cannot know
        whether that one was carried out; a second subscription is harmless: the SDK drops
        the copies by position)."""
        for attempt in range(10):
            try:
                return await client.subscribe_agent(agent_id, filters=["stdout", "status"])
            except ConnectionLost as e:
                self.note(f"subscribe to {agent_id} lost its ack ({e}); again")
                if attempt == 9:
                    raise
        raise AssertionError("unreachable")

    def live_agents(self) -> list[str]:
        return [a for a in self.agents if a not in self.ended]

    # -- load and faults -----------------------------------------------------------------
    async def command_loop(self, until: float) -> None:
        while time.monotonic() < until:
            await asyncio.sleep(1.0)
            live = self.live_agents()
            if not live:
                continue
            client = self.rng.choice(self.clients)
            agent_id = self.rng.choice(live)
            self.totals.commands += 1
            try:
                await client.send_command(agent_id, "status")
            except ClientError as e:
                # During a fault window a refusal is the documented answer; count by code.
                self.totals.command_failures[str(getattr(e, "code", None) or "error")] += 1

    async def keep_agents(self, until: float) -> None:
        while time.monotonic() < until:
            await asyncio.sleep(1.0)
            while len(self.live_agents()) < self.args.agents:
                await self.create_agent()

    async def fault_loop(self, until: float) -> None:
        assert self.topology is not None
        topo = self.topology
        while True:
            delay = self.rng.uniform(self.args.fault_min_s, self.args.fault_max_s)
            if time.monotonic() + delay > until:
                return
            await asyncio.sleep(delay)
            kind = self.rng.choice(self.args.faults)
            self.totals.faults[kind] += 1
            self.note(f"fault: {kind}")
            if kind == "gateway":
                i = self.rng.randrange(topo.gateways)
                topo.kill_gateway(i)
                await asyncio.sleep(self.rng.uniform(0.5, 3))
                await asyncio.to_thread(topo.restart_gateway, i)
            elif kind == "runner":
                before = set(self.live_agents())
                await asyncio.to_thread(topo.restart_runner, kill=True)
                await asyncio.sleep(3)
                self.totals.orphans += self.orphans(before)
            elif kind == "redis":
                self.redis.kill()
                await asyncio.sleep(self.rng.uniform(0.5, 5))
                await asyncio.to_thread(self.redis.start)
            elif kind == "collector":
                await asyncio.to_thread(topo.restart_collector, kill=True)

    def orphans(self, dead_agents: set[str]) -> int:
        """Processes still running in the workspace of an agent that died with the runner."""
        folders = {str(self.workspaces / self.agents[a]) for a in dead_agents}
        found = 0
        for p in psutil.process_iter(["cwd"]):
            if p.info.get("cwd") in folders:
                found += 1
                self.note(f"ORPHAN: pid {p.pid} in {p.info['cwd']}")
                with contextlib.suppress(psutil.Error):
                    p.kill()
        return found

    async def sample_loop(self, until: float) -> None:
        while time.monotonic() < until:
            self.take_sample()
            await asyncio.sleep(self.args.sample_s)

    def take_sample(self) -> None:
        assert self.topology is not None
        topo = self.topology
        at = round(time.monotonic() - self.started, 1)
        procs: list[dict[str, Any] | None] = [
            sample(f"gateway-{i + 1}", p.pid if p.alive() else None, topo.gateway_ports[i])
            for i, p in enumerate(topo.gateway_processes)
        ]
        runner, collector = topo.runner, topo.collector
        procs.append(
            sample("runner", runner.pid if runner and runner.alive() else None, self.runner_port)
        )
        procs.append(
            sample(
                "collector",
                collector.pid if collector and collector.alive() else None,
                self.collector_port,
            )
        )
        redis_proc = self.redis.process
        procs.append(sample("redis", redis_proc.pid if redis_proc else None, None))
        self.samples.append({"at": at, "procs": [p for p in procs if p is not None]})

    # -- run ------------------------------------------------------------------------------
    async def run(self) -> dict[str, Any]:
        self.topology = await asyncio.to_thread(self.start_stack)
        try:
            await self.connect_clients()
            for _ in range(self.args.agents):
                await self.create_agent()
            until = time.monotonic() + self.args.minutes * 60
            self.note(
                f"soak {self.run_id}: {self.args.minutes} min, {self.args.gateways} gateways, "
                f"{self.args.clients} clients, {self.args.agents} agents"
            )
            await asyncio.gather(
                self.command_loop(until),
                self.keep_agents(until),
                self.fault_loop(until),
                self.sample_loop(until),
            )
            # Let the last events arrive before judging.
            await asyncio.sleep(5)
            self.take_sample()
        finally:
            for client in self.clients:
                self.totals.client_reconnects += client.reconnects
                with contextlib.suppress(Exception):
                    await client.close()
            for task in list(self.readers):
                task.cancel()
            await asyncio.gather(*self.readers, return_exceptions=True)
            await asyncio.to_thread(self.topology.stop)
            self.redis.stop()
        return self.report()

    def report(self) -> dict[str, Any]:
        for stream in self.streams.values():
            self.totals.received += stream.received
            self.totals.duplicates += stream.duplicates
            self.totals.lost += stream.lost
            self.totals.announced += stream.announced
        # Not dataclasses.asdict: it rebuilds a Counter from (key, value) pairs, counting them.
        totals = {k: dict(v) if isinstance(v, Counter) else v for k, v in vars(self.totals).items()}
        report = {
            "runId": self.run_id,
            "args": vars(self.args),
            "totals": totals,
            "samples": self.samples,
            "log": self.log,
        }
        (self.out / "report.json").write_text(json.dumps(report, indent=1))
        markdown = render(report)
        (self.out / "report.md").write_text(markdown)
        return report


def render(report: dict[str, Any]) -> str:
    """The report as Markdown: totals, then each process kind's figures over time."""
    t = report["totals"]
    a = report["args"]
    lines = [
        f"Soak `{report['runId']}`: {a['minutes']} min, {a['gateways']} gateways, "
        f"{a['clients']} clients, {a['agents']} agents (tick every {a['tick_s']} s), "
        f"a fault every {a['fault_min_s']:g}-{a['fault_max_s']:g} s, seed {a['seed']}.",
        "",
        "| events received | lost silently | duplicated | lost and announced | orphan processes |",
        "|---|---|---|---|---|",
        f"| {t['received']:,} | **{t['lost']}** | **{t['duplicates']}** | {t['announced']} "
        f"| **{t['orphans']}** |",
        "",
        f"Faults injected: {', '.join(f'{k} ×{v}' for k, v in sorted(t['faults'].items()))}. "
        f"Agents created {t['agents_created']}, ended "
        f"{', '.join(f'{k} ×{v}' for k, v in sorted(t['agents_ended'].items())) or 'none'}. "
        f"Commands {t['commands']}, refused "
        f"{sum(t['command_failures'].values())} "
        f"({', '.join(f'{k} ×{v}' for k, v in sorted(t['command_failures'].items())) or '-'}). "
        f"Client reconnections {t['client_reconnects']}, of which resumed with "
        f"`recovered: false` {t['unrecovered_resumes']}.",
        "",
        "| process | first RSS MB | last | max | first fds | last | max | threads last | "
        "tasks first | last | max |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    by_name: dict[str, list[dict[str, Any]]] = {}
    for s in report["samples"]:
        for p in s["procs"]:
            by_name.setdefault(p["name"], []).append(p)
    for name, rows in sorted(by_name.items()):
        tasks = [r["tasks"] for r in rows if r["tasks"] is not None]
        lines.append(
            f"| {name} | {rows[0]['rss_mb']} | {rows[-1]['rss_mb']} "
            f"| {max(r['rss_mb'] for r in rows)} | {rows[0]['fds']} | {rows[-1]['fds']} "
            f"| {max(r['fds'] for r in rows)} | {rows[-1]['threads']} "
            f"| {tasks[0] if tasks else '-'} | {tasks[-1] if tasks else '-'} "
            f"| {max(tasks) if tasks else '-'} |"
        )
    lines.append("")
    lines.append(
        "(Each process kind is sampled every "
        f"{a['sample_s']:g} s; a restarted process starts a new series under the same name, "
        "so 'first' is the first process's start and 'last' the last one's end.)"
    )
    return "\n".join(lines) + "\n"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--gateways", type=int, default=3)
    p.add_argument("--clients", type=int, default=6)
    p.add_argument("--agents", type=int, default=4)
    p.add_argument("--tick-s", type=float, default=0.01, help="(fixed by bench/agents/models.toml)")
    p.add_argument("--fault-min-s", type=float, default=30.0)
    p.add_argument("--fault-max-s", type=float, default=90.0)
    p.add_argument("--faults", nargs="+", choices=FAULTS, default=list(FAULTS))
    p.add_argument("--sample-s", type=float, default=10.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--out", default=None, help="result folder (default bench/results/soak-<id>)")
    args = p.parse_args(argv)
    if args.seed is None:
        args.seed = random.randrange(1_000_000)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    soak = Soak(args)
    report = asyncio.run(soak.run())
    print()
    print(render(report))
    print(f"report: {soak.out / 'report.md'}")
    t = report["totals"]
    return 0 if t["lost"] == 0 and t["duplicates"] == 0 and t["orphans"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
