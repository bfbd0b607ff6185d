"""Ordered, batched publishing of the runner's events.

Producers (output pumps, status changes, timers) append to one queue without awaiting;
one task (:meth:`Outbox.run`, owned by the runner) publishes everything queued in batches
(:meth:`shared.bus.EventBus.publish_many`), so a chatty agent costs one Redis round trip and
one script call per batch of its lines, not per line, and events keep the order they were
queued in. A batch is whatever is queued when the previous one is done, up to
:data:`shared.bus.MAX_EVENTS_PER_CALL`: nothing waits for a batch to fill when the agent is
quiet, and under a burst every batch is full. Output pumps call :meth:`Outbox.wait_room`
before reading more: if Redis falls behind, the pumps stop reading and the agent blocks on
its pipe, instead of the runner's memory growing without bound. A failed batch is retried
(with backoff) — events are not dropped on a Redis blip.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Iterable

from redis.exceptions import RedisError

from agent_runner.events import Item
from shared.bus import MAX_EVENTS_PER_CALL, EventBus
from shared.tasks import raise_if_cancelled

log = logging.getLogger("runner.outbox")


class Outbox:
    def __init__(
        self, bus: EventBus, *, batch_size: int = MAX_EVENTS_PER_CALL, high_water: int = 10_000
    ) -> None:
        self._bus = bus
        self._items: deque[Item] = deque()
        self._batch_size = batch_size
        self._high_water = high_water
        self._low_water = high_water // 2
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self.published = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: Item) -> None:
        """Queue one event (never blocks)."""
        self._items.append(item)
        self._queued()

    def put_many(self, items: Iterable[Item]) -> None:
        self._items.extend(items)
        self._queued()

    def _queued(self) -> None:
        self._idle.clear()
        self._wake.set()
        if len(self._items) >= self._high_water:
            self._room.clear()

    async def wait_room(self) -> None:
        """Wait while the queue is over its high-water mark."""
        if not self._room.is_set():
            await self._room.wait()

    async def drain(self) -> None:
        """Wait until everything queued so far has been published."""
        await self._idle.wait()

    async def run(self) -> None:
        """Publish forever (cancel to stop; call :meth:`drain` first to flush)."""
        backoff = 0.05
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._items:
                n = min(self._batch_size, len(self._items))
                batch = [self._items.popleft() for _ in range(n)]
                try:
                    await self._bus.publish_many(batch)
                    raise_if_cancelled()
                except (RedisError, OSError) as e:
                    self._items.extendleft(reversed(batch))
                    log.warning(
                        "publishing %d events failed (%s); retrying in %.2fs", n, e, backoff
                    )
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
                    continue
                except asyncio.CancelledError:
                    self._items.extendleft(reversed(batch))
                    raise
                backoff = 0.05
                self.published += n
                if len(self._items) <= self._low_water:
                    self._room.set()
            self._room.set()
            self._idle.set()
