"""System metrics with psutil, as a :class:`shared.protocol.SystemMetrics`.

How it works
------------
:meth:`Sampler.prime` is called once at start; then :meth:`Sampler.sample` once per tick.

* **CPU** usage comes from ``psutil.cpu_percent(interval=None)``: the percentage since the
  previous call. The very first call has no previous one and returns a meaningless number,
  so :meth:`~Sampler.prime` makes it and throws it away. psutil keeps that "previous call"
  *per thread*, so the CPU figure is always read on the caller's thread (the event loop),
  never in a worker thread.
* **Memory** ``used`` is ``total − available``, so that ``used / total`` is ``percent`` (what
  ``free`` has shown as "used" since procps-ng 4); psutil's own ``used`` leaves out caches
  that the kernel cannot reclaim and would not add up with ``percent``.
* **Disk** usage and **temperature** are read in a worker thread: ``statvfs`` on a network
  filesystem can hang, and sensor files can be slow. If that read takes longer than the
  tick's budget, the sample reuses the last disk figures (the slowness itself is visible as
  a ``performance`` alert) and only one such read is ever outstanding.
* **Network** figures are the counters of every interface except loopback (traffic between
  processes of this host, including this stack's own Redis traffic, is not network load),
  plus per-second byte rates over the last interval from :class:`RateCalculator`.
* **Temperature** is the CPU package temperature when a sensor is known to be the CPU's, else
  the hottest sensor; it is left out when the machine has no sensors (never made up).

The pieces without I/O (:class:`RateCalculator`, :func:`network_totals`,
:func:`cpu_temperature`) are plain functions and classes, tested on their own.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import anyio
import psutil

from shared.protocol import CpuMetrics, DiskMetrics, MemoryMetrics, NetworkMetrics, SystemMetrics

log = logging.getLogger("collector.sampler")


class SampleError(RuntimeError):
    """A sample could not be taken (the reason is in the message and ``__cause__``)."""


# ---------------------------------------------------------------------------
# Pure pieces
# ---------------------------------------------------------------------------


class RateCalculator:
    """Per-second rates of cumulative counters between two consecutive readings.

    :meth:`update` returns ``None`` when there is no usable previous reading: the first
    call, a clock that did not advance, or a counter that went backwards (an interface
    disappeared or a counter was reset), in which case the next call starts afresh.
    """

    def __init__(self) -> None:
        self._last: tuple[float, tuple[int, ...]] | None = None

    def update(self, now_s: float, counters: Sequence[int]) -> tuple[float, ...] | None:
        current = (now_s, tuple(counters))
        last, self._last = self._last, current
        if last is None:
            return None
        elapsed = now_s - last[0]
        before = last[1]
        if elapsed <= 0 or len(before) != len(current[1]):
            return None
        if any(now < then for now, then in zip(current[1], before, strict=True)):
            return None
        return tuple((now - then) / elapsed for now, then in zip(current[1], before, strict=True))


class NetCounters(Protocol):
    """What :func:`network_totals` reads of a ``psutil._common.snetio``."""

    @property
    def bytes_sent(self) -> int: ...
    @property
    def bytes_recv(self) -> int: ...
    @property
    def packets_sent(self) -> int: ...
    @property
    def packets_recv(self) -> int: ...


class NetTotals(NamedTuple):
    bytes_in: int
    bytes_out: int
    packets_in: int
    packets_out: int


_LOOPBACK = re.compile(r"lo\d*|loopback.*", re.IGNORECASE)


def is_loopback(interface: str) -> bool:
    """Loopback interface names: ``lo`` (Linux), ``lo0`` (BSD, macOS), ``Loopback …``
    (Windows)."""
    return _LOOPBACK.fullmatch(interface) is not None


def network_totals(per_interface: Mapping[str, NetCounters]) -> NetTotals:
    """Counters summed over every interface except loopback."""
    bytes_in = bytes_out = packets_in = packets_out = 0
    for name, c in per_interface.items():
        if is_loopback(name):
            continue
        bytes_in += c.bytes_recv
        bytes_out += c.bytes_sent
        packets_in += c.packets_recv
        packets_out += c.packets_sent
    return NetTotals(bytes_in, bytes_out, packets_in, packets_out)


class TempReading(Protocol):
    """What :func:`cpu_temperature` reads of a ``psutil._common.shwtemp``."""

    @property
    def label(self) -> str: ...
    @property
    def current(self) -> float | None: ...


#: Sensor chips that measure the CPU, and the labels of their package (whole-die) reading.
_CPU_CHIPS: dict[str, tuple[str, ...]] = {
    "coretemp": ("Package id",),  # Intel
    "k10temp": ("Tctl", "Tdie"),  # AMD
    "zenpower": ("Tctl", "Tdie"),  # AMD, out-of-tree driver
    "cpu_thermal": (),  # Raspberry Pi and other ARM boards
    "cpu-thermal": (),
    "soc_thermal": (),
}


def _plausible(value: float | None) -> float | None:
    # Absent or broken sensors report None, 0, negative values or absurd ones.
    if value is None or not math.isfinite(value) or not 0 < value < 150:
        return None
    return float(value)


def _hottest(readings: Iterable[TempReading], labels: tuple[str, ...] = ()) -> float | None:
    values = [
        v
        for r in readings
        if (v := _plausible(r.current)) is not None
        and (not labels or any(r.label.startswith(label) for label in labels))
    ]
    return max(values) if values else None


def cpu_temperature(sensors: Mapping[str, Sequence[TempReading]]) -> float | None:
    """The CPU temperature in °C: the package reading of a known CPU chip, else the hottest
    reading of a known CPU chip, else the hottest of any sensor; ``None`` without sensors."""
    for chip, package_labels in _CPU_CHIPS.items():
        readings = sensors.get(chip)
        if not readings:
            continue
        value = (_hottest(readings, package_labels) if package_labels else None) or _hottest(
            readings
        )
        if value is not None:
            return value
    return _hottest(r for readings in sensors.values() for r in readings)


# ---------------------------------------------------------------------------
# The sampler (psutil)
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Slow:
    """What is read in a worker thread."""

    disk: DiskMetrics
    temperature: float | None


def _read_temperatures() -> Mapping[str, Sequence[Any]]:
    read: Callable[[], Mapping[str, Sequence[Any]]] | None = getattr(
        psutil, "sensors_temperatures", None
    )
    if read is None:  # not available on this platform (macOS, Windows)
        return {}
    try:
        return read()
    except (OSError, RuntimeError) as e:  # unreadable sysfs entries, odd drivers
        log.debug("cannot read temperatures: %s", e)
        return {}


class Sampler:
    """Takes samples of the whole system. Call :meth:`prime` once before the first
    :meth:`sample`, and call both from the same thread (the event loop's)."""

    def __init__(self, disk_path: str, *, slow_read_timeout_s: float = 1.0) -> None:
        self.disk_path = disk_path
        self.slow_read_timeout_s = slow_read_timeout_s
        self.cores = psutil.cpu_count(logical=True) or 1
        self._net_rates = RateCalculator()
        self._pending: asyncio.Task[_Slow] | None = None
        self._last_slow: _Slow | None = None
        self._stalled = False
        self._primed = False

    def prime(self) -> None:
        """Start the CPU and network intervals; the first CPU reading is discarded here."""
        psutil.cpu_percent(interval=None)
        self._net_rates.update(time.monotonic(), self._net_totals())
        self._primed = True

    async def sample(self) -> SystemMetrics:
        """One sample; raises :class:`SampleError` when psutil cannot provide it."""
        if not self._primed:
            self.prime()  # the CPU figure of this sample would be meaningless otherwise
        try:
            slow = await self._read_slow()
            usage = psutil.cpu_percent(interval=None)
            vm = psutil.virtual_memory()
            now = time.monotonic()
            totals = self._net_totals()
        except (OSError, RuntimeError) as e:
            raise SampleError(f"cannot sample system metrics: {e}") from e
        rates = self._net_rates.update(now, totals)
        return SystemMetrics(
            cpu=CpuMetrics(usage=round(usage, 1), cores=self.cores, temperature=slow.temperature),
            memory=MemoryMetrics(
                total=vm.total,
                used=vm.total - vm.available,
                available=vm.available,
                percent=round(vm.percent, 1),
            ),
            disk=slow.disk,
            network=NetworkMetrics(
                bytesIn=totals.bytes_in,
                bytesOut=totals.bytes_out,
                packetsIn=totals.packets_in,
                packetsOut=totals.packets_out,
                bytesInPerSec=None if rates is None else round(rates[0], 1),
                bytesOutPerSec=None if rates is None else round(rates[1], 1),
            ),
        )

    async def aclose(self) -> None:
        """Stop waiting for an outstanding slow read. Its thread cannot be interrupted: it
        ends on its own and its result is dropped."""
        pending, self._pending = self._pending, None
        if pending is not None and not pending.done():
            pending.cancel()
            await asyncio.wait({pending})  # returns at once: only the wrapper is cancelled

    def _net_totals(self) -> NetTotals:
        return network_totals(psutil.net_io_counters(pernic=True))

    def _read_slow_blocking(self) -> _Slow:
        usage = psutil.disk_usage(self.disk_path)
        disk = DiskMetrics(total=usage.total, used=usage.used, percent=round(usage.percent, 1))
        return _Slow(disk=disk, temperature=cpu_temperature(_read_temperatures()))

    async def _read_slow(self) -> _Slow:
        # One read at a time: while a read hangs (a dead NFS server), later ticks wait on the
        # same one instead of piling up threads.
        pending = self._pending
        if pending is None or pending.done():
            if pending is not None and not pending.cancelled() and pending.exception() is None:
                self._last_slow = pending.result()  # a hung read that finished late
            pending = self._pending = asyncio.create_task(
                asyncio.to_thread(self._read_slow_blocking), name="collector-slow-read"
            )
        try:
            # Not wait_for, which on 3.11 loses a cancellation that lands as the read ends
            # (tests/metrics_collector/test_sampler.py): the collector could not stop.
            with anyio.fail_after(self.slow_read_timeout_s):
                slow = await asyncio.shield(pending)
        except TimeoutError:
            if self._last_slow is None:
                raise SampleError(
                    f"disk usage of {self.disk_path} did not answer within "
                    f"{self.slow_read_timeout_s:g}s"
                ) from None
            if not self._stalled:
                log.warning(
                    "disk usage of %s did not answer within %gs; reusing the last figures "
                    "until it does",
                    self.disk_path,
                    self.slow_read_timeout_s,
                )
            self._stalled = True
            return self._last_slow
        if self._stalled:
            log.info("disk usage of %s answers again", self.disk_path)
            self._stalled = False
        self._last_slow = slow
        return slow
