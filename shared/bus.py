"""The Redis event bus: topics with exact positions, a replay buffer and live delivery.

How it works
------------
A *topic* (``metrics``, ``logs``, ``agents``, ``agent:{id}``; see :mod:`shared.keys`) is a
Redis stream (the replay buffer, ``MAXLEN ~``), a meta hash (``offset`` counter and
``epoch``) and a pub/sub channel. :meth:`EventBus.publish` runs one Lua script
(``publish.lua``) that, atomically, takes the next offset, XADDs the event with entry id
``{offset}-0``, refreshes the TTLs and PUBLISHes the same bytes. A position is
``(offset, epoch)``: when the meta hash is lost (eviction, expiry, a flushed Redis) the next
publish starts a new epoch, and offsets of the old epoch are never trusted again — the same
design as Centrifugo's Redis broker.

The event bytes are produced **once**, by the publisher: the message is serialised with
``metadata.topic`` as its last field, and the script appends ``offset`` and ``epoch`` before
closing the JSON. What a client receives is exactly what is stored in the stream, so the
gateway never re-encodes an event, neither live nor on replay.

On the channel every event is framed as ``b"{offset} {epoch} {tags}\\n{json}"`` so a gateway
can route, filter and check for gaps without parsing the JSON. ``tags`` is a comma-separated
list the publisher chooses for filtering (``stdout``, ``status``, ``warning``, ``user:alice``…).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.keys import Keys
from shared.protocol import WSMessage
from shared.tasks import raise_if_cancelled

log = logging.getLogger("ws.bus")

_PUBLISH_LUA = resources.files("shared").joinpath("publish.lua").read_text()

#: Events replayed at most on a resume (the spec's "up to 1000 messages").
REPLAY_LIMIT = 1000

#: Tag of events a gateway may skip for a connection under pressure: publish it with
#: ``metadata.priority = "low"`` (e.g. metrics updates that the next one supersedes).
LOW_PRIORITY_TAG = "p:low"


@dataclass(frozen=True, slots=True)
class Position:
    """Where a topic's stream is, or where a reader got to. Offset 0 = nothing yet."""

    offset: int
    epoch: str | None

    def to_str(self) -> str:
        return f"{self.offset}:{self.epoch or ''}"

    @classmethod
    def from_str(cls, text: str) -> Position:
        offset, _, epoch = text.partition(":")
        return cls(int(offset), epoch or None)


@dataclass(frozen=True, slots=True)
class Event:
    """One published event: its topic, position, filter tags and final wire bytes."""

    topic: str
    offset: int
    epoch: str
    tags: tuple[str, ...]
    data: bytes

    @property
    def position(self) -> Position:
        return Position(self.offset, self.epoch)


@dataclass(frozen=True, slots=True)
class Replay:
    """The result of :meth:`EventBus.read_since`.

    ``missed`` counts events after the reader's position that are no longer retained (or
    that lie beyond ``limit``); ``recovered`` is true when nothing was missed and the epoch
    did not change.
    """

    events: list[Event]
    head: Position | None
    missed: int
    recovered: bool


def _tags_text(tags: Iterable[str]) -> str:
    text = ",".join(tags)
    if " " in text or "\n" in text:
        raise ValueError(f"event tags may not contain spaces or newlines: {text!r}")
    return text


def event_prefix(message: WSMessage, topic: str) -> bytes:
    """The message's JSON, cut open inside ``metadata`` right after ``topic`` so that the
    publish script can append ``offset`` and ``epoch``."""
    doc: dict[str, Any] = message.model_dump(mode="json", exclude_none=True)
    metadata: dict[str, Any] = doc.pop("metadata", None) or {}
    for key in ("topic", "offset", "epoch"):
        metadata.pop(key, None)
    metadata["topic"] = topic
    doc["metadata"] = metadata
    return orjson.dumps(doc)[:-2]


def parse_channel_message(topic: str, raw: bytes) -> Event:
    """Decode a live event as framed on a topic channel."""
    head, _, data = raw.partition(b"\n")
    offset, epoch, tags = head.decode("ascii").split(" ", 2)
    return Event(topic, int(offset), epoch, tuple(tags.split(",")) if tags else (), data)


def _parse_entry(topic: str, epoch: str, entry_id: Any, fields: Any) -> Event:
    """A stream entry (``{offset}-0``, fields ``d`` and ``t``) as an :class:`Event`."""
    offset = int(entry_id.split(b"-", 1)[0])
    tags = fields.get(b"t", b"").decode("ascii")
    return Event(topic, offset, epoch, tuple(tags.split(",")) if tags else (), fields[b"d"])


class EventBus:
    """Publish to and read from topics. Shared by every service; holds no state besides the
    Redis client, so it is safe to use from any task."""

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keys,
        *,
        maxlen: int = REPLAY_LIMIT,
        ttl_s: int = 24 * 3600,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.maxlen = maxlen
        self.ttl_s = ttl_s
        self._script = redis.register_script(_PUBLISH_LUA)

    def _args(
        self, topic: str, message: WSMessage, tags: Iterable[str]
    ) -> tuple[list[str], list[Any]]:
        keys = [self.keys.topic_stream(topic), self.keys.topic_meta(topic)]
        argv: list[Any] = [
            self.keys.topic_channel(topic),
            event_prefix(message, topic),
            _tags_text(tags),
            self.maxlen,
            self.ttl_s,
            f"{int(time.time()):x}{secrets.token_hex(3)}",
        ]
        return keys, argv

    async def publish(self, topic: str, message: WSMessage, tags: Iterable[str] = ()) -> Position:
        """Append ``message`` to ``topic`` and deliver it live; returns its position."""
        keys, argv = self._args(topic, message, tags)
        offset, epoch = await self._script(keys=keys, args=argv)
        return Position(int(offset), as_text(epoch))

    async def publish_many(
        self, items: Sequence[tuple[str, WSMessage, Iterable[str]]]
    ) -> list[Position]:
        """Publish several events in one pipeline round trip (in order)."""
        if not items:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for topic, message, tags in items:
                keys, argv = self._args(topic, message, tags)
                await self._script(keys=keys, args=argv, client=pipe)
            results = await pipe.execute()
        return [Position(int(offset), as_text(epoch)) for offset, epoch in results]

    async def head(self, topic: str) -> Position:
        """The topic's current position (offset 0 and no epoch when nothing was published)."""
        epoch, offset = await self.redis.hmget(self.keys.topic_meta(topic), "epoch", "offset")
        if epoch is None:
            return Position(0, None)
        return Position(int(offset or 0), as_text(epoch))

    async def read_since(self, topic: str, since: Position, *, limit: int = REPLAY_LIMIT) -> Replay:
        """Events after ``since``, oldest first, at most the ``limit`` newest.

        A ``since`` with no epoch (the reader subscribed before the topic had any event)
        accepts the current epoch from its start."""
        head = await self.head(topic)
        if head.epoch is None:
            return Replay([], None, 0, True)
        epoch_changed = since.epoch is not None and since.epoch != head.epoch
        after = 0 if epoch_changed else since.offset
        if head.offset <= after:
            return Replay([], head, 0, not epoch_changed)
        start = max(after, head.offset - limit)
        entries = await self.redis.xrange(
            self.keys.topic_stream(topic), min=f"{start + 1}-0", max="+", count=limit
        )
        events = [_parse_entry(topic, head.epoch, eid, fields) for eid, fields in entries or ()]
        first = events[0].offset if events else head.offset + 1
        missed = max(0, first - 1 - after)
        return Replay(events, head, missed, missed == 0 and not epoch_changed)


def as_text(value: Any) -> str:
    """A Redis reply value (``bytes`` without ``decode_responses``) as ``str``."""
    return value.decode() if isinstance(value, bytes) else str(value)


Handler = Callable[[str, bytes], None]


class PubSubHub:
    """One Redis pub/sub connection for a whole process, shared by all its subscribers.

    ``subscribe(channel)`` / ``unsubscribe(channel)`` are idempotent; messages of every
    channel go to the one ``handler(channel, data)``, called synchronously from the reader
    task (it must not block). When the connection is lost the hub reconnects with backoff,
    subscribes again to every channel, and calls ``on_reconnect()`` so the owner can resync
    from the streams what it may have missed meanwhile: a lost subscription is never silent.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        handler: Handler,
        *,
        on_reconnect: Callable[[], None] | None = None,
    ) -> None:
        self._redis = redis
        self._handler = handler
        self._on_reconnect = on_reconnect
        self._channels: set[str] = set()
        self._pubsub: Any = None
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._confirmations: dict[str, list[asyncio.Future[None]]] = {}
        self.connected = asyncio.Event()

    @property
    def channels(self) -> frozenset[str]:
        return frozenset(self._channels)

    async def start(self) -> None:
        self._pubsub = self._redis.pubsub()
        # Subscribing to a private channel opens the connection now, so errors show at start.
        await self._pubsub.subscribe(f"__hub__:{id(self)}")
        self.connected.set()
        self._task = asyncio.create_task(self._run(), name="pubsub-hub")

    async def subscribe(self, channel: str, *, timeout_s: float = 10.0) -> None:
        """Subscribe and wait until Redis confirmed it: every event published after this
        returns is delivered to the handler (or, after a lost connection, resynced)."""
        async with self._lock:
            if channel in self._channels:
                return
            self._channels.add(channel)
            if not self.connected.is_set():
                return
            confirmed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._confirmations.setdefault(channel, []).append(confirmed)
            try:
                await self._pubsub.subscribe(channel)
            except Exception as e:  # noqa: BLE001 - redis-py fails oddly on a dropped pub/sub connection
                # The reader sees the loss too and resubscribes every channel, this one
                # included; that confirmation completes this call.
                log.warning("subscribe %s failed (%r); waiting for the reconnect", channel, e)
        try:
            await asyncio.wait_for(confirmed, timeout_s)
        finally:
            waiting = self._confirmations.get(channel, [])
            if confirmed in waiting:
                waiting.remove(confirmed)
            if not waiting:
                self._confirmations.pop(channel, None)

    async def unsubscribe(self, channel: str) -> None:
        async with self._lock:
            if channel not in self._channels:
                return
            self._channels.discard(channel)
            if self.connected.is_set():
                try:
                    await self._pubsub.unsubscribe(channel)
                except Exception as e:  # noqa: BLE001 - lost connection: the reconnect leaves it out
                    log.warning("unsubscribe %s failed (%r)", channel, e)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._pubsub is not None:
            await self._pubsub.aclose()
            self._pubsub = None
        self.connected.clear()

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            try:
                await self._receive()
            except asyncio.CancelledError:
                raise
            except (RedisConnectionError, RedisTimeoutError, OSError) as e:
                self.connected.clear()
                log.warning("pub/sub connection lost (%s); reconnecting in %.1fs", e, backoff)
            except Exception:  # a bug in a handler must not kill live delivery
                log.exception("pub/sub reader failed; restarting")
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
            try:
                await self._reconnect()
                raise_if_cancelled()
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - keep retrying whatever went wrong
                log.warning("pub/sub reconnect failed: %s", e)

    async def _receive(self) -> None:
        pubsub = self._pubsub
        handler = self._handler
        while True:
            msg = await pubsub.get_message(timeout=5.0)
            raise_if_cancelled()
            if msg is None:
                continue
            kind = msg["type"]
            if kind == "message":
                handler(as_text(msg["channel"]), msg["data"])
            elif kind == "subscribe":
                for fut in self._confirmations.pop(as_text(msg["channel"]), []):
                    if not fut.done():
                        fut.set_result(None)

    async def _reconnect(self) -> None:
        async with self._lock:
            old = self._pubsub
            if old is not None:
                try:
                    await old.aclose()
                except Exception as e:  # noqa: BLE001 - the old connection is already broken
                    log.debug("closing the broken pub/sub connection: %r", e)
            self._pubsub = self._redis.pubsub()
            await self._pubsub.subscribe(f"__hub__:{id(self)}", *self._channels)
            self.connected.set()
        log.info("pub/sub reconnected; %d channels restored", len(self._channels))
        if self._on_reconnect is not None:
            self._on_reconnect()
