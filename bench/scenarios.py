"""The scenarios: each drives the generator pool against a target and returns its figures.

=================  ========================================================================
scenario           measures
=================  ========================================================================
fan-out            S subscribers of one agent's topic; events published at stepped rates
                   (delivered msgs/s targets) and as fast as possible: delivered msgs/s,
                   publish → client latency, loss and duplicates (per client, by event
                   number and by ``metadata.offset``)
ceiling            the same fan-out against :mod:`bench.ceiling` (bare websockets broadcast)
connections        C clients connect + authenticate, ramped (1 s per 1,000) and in one burst:
                   connect+auth time, gateway RSS per idle connection, CPU at rest; with
                   one gateway, the same burst on :mod:`bench.ceiling` right after
requests           K clients each with an echo agent, ``agent:command`` in a closed loop:
                   ack latency and command → first output latency
agent output       one agent printing as fast as it can: events/s at one subscriber
state              publish cost with and without transcripts, ``agent:list`` of 1,000
                   agents, history read throughput (:mod:`bench.state`)
=================  ========================================================================
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.config import BenchConfig
from bench.procs import BenchError, Child, Pool
from bench.profile import Profiler
from bench.stack import Stack
from bench.stats import CpuMeter, Histogram, counters_delta, exact_summary_ms, tcp_counters
from bench.wsclient import Session
from shared.redis_server import free_port
from shared.tokens import mint_token

#: The user owning the fan-out agent; subscribers are viewers (they see every agent).
OWNER = "bench-owner"


@dataclass
class Context:
    cfg: BenchConfig
    redis_url: str
    redis_pid: int
    secret: str
    run_dir: Path
    pool: Pool
    errors: list[str] = field(default_factory=list)

    def child_env(self, **extra: str) -> dict[str, str]:
        return {"TEAMDASH_JWT_SECRET": self.secret, "PYTHONUNBUFFERED": "1", **extra}


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


async def _profiler(ctx: Context, label: str, pid: int | None, name: str) -> Profiler | None:
    """A started py-spy recorder of ``pid`` when ``label`` is one of ``--profile``'s."""
    if label not in ctx.cfg.profile or pid is None:
        return None
    profiler = Profiler(pid, ctx.run_dir / "profiles" / f"{name}.folded", rate=ctx.cfg.profile_rate)
    await profiler.start()
    return profiler


# ---------------------------------------------------------------------------
# Connecting clients through the pool
# ---------------------------------------------------------------------------


async def connect(
    ctx: Context,
    group: str,
    total: int,
    urls: list[str],
    *,
    role: str,
    user_prefix: str,
    ramp_s: float,
    subscribe: dict[str, Any] | None = None,
    fanout: bool = False,
    workers: int | None = None,
) -> dict[str, Any]:
    """Open ``total`` clients spread over the pool (or its first ``workers``); returns the
    merged connect+auth times and errors."""
    pool = ctx.pool
    n = min(workers or len(pool), len(pool))
    # Each worker mints its tokens first (~30 µs each); start everyone together after that.
    start_at = time.time() + 0.5 + total / n * 60e-6
    fields: list[dict[str, Any]] = [
        {
            "group": group,
            "worker": w,
            "workers": n,
            "total": total,
            "urls": urls,
            "role": role,
            "user_prefix": user_prefix,
            "ramp_s": ramp_s,
            "start_at": start_at,
            "subscribe": subscribe,
            "fanout": fanout,
            "client_timeout_s": ctx.cfg.client_timeout_s,
        }
        for w in range(n)
    ]
    answers = await pool.each("connect", fields)
    connect_ms = [x for a in answers for x in a["connect_ms"]]
    errors: dict[str, int] = {}
    for a in answers:
        for reason, count in a["errors"].items():
            errors[reason] = errors.get(reason, 0) + count
    lag = [x for a in answers for x in a["schedule_lag_ms"]]
    return {
        "clients": total,
        "connected": sum(a["connected"] for a in answers),
        "failed": sum(a["failed"] for a in answers),
        "errors": errors,
        "connect_auth_ms": exact_summary_ms(connect_ms),
        # TCP connect + WebSocket handshake only (the rest is auth → connection:status).
        "handshake_ms": exact_summary_ms([x for a in answers for x in a["handshake_ms"]]),
        "subscribe_ms": exact_summary_ms([x for a in answers for x in a["subscribe_ms"]]),
        "wall_s": round(time.time() - start_at, 3),
        "generator_schedule_lag_ms": exact_summary_ms(lag),
    }


# ---------------------------------------------------------------------------
# Fan-out (gateway and ceiling)
# ---------------------------------------------------------------------------


@dataclass
class FanoutTarget:
    name: str
    urls: list[str]
    source: Child
    agent_id: str
    roles: dict[str, list[int]]
    #: The role whose CPU is the server's (``gateway``, or ``server`` for the ceiling).
    server_role: str = "gateway"
    with_children: frozenset[str] = frozenset()
    profile_pid: int | None = None

    @property
    def group(self) -> str:
        return f"subs:{self.name}"


async def fanout(ctx: Context, targets: list[FanoutTarget]) -> list[dict[str, Any]]:
    """The fan-out steps on every target, interleaved: each step runs on one target, then
    right away on the next, so that a neighbour's load on a shared machine hits all targets
    alike (ratios between them stay meaningful even when absolute figures move)."""
    cfg = ctx.cfg
    s = cfg.subscribers
    results: list[dict[str, Any]] = []
    try:
        for target in targets:
            setup = await connect(
                ctx,
                target.group,
                s,
                target.urls,
                role="viewer",
                user_prefix="sub",
                ramp_s=s / cfg.setup_rate,
                subscribe={"type": "subscribe:agent", "payload": {"agentId": target.agent_id}},
                fanout=True,
            )
            if setup["failed"]:
                ctx.errors.append(
                    f"{target.name}: {setup['failed']} subscribers failed to connect: "
                    f"{setup['errors']}"
                )
            results.append(
                {"target": target.name, "gateways": len(target.urls), "setup": setup, "steps": []}
            )
        await asyncio.sleep(0.3)
        step_id = 0
        # A few events first: every subscription is live once every client got them.
        for target, result in zip(targets, results, strict=True):
            step_id += 1
            warm = await _step(
                ctx, target, label="warmup", step=step_id, count=5, rate=50.0, target_rate=None
            )
            result["warmup"] = {k: warm[k] for k in ("delivered", "expected", "lost")}
        plan: list[tuple[str, int, float, int | None]] = [
            (str(rate), max(1, round(rate / s * cfg.step_s)), rate / s, rate) for rate in cfg.rates
        ]
        if cfg.afap_events > 0:
            plan.append(("afap", cfg.afap_events, 0.0, None))
        for label, count, per_s, rate in plan:
            for target, result in zip(targets, results, strict=True):
                step_id += 1
                result["steps"].append(
                    await _step(
                        ctx,
                        target,
                        label=label,
                        step=step_id,
                        count=count,
                        rate=per_s,
                        target_rate=rate,
                    )
                )
    finally:
        for target in targets:
            await ctx.pool.all("close", group=target.group)
    return results


async def _step(
    ctx: Context,
    target: FanoutTarget,
    *,
    label: str,
    step: int,
    count: int,
    rate: float,
    target_rate: int | None,
) -> dict[str, Any]:
    cfg, pool = ctx.cfg, ctx.pool
    begun = await pool.all("step_begin", group=target.group, step=step, count=count)
    clients = sum(b["clients"] for b in begun)
    profiler = await _profiler(ctx, label, target.profile_pid, f"{target.name}-{label}")
    meter = CpuMeter(target.roles, target.with_children)
    load = _load()
    meter.start()
    publish_timeout = (count / rate if rate > 0 else 60.0) + 120.0
    pub = await target.source.call(
        "publish",
        timeout_s=publish_timeout,
        agent_id=target.agent_id,
        owner=OWNER,
        step=step,
        count=count,
        rate=rate,
        batch=cfg.afap_batch,
        size=cfg.event_size,
    )
    ends = await pool.all(
        "step_end",
        timeout_s=cfg.drain_timeout_s + 30,
        group=target.group,
        step=step,
        wait_s=cfg.drain_timeout_s,
    )
    cpu = meter.stop()
    hist = Histogram.merged(e["hist"] for e in ends)
    unique = sum(e["unique"] for e in ends)
    server_cpu_s = cpu.get(target.server_role, 0.0) / 100.0 * cpu["seconds"]
    last_ns = max((e["last_recv_ns"] for e in ends), default=0)
    span_s = (last_ns - pub["t_first_ns"]) / 1e9 if last_ns else 0.0
    out: dict[str, Any] = {
        "label": label,
        "target_per_s": target_rate,
        "subscribers": clients,
        "events": count,
        "publish_rate_target": round(rate, 3) if rate > 0 else None,
        "publish_rate": pub["rate"],
        "publish_s": pub["seconds"],
        "expected": sum(e["expected"] for e in ends),
        "delivered": unique,
        "delivered_per_s": round(unique / span_s, 1) if span_s > 0 else None,
        "drain_s": round((last_ns - pub["t_last_ns"]) / 1e9, 3) if last_ns else None,
        "latency_ms": hist.summary_ms(),
        "server_cpu_us_per_delivery": round(server_cpu_s * 1e6 / unique, 2) if unique else None,
        "lost": sum(e["lost"] for e in ends),
        "duplicated": sum(e["duplicated"] for e in ends),
        "offset_gaps": sum(e["offset_gaps"] for e in ends),
        "out_of_order": sum(e["out_of_order"] for e in ends),
        "closed_clients": sum(e["closed_clients"] for e in ends),
        "incomplete_clients": sum(e["incomplete_clients"] for e in ends),
        "stray": sum(e["stray"] for e in ends),
        "cpu_pct": cpu,
        "load": load,
    }
    if profiler is not None:
        out["profile"] = await profiler.finish()
    return out


@asynccontextmanager
async def ceiling_target(ctx: Context) -> AsyncIterator[FanoutTarget]:
    """The bare websockets broadcast server (:mod:`bench.ceiling`) as a fan-out target."""
    port = free_port()
    server = Child(
        "ceiling",
        ["-m", "bench.ceiling", str(port)],
        ctx.child_env(),
        ctx.run_dir / "logs" / f"ceiling-{port}",
        rpc=True,
    )
    await server.start()
    try:
        await _wait_port(port, server)
        yield FanoutTarget(
            name="ceiling",
            urls=[f"ws://127.0.0.1:{port}/ws"],
            source=server,
            agent_id="00000000-0000-4000-8000-00000000be9c",
            roles={"server": [server.pid], "generators": ctx.pool.pids},
            server_role="server",
        )
    finally:
        await server.stop()


async def ceiling(ctx: Context) -> dict[str, Any]:
    """The ceiling alone (when the gateway fan-out is not run)."""
    async with ceiling_target(ctx) as target:
        [result] = await fanout(ctx, [target])
    return result


async def gateway_fanout(ctx: Context, stack: Stack, *, with_ceiling: bool) -> dict[str, Any]:
    """The fan-out on ``stack``; with ``with_ceiling`` interleaved with the ceiling's, whose
    result is under ``"ceiling"``."""
    agent_id = await create_agent(ctx, stack, OWNER, "echo")
    publisher = Child(
        "publisher",
        ["-m", "bench.publisher"],
        ctx.child_env(REDIS_URL=stack.redis_url, TEAMDASH_REDIS_PREFIX=stack.prefix),
        stack.log_dir,
        rpc=True,
    )
    await publisher.start()
    try:
        roles = {
            "gateway": stack.gateway_pids,
            "redis": [ctx.redis_pid],
            "publisher": [publisher.pid],
            "generators": ctx.pool.pids,
        }
        target = FanoutTarget(
            name=f"gateway-{stack.n_gateways}gw",
            urls=stack.urls,
            source=publisher,
            agent_id=agent_id,
            roles=roles,
            profile_pid=stack.gateway_pids[0],
        )
        if with_ceiling:
            async with ceiling_target(ctx) as ceiling_:
                paired, result = await fanout(ctx, [ceiling_, target])
            result["ceiling"] = paired
        else:
            [result] = await fanout(ctx, [target])
        result["agent_id"] = agent_id
        stack.check_alive()
        return result
    finally:
        await publisher.stop()


async def create_agent(ctx: Context, stack: Stack, user: str, model: str) -> str:
    """Create an agent through the gateway as ``user`` (operator); returns its id."""
    session = Session(stack.urls[0])
    await session.connect()
    try:
        await session.authenticate(mint_token(ctx.secret, user, roles=("operator",)), "bench-setup")
        result = await session.request(
            "agent:create",
            {"name": f"bench-{model}", "model": model, "workspace": f"bench-{model}"},
            timeout_s=60,
        )
        return str(result["agentId"])
    finally:
        await session.close()


async def _wait_port(port: int, child: Child, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not child.alive():
            raise BenchError(f"{child.name} exited:\n{child.log_tail()}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise BenchError(f"{child.name} did not listen on {port}")


# ---------------------------------------------------------------------------
# Connections
# ---------------------------------------------------------------------------


async def connections(ctx: Context, gateways: int) -> list[dict[str, Any]]:
    cfg = ctx.cfg
    results = []
    for c in cfg.connections:
        stack = Stack(
            f"connections-{gateways}gw-{c}",
            redis_url=ctx.redis_url,
            secret=ctx.secret,
            run_dir=ctx.run_dir,
            gateways=gateways,
            env={"TEAMDASH_HEARTBEAT_INTERVAL_S": str(cfg.heartbeat_s)},
        )
        await stack.start()
        try:
            results.append(await _connections_one(ctx, stack, c))
            stack.check_alive()
        finally:
            await stack.stop()
    return results


async def _connections_one(ctx: Context, stack: Stack, c: int) -> dict[str, Any]:
    cfg, pool = ctx.cfg, ctx.pool
    roles = {"gateway": stack.gateway_pids, "redis": [ctx.redis_pid], "generators": pool.pids}
    await asyncio.sleep(0.5)
    rss_before = stack.gateway_rss()
    gen_before = sum(i["rss"] for i in await pool.all("info"))
    ramp_s = c / 1000.0 * cfg.ramp_s_per_thousand
    largest = c == max(cfg.connections)
    gw_pid = stack.gateway_pids[0] if largest else None
    profiler = await _profiler(ctx, "connect", gw_pid, f"connect-{stack.n_gateways}gw-{c}")
    meter = CpuMeter(roles)
    tcp = tcp_counters()
    meter.start()
    ramp = await connect(
        ctx, "conns", c, stack.urls, role="viewer", user_prefix="conn", ramp_s=ramp_s
    )
    ramp["cpu_pct"] = meter.stop()
    ramp["tcp"] = counters_delta(tcp, tcp_counters())
    if profiler is not None:
        ramp["profile"] = await profiler.finish()
    await asyncio.sleep(1.0)
    rss_after = stack.gateway_rss()
    gen_after = sum(i["rss"] for i in await pool.all("info"))
    connected = ramp["connected"]

    # At rest: heartbeats (application ping + WebSocket ping) and the periodic session flush.
    profiler = await _profiler(ctx, "idle", gw_pid, f"idle-{stack.n_gateways}gw-{c}")
    load = _load()
    meter = CpuMeter(roles)
    meter.start()
    await asyncio.sleep(cfg.idle_s)
    idle_cpu = meter.stop()
    idle_profile = await profiler.finish() if profiler is not None else None
    still_open = sum(i["open"].get("conns", 0) for i in await pool.all("info"))
    await pool.all("close", group="conns")
    await asyncio.sleep(1.0)

    profiler = await _profiler(ctx, "burst", gw_pid, f"burst-{stack.n_gateways}gw-{c}")
    meter = CpuMeter(roles)
    tcp = tcp_counters()
    meter.start()
    burst = await connect(
        ctx, "conns", c, stack.urls, role="viewer", user_prefix="burst", ramp_s=0.0
    )
    burst["cpu_pct"] = meter.stop()
    burst["tcp"] = counters_delta(tcp, tcp_counters())
    if profiler is not None:
        burst["profile"] = await profiler.finish()
    await pool.all("close", group="conns")
    # The same burst on the ceiling right after (side by side: the same neighbours).
    ceiling_burst = await _ceiling_burst(ctx, c, largest) if stack.n_gateways == 1 else None

    gw_cpu_s = idle_cpu["gateway"] / 100.0 * idle_cpu["seconds"]
    heartbeats = connected * idle_cpu["seconds"] / cfg.heartbeat_s if cfg.heartbeat_s else 0
    out: dict[str, Any] = {
        "connections": c,
        "gateways": stack.n_gateways,
        "ramp_s": ramp_s,
        "ramp": ramp,
        "burst": burst,
        "gateway_rss_before": rss_before,
        "gateway_rss_after": rss_after,
        "gateway_rss_per_connection_kib": round((rss_after - rss_before) / connected / 1024, 2)
        if connected
        else None,
        "generator_rss_per_connection_kib": round((gen_after - gen_before) / connected / 1024, 2)
        if connected
        else None,
        "idle": {
            "seconds": cfg.idle_s,
            "heartbeat_interval_s": cfg.heartbeat_s,
            "open_at_end": still_open,
            "cpu_pct": idle_cpu,
            "gateway_cpu_us_per_connection_per_s": round(
                gw_cpu_s * 1e6 / connected / idle_cpu["seconds"], 3
            )
            if connected
            else None,
            "gateway_cpu_us_per_heartbeat": round(gw_cpu_s * 1e6 / heartbeats, 1)
            if heartbeats
            else None,
            "load": load,
        },
    }
    if ceiling_burst is not None:
        out["ceiling_burst"] = ceiling_burst
        ceiling_p99 = ceiling_burst["connect_auth_ms"]["p99"]
        gateway_p99 = burst["connect_auth_ms"]["p99"]
        if ceiling_p99 and gateway_p99 is not None:
            out["burst_p99_x_ceiling"] = round(gateway_p99 / ceiling_p99, 2)
    if idle_profile is not None:
        out["idle"]["profile"] = idle_profile
    return out


async def _ceiling_burst(ctx: Context, c: int, profile: bool) -> dict[str, Any]:
    """C clients connecting and authenticating in one burst to :mod:`bench.ceiling` (a bare
    websockets server answering ``auth`` with a canned ``connection:status``): the floor
    of the gateway's burst on this machine. With ``profile`` and ``--profile burst``, py-spy
    samples the ceiling too (the two profiles side by side show what the gateway adds)."""
    async with ceiling_target(ctx) as target:
        await asyncio.sleep(0.5)
        pid = target.source.pid if profile else None
        profiler = await _profiler(ctx, "burst", pid, f"ceiling-burst-{c}")
        meter = CpuMeter(target.roles)
        tcp = tcp_counters()
        meter.start()
        burst = await connect(
            ctx, "conns", c, target.urls, role="viewer", user_prefix="ceiling", ramp_s=0.0
        )
        burst["cpu_pct"] = meter.stop()
        burst["tcp"] = counters_delta(tcp, tcp_counters())
        if profiler is not None:
            burst["profile"] = await profiler.finish()
        await ctx.pool.all("close", group="conns")
    return burst


# ---------------------------------------------------------------------------
# Requests and agent output
# ---------------------------------------------------------------------------


async def requests(ctx: Context, stack: Stack) -> dict[str, Any]:
    cfg, pool = ctx.cfg, ctx.pool
    k = cfg.request_clients
    setup = await connect(
        ctx, "req", k, stack.urls[:1], role="operator", user_prefix="req", ramp_s=0.0
    )
    roles = {
        "gateway": stack.gateway_pids,
        "runner": [stack.runner.pid] if stack.runner else [],
        "redis": [ctx.redis_pid],
        "generators": pool.pids,
    }
    profiler = await _profiler(ctx, "requests", stack.gateway_pids[0], "requests")
    meter = CpuMeter(roles, frozenset({"runner"}))
    load = _load()
    meter.start()
    try:
        answers = await pool.all(
            "requests", timeout_s=600, group="req", model="echo", commands=cfg.commands
        )
    finally:
        cpu = meter.stop()
        await pool.all("close", group="req")
    profile = await profiler.finish() if profiler is not None else None
    done = sum(a["commands"] for a in answers)
    seconds = max((a["seconds"] for a in answers), default=0.0)
    errors: dict[str, int] = {}
    for a in answers:
        for reason, count in a["errors"].items():
            errors[reason] = errors.get(reason, 0) + count
    if errors:
        ctx.errors.append(f"requests: {errors}")
    return {
        "clients": k,
        "connected": setup["connected"],
        "commands_per_client": cfg.commands,
        "commands": done,
        "seconds": seconds,
        "commands_per_s": round(done / seconds, 1) if seconds else None,
        "create_ack_ms": exact_summary_ms([x for a in answers for x in a["create_ms"]]),
        "ack_ms": Histogram.merged(a["ack_hist"] for a in answers).summary_ms(),
        "first_output_ms": Histogram.merged(a["output_hist"] for a in answers).summary_ms(),
        "errors": errors,
        "cpu_pct": cpu,
        "load": load,
        **({"profile": profile} if profile is not None else {}),
        "settings": {
            "TEAMDASH_MESSAGES_PER_SECOND": stack.env["TEAMDASH_MESSAGES_PER_SECOND"],
            "TEAMDASH_AGENT_COMMANDS_PER_SECOND": stack.env["TEAMDASH_AGENT_COMMANDS_PER_SECOND"],
            "TEAMDASH_RUNNER_MAX_AGENTS": str(stack.runner_slots),
            "TEAMDASH_MAX_AGENTS_PER_USER": str(stack.runner_slots),
        },
    }


async def agent_output(ctx: Context, stack: Stack) -> dict[str, Any]:
    cfg, pool = ctx.cfg, ctx.pool
    await connect(
        ctx, "fh", 1, stack.urls[:1], role="operator", user_prefix="fh", ramp_s=0.0, workers=1
    )
    roles = {
        "gateway": stack.gateway_pids,
        "runner": [stack.runner.pid] if stack.runner else [],
        "redis": [ctx.redis_pid],
        "generators": pool.pids,
    }
    profiler = await _profiler(ctx, "agent-output", stack.gateway_pids[0], "agent-output")
    meter = CpuMeter(roles, frozenset({"runner"}))
    load = _load()
    meter.start()
    try:
        ans = await pool.workers[0].call(
            "firehose",
            timeout_s=600,
            group="fh",
            model="firehose",
            lines=cfg.firehose_lines,
            size=cfg.firehose_size,
        )
    finally:
        cpu = meter.stop()
        await pool.workers[0].call("close", group="fh")
    profile = await profiler.finish() if profiler is not None else None
    hist = Histogram.from_json(ans.pop("hist"))
    span_cmd = (ans["last_recv_ns"] - ans["t_command_ns"]) / 1e9 if ans["last_recv_ns"] else 0.0
    if ans["lost"] or ans["duplicated"]:
        ctx.errors.append(f"agent output: lost {ans['lost']}, duplicated {ans['duplicated']}")
    return {
        **{k: v for k, v in ans.items() if not k.endswith("_ns")},
        "line_chars": cfg.firehose_size,
        "events_per_s_from_command": round(ans["unique"] / span_cmd, 1) if span_cmd > 0 else None,
        "latency_ms": hist.summary_ms(),
        "cpu_pct": cpu,
        "load": load,
        **({"profile": profile} if profile is not None else {}),
    }
