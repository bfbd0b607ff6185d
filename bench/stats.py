"""Latency histograms and CPU accounting shared by the orchestrator and the generators.

A :class:`Histogram` keeps log-spaced buckets (2 % wide) of microsecond values, so every
generator process can record millions of latencies cheaply and the orchestrator merges them
by adding counts; percentiles come out within ~1 % of the exact value. Raw samples are kept
only where there are few of them (connection times, request latencies).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psutil

#: Buckets per natural-log unit: a bucket spans a factor e**(1/50) ≈ 1.0202.
_SCALE = 50.0


class Histogram:
    """Log-bucketed histogram of values in microseconds (values below 1 µs count as 1 µs)."""

    __slots__ = ("buckets", "count", "total_us", "max_us")

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}
        self.count = 0
        self.total_us = 0.0
        self.max_us = 0.0

    def add(self, us: float) -> None:
        if us < 1.0:
            us = 1.0
        idx = int(math.log(us) * _SCALE)
        b = self.buckets
        b[idx] = b.get(idx, 0) + 1
        self.count += 1
        self.total_us += us
        if us > self.max_us:
            self.max_us = us

    def merge(self, other: Histogram) -> None:
        for idx, n in other.buckets.items():
            self.buckets[idx] = self.buckets.get(idx, 0) + n
        self.count += other.count
        self.total_us += other.total_us
        self.max_us = max(self.max_us, other.max_us)

    def percentile(self, q: float) -> float | None:
        """The ``q``-th percentile (0–100) in microseconds, or None when empty."""
        if not self.count:
            return None
        rank = max(1, math.ceil(q / 100.0 * self.count))
        seen = 0
        for idx in sorted(self.buckets):
            seen += self.buckets[idx]
            if seen >= rank:
                # Geometric middle of the bucket, never above the largest value seen.
                return min(math.exp((idx + 0.5) / _SCALE), self.max_us)
        return self.max_us

    def summary_ms(self) -> dict[str, float | int | None]:
        """count, mean, p50, p90, p99, p99.9 and max, in milliseconds."""

        def ms(us: float | None) -> float | None:
            return None if us is None else round(us / 1000.0, 3)

        return {
            "count": self.count,
            "mean": ms(self.total_us / self.count) if self.count else None,
            "p50": ms(self.percentile(50)),
            "p90": ms(self.percentile(90)),
            "p99": ms(self.percentile(99)),
            "p99.9": ms(self.percentile(99.9)),
            "max": ms(self.max_us) if self.count else None,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "b": {str(k): v for k, v in self.buckets.items()},
            "n": self.count,
            "t": self.total_us,
            "m": self.max_us,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Histogram:
        h = cls()
        h.buckets = {int(k): int(v) for k, v in doc["b"].items()}
        h.count = int(doc["n"])
        h.total_us = float(doc["t"])
        h.max_us = float(doc["m"])
        return h

    @classmethod
    def merged(cls, docs: Iterable[Mapping[str, Any]]) -> Histogram:
        h = cls()
        for doc in docs:
            h.merge(cls.from_json(doc))
        return h


def exact_summary_ms(values_ms: Sequence[float]) -> dict[str, float | int | None]:
    """The same summary as :meth:`Histogram.summary_ms`, computed exactly from raw samples."""
    if not values_ms:
        return {
            "count": 0,
            "mean": None,
            "p50": None,
            "p90": None,
            "p99": None,
            "p99.9": None,
            "max": None,
        }
    s = sorted(values_ms)

    def pct(q: float) -> float:
        return round(s[max(0, math.ceil(q / 100.0 * len(s)) - 1)], 3)

    return {
        "count": len(s),
        "mean": round(sum(s) / len(s), 3),
        "p50": pct(50),
        "p90": pct(90),
        "p99": pct(99),
        "p99.9": pct(99.9),
        "max": round(s[-1], 3),
    }


# ---------------------------------------------------------------------------
# CPU accounting
# ---------------------------------------------------------------------------


def _proc_cpu_s(pid: int, *, children: bool) -> float:
    """User + system CPU seconds of a process (and, with ``children``, of its live
    descendants: a runner's agents)."""
    try:
        p = psutil.Process(pid)
        t = p.cpu_times()
        total = t.user + t.system
        if children:
            for c in p.children(recursive=True):
                try:
                    ct = c.cpu_times()
                    total += ct.user + ct.system
                except psutil.Error:
                    pass
        return total
    except psutil.Error:
        return 0.0


@dataclass
class CpuMeter:
    """CPU used by named groups of processes, and by the whole machine, over an interval.

    Figures are in percent of ONE core (200 % = both cores of a 2-core machine busy);
    ``other`` is what the machine spent outside the benchmark's processes (other people's
    work on a shared machine: noise to keep in mind)."""

    roles: dict[str, list[int]]
    with_children: frozenset[str] = frozenset()
    _start: dict[str, float] = field(default_factory=dict)
    _sys_start: Any = None
    _wall_start: float = 0.0

    def start(self) -> None:
        self._start = {role: self._role_s(role) for role in self.roles}
        self._sys_start = psutil.cpu_times()
        self._wall_start = time.monotonic()

    def _role_s(self, role: str) -> float:
        kids = role in self.with_children
        return sum(_proc_cpu_s(pid, children=kids) for pid in self.roles[role])

    def stop(self) -> dict[str, float]:
        wall = max(time.monotonic() - self._wall_start, 1e-6)
        out: dict[str, float] = {}
        ours = 0.0
        for role in self.roles:
            used = max(0.0, self._role_s(role) - self._start.get(role, 0.0))
            ours += used
            out[role] = round(100.0 * used / wall, 1)
        end = psutil.cpu_times()
        busy = _busy(end) - _busy(self._sys_start)
        out["machine"] = round(100.0 * busy / wall, 1)
        out["other"] = round(max(0.0, 100.0 * (busy - ours) / wall), 1)
        steal = getattr(end, "steal", 0.0) - getattr(self._sys_start, "steal", 0.0)
        out["steal"] = round(100.0 * steal / wall, 1)
        out["seconds"] = round(wall, 2)
        return out


def _busy(t: Any) -> float:
    idle = t.idle + getattr(t, "iowait", 0.0)
    # guest time is already counted in user time; steal is the hypervisor's, not ours.
    skip = getattr(t, "guest", 0.0) + getattr(t, "guest_nice", 0.0) + getattr(t, "steal", 0.0)
    return float(sum(t) - idle - skip)


# ---------------------------------------------------------------------------
# Kernel TCP counters
# ---------------------------------------------------------------------------

#: Listen-queue counters of /proc/net/netstat worth watching during a connection burst
#: (machine-wide: other people's connections count too).
TCP_COUNTERS = (
    "ListenOverflows",
    "ListenDrops",
    "TCPReqQFullDoCookies",
    "TCPReqQFullDrop",
    "SyncookiesSent",
)


def tcp_counters() -> dict[str, int]:
    try:
        lines = open("/proc/net/netstat").read().splitlines()
    except OSError:
        return {}
    out: dict[str, int] = {}
    for head, values in zip(lines[::2], lines[1::2], strict=False):
        if not head.startswith("TcpExt:"):
            continue
        for name, value in zip(head.split()[1:], values.split()[1:], strict=False):
            if name in TCP_COUNTERS:
                out[name] = int(value)
    return out


def counters_delta(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after}
