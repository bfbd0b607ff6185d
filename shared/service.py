"""Running one service process: event loop, signals, logging.

Every service exposes ``async def main(settings, stop: asyncio.Event) -> None`` that runs
until ``stop`` is set, then cleans up everything it started and returns. :func:`run`
wires SIGINT/SIGTERM to ``stop`` and runs it on uvloop when available.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable

from shared.logs import configure_logging
from shared.settings import CommonSettings


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop  # noqa: PLC0415

        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()


def run(
    service: str,
    common: CommonSettings,
    main: Callable[[asyncio.Event], Awaitable[None]],
) -> None:
    """Run ``main(stop)`` until SIGINT or SIGTERM, then let it finish cleanly."""
    configure_logging(service, debug=common.debug, log_format=common.log_format)

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    with asyncio.Runner(loop_factory=_new_loop) as r:
        r.run(runner())
