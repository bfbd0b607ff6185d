"""CPU per connect+auth of a burst, inside the server: ``python -m bench.burst_probe
gateway|ceiling [--bursts 6] [--connections 1000] [--profile FILE]``.

The benchmark's connection scenario times a burst from the clients' side, where the p99 is
the CPU of *everything* on the machine (server, generators, Redis) and varies by ±30 % from
run to run. This diagnostic runs the server in-process instead — the real
:class:`gateway.server.Gateway` with the benchmark's settings and the gateway process's GC
settings, or :mod:`bench.ceiling`'s handler — and reads its own CPU clock around each burst
of the benchmark's generators: the server's CPU per connection, the steadier figure to
compare two commits by (docs/benchmarks.md, optimisation 9). The first burst warms up and
is left out; the median of the others is printed. ``--profile`` runs cProfile with the CPU
clock over those bursts (every call costs several times more under it; compare shares, and
compare with a profile of the ceiling).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import os
import secrets
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from statistics import median
from typing import Any

from bench.config import RESULTS_DIR
from bench.loadgen import raise_nofile
from bench.procs import Child, Pool
from bench.stack import BENCH_LIMITS
from shared.redis_server import EmbeddedRedis


async def _serve(what: str, redis_url: str, secret: str, run_dir: Path) -> tuple[str, Any]:
    """Start the server; its URL and a coroutine function that stops it."""
    if what == "gateway":
        from gateway.server import Gateway  # noqa: PLC0415 - only what is measured
        from gateway.settings import GatewaySettings  # noqa: PLC0415
        from shared.settings import Env  # noqa: PLC0415

        env = {
            **BENCH_LIMITS,
            "REDIS_URL": redis_url,
            "TEAMDASH_JWT_SECRET": secret,
            "TEAMDASH_STATE_DIR": str(run_dir / "state"),
            "TEAMDASH_GATEWAY_PORT": "0",
        }
        gateway = Gateway(GatewaySettings.from_env(Env(env)))
        await gateway.start()
        gc.freeze()  # as gateway.server.main does
        gc.set_threshold(50_000, 20, 100)
        return f"ws://127.0.0.1:{gateway.port}/ws", gateway.close
    from bench import ceiling  # noqa: PLC0415

    server = await ceiling.start(0)
    port = server.sockets[0].getsockname()[1]

    async def stop() -> None:
        server.close()
        await server.wait_closed()

    return f"ws://127.0.0.1:{port}/ws", stop


async def probe(args: argparse.Namespace) -> int:
    raise_nofile()
    run_dir = RESULTS_DIR / f"burst-probe-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    run_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(36)
    profiler = cProfile.Profile(time.process_time) if args.profile else None
    per_connection_us: list[float] = []
    with EmbeddedRedis(workdir=run_dir / "redis") as redis:
        url, stop = await _serve(args.server, redis.url, secret, run_dir)
        env = {"TEAMDASH_JWT_SECRET": secret}
        workers = [
            Child(f"loadgen{i}", ["-m", "bench.loadgen"], env, run_dir, rpc=True)
            for i in range(args.workers)
        ]
        pool = Pool(workers)
        try:
            for w in workers:
                await w.start()
            for burst in range(args.bursts + 1):
                cpu_us, connected, p99 = await _burst(pool, url, burst, args, profiler)
                if burst > 0:
                    per_connection_us.append(cpu_us)
                print(
                    f"burst {burst}{' (warm-up)' if burst == 0 else ''}: {connected} connected, "
                    f"p99 {p99:.0f} ms, server CPU {cpu_us:.0f} µs per connection",
                    flush=True,
                )
        finally:
            await pool.stop()
            await stop()
    print(f"{args.server}: median server CPU {median(per_connection_us):.0f} µs per connect+auth")
    if profiler is not None:
        profiler.dump_stats(args.profile)
        print(f"profile: {args.profile}")
    return 0


async def _burst(
    pool: Pool,
    url: str,
    burst: int,
    args: argparse.Namespace,
    profiler: cProfile.Profile | None,
) -> tuple[float, int, float]:
    """One burst: the server's CPU µs per connection, how many connected, their p99 ms."""
    n = len(pool)
    start_at = time.time() + 0.5 + args.connections / n * 60e-6  # after minting tokens
    fields = [
        {
            "group": "c",
            "worker": i,
            "workers": n,
            "total": args.connections,
            "urls": [url],
            "role": "viewer",
            "user_prefix": f"burst{burst}",
            "ramp_s": 0.0,
            "start_at": start_at,
            "client_timeout_s": 30,
        }
        for i in range(n)
    ]
    answers_soon: Awaitable[list[dict[str, Any]]] = asyncio.ensure_future(
        pool.each("connect", fields)
    )
    await asyncio.sleep(max(0.0, start_at - time.time() - 0.05))
    profiling = profiler if burst > 0 else None
    cpu = time.process_time()
    if profiling is not None:
        profiling.enable()
    answers = await answers_soon
    if profiling is not None:
        profiling.disable()
    cpu = time.process_time() - cpu
    times = sorted(x for a in answers for x in a["connect_ms"])
    await pool.all("close", group="c")
    await asyncio.sleep(1.0)  # the closes are done before the next burst
    p99 = times[max(0, int(len(times) * 0.99) - 1)] if times else float("nan")
    return cpu / max(1, len(times)) * 1e6, len(times), p99


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.burst_probe", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("server", choices=("gateway", "ceiling"))
    p.add_argument("--bursts", type=int, default=6, help="bursts measured (after a warm-up)")
    p.add_argument("--connections", type=int, default=1000)
    p.add_argument("--workers", type=int, default=4, help="load-generator processes")
    p.add_argument("--profile", help="write a cProfile (CPU clock) of the bursts here")
    args = p.parse_args(argv)
    os.environ["BENCH_RUN_ID"] = f"burst-probe-{os.getpid()}"
    run: Callable[[Any], int]
    try:
        import uvloop  # noqa: PLC0415

        run = uvloop.run
    except ImportError:
        run = asyncio.run
    return run(probe(args))


if __name__ == "__main__":
    sys.exit(main())
