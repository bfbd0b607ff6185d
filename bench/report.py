"""What a result file records besides the figures (machine, versions), the fan-out ratios to
the ceiling, and the markdown rendering of a result."""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil

from bench.procs import ROOT


def machine() -> dict[str, Any]:
    model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu_model": model,
        "physical_cores": psutil.cpu_count(logical=False),
        "logical_cpus": psutil.cpu_count(logical=True),
        "memory_bytes": psutil.virtual_memory().total,
        "kernel": platform.release(),
        "os": platform.platform(),
    }


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def versions() -> dict[str, Any]:
    status = _git("status", "--porcelain")
    return {
        "python": platform.python_version(),
        "implementation": sys.implementation.name,
        "websockets": _version("websockets"),
        "redis_py": _version("redis"),
        "hiredis": _version("hiredis"),
        "pydantic": _version("pydantic"),
        "pydantic_core": _version("pydantic-core"),
        "uvloop": _version("uvloop"),
        "orjson": _version("orjson"),
        "psutil": _version("psutil"),
        "pyjwt": _version("pyjwt"),
        "py_spy": _version("py-spy"),
        "teamdash_commit": _git("rev-parse", "--short", "HEAD"),
        "teamdash_dirty": bool(status) if status is not None else None,
    }


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


# ---------------------------------------------------------------------------
# Ratios to the ceiling
# ---------------------------------------------------------------------------


def add_ceiling_ratios(result: dict[str, Any]) -> None:
    """For every gateway fan-out step with a ceiling step of the same label (the ceiling run
    interleaved with it, else a ceiling run of its own): gateway figure / ceiling figure
    (delivered/s: < 1 = slower; latency and CPU per delivery: > 1 = slower, costlier)."""
    scenarios = result.get("scenarios", {})
    alone = scenarios.get("ceiling")
    for run in (scenarios.get("fanout") or {}).values():
        if not isinstance(run, dict):
            continue
        ceiling = run.get("ceiling", alone)
        if not isinstance(ceiling, dict) or "steps" not in ceiling:
            continue
        by_label = {s["label"]: s for s in ceiling["steps"]}
        for s in run.get("steps", []):
            c = by_label.get(s["label"])
            if c is None:
                continue
            ratio: dict[str, float | None] = {
                "delivered_per_s": _ratio(s["delivered_per_s"], c["delivered_per_s"])
            }
            for q in ("p50", "p99", "p99.9"):
                ratio[q] = _ratio(s["latency_ms"][q], c["latency_ms"][q])
            ratio["server_cpu_us_per_delivery"] = _ratio(
                s["server_cpu_us_per_delivery"], c["server_cpu_us_per_delivery"]
            )
            s["ratio_to_ceiling"] = ratio


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 2)


# ---------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------


def _f(x: Any, digits: int = 1) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    if isinstance(x, int):
        return f"{x:,}"
    return str(x)


def _ms(x: Any) -> str:
    if x is None:
        return "–"
    return f"{x:.2f}" if x < 100 else f"{x:,.0f}"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def markdown(result: dict[str, Any]) -> str:
    m, v, cfg = result["machine"], result["versions"], result["config"]
    lines = [
        f"# Benchmark {result['id']} ({result['mode']})",
        "",
        f"`{' '.join(result['command'])}` — {result['started_at']} → {result['finished_at']} ({result['duration_s']:.0f} s)",
        "",
        f"- uptime at start: `{result['uptime']['start']}`",
        f"- uptime at end: `{result['uptime']['end']}`",
        "",
        "Percent CPU figures are of ONE core (200 % = both cores of a 2-core machine); `other` is",
        "CPU the machine spent outside the benchmark's processes (other people's work).",
        "",
        "## Machine and versions",
        "",
    ]
    mem_gib = m["memory_bytes"] / 2**30
    lines += _table(
        [
            "cpu",
            "cores (phys/logical)",
            "memory",
            "kernel",
            "python",
            "websockets",
            "redis-py",
            "hiredis",
            "redis-server",
            "pydantic",
            "uvloop",
            "orjson",
            "commit",
        ],
        [
            [
                m["cpu_model"],
                f"{m['physical_cores']}/{m['logical_cpus']}",
                f"{mem_gib:.1f} GiB",
                m["kernel"],
                v["python"],
                _f(v["websockets"]),
                _f(v["redis_py"]),
                _f(v["hiredis"]),
                _f(v.get("redis_server")),
                _f(v["pydantic"]),
                _f(v["uvloop"]),
                _f(v["orjson"]),
                f"{v['teamdash_commit']}{' (dirty)' if v['teamdash_dirty'] else ''}",
            ]
        ],
    )
    lines += [
        "",
        "## Settings",
        "",
        f"- load generators: {cfg['workers']} processes (websockets sans-I/O client on uvloop)",
        f"- fan-out: S = {cfg['subscribers']:,} subscribers of one agent topic, steps of {cfg['step_s']:g} s at "
        f"{', '.join(f'{r:,}' for r in cfg['rates'])} delivered msgs/s, then {cfg['afap_events']:,} events as fast as "
        f"possible (pipelined batches of {cfg['afap_batch']}); payload.data {cfg['event_size']} chars",
        f"- connections: {', '.join(f'{c:,}' for c in cfg['connections'])}; ramp {cfg['ramp_s_per_thousand']:g} s per 1,000; "
        f"idle window {cfg['idle_s']:g} s with heartbeat interval {cfg['heartbeat_s']:g} s",
        f"- requests: {cfg['request_clients']} clients × {cfg['commands']} commands (closed loop), echo agents",
        f"- agent output: {cfg['firehose_lines']:,} lines of {cfg['firehose_size']} chars",
        f"- gateway env: {', '.join(f'{k}={val}' for k, val in result.get('gateway_env', {}).items())}",
        "",
    ]
    sc = result["scenarios"]
    targets = spec_targets(result)
    if targets:
        lines += ["## Against the spec's performance targets (one gateway)", ""]
        lines += _table(["target (spec)", "measured", "how"], targets)
        lines.append("")
    fan_rows = []
    runs: list[tuple[str, dict[str, Any]]] = []
    if isinstance(sc.get("ceiling"), dict):
        runs.append(("ceiling", sc["ceiling"]))
    for name, run in (sc.get("fanout") or {}).items():
        if isinstance(run, dict):
            if isinstance(run.get("ceiling"), dict):
                runs.append((f"ceiling (with {name})", run["ceiling"]))
            runs.append((name, run))
    for name, run in runs:
        for s in run.get("steps", []):
            lat, cpu, ratio = s["latency_ms"], s["cpu_pct"], s.get("ratio_to_ceiling") or {}
            server_cpu = cpu.get("gateway", cpu.get("server"))
            fan_rows.append(
                [
                    name,
                    s["label"],
                    _f(s["subscribers"]),
                    _f(s["publish_rate"]),
                    _f(s["delivered_per_s"], 0),
                    _f(ratio.get("delivered_per_s"), 2),
                    _ms(lat["p50"]),
                    _ms(lat["p99"]),
                    _ms(lat["p99.9"]),
                    _ms(lat["max"]),
                    f"{_f(ratio.get('p50'), 2)} / {_f(ratio.get('p99'), 2)}",
                    _f(s.get("server_cpu_us_per_delivery"), 2),
                    _f(ratio.get("server_cpu_us_per_delivery"), 2),
                    _f(s["lost"]),
                    _f(s["duplicated"]),
                    _f(s["offset_gaps"]),
                    _f(server_cpu),
                    _f(cpu.get("redis")),
                    _f(cpu.get("publisher")),
                    _f(cpu.get("generators")),
                    _f(cpu.get("other")),
                ]
            )
    if fan_rows:
        lines += ["## Fan-out", ""]
        lines += _table(
            [
                "target",
                "step (msgs/s)",
                "S",
                "publish ev/s",
                "delivered/s",
                "× ceiling",
                "p50 ms",
                "p99 ms",
                "p99.9 ms",
                "max ms",
                "p50/p99 × ceiling",
                "server µs/delivery",
                "µs × ceiling",
                "lost",
                "dup",
                "offset gaps",
                "server CPU%",
                "redis%",
                "publisher%",
                "generators%",
                "other%",
            ],
            fan_rows,
        )
        lines += [
            "",
            "Latency: from the source creating the event (before `publish_many` / `broadcast`) to the client",
            "having it parsed. `afap`: the events published back to back; delivered/s = deliveries / (last",
            "receive − first publish). Server CPU% is the sum over gateways; server µs/delivery = server CPU",
            "time over the step / deliveries (the figure least disturbed by a busy machine). Each gateway",
            "step ran right after the same step on the ceiling (interleaved), so both saw the same neighbours.",
            "",
        ]
    conn_rows = []
    conn_errors = []
    for name, runs_ in (sc.get("connections") or {}).items():
        if not isinstance(runs_, list):
            continue
        for r in runs_:
            for phase in ("ramp", "burst"):
                if r[phase]["errors"]:
                    conn_errors.append(
                        f"- {name} C={r['connections']:,} {phase}: {r[phase]['errors']}"
                    )
            ramp, burst, idle = r["ramp"], r["burst"], r["idle"]
            ceiling = r.get("ceiling_burst")
            conn_rows.append(
                [
                    name,
                    _f(r["connections"]),
                    f"{_f(ramp['connected'])}/{_f(burst['connected'])}",
                    _ms(ramp["connect_auth_ms"]["p50"]),
                    _ms(ramp["connect_auth_ms"]["p99"]),
                    _ms(burst["connect_auth_ms"]["p50"]),
                    _ms(burst["connect_auth_ms"]["p99"]),
                    _ms(burst["connect_auth_ms"]["max"]),
                    _f(burst["wall_s"], 2),
                    _ms(ceiling["connect_auth_ms"]["p99"]) if ceiling else "–",
                    _f(r.get("burst_p99_x_ceiling"), 2),
                    _f(r["gateway_rss_per_connection_kib"]),
                    _f(idle["cpu_pct"]["gateway"]),
                    _f(idle["gateway_cpu_us_per_connection_per_s"], 2),
                    _f(idle["gateway_cpu_us_per_heartbeat"]),
                    _f(burst["cpu_pct"].get("generators")),
                    _f(idle["cpu_pct"].get("other")),
                    _f(burst.get("tcp", {}).get("ListenOverflows")),
                ]
            )
    if conn_rows:
        lines += ["## Connections", ""]
        lines += _table(
            [
                "gateways",
                "C",
                "ok ramp/burst",
                "ramp p50 ms",
                "ramp p99 ms",
                "burst p50 ms",
                "burst p99 ms",
                "burst max ms",
                "burst wall s",
                "ceiling burst p99 ms",
                "burst p99 × ceiling",
                "gw RSS KiB/conn",
                "idle gw CPU%",
                "idle µs/conn/s",
                "µs/heartbeat",
                "burst gen CPU%",
                "idle other%",
                "burst listen overflows",
            ],
            conn_rows,
        )
        lines += [
            "",
            "Connect+auth: TCP connect → WebSocket handshake → `auth` → `connection:status`. RSS per connection:",
            "gateway RSS after the ramp minus before, over C. Idle CPU: the gateway with C authenticated idle",
            "connections (heartbeats both ways and the 1 s session-cursor flush).",
            "",
        ]
        if conn_errors:
            lines += ["Failed connections (reason: count):", "", *conn_errors, ""]
    req = sc.get("requests")
    if isinstance(req, dict) and "error" not in req:
        lines += ["## Requests", ""]
        lines += _table(
            [
                "clients",
                "commands",
                "commands/s",
                "ack p50 ms",
                "ack p99 ms",
                "first output p50 ms",
                "first output p99 ms",
                "create ack p50 ms",
                "gw CPU%",
                "runner+agents CPU%",
                "redis%",
                "generators%",
                "errors",
            ],
            [
                [
                    _f(req["clients"]),
                    _f(req["commands"]),
                    _f(req["commands_per_s"]),
                    _ms(req["ack_ms"]["p50"]),
                    _ms(req["ack_ms"]["p99"]),
                    _ms(req["first_output_ms"]["p50"]),
                    _ms(req["first_output_ms"]["p99"]),
                    _ms(req["create_ack_ms"]["p50"]),
                    _f(req["cpu_pct"]["gateway"]),
                    _f(req["cpu_pct"]["runner"]),
                    _f(req["cpu_pct"]["redis"]),
                    _f(req["cpu_pct"]["generators"]),
                    _f(sum(req["errors"].values())),
                ]
            ],
        )
        lines += [
            "",
            f"Limits lifted for the bench: {', '.join(f'{k}={val}' for k, val in req['settings'].items())}.",
            "",
        ]
    ao = sc.get("agent_output")
    if isinstance(ao, dict) and "error" not in ao:
        lines += ["## Agent output", ""]
        lines += _table(
            [
                "lines",
                "received",
                "events/s (first→last)",
                "events/s (command→last)",
                "p50 ms",
                "p99 ms",
                "lost",
                "dup",
                "gw CPU%",
                "runner+agent CPU%",
                "redis%",
            ],
            [
                [
                    _f(ao["lines"]),
                    _f(ao["unique"]),
                    _f(ao["events_per_s"], 0),
                    _f(ao["events_per_s_from_command"], 0),
                    _ms(ao["latency_ms"]["p50"]),
                    _ms(ao["latency_ms"]["p99"]),
                    _f(ao["lost"]),
                    _f(ao["duplicated"]),
                    _f(ao["cpu_pct"]["gateway"]),
                    _f(ao["cpu_pct"]["runner"]),
                    _f(ao["cpu_pct"]["redis"]),
                ]
            ],
        )
        lines += ["", "Latency: from the agent writing the line to the subscriber having it.", ""]
    lines += _state(sc.get("state"))
    profiles = _profiles(result)
    if profiles:
        lines += ["## Gateway profiles (py-spy)", ""]
        for name, prof in profiles:
            if "error" in prof and prof.get("error"):
                lines += [f"- {name}: {prof['error']}"]
                continue
            lines += [
                f"### {name}: {prof['samples']:,} samples, busy ≈ {_f(prof.get('busy'), 2)}",
                "",
            ]
            lines += _table(
                ["self %", "function", "inclusive %", "function "],
                [
                    [
                        f"{a['share'] * 100:.1f}",
                        f"`{a['function']}`",
                        f"{b['share'] * 100:.1f}",
                        f"`{b['function']}`",
                    ]
                    for a, b in zip(prof["self"][:15], prof["inclusive"][:15], strict=False)
                ],
            )
            lines.append("")
    if result.get("errors"):
        lines += ["## Errors", ""] + [f"- {e}" for e in result["errors"]] + [""]
    return "\n".join(lines) + "\n"


def _state(st: Any) -> list[str]:
    """The state scenario (bench/state.py): publish cost, agent:list, history."""
    if not isinstance(st, dict) or "error" in st:
        return []
    pc, al, h = st["publish_cost"], st["agent_list"], st["history"]
    lines = ["## Dashboard state", ""]
    lines += _table(
        ["publish, per event", "no transcript", "with transcript", "ratio"],
        [
            [
                "publisher wall µs",
                _f(pc["without"]["publisher_us_per_event"], 2),
                _f(pc["with"]["publisher_us_per_event"], 2),
                _f(pc["publisher_us_per_event_ratio"], 2),
            ],
            [
                "Redis CPU µs",
                _f(pc["without"]["redis_cpu_us_per_event"], 2),
                _f(pc["with"]["redis_cpu_us_per_event"], 2),
                _f(pc["redis_cpu_us_per_event_ratio"], 2),
            ],
        ],
    )
    lines += [
        "",
        f"{pc['rounds']} rounds of {pc['events_per_round']:,} events per mode, alternating, "
        "in batches of 500 (as the runner's outbox publishes).",
        "",
    ]
    rows = [
        [
            "agent:list",
            f"{al['agents']:,} agents, one page",
            _ms(al["ack_ms"]["p50"]),
            _ms(al["ack_ms"]["p99"]),
            "",
            "",
        ]
    ]
    pages = h.get("pages")
    if pages:
        rows.append(
            [
                "agent:history",
                f"{h['lines']:,} lines, pages of 1000",
                "",
                "",
                _f(pages["events_per_s"], 0),
                _f(pages["cpu_pct"].get("gateway")),
            ]
        )
    since = h.get("subscribe_since_start")
    if since:
        rows.append(
            [
                "subscribe since 0",
                f"{h['lines']:,} lines",
                "",
                "",
                _f(since["events_per_s"], 0),
                _f(since["cpu_pct"].get("gateway")),
            ]
        )
    lines += _table(["request", "size", "p50 ms", "p99 ms", "events/s", "gw CPU%"], rows)
    lines += [""]
    return lines


def _profiles(result: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    sc = result["scenarios"]
    for name, run in (sc.get("fanout") or {}).items():
        if isinstance(run, dict):
            for s in run.get("steps", []):
                if "profile" in s:
                    out.append((f"fan-out {name} step {s['label']}", s["profile"]))
    for name, runs in (sc.get("connections") or {}).items():
        if isinstance(runs, list):
            for r in runs:
                if "profile" in r["ramp"]:
                    out.append((f"connect ramp {name} C={r['connections']}", r["ramp"]["profile"]))
                if "profile" in r["burst"]:
                    out.append(
                        (f"connect burst {name} C={r['connections']}", r["burst"]["profile"])
                    )
                if "profile" in r.get("ceiling_burst", {}):
                    prof = r["ceiling_burst"]["profile"]
                    out.append((f"ceiling burst C={r['connections']}", prof))
                if "profile" in r["idle"]:
                    out.append((f"idle {name} C={r['connections']}", r["idle"]["profile"]))
    for key, title in (("requests", "requests"), ("agent_output", "agent output")):
        doc = sc.get(key)
        if isinstance(doc, dict) and "profile" in doc:
            out.append((title, doc["profile"]))
    return out


def spec_targets(result: dict[str, Any]) -> list[list[str]]:
    """The spec's "Performance Targets" next to what this run measured on one gateway."""
    sc = result["scenarios"]
    rows: list[list[str]] = []
    one = (sc.get("fanout") or {}).get("1gw")
    if isinstance(one, dict) and one.get("steps"):
        paced = [s for s in one["steps"] if s["target_per_s"]]
        kept = [
            s
            for s in paced
            if s["delivered_per_s"]
            and s["delivered_per_s"] >= 0.98 * s["target_per_s"]
            and s["latency_ms"]["p99"] is not None
            and s["latency_ms"]["p99"] < 50
            and not s["lost"]
        ]
        best = max((s["target_per_s"] for s in kept), default=None)
        afap = next((s for s in one["steps"] if s["label"] == "afap"), None)
        rows.append(
            [
                "Throughput: 10,000 messages/second per server",
                f"{_f(best)} msgs/s sustained"
                + (f"; {_f(afap['delivered_per_s'], 0)} msgs/s flat out" if afap else ""),
                f"fan-out to {one['steps'][0]['subscribers']:,} subscribers: highest step delivered in full with p99 < 50 ms",
            ]
        )
        at10k = next((s for s in paced if s["target_per_s"] == 10000), None)
        if at10k:
            rows.append(
                [
                    "Message latency: < 50 ms (p99)",
                    f"{_ms(at10k['latency_ms']['p99'])} ms p99 at 10,000 msgs/s",
                    "publish → client, fan-out step 10,000",
                ]
            )
    conns = (sc.get("connections") or {}).get("1gw")
    if isinstance(conns, list) and conns:
        c1k = min(conns, key=lambda r: abs(r["connections"] - 1000))
        rows.append(
            [
                "Connection time: < 100 ms",
                f"p99 {_ms(c1k['ramp']['connect_auth_ms']['p99'])} ms ramped, {_ms(c1k['burst']['connect_auth_ms']['p99'])} ms burst",
                f"connect + auth, C = {c1k['connections']:,}",
            ]
        )
        full = [r for r in conns if r["ramp"]["connected"] == r["connections"]]
        rows.append(
            [
                "Concurrent connections: 1,000 per server",
                f"{_f(max((r['connections'] for r in full), default=0))} connected and idle"
                + (f" at {_f(full[-1]['idle']['cpu_pct']['gateway'])} % CPU" if full else ""),
                "largest C whose ramp connected fully",
            ]
        )
    return rows
