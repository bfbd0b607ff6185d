"""The gateway's send path: every frame to a client is written here, synchronously.

:meth:`Sender.send_all` hands deliveries to the :class:`gateway.fanout.Outbox` (framed once,
one write per connection) and flushes at once; nothing waits for a socket, so what one call
writes stays in order with what the next writes. A connection whose send buffer is over
``TEAMDASH_SEND_BUFFER_BYTES`` is a slow consumer: it is closed with 1013 (it resumes from its
session), and dropped if even the close frame cannot get through in time.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import anyio
from websockets.asyncio.server import ServerConnection

from gateway.fanout import Outbox
from gateway.metrics import GatewayMetrics
from shared.tasks import OwnedTasks

log = logging.getLogger("ws.gateway")

#: (connections, encoded event, low priority): one delivery.
Deliveries = Iterable[tuple[list[ServerConnection], bytes, bool]]

#: Seconds a slow consumer's close may take before its connection is dropped.
SLOW_CLOSE_TIMEOUT_S = 5.0


class Sender:
    def __init__(self, *, cap: int, metrics: GatewayMetrics, tasks: OwnedTasks) -> None:
        self.metrics = metrics
        self._tasks = tasks
        self._closing: set[ServerConnection] = set()
        self.outbox = Outbox(cap=cap, on_slow=self._too_slow)

    def send_all(self, deliveries: Deliveries, *, live: bool = False) -> None:
        """Write each delivery's bytes to its connections now (see :mod:`gateway.fanout`:
        framed once, one write per connection, slow consumers closed with 1013 and spared
        ``low`` priority events). ``live``: events from pub/sub (their latency is measured)."""
        self.queue(deliveries, live=live)
        self.flush()

    def send_many(self, ws: ServerConnection, datas: list[bytes]) -> None:
        """Write ``datas`` to one connection, in order, with one write (a reply, a
        catch-up), under the same rules as :meth:`send_all`."""
        if self.outbox.write_now(ws, datas):
            for data in datas:
                self.metrics.observe_event(data, 1, latency=False)
            self.metrics.flush_events()

    def queue(self, deliveries: Deliveries, *, live: bool) -> None:
        """Add deliveries to the batch :meth:`flush` writes (a pub/sub read's events)."""
        add, observe = self.outbox.add, self.metrics.observe_event
        for conns, data, low in deliveries:
            observe(data, add(conns, data, low), latency=live)

    def flush(self) -> None:
        outbox = self.outbox
        outbox.flush()
        self.metrics.flush_events()
        if outbox.skipped:
            self.metrics.low_priority_skipped.inc(outbox.skipped)
            outbox.skipped = 0

    def _too_slow(self, ws: ServerConnection, size: int) -> None:
        if ws in self._closing:
            return
        self._closing.add(ws)
        self.metrics.slow_consumers.inc()
        log.warning("closing a slow consumer: %d bytes waiting to be sent", size)
        self._tasks.spawn(self._close_slow(ws), "close-slow-consumer")

    async def _close_slow(self, ws: ServerConnection) -> None:
        # The close frame queues behind what the client has not read yet; if it does not
        # catch up in time, the connection is dropped to free the memory. A cancel scope,
        # not wait_for: on 3.11 wait_for can swallow the gateway's cancellation when it
        # lands as the close completes, and the gateway's close would wait for this task.
        try:
            with anyio.move_on_after(SLOW_CLOSE_TIMEOUT_S) as scope:
                await ws.close(1013, "slow consumer: resume from your session")
            if scope.cancelled_caught and ws.transport is not None:
                ws.transport.abort()
        finally:
            self._closing.discard(ws)
