"""The benchmark's machinery at a trivial size (``python -m bench --smoke``): every scenario
runs end to end through real processes and the result has the documented shape, with no
event lost or duplicated and no process left behind. No timing is asserted: figures are
the benchmark's business, not the test suite's."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import psutil

from tests.helpers import ROOT, t

LATENCY_KEYS = {"count", "mean", "p50", "p90", "p99", "p99.9", "max"}


def _leftovers(run_id: str, run_dir: Path) -> list[str]:
    """This run's processes still alive: marked with its id (unique per run, so another
    bench run on the machine, e.g. a second ``.ci/run``, is not counted) or working in its
    own output folder."""
    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            marked = p.environ().get("BENCH_RUN_ID") == run_id
            inside = p.cwd().startswith(str(run_dir))
        except (psutil.Error, OSError):
            continue
        if (marked or inside) and p.status() != psutil.STATUS_ZOMBIE:
            found.append(f"{p.pid} {' '.join(p.info['cmdline'] or [])}")
    return found


def _check_fanout_steps(steps: list[dict]) -> None:
    assert [s["label"] for s in steps] == ["1000", "afap"]
    for s in steps:
        assert s["subscribers"] == 5
        assert s["delivered"] == s["expected"] == 5 * s["events"] > 0
        assert s["lost"] == 0 and s["duplicated"] == 0
        assert s["offset_gaps"] == 0 and s["out_of_order"] == 0
        assert s["closed_clients"] == 0 and s["incomplete_clients"] == 0
        assert set(s["latency_ms"]) == LATENCY_KEYS and s["latency_ms"]["count"] == s["delivered"]
        assert s["delivered_per_s"] is not None
        assert "generators" in s["cpu_pct"] and "machine" in s["cpu_pct"]


def test_bench_smoke(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=t(120),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    [json_file] = tmp_path.glob("*.json")
    result = json.loads(json_file.read_text())
    assert (tmp_path / f"{result['id']}.md").read_text().count("## ") >= 5

    assert result["mode"] == "smoke" and result["errors"] == []
    assert re.fullmatch(r"\d{8}-\d{6}-\d+-[0-9a-f]{6}", result["id"]), result["id"]
    for key in ("cpu_model", "logical_cpus", "memory_bytes", "kernel"):
        assert result["machine"][key]
    for key in ("python", "websockets", "redis_py", "redis_server", "pydantic", "uvloop"):
        assert result["versions"][key]
    assert result["uptime"]["start"] and result["uptime"]["end"]

    sc = result["scenarios"]
    fan = sc["fanout"]["1gw"]
    _check_fanout_steps(fan["ceiling"]["steps"])
    _check_fanout_steps(fan["steps"])
    assert "gateway" in fan["steps"][0]["cpu_pct"] and "redis" in fan["steps"][0]["cpu_pct"]
    ratios = {"delivered_per_s", "p50", "p99", "p99.9", "server_cpu_us_per_delivery"}
    assert all(set(s["ratio_to_ceiling"]) == ratios for s in fan["steps"])

    [conn] = sc["connections"]["1gw"]
    for phase in ("ramp", "burst"):
        assert conn[phase]["connected"] == 10 and conn[phase]["failed"] == 0
        assert set(conn[phase]["connect_auth_ms"]) == LATENCY_KEYS
    assert "gateway_rss_per_connection_kib" in conn
    assert {"gateway", "generators"} <= set(conn["idle"]["cpu_pct"])

    req = sc["requests"]
    assert req["commands"] == 5 and req["errors"] == {}
    assert req["ack_ms"]["count"] == req["first_output_ms"]["count"] == 5

    out = sc["agent_output"]
    assert out["unique"] == out["lines"] == 200
    assert out["lost"] == 0 and out["duplicated"] == 0 and out["sequence_gaps"] == 0
    assert out["done_marker"] and out["events_per_s"] is not None

    state = sc["state"]
    cost = state["publish_cost"]
    for mode in ("with", "without"):
        assert cost[mode]["publisher_us_per_event"] > 0
    assert state["agent_list"]["ack_ms"]["count"] == 5
    history = state["history"]
    assert history["pages"]["events"] == history["lines"] == 2000
    since = history["subscribe_since_start"]
    assert since["events"] == 2000 and since["duplicated"] == 0 and since["gaps"] == 0

    assert _leftovers(result["id"], tmp_path) == []
