"""The sampler: its pure pieces, and real samples of this machine."""

from __future__ import annotations

import asyncio
import threading
from collections import namedtuple
from typing import Any

import psutil
import pytest

from metrics_collector.sampler import (
    RateCalculator,
    SampleError,
    Sampler,
    cpu_temperature,
    is_loopback,
    network_totals,
)
from shared.protocol import SystemMetrics

snetio = namedtuple("snetio", "bytes_sent bytes_recv packets_sent packets_recv")
shwtemp = namedtuple("shwtemp", "label current high critical")


# -- rates ----------------------------------------------------------------------


def test_rate_calculator() -> None:
    rates = RateCalculator()
    assert rates.update(10.0, (1000, 50)) is None  # nothing to compare with yet
    assert rates.update(12.0, (3000, 50)) == (1000.0, 0.0)
    assert rates.update(12.5, (3500, 60)) == (1000.0, 20.0)


def test_rate_calculator_skips_resets_and_a_stopped_clock() -> None:
    rates = RateCalculator()
    rates.update(1.0, (500,))
    assert rates.update(2.0, (100,)) is None  # counter went back (interface gone)
    assert rates.update(3.0, (300,)) == (200.0,)  # …and starts afresh from there
    assert rates.update(3.0, (400,)) is None  # no time passed


# -- network --------------------------------------------------------------------


def test_network_totals_leave_out_loopback() -> None:
    totals = network_totals(
        {
            "lo": snetio(10**9, 10**9, 10**6, 10**6),
            "eth0": snetio(100, 200, 1, 2),
            "wlan0": snetio(1000, 2000, 10, 20),
        }
    )
    assert totals == (2200, 1100, 22, 11)  # in, out, packets in, packets out


@pytest.mark.parametrize(
    ("name", "loopback"),
    [
        ("lo", True),
        ("lo0", True),
        ("Loopback Pseudo-Interface 1", True),
        ("eth0", False),
        ("local0", False),
        ("wlo1", False),
    ],
)
def test_is_loopback(name: str, loopback: bool) -> None:
    assert is_loopback(name) is loopback


# -- temperature ------------------------------------------------------------------


def test_temperature_prefers_the_cpu_package() -> None:
    sensors = {
        "nvme": [shwtemp("Composite", 70.0, None, None)],
        "coretemp": [
            shwtemp("Package id 0", 55.0, 80, 100),
            shwtemp("Core 0", 58.0, 80, 100),
        ],
    }
    assert cpu_temperature(sensors) == 55.0


def test_temperature_of_amd_and_fallbacks() -> None:
    assert (
        cpu_temperature(
            {"k10temp": [shwtemp("Tccd1", 60.0, None, None), shwtemp("Tctl", 62.5, None, None)]}
        )
        == 62.5
    )
    assert cpu_temperature({"coretemp": [shwtemp("Core 0", 48.0, None, None)]}) == 48.0
    assert (
        cpu_temperature(
            {"acpitz": [shwtemp("", 40.0, None, None)], "nvme": [shwtemp("", 45.0, None, None)]}
        )
        == 45.0
    )


def test_temperature_absent_or_broken_is_none() -> None:
    assert cpu_temperature({}) is None
    assert (
        cpu_temperature({"acpitz": [shwtemp("", 0.0, None, None), shwtemp("", -273.0, None, None)]})
        is None
    )


# -- real samples ----------------------------------------------------------------------


async def test_real_sample_is_valid_and_plausible() -> None:
    sampler = Sampler("/")
    sampler.prime()
    await asyncio.sleep(0.1)
    first = await sampler.sample()
    await asyncio.sleep(0.1)
    second = await sampler.sample()
    await sampler.aclose()
    for sample in (first, second):
        assert SystemMetrics.model_validate(sample.model_dump()) == sample
        assert 0.0 <= sample.cpu.usage <= 100.0
        assert sample.cpu.cores == psutil.cpu_count(logical=True)
        assert sample.cpu.temperature is None or 0 < sample.cpu.temperature < 150
        assert sample.memory.total > 0
        assert 0 < sample.memory.available <= sample.memory.total
        assert sample.memory.used == sample.memory.total - sample.memory.available
        assert 0.0 < sample.memory.percent <= 100.0
        assert sample.disk.total > 0
        assert 0.0 <= sample.disk.percent <= 100.0
        assert sample.network.bytesIn >= 0 and sample.network.packetsOut >= 0
    # Rates exist from the first sample on, because prime() started the interval.
    assert first.network.bytesInPerSec is not None and first.network.bytesInPerSec >= 0
    assert second.network.bytesOut >= first.network.bytesOut


async def test_first_cpu_reading_is_discarded(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int | None] = []
    readings = iter([0.0, 37.5, 12.0])  # psutil's first answer is meaningless

    def fake_cpu_percent(interval: float | None = None) -> float:
        assert interval is None  # never block the event loop
        calls.append(threading.get_ident())
        return next(readings)

    monkeypatch.setattr(psutil, "cpu_percent", fake_cpu_percent)
    sampler = Sampler("/")
    sampler.prime()
    assert len(calls) == 1
    assert (await sampler.sample()).cpu.usage == 37.5
    assert (await sampler.sample()).cpu.usage == 12.0
    await sampler.aclose()
    # psutil keeps the previous CPU times per thread: every call must be on the same one.
    assert set(calls) == {threading.get_ident()}


async def test_sample_primes_itself_when_not_primed(monkeypatch: pytest.MonkeyPatch) -> None:
    readings = iter([0.0, 42.0])
    monkeypatch.setattr(psutil, "cpu_percent", lambda interval=None: next(readings))
    sampler = Sampler("/")
    assert (await sampler.sample()).cpu.usage == 42.0
    await sampler.aclose()


async def test_missing_disk_path_is_a_sample_error() -> None:
    sampler = Sampler("/no/such/dir/here")
    sampler.prime()
    with pytest.raises(SampleError, match="cannot sample"):
        await sampler.sample()
    await sampler.aclose()


async def test_hung_disk_reuses_the_last_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    sampler = Sampler("/", slow_read_timeout_s=0.2)
    sampler.prime()
    good = await sampler.sample()
    release = threading.Event()
    real_disk_usage = psutil.disk_usage
    started = 0

    def hanging_disk_usage(path: str) -> object:
        nonlocal started
        started += 1
        release.wait(10)
        return real_disk_usage(path)

    monkeypatch.setattr(psutil, "disk_usage", hanging_disk_usage)
    try:
        stalled = await sampler.sample()
        assert stalled.disk == good.disk
        await sampler.sample()
        assert started == 1  # the hung read is waited on again, no second thread
    finally:
        release.set()
        await sampler.aclose()


async def test_a_sample_cancelled_as_its_slow_read_ends_is_cancelled() -> None:
    """On 3.11 ``asyncio.wait_for`` returned the read instead (see tests/gateway/test_timeouts.py):
    the collector's loop went on and its stop waited for it."""
    sampler = Sampler("/")
    read: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    sampler._pending = read  # type: ignore[assignment]  # a slow read under way
    task = asyncio.create_task(sampler.sample())
    await asyncio.sleep(0)  # the task waits for the read
    read.set_result(sampler._read_slow_blocking())  # the read ends...
    task.cancel()  # ...and the cancellation lands in the same step
    with pytest.raises(asyncio.CancelledError):
        await task
    await sampler.aclose()
