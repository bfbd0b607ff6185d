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

A failed call may still have published: the connection can drop after Redis ran the
publish script and before its reply arrived (Redis killed right after an fsync'ed write, a
network cut). Each script call is atomic — all of its events or none — and the calls of a
batch run in order, so before a batch is sent again, :meth:`Outbox._unpublished` looks at
the tail of each of its topics' streams for the last call that ran: it and the calls before
it are not sent again (no event is published twice), the others are (none is lost). After a Redis that restarted empty, nothing
is found and everything is sent again, in order, in a new epoch.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Iterable

from redis.exceptions import RedisError

from agent_runner.events import Item
from shared.bus import MAX_EVENTS_PER_CALL, EventBus, event_prefix
from shared.tasks import raise_if_cancelled

log = logging.getLogger("runner.outbox")

#: Stream entries looked at, per topic, to find out whether a call published after all
#: (other publishers may have added some since: the ``agents`` and ``logs`` topics are
#: shared by every runner).
CHECK_TAIL = 256


def runs(batch: list[Item]) -> list[list[Item]]:
    """The batch cut as :meth:`EventBus.publish_many` cuts it into script calls: runs of
    consecutive items of one topic (batches are at most ``MAX_EVENTS_PER_CALL`` long, so a
    run is one call)."""
    out: list[list[Item]] = []
    for item in batch:
        if out and out[-1][0][0] == item[0]:
            out[-1].append(item)
        else:
            out.append([item])
    return out


def stored_prefix(item: Item) -> bytes:
    """How the stored event of ``item`` starts (the script appends offset and epoch)."""
    topic, message, _ = item
    encoded = message if isinstance(message, bytes) else event_prefix(message, topic)
    return encoded + b',"offset":'


class Outbox:
    def __init__(
        self,
        bus: EventBus,
        *,
        batch_size: int = MAX_EVENTS_PER_CALL,
        high_water: int = 10_000,
        on_failure: Callable[[BaseException], None] | None = None,
    ) -> None:
        self._bus = bus
        self._on_failure = on_failure
        self._items: deque[Item] = deque()
        self._batch_size = min(batch_size, MAX_EVENTS_PER_CALL)
        self._high_water = high_water
        self._low_water = high_water // 2
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self.published = 0
        #: Events of failed calls found published after all (not sent again).
        self.found_published = 0

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

    async def _unpublished(self, batch: list[Item]) -> list[Item]:
        """The items of ``batch`` (whose publishing failed) that did not reach Redis.

        The batch's script calls went in one pipeline, which Redis runs in order: the calls
        that ran are a prefix of them. So the last call found at the tail of its topic's
        stream is where that prefix ends — one tail read per topic, not per call (a batch of
        interleaved agents has hundreds of calls: reading a tail for each cost ~100 MB of
        transient memory and seconds after every Redis restart)."""
        calls = runs(batch)
        topics = list(dict.fromkeys(call[0][0] for call in calls))
        async with self._bus.redis.pipeline(transaction=False) as pipe:
            for topic in topics:
                pipe.xrevrange(self._bus.keys.topic_stream(topic), count=CHECK_TAIL)
            replies = await pipe.execute()
        tails = {
            topic: [fields.get(b"d", b"") for _, fields in reply or ()]
            for topic, reply in zip(topics, replies, strict=True)
        }
        ran = 0  # calls[:ran] reached Redis
        for i in range(len(calls) - 1, -1, -1):
            last = stored_prefix(calls[i][-1])
            if any(data.startswith(last) for data in tails[calls[i][0][0]]):
                ran = i + 1
                break
        self.found_published += sum(len(call) for call in calls[:ran])
        return [item for call in calls[ran:] for item in call]

    async def run(self) -> None:
        """Publish forever (cancel to stop; call :meth:`drain` first to flush)."""
        backoff = 0.05
        uncertain = False  # the last call failed: it may have published anyway
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._items:
                n = min(self._batch_size, len(self._items))
                batch = [self._items.popleft() for _ in range(n)]
                try:
                    if uncertain:
                        batch = await self._unpublished(batch)
                        if len(batch) < n:
                            log.info("%d events were published before the failure", n - len(batch))
                        uncertain = False
                    if batch:
                        uncertain = True
                        await self._bus.publish_many(batch)
                        uncertain = False
                    raise_if_cancelled()
                except (RedisError, OSError) as e:
                    self._items.extendleft(reversed(batch))
                    if self._on_failure is not None:
                        self._on_failure(e)
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
