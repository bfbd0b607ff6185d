"""The gateway's topic routes: which topics this gateway follows on Redis, and for whom.

One :class:`gateway.router.TopicRoute` per topic that at least one local subscription
follows, created on the first :meth:`Routes.attach` (subscribe the topic's pub/sub channel
on the shared hub, then read its head) and dropped with the last :meth:`Routes.detach`.
Live events from the hub go through :meth:`Routes.on_event`; a gap (offset jump, epoch
change, a lost pub/sub connection) holds the route and resyncs it from the stream, telling
the clients that lost events with ``subscription:gap`` first.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import redis.asyncio as aioredis
from websockets.asyncio.server import ServerConnection

from gateway.metrics import GatewayMetrics
from gateway.router import Subscription, TopicRoute, find_gap, gap_notice, gap_recipients
from gateway.sending import Sender
from shared.bus import EventBus, Position, PubSubHub, Replay, parse_channel_message
from shared.keys import Keys
from shared.protocol import (
    encode,
)
from shared.tasks import OwnedTasks, raise_if_cancelled

log = logging.getLogger("ws.gateway")


class Routes:
    def __init__(
        self,
        *,
        hub: PubSubHub,
        bus: EventBus,
        keys: Keys,
        sender: Sender,
        metrics: GatewayMetrics,
        tasks: OwnedTasks,
        redis_failed: Callable[[BaseException], None],
    ) -> None:
        self.hub = hub
        self.bus = bus
        self.keys = keys
        self.sender = sender
        self.metrics = metrics
        self._tasks = tasks
        self._redis_failed = redis_failed
        self.routes: dict[str, TopicRoute[ServerConnection]] = {}
        self._ready: dict[str, asyncio.Event] = {}
        self._lock = asyncio.Lock()
        self.channel_prefix = keys.topic_channel_prefix

    def position_of(self, topic: str) -> Position | None:
        """The position of the last event delivered live on ``topic`` (None while held)."""
        route = self.routes.get(topic)
        return route.position if route is not None and not route.held else None

    # -- attach and detach -----------------------------------------------------------------
    async def attach(
        self, sub: Subscription[ServerConnection], since: Position | None = None
    ) -> Replay | None:
        """Route ``sub``'s topic to its connection.

        With ``since`` None the subscription is live from now (its cursor is the route's
        position). Otherwise it is *catching up*: live events queue on it, and the events
        after ``since`` are read from the stream and returned; the caller must then call
        :func:`gateway.router.catch_up` and write what it returns before awaiting anything."""
        route = await self._route(sub.topic)
        if since is None:
            sub.cursor = route.position
            route.subscriptions[sub.id] = sub
            return None
        sub.catching_up = True
        sub.cursor = since
        route.subscriptions[sub.id] = sub
        try:
            return await self.bus.read_since(sub.topic, since, paged=True)
        except BaseException:
            route.subscriptions.pop(sub.id, None)
            await self._drop_if_unused(sub.topic)
            raise

    async def detach(self, sub: Subscription[ServerConnection]) -> None:
        route = self.routes.get(sub.topic)
        if route is None or route.subscriptions.pop(sub.id, None) is None:
            return
        await self._drop_if_unused(sub.topic)

    async def _route(self, topic: str) -> TopicRoute[ServerConnection]:
        while True:
            route = self.routes.get(topic)
            if route is not None:
                await self._ready[topic].wait()
                if self.routes.get(topic) is route:
                    return route
                continue  # its creation failed meanwhile: try again
            route = TopicRoute(topic)
            self.routes[topic] = route
            ready = self._ready[topic] = asyncio.Event()
            try:
                async with self._lock:
                    await self.hub.subscribe(self.keys.topic_channel(topic))
                head = await self.bus.head(topic)
            except BaseException:
                self.routes.pop(topic, None)
                self._ready.pop(topic, None)
                ready.set()
                raise
            self.sender.send_all(route.start_at(head))
            ready.set()
            if route.needs_resync:
                self._schedule_resync(route)
            return route

    async def _drop_if_unused(self, topic: str) -> None:
        route = self.routes.get(topic)
        if route is not None and route.subscriptions:
            return
        self.routes.pop(topic, None)
        self._ready.pop(topic, None)
        async with self._lock:
            if topic not in self.routes:  # nobody re-created it while we waited
                await self.hub.unsubscribe(self.keys.topic_channel(topic))

    # -- live events -----------------------------------------------------------------------
    def on_event(self, topic: str, data: bytes) -> None:
        """One live event of ``topic`` from the hub: queued on the sender (the hub's caller
        flushes once per pub/sub read)."""
        route = self.routes.get(topic)
        if route is None:
            return
        try:
            deliveries = route.on_event(parse_channel_message(topic, data))
        except Exception:
            # Never silent: whatever this event was, the stream has it.
            log.exception("topic %s: could not route an event; resyncing", topic)
            route.held = route.needs_resync = True
            self._schedule_resync(route)
            return
        if deliveries is None:
            if route.needs_resync:
                self._schedule_resync(route)
            return
        self.sender.queue(deliveries, live=True)

    def on_hub_reconnect(self) -> None:
        # Events published while the subscription was down are in the streams.
        for route in self.routes.values():
            if not route.needs_resync:
                route.held = True
                route.needs_resync = True
                self._schedule_resync(route)

    # -- resync ----------------------------------------------------------------------------
    def _schedule_resync(self, route: TopicRoute[ServerConnection]) -> None:
        name = f"resync:{route.topic}"
        if self._tasks.running(name):
            return
        self.metrics.resyncs.inc()
        self._tasks.spawn(self._resync(route), name)

    async def _resync(self, route: TopicRoute[ServerConnection]) -> None:
        delay = 0.05
        while self.routes.get(route.topic) is route and route.needs_resync:
            try:
                replay = await self.bus.read_since(route.topic, route.position)
                raise_if_cancelled()
            except (aioredis.ConnectionError, aioredis.TimeoutError, OSError) as e:
                self._redis_failed(e)
                log.warning("resync of %s failed (%s); retrying", route.topic, e)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            gap = find_gap(route.position, replay.events, replay.head, replay.missed)
            notices: list[tuple[list[ServerConnection], bytes, bool]] = []
            if gap is not None:
                log.warning(
                    "topic %s: %s (%s events missed) after %s; resuming after %s",
                    route.topic,
                    gap.reason,
                    "unknown" if gap.missed is None else gap.missed,
                    gap.since.to_str(),
                    gap.position.to_str(),
                )
                self.metrics.missed.inc(gap.missed or 0)
                for conn, ids in gap_recipients(route.subscriptions.values()):
                    notice = gap_notice(route.topic, ids, gap)
                    notices.append(([conn], encode(notice), False))
            log.debug("resynced %s with %d events", route.topic, len(replay.events))
            # The notice first: the client learns of the hole, then gets what follows it.
            self.sender.send_all([*notices, *route.resynced(replay.events, replay.head)])
