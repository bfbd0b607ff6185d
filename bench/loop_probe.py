"""Event-loop stalls of a gateway holding many connections, and how much of them is the
garbage collector: ``python -m bench.loop_probe [--connections 8000] [--rate 1000]``.

The benchmark proper runs the gateway as its own process and cannot look inside it. This
diagnostic runs the same :class:`gateway.server.Gateway` in-process (unchanged code, the
benchmark's settings) next to two observers: a task that sleeps 10 ms in a loop and records
how late it wakes up (event-loop lag), and a ``gc.callbacks`` hook that times every
collection by generation. The benchmark's load-generator processes then open
``--connections`` authenticated clients at ``--rate`` per second and hold them idle for
``--hold`` seconds.

``--gc-freeze`` (``gc.freeze()`` once the gateway is up), ``--gc-threshold`` (e.g.
``50000,20,100``) and ``--backlog`` (the listen backlog handed to ``serve()``; asyncio's
default is 100) try the usual remedies without touching the gateway's code.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from bench.config import RESULTS_DIR
from bench.loadgen import raise_nofile
from bench.procs import Child, Pool
from bench.stack import BENCH_LIMITS
from bench.stats import counters_delta, exact_summary_ms, tcp_counters
from shared.redis_server import EmbeddedRedis


class GcTimer:
    """Times every garbage collection, by generation (``gc.callbacks``)."""

    def __init__(self) -> None:
        self.pauses_ms: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self._start = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.pauses_ms[info["generation"]].append((time.perf_counter() - self._start) * 1000)

    def summary(self) -> dict[str, Any]:
        return {f"gen{g}": exact_summary_ms(p) for g, p in self.pauses_ms.items()}


async def _lag_sampler(out: list[tuple[float, float]], period_s: float = 0.01) -> None:
    """Appends (when, how late in ms) for every wake-up."""
    while True:
        t = time.perf_counter()
        await asyncio.sleep(period_s)
        now = time.perf_counter()
        out.append((now, (now - t - period_s) * 1000))


def _phase(lags: list[tuple[float, float]], start: float, end: float) -> dict[str, Any]:
    """Lag summary of one phase, with the count of stalls over 100 ms."""
    values = [lag for when, lag in lags if start <= when < end]
    return {**exact_summary_ms(values), "over_100ms": sum(1 for x in values if x > 100)}


async def probe(args: argparse.Namespace) -> dict[str, Any]:
    import gateway.server as gateway_server  # noqa: PLC0415 - after the environment is set
    from gateway.server import Gateway  # noqa: PLC0415
    from gateway.settings import GatewaySettings  # noqa: PLC0415
    from shared.settings import Env  # noqa: PLC0415

    raise_nofile()
    run_dir = RESULTS_DIR / f"loop-probe-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(36)
    if args.gc_threshold:
        gc.set_threshold(*(int(x) for x in args.gc_threshold.split(",")))
    if args.backlog:
        # In this process only: the gateway's serve() call, with a longer accept queue.
        gateway_server.serve = functools.partial(gateway_server.serve, backlog=args.backlog)  # type: ignore[attr-defined]
    with EmbeddedRedis(workdir=run_dir / "redis") as redis:
        env = {
            **BENCH_LIMITS,
            "REDIS_URL": redis.url,
            "TEAMDASH_JWT_SECRET": secret,
            "TEAMDASH_STATE_DIR": str(run_dir / "state"),
            "TEAMDASH_GATEWAY_PORT": "0",
        }
        gateway = Gateway(GatewaySettings.from_env(Env(env)))
        await gateway.start()
        if args.gc_freeze:
            gc.freeze()
        timer = GcTimer()
        gc.callbacks.append(timer)
        lags: list[tuple[float, float]] = []
        marks: dict[str, float] = {}
        sampler = asyncio.create_task(_lag_sampler(lags))
        url = f"ws://127.0.0.1:{gateway.port}/ws"
        workers = [
            Child(
                f"loadgen{i}",
                ["-m", "bench.loadgen"],
                {"TEAMDASH_JWT_SECRET": secret},
                run_dir,
                rpc=True,
            )
            for i in range(args.workers)
        ]
        pool = Pool(workers)
        try:
            for w in workers:
                await w.start()
            start_at = time.time() + 1.0
            fields = [
                {
                    "group": "c",
                    "worker": i,
                    "workers": len(workers),
                    "total": args.connections,
                    "urls": [url],
                    "role": "viewer",
                    "user_prefix": "probe",
                    "ramp_s": args.connections / args.rate,
                    "start_at": start_at,
                    "client_timeout_s": 30,
                }
                for i in range(len(workers))
            ]
            marks["connect"] = time.perf_counter()
            tcp = tcp_counters()
            answers = await pool.each("connect", fields)
            marks["hold"] = time.perf_counter()
            await asyncio.sleep(args.hold)
            marks["close"] = time.perf_counter()
            await pool.all("close", group="c")
            await asyncio.sleep(2.0)
            marks["end"] = time.perf_counter()
        finally:
            await pool.stop()
            sampler.cancel()
            gc.callbacks.remove(timer)
            await gateway.close()
    connect_ms = [x for a in answers for x in a["connect_ms"]]
    errors: dict[str, int] = {}
    for a in answers:
        for reason, n in a["errors"].items():
            errors[reason] = errors.get(reason, 0) + n
    return {
        "connections": args.connections,
        "rate": args.rate,
        "gc_freeze": args.gc_freeze,
        "gc_threshold": gc.get_threshold(),
        "backlog": args.backlog or 100,
        "connected": len(connect_ms),
        "errors": errors,
        "connect_auth_ms": exact_summary_ms(connect_ms),
        "handshake_ms": exact_summary_ms([x for a in answers for x in a["handshake_ms"]]),
        "tcp": counters_delta(tcp, tcp_counters()),
        "loop_lag_ms": {
            phase: _phase(lags, marks[phase], marks[after])
            for phase, after in (("connect", "hold"), ("hold", "close"), ("close", "end"))
        },
        "gc_pause_ms": timer.summary(),
        "folder": str(run_dir),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.loop_probe", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--connections", type=int, default=8000)
    p.add_argument("--rate", type=float, default=1000.0, help="new connections per second")
    p.add_argument("--hold", type=float, default=10.0, help="seconds to hold them idle")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--gc-freeze", action="store_true", help="gc.freeze() once the gateway is up")
    p.add_argument("--gc-threshold", help="gc.set_threshold(...) first, e.g. 50000,20,100")
    p.add_argument(
        "--backlog", type=int, help="listen backlog for serve() (default: asyncio's 100)"
    )
    args = p.parse_args(argv)
    os.environ["BENCH_RUN_ID"] = f"loop-probe-{os.getpid()}"
    try:
        import uvloop  # noqa: PLC0415

        result = uvloop.run(probe(args))
    except ImportError:
        result = asyncio.run(probe(args))
    text = orjson.dumps(result, option=orjson.OPT_INDENT_2).decode()
    Path(result["folder"], "result.json").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
