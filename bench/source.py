"""What the event sources of the fan-out scenario share: pacing, the payload format, and
the command loop they obey (JSON lines on stdin, answers on stdout).

Both sources — :mod:`bench.publisher` (the real path: ``EventBus.publish_many`` into Redis,
through the gateway) and :mod:`bench.ceiling` (a bare websockets ``broadcast`` server) —
send ``agent:output`` events whose ``payload.data`` starts with ``"{step} {seq} {t_ns} "``:
the step number, the event's number in the step (0…count-1) and the wall-clock time in
nanoseconds at which the source created it. The generator's latency is its receive time
minus ``t_ns`` (one machine, one clock).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

#: ``emit(step, first_seq, n)``: create and send events ``first_seq … first_seq+n-1`` now.
Emit = Callable[[int, int, int], Awaitable[None]]


def event_data(step: int, seq: int, size: int) -> str:
    """``payload.data`` of one bench event, padded to ``size`` characters."""
    head = f"{step} {seq} {time.time_ns()} "
    return head + "x" * max(0, size - len(head))


def parse_event_data(data: str) -> tuple[int, int, int]:
    """(step, seq, t_ns) of a bench event's ``payload.data``."""
    step, seq, t_ns, _ = data.split(" ", 3)
    return int(step), int(seq), int(t_ns)


async def paced(emit: Emit, *, step: int, count: int, rate: float, batch: int) -> dict[str, Any]:
    """Send ``count`` events at ``rate`` per second (0 = as fast as possible, in batches of
    ``batch``). Events that fell due while the previous send was in flight go out together
    in the next one, so the average rate holds even when one send is slow."""
    start = time.monotonic()
    t_first = time.time_ns()
    sent = 0
    while sent < count:
        if rate > 0:
            due = min(count, int((time.monotonic() - start) * rate) + 1)
            if due <= sent:
                next_at = start + sent / rate
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                continue
            n = min(due - sent, batch)
        else:
            n = min(count - sent, batch)
        await emit(step, sent, n)
        sent += n
        if rate <= 0:
            await asyncio.sleep(0)
    elapsed = time.monotonic() - start
    return {
        "step": step,
        "published": sent,
        "t_first_ns": t_first,
        "t_last_ns": time.time_ns(),
        "seconds": round(elapsed, 4),
        "rate": round(sent / elapsed, 1) if elapsed > 0 else None,
    }


async def command_loop(
    handlers: dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]],
) -> None:
    """Read JSON commands ``{"op": …}`` from stdin, one per line; answer each with one JSON
    line on stdout (``{"ok": true, …}`` or ``{"ok": false, "error": …}``) until ``exit`` or
    end of input."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            return
        cmd = orjson.loads(line)
        op = cmd.get("op")
        if op == "exit":
            reply(ok=True)
            return
        handler = handlers.get(op)
        if handler is None:
            reply(ok=False, error=f"unknown op {op!r}")
            continue
        try:
            reply(ok=True, **(await handler(cmd)))
        except Exception as e:  # noqa: BLE001 - reported to the orchestrator, which decides
            reply(ok=False, error=f"{type(e).__name__}: {e}")


def reply(**fields: Any) -> None:
    sys.stdout.buffer.write(orjson.dumps(fields) + b"\n")
    sys.stdout.buffer.flush()


def new_loop() -> asyncio.AbstractEventLoop:
    """uvloop when available, as the services use."""
    try:
        import uvloop  # noqa: PLC0415

        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()
