"""Benchmark settings: three presets (``full``, ``--quick``, ``--smoke``) and the command line
that overrides any of them."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path

SCENARIOS = ("ceiling", "fanout", "connections", "requests", "agent-output", "state")
RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True, slots=True)
class BenchConfig:
    mode: str
    scenarios: tuple[str, ...] = SCENARIOS
    #: Gateway counts to run the fan-out and connection scenarios with (requests and agent
    #: output run on one gateway).
    topologies: tuple[int, ...] = (1, 2)
    #: Load-generator processes.
    workers: int = 4

    # -- fan-out ----------------------------------------------------------------------
    subscribers: int = 1000
    #: Delivered messages per second in total (publish rate = rate / subscribers).
    rates: tuple[int, ...] = (1000, 5000, 10000, 20000, 50000)
    step_s: float = 10.0
    #: The "as fast as possible" step: this many events published back to back.
    afap_events: int = 1000
    afap_batch: int = 100
    #: Characters of ``payload.data`` per event (~ a line of agent output).
    event_size: int = 100
    #: Longest wait, after the last publish of a step, for every client to get everything.
    drain_timeout_s: float = 60.0
    #: Subscribers connected per second while setting up (gently: the connection storm is
    #: the connection scenario's business).
    setup_rate: float = 500.0

    # -- connections ----------------------------------------------------------------
    connections: tuple[int, ...] = (1000, 5000, 10000)
    ramp_s_per_thousand: float = 1.0
    #: Idle window over which the heartbeat cost is measured (≥ one heartbeat interval).
    idle_s: float = 30.0
    #: TEAMDASH_HEARTBEAT_INTERVAL_S of the connection scenario's gateways.
    heartbeat_s: float = 30.0
    #: A client that is not connected and authenticated by then counts as failed.
    client_timeout_s: float = 30.0

    # -- requests / agent output ------------------------------------------------------
    request_clients: int = 16
    commands: int = 200
    firehose_lines: int = 200_000
    firehose_size: int = 100

    # -- state (bench/state.py) -------------------------------------------------------
    #: Events per round and mode of the publish-cost comparison (transcripts on / off).
    publish_events: int = 200_000
    #: Agents in the registry for ``agent:list``, and requests timed.
    list_agents: int = 1000
    list_requests: int = 200
    #: Lines of the transcript read back with ``agent:history`` and ``subscribe since``.
    history_lines: int = 1_000_000

    # -- profiling ------------------------------------------------------------------
    #: py-spy the (first) gateway during these phases: fan-out step labels (a rate, "afap"),
    #: "connect" and "idle" (largest C), "requests", "agent-output".
    profile: tuple[str, ...] = ()
    profile_rate: int = 250

    out_dir: Path = RESULTS_DIR


PRESETS = {
    "full": BenchConfig(mode="full"),
    "quick": BenchConfig(
        mode="quick",
        workers=4,
        subscribers=100,
        step_s=2.0,
        afap_events=1000,
        drain_timeout_s=30.0,
        connections=(500, 1000),
        idle_s=6.0,
        heartbeat_s=3.0,
        client_timeout_s=15.0,
        request_clients=4,
        commands=50,
        firehose_lines=20_000,
        publish_events=50_000,
        list_requests=100,
        history_lines=100_000,
    ),
    # The size of the smoke test (tests/bench/test_bench_smoke.py): machinery, not figures.
    "smoke": BenchConfig(
        mode="smoke",
        topologies=(1,),
        workers=2,
        subscribers=5,
        rates=(1000,),
        step_s=1.0,
        afap_events=200,
        drain_timeout_s=15.0,
        connections=(10,),
        idle_s=1.0,
        heartbeat_s=30.0,
        client_timeout_s=10.0,
        request_clients=1,
        commands=5,
        firehose_lines=200,
        publish_events=1000,
        list_agents=20,
        list_requests=5,
        history_lines=2000,
    ),
}


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark the Team Dashboard gateway: fan-out, connections, requests, agent output, "
        "against a bare websockets ceiling. Starts and stops its own stack. See docs/benchmarks.md.",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--quick", action="store_const", const="quick", dest="mode", help="small sizes, < 3 minutes"
    )
    mode.add_argument(
        "--smoke",
        action="store_const",
        const="smoke",
        dest="mode",
        help="trivial sizes (the smoke test)",
    )
    p.set_defaults(mode="full")
    p.add_argument("--scenarios", help=f"comma-separated subset of {','.join(SCENARIOS)}")
    p.add_argument("--topologies", help="gateway counts for fan-out and connections, e.g. 1,2")
    p.add_argument("--workers", type=int, help="load-generator processes")
    p.add_argument("--subscribers", type=int, help="fan-out subscribers S")
    p.add_argument("--rates", help="fan-out delivered msgs/s targets, e.g. 1000,5000,10000")
    p.add_argument(
        "--step-seconds", type=float, dest="step_s", help="duration of each fan-out rate step"
    )
    p.add_argument(
        "--afap-events", type=int, help="events of the as-fast-as-possible step (0 = skip it)"
    )
    p.add_argument("--event-size", type=int, help="characters of payload.data per event")
    p.add_argument("--connections", help="connection counts C, e.g. 1000,5000,10000")
    p.add_argument("--max-connections", type=int, help="drop connection counts above this")
    p.add_argument(
        "--idle-seconds", type=float, dest="idle_s", help="idle window for the heartbeat cost"
    )
    p.add_argument(
        "--heartbeat-seconds",
        type=float,
        dest="heartbeat_s",
        help="heartbeat interval of the connection scenario",
    )
    p.add_argument(
        "--request-clients", type=int, help="clients of the request scenario (one echo agent each)"
    )
    p.add_argument("--commands", type=int, help="agent:command per request client")
    p.add_argument("--firehose-lines", type=int, help="lines the agent-output agent prints")
    p.add_argument("--history-lines", type=int, help="lines of the state scenario's transcript")
    p.add_argument(
        "--profile",
        nargs="?",
        const="auto",
        help="py-spy the first gateway during these phases, comma-separated: fan-out steps (a rate, "
        "'afap'), 'connect' (ramp), 'idle' (at rest) and 'burst' with the largest C, 'requests', "
        "'agent-output' (default: all of them, with the largest rate)",
    )
    p.add_argument(
        "--out", type=Path, dest="out_dir", help="results folder (default bench/results)"
    )
    return p


def from_args(argv: list[str] | None = None) -> BenchConfig:
    args = parser().parse_args(argv)
    cfg = PRESETS[args.mode]
    changes: dict[str, object] = {}
    if args.scenarios:
        chosen = tuple(s.strip() for s in args.scenarios.split(",") if s.strip())
        unknown = set(chosen) - set(SCENARIOS)
        if unknown:
            parser().error(
                f"unknown scenarios {sorted(unknown)}; choose from {','.join(SCENARIOS)}"
            )
        changes["scenarios"] = chosen
    if args.topologies:
        changes["topologies"] = _ints(args.topologies)
    if args.rates:
        changes["rates"] = _ints(args.rates)
    if args.connections:
        changes["connections"] = _ints(args.connections)
    for name in (
        "workers",
        "subscribers",
        "step_s",
        "afap_events",
        "event_size",
        "idle_s",
        "heartbeat_s",
        "request_clients",
        "commands",
        "firehose_lines",
        "history_lines",
        "out_dir",
    ):
        value = getattr(args, name)
        if value is not None:
            changes[name] = value
    if args.max_connections is not None:
        limit = args.max_connections
        conns = changes.get("connections", cfg.connections)
        assert isinstance(conns, tuple)
        changes["connections"] = tuple(c for c in conns if c <= limit) or (limit,)
    if args.profile:
        rates = changes.get("rates", cfg.rates)
        assert isinstance(rates, tuple)
        if args.profile == "auto":
            changes["profile"] = (
                str(max(rates)),
                "afap",
                "idle",
                "connect",
                "burst",
                "requests",
                "agent-output",
            )
        else:
            changes["profile"] = tuple(x.strip() for x in args.profile.split(",") if x.strip())
    return dataclasses.replace(cfg, **changes)  # type: ignore[arg-type]
