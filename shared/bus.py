"""The Redis event bus: topics with exact positions, a replay buffer and live delivery.

How it works
------------
A *topic* (``metrics``, ``logs``, ``agents``, ``agent:{id}``; see :mod:`shared.keys`) is a
Redis stream (the replay buffer, ``MAXLEN ~``), a meta hash (``offset`` counter and
``epoch``) and a pub/sub channel. Publishing runs one Lua script (``publish.lua``) per run
of events of one topic: atomically, it takes the next N offsets at once, XADDs each event
with entry id ``{offset}-0`` and PUBLISHes the same bytes, then trims the stream and
refreshes the TTLs. Each call is numbered per publisher and remembered for a while, so a
call that the Redis client retries after a lost reply (``shared/redis_conn.py`` retries once
on a connection error) is answered from that log instead of being published twice. :meth:`EventBus.publish_many` sends one such call per run of
consecutive items of the same topic, all in one round trip, so a chatty agent costs one
script call per batch and two Redis commands per event inside it. A position is
``(offset, epoch)``: when the meta hash is lost (eviction, expiry, a flushed Redis) the next
publish starts a new epoch, and offsets of the old epoch are never trusted again — the same
design as Centrifugo's Redis broker.

The event bytes are produced **once**, by the publisher: the message is serialised with
``metadata.topic`` as its last field, and the script appends ``offset`` and ``epoch`` before
closing the JSON. A publisher on a hot path may hand in that serialisation itself, as an
:data:`EncodedEvent`, instead of a pydantic message (the runner's ``agent:output``). What a
client receives is exactly what is stored in the stream, so the gateway never re-encodes an
event, neither live nor on replay.

On the channel every event is framed as ``b"{offset} {epoch} {tags}\\n{json}"`` so a gateway
can route, filter and check for gaps without parsing the JSON. ``tags`` is a comma-separated
list the publisher chooses for filtering (``stdout``, ``status``, ``warning``, ``user:alice``…).

Live delivery to a process goes through one :class:`PubSubHub`: its own pub/sub connection,
an :class:`asyncio.Protocol` that feeds each socket read to a ``hiredis.Reader`` and hands
every message parsed from that read to the handler as one list. It does not use redis-py's
``PubSub.get_message``, whose per-message cost (a timeout, a retry wrapper, push parsing, a
dict) was about 38% of the gateway's CPU at 14.6k events/s; batches also let the handler
pay its own per-call work once per read instead of once per event.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, NewType, cast

import anyio
import hiredis
import orjson
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from shared import topics
from shared.keys import Keys
from shared.protocol import WSMessage
from shared.resp import Endpoint, command, open_connection

log = logging.getLogger("ws.bus")

_PUBLISH_LUA = resources.files("shared").joinpath("publish.lua").read_text()

#: Events replayed at most on a resume (the spec's "up to 1000 messages").
REPLAY_LIMIT = 1000

#: The tag of events a gateway may skip for a connection under pressure
#: (:data:`shared.topics.LOW_PRIORITY_TAG`): publish it with ``metadata.priority = "low"``.
LOW_PRIORITY_TAG = topics.LOW_PRIORITY_TAG

#: Most events one script call publishes (a call blocks Redis while it runs: ~1 ms per few
#: hundred events); longer runs of one topic are split into several calls of one pipeline.
MAX_EVENTS_PER_CALL = 500


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
class TranscriptLimits:
    """How much of each agent topic's events is kept beyond the replay buffer, in its
    transcript (``publish.lua``): at most ``max_events`` entries and ``max_bytes`` bytes of
    them (the oldest go first), for ``retention_s`` after the topic's last event."""

    max_events: int
    max_bytes: int
    retention_s: int

    def argument(self) -> str:
        return f"{self.max_events} {self.max_bytes} {self.retention_s}"


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
    #: More events follow the returned ones (a transcript is read a page at a time): read
    #: on from the last one.
    more: bool = False


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """The result of :meth:`EventBus.read_history`: ``events`` in order; ``head`` the
    topic's newest position when read (None: nothing published, or all of it expired);
    ``oldest`` the offset of the oldest event kept (None when none is)."""

    events: list[Event]
    head: Position | None
    oldest: int | None

    @property
    def next(self) -> int | None:
        """Where the next (newer) page starts (its ``after``); None at the newest event."""
        if not self.events or self.head is None or self.events[-1].offset >= self.head.offset:
            return None
        return self.events[-1].offset

    @property
    def prev(self) -> int | None:
        """Where the previous (older) page ends (its ``before``); None at the oldest."""
        if not self.events or self.oldest is None or self.events[0].offset <= self.oldest:
            return None
        return self.events[0].offset

    def missed(self, after: int | None) -> int:
        """Events between ``after`` (the start if None) and this page no longer kept."""
        return 0 if self.oldest is None else max(0, self.oldest - 1 - (after or 0))


def _tags_text(tags: Iterable[str]) -> str:
    text = ",".join(tags)
    if " " in text or "\n" in text:
        raise ValueError(f"event tags may not contain spaces or newlines: {text!r}")
    return text


#: An event already serialised for one topic, as the publish script wants it: its JSON cut
#: open inside ``metadata`` right after ``topic``, no ``offset``/``epoch`` (what
#: :func:`event_prefix` returns; producers on a hot path may build it themselves and test it
#: against :func:`event_prefix`). Publish it like a message, but only to that topic.
EncodedEvent = NewType("EncodedEvent", bytes)


def event_prefix(message: WSMessage, topic: str) -> EncodedEvent:
    """The message's JSON, cut open inside ``metadata`` right after ``topic`` so that the
    publish script can append ``offset`` and ``epoch``."""
    doc: dict[str, Any] = message.model_dump(mode="json", exclude_none=True)
    metadata: dict[str, Any] = doc.pop("metadata", None) or {}
    for key in ("topic", "offset", "epoch"):
        metadata.pop(key, None)
    metadata["topic"] = topic
    doc["metadata"] = metadata
    return EncodedEvent(orjson.dumps(doc)[:-2])


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
        transcript: TranscriptLimits | None = None,
    ) -> None:
        """``transcript``: keep a transcript of every agent topic (None: no transcripts)."""
        self.redis = redis
        self.keys = keys
        self.maxlen = maxlen
        self.ttl_s = ttl_s
        self.transcript = transcript
        self._script = redis.register_script(_PUBLISH_LUA)
        # Every script call carries (publisher, call number), so that a call redis-py
        # retries after a lost reply is not published twice (publish.lua's call log).
        self._calls_key = keys.publish_calls(secrets.token_hex(8))
        self._call_numbers = itertools.count(1)

    def _calls(
        self, items: Sequence[tuple[str, WSMessage | EncodedEvent, Iterable[str]]]
    ) -> list[tuple[list[str], list[Any], int]]:
        """The script calls for ``items``: ``(keys, argv, events)`` per run of consecutive
        items of one topic (at most :data:`MAX_EVENTS_PER_CALL` events each)."""
        calls: list[tuple[list[str], list[Any], int]] = []
        last_tags: object = None
        tags_text = ""
        i, total = 0, len(items)
        while i < total:
            topic = items[i][0]
            keys = [self.keys.topic_stream(topic), self.keys.topic_meta(topic), self._calls_key]
            limits = ""
            if self.transcript is not None and topics.agent_of_topic(topic) is not None:
                keys.append(self.keys.transcript(topic))
                limits = self.transcript.argument()
            topic_end = b'"topic":' + orjson.dumps(topic)
            end = min(total, i + MAX_EVENTS_PER_CALL)
            events: list[bytes] = []
            runs: list[Any] = []  # (count, tags) of each run of events with the same tags
            run_tags: str | None = None
            run_start = 0
            j = i
            while j < end:
                item_topic, message, tags = items[j]
                if item_topic != topic:
                    break
                if isinstance(message, bytes):
                    if not message.endswith(topic_end):
                        raise ValueError(f"an event encoded for another topic, not {topic!r}")
                    events.append(message)
                else:
                    events.append(event_prefix(message, topic))
                if tags is not last_tags:
                    last_tags, tags_text = tags, _tags_text(tags)
                if tags_text != run_tags:
                    if run_tags is not None:
                        runs += (len(events) - 1 - run_start, run_tags)
                    run_tags, run_start = tags_text, len(events) - 1
                j += 1
            runs += (len(events) - run_start, run_tags)
            # The epoch to start if the topic has none: a fresh one per call, so that a topic
            # whose meta hash is lost between two calls never gets the same epoch again.
            epoch = f"{int(time.time()):x}{secrets.token_hex(3)}"
            argv: list[Any] = [
                self.keys.topic_channel(topic),
                self.maxlen,
                self.ttl_s,
                epoch,
                len(runs) // 2,
                next(self._call_numbers),
                *runs,
                limits,
                *events,
            ]
            calls.append((keys, argv, len(events)))
            i = j
        return calls

    def _args(
        self, topic: str, message: WSMessage | EncodedEvent, tags: Iterable[str]
    ) -> tuple[list[str], list[Any]]:
        """The keys and arguments of the script call publishing one event (``argv[0]`` is
        the channel)."""
        [(keys, argv, _)] = self._calls([(topic, message, tags)])
        return keys, argv

    async def publish(
        self, topic: str, message: WSMessage | EncodedEvent, tags: Iterable[str] = ()
    ) -> Position:
        """Append ``message`` to ``topic`` and deliver it live; returns its position."""
        keys, argv = self._args(topic, message, tags)
        offset, epoch = await self._script(keys=keys, args=argv)
        return Position(int(offset), as_text(epoch))

    async def publish_many(
        self, items: Sequence[tuple[str, WSMessage | EncodedEvent, Iterable[str]]]
    ) -> list[Position]:
        """Publish several events in one round trip, in order; a position per item.

        Consecutive items of the same topic go in one script call (they get consecutive
        offsets); several calls go in one pipeline."""
        if not items:
            return []
        calls = self._calls(items)
        if len(calls) == 1:
            # No pipeline: it would first ask SCRIPT EXISTS, a round trip of its own.
            keys, argv, _ = calls[0]
            results = [await self._script(keys=keys, args=argv)]
        else:
            # SCRIPT LOAD in the same round trip instead of the SCRIPT EXISTS round trip
            # redis-py's pipeline makes first for a registered script.
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.script_load(_PUBLISH_LUA)
                for keys, argv, _ in calls:
                    pipe.evalsha(self._script.sha, len(keys), *keys, *argv)
                results = (await pipe.execute())[1:]
        positions: list[Position] = []
        for (_, _, n), (first, epoch) in zip(calls, results, strict=True):
            offset, text = int(first), as_text(epoch)
            positions.extend([Position(offset + k, text) for k in range(n)])
        return positions

    async def head(self, topic: str) -> Position:
        """The topic's current position (offset 0 and no epoch when nothing was published)."""
        epoch, offset = await self.redis.hmget(self.keys.topic_meta(topic), "epoch", "offset")
        return Position(0, None) if epoch is None else _head(epoch, offset)

    def _transcript_of(self, topic: str) -> str | None:
        """The transcript stream of ``topic`` (None: the topic has none)."""
        if self.transcript is None or topics.agent_of_topic(topic) is None:
            return None
        return self.keys.transcript(topic)

    async def read_since(
        self, topic: str, since: Position, *, limit: int = REPLAY_LIMIT, paged: bool = False
    ) -> Replay:
        """Events after ``since``, oldest first, at most the ``limit`` newest (``missed``
        counts those before them). ``paged``: from a topic with a transcript, the next
        ``limit`` after ``since`` instead (``more`` when others follow: read on from the
        last one).

        A ``since`` with no epoch (the reader subscribed before the topic had any event)
        accepts the current epoch from its start."""
        head = await self.head(topic)
        if head.epoch is None:
            return Replay([], None, 0, True)
        epoch_changed = since.epoch is not None and since.epoch != head.epoch
        after = 0 if epoch_changed else since.offset
        if head.offset <= after:
            return Replay([], head, 0, not epoch_changed)
        transcript = self._transcript_of(topic) if paged else None
        if transcript is not None:
            entries = await self.redis.xrange(
                transcript, min=f"{after + 1}-0", max="+", count=limit
            )
            if entries:
                missed = _offset_of(entries[0][0]) - 1 - after
                # A transcript missing some (its caps, or transcripts turned on later) is
                # still the best source unless the replay buffer reaches further back.
                if missed == 0 or not await self._buffer_reaches(topic, after + missed):
                    events = [_parse_entry(topic, head.epoch, eid, f) for eid, f in entries]
                    more = len(events) == limit and events[-1].offset < head.offset
                    recovered = missed == 0 and not epoch_changed
                    return Replay(events, head, missed, recovered, more)
        start = max(after, head.offset - limit)
        entries = await self.redis.xrange(
            self.keys.topic_stream(topic), min=f"{start + 1}-0", max="+", count=limit
        )
        events = [_parse_entry(topic, head.epoch, eid, fields) for eid, fields in entries or ()]
        first = events[0].offset if events else head.offset + 1
        missed = max(0, first - 1 - after)
        return Replay(events, head, missed, missed == 0 and not epoch_changed)

    async def _buffer_reaches(self, topic: str, offset: int) -> bool:
        """The replay buffer holds an event at or before ``offset``."""
        oldest = await self.redis.xrange(self.keys.topic_stream(topic), count=1)
        return oldest is not None and len(oldest) > 0 and _offset_of(oldest[0][0]) <= offset

    async def read_history(
        self, topic: str, *, after: int | None, before: int | None, limit: int
    ) -> HistoryPage:
        """One page of ``topic``'s past events, oldest first: its transcript if it has one,
        else its replay buffer. At most ``limit`` events after ``after`` (from the oldest
        kept if None) and before ``before``; with ``before`` and no ``after``, the newest
        ``limit`` of those before it."""
        key = self._transcript_of(topic) or self.keys.topic_stream(topic)
        low = f"{after + 1}-0" if after is not None else "-"
        high = f"{before - 1}-0" if before is not None else "+"
        # One transaction: the page and ``head`` agree (an event published between two
        # reads would be in the page AND after ``position``).
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hmget(self.keys.topic_meta(topic), "epoch", "offset")
            pipe.xrange(key, count=1)
            if before is not None and after is None:
                pipe.xrevrange(key, max=high, min=low, count=limit)
            else:
                pipe.xrange(key, min=low, max=high, count=limit)
            (epoch, offset), oldest, entries = await pipe.execute()
        if epoch is None:
            return HistoryPage([], None, None)
        if before is not None and after is None:
            entries.reverse()
        text = as_text(epoch)
        events = [_parse_entry(topic, text, eid, fields) for eid, fields in entries]
        first = _offset_of(oldest[0][0]) if oldest else None
        return HistoryPage(events, _head(epoch, offset), first)


def _offset_of(entry_id: Any) -> int:
    """The offset of a stream entry id (``b"{offset}-0"``)."""
    return int(as_text(entry_id).split("-", 1)[0])


def _head(epoch: Any, offset: Any) -> Position:
    return Position(int(offset or 0), as_text(epoch))


def as_text(value: Any) -> str:
    """A Redis reply value (``bytes`` without ``decode_responses``) as ``str``."""
    return value.decode() if isinstance(value, bytes) else str(value)


#: The hub's handler: every ``(channel, data)`` of one socket read, in arrival order.
Handler = Callable[[list[tuple[str, bytes]]], None]


class _PubSubProtocol(asyncio.Protocol):
    """One pub/sub connection: hiredis parses what the socket delivers; every ``message`` of
    one read goes to the hub as one batch, ``subscribe`` replies confirm subscriptions."""

    def __init__(self, hub: PubSubHub, private_channel: bytes) -> None:
        self._hub = hub
        self._private = private_channel
        self._reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None
        #: Replies of the commands sent before subscribing (``AUTH``, ``CLIENT SETNAME``).
        self._replies: deque[asyncio.Future[object]] = deque()
        loop = asyncio.get_running_loop()
        #: Resolved when Redis confirmed the hub's private channel: the connection works.
        self.ready: asyncio.Future[None] = loop.create_future()
        #: Resolved (with the error, if any) when the connection is gone.
        self.closed: asyncio.Future[Exception | None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def send(self, *args: str | bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(command(*args))

    def request(self, packed: bytes) -> asyncio.Future[object]:
        """Send a command answered by a plain reply (only before subscribing)."""
        reply: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._replies.append(reply)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(packed)
        return reply

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        batch: list[tuple[str, bytes]] = []
        try:
            reader.feed(data)
            reply = reader.gets()
            while reply is not False:
                if type(reply) is list and len(reply) == 3 and reply[0] == b"message":
                    batch.append((reply[1].decode("utf-8", "replace"), reply[2]))
                else:
                    self._other(reply)
                reply = reader.gets()
        except Exception as e:  # noqa: BLE001 - a stream we cannot parse: start over
            log.warning("pub/sub protocol error (%r); dropping the connection", e)
            self._fail(RedisConnectionError(f"pub/sub protocol error: {e!r}"))
        if batch:
            try:
                self._hub._handler(batch)
            except Exception:  # a bug in a handler must not kill live delivery
                log.exception("pub/sub handler failed on %d messages", len(batch))

    def _other(self, reply: Any) -> None:
        if isinstance(reply, list):
            if len(reply) >= 2 and reply[0] == b"subscribe":
                channel = reply[1]
                if channel == self._private and not self.ready.done():
                    self.ready.set_result(None)
                self._hub._confirm(channel.decode("utf-8", "replace"))
            return  # unsubscribe, pmessage…: nothing to do
        if self._replies:
            pending = self._replies.popleft()
            if pending.done():
                pass
            elif isinstance(reply, Exception):
                pending.set_exception(RedisConnectionError(f"Redis refused: {reply}"))
            else:
                pending.set_result(reply)
        elif isinstance(reply, Exception):
            # An error nothing waits for (NOAUTH on SUBSCRIBE, …): this connection is useless.
            log.warning("pub/sub error reply: %s; dropping the connection", reply)
            self._fail(RedisConnectionError(f"Redis refused: {reply}"))
        else:
            log.debug("unexpected pub/sub reply %r", reply)

    def _fail(self, error: Exception) -> None:
        if not self.ready.done():
            self.ready.set_exception(error)
        self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        error = exc or RedisConnectionError("pub/sub connection closed")
        futures: list[asyncio.Future[Any]] = [self.ready, *self._replies]
        for future in futures:
            if not future.done():
                future.set_exception(error)
            if not future.cancelled():
                future.exception()  # retrieved: a failure nobody awaits is no warning
        self._replies.clear()
        if not self.closed.done():
            self.closed.set_result(exc)
        self._hub._lost(self)


class PubSubHub:
    """One Redis pub/sub connection for a whole process, shared by all its subscribers.

    ``subscribe(channel)`` / ``unsubscribe(channel)`` are idempotent; messages of every
    channel go to the one ``handler(messages)``: a list of ``(channel, data)``, in arrival
    order, of every message parsed from one socket read (never empty). It is called
    synchronously from the connection's protocol callback, so it must not block; an
    exception it raises is logged and delivery goes on. When the connection is lost the hub
    reconnects with backoff, subscribes again to every channel, and calls
    ``on_reconnect()`` so the owner can resync from the streams what it may have missed
    meanwhile: a lost subscription is never silent; ``on_lost(error)`` is called as soon as
    the connection is found gone (before the reconnect attempts).

    The connection is not redis-py's: it is an :class:`asyncio.Protocol` on its own socket
    (``redis://``, ``rediss://`` or ``unix://``, from ``redis_url``) that feeds each read to
    a ``hiredis.Reader`` and hands every message of that read to the handler at once
    (``AUTH`` from the URL's credentials; ``?client_name=`` names the connection).
    redis-py's ``PubSub.get_message`` costs a timeout, a retry wrapper, push parsing and a
    dict per message, which was about 38% of the gateway's CPU under load; here a message
    costs one parsed reply and one tuple, and the handler's own per-call work is paid once
    per batch.
    """

    def __init__(
        self,
        redis_url: str,
        handler: Handler,
        *,
        on_reconnect: Callable[[], None] | None = None,
        on_lost: Callable[[Exception | None], None] | None = None,
    ) -> None:
        self._endpoint = Endpoint.from_url(redis_url)
        self._handler = handler
        self._on_reconnect = on_reconnect
        self._on_lost = on_lost
        self._channels: set[str] = set()
        self._private_channel = f"__hub__:{id(self)}"
        self._protocol: _PubSubProtocol | None = None
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._confirmations: dict[str, list[asyncio.Future[None]]] = {}
        self.connected = asyncio.Event()

    @property
    def channels(self) -> frozenset[str]:
        return frozenset(self._channels)

    async def start(self) -> None:
        # Connects (and subscribes a private channel) now, so errors show at start.
        self._protocol = await self._connect()
        self.connected.set()
        self._task = asyncio.create_task(self._run(), name="pubsub-hub")

    async def subscribe(self, channel: str, *, timeout_s: float = 10.0) -> None:
        """Subscribe and wait until Redis confirmed it: every event published after this
        returns is delivered to the handler (or, after a lost connection, resynced)."""
        async with self._lock:
            if channel in self._channels:
                return
            self._channels.add(channel)
            if not self.connected.is_set() or self._protocol is None:
                return
            confirmed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._confirmations.setdefault(channel, []).append(confirmed)
            # On a connection that is going down this is dropped: the reconnect subscribes
            # every channel again, this one included, and that confirmation completes this.
            self._protocol.send(b"SUBSCRIBE", channel)
        try:
            # Not wait_for, which on 3.11 loses a cancellation that lands as the
            # confirmation does (tests/shared/test_timeouts.py).
            with anyio.fail_after(timeout_s):
                await confirmed
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
            if self.connected.is_set() and self._protocol is not None:
                # Lost connection: the reconnect leaves it out.
                self._protocol.send(b"UNSUBSCRIBE", channel)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.transport is not None:
            protocol.transport.close()
            await asyncio.wait([protocol.closed], timeout=1.0)
        self.connected.clear()

    # -- the connection ------------------------------------------------------------------
    async def _connect(self) -> _PubSubProtocol:
        """A new connection, authenticated and subscribed to the private channel and to
        every channel of ``self._channels`` (one command); raises if any of it fails."""
        ep = self._endpoint
        private = self._private_channel

        def factory() -> _PubSubProtocol:
            return _PubSubProtocol(self, private.encode())

        protocol: _PubSubProtocol | None = None
        try:
            async with asyncio.timeout(ep.connect_timeout_s):
                protocol = await open_connection(ep, factory)
                replies = [protocol.request(packed) for packed in ep.handshake(select_db=False)]
                protocol.send(b"SUBSCRIBE", private, *self._channels)
                for reply in replies:
                    await reply
                await protocol.ready
        except BaseException:
            if protocol is not None:
                protocol.abort()
            raise
        return protocol

    def _confirm(self, channel: str) -> None:
        for future in self._confirmations.pop(channel, ()):
            if not future.done():
                future.set_result(None)

    def _lost(self, protocol: _PubSubProtocol) -> None:
        if protocol is self._protocol:
            self.connected.clear()

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            protocol = self._protocol
            assert protocol is not None
            error = await asyncio.shield(protocol.closed)
            self.connected.clear()
            if self._on_lost is not None:
                try:
                    self._on_lost(error)
                except Exception:
                    log.exception("pub/sub on_lost failed")
            log.warning(
                "pub/sub connection lost (%s); reconnecting in %.1fs",
                error or "closed by the server",
                backoff,
            )
            while True:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                try:
                    await self._reconnect()
                    break
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # noqa: BLE001 - keep retrying whatever went wrong
                    log.warning("pub/sub reconnect failed: %r", e)
            backoff = 0.1
            log.info("pub/sub reconnected; %d channels restored", len(self._channels))
            if self._on_reconnect is not None:
                try:
                    self._on_reconnect()
                except Exception:
                    log.exception("pub/sub on_reconnect failed")

    async def _reconnect(self) -> None:
        async with self._lock:
            old = self._protocol
            if old is not None:
                old.abort()  # already broken; make sure its socket is released
            self._protocol = await self._connect()
            self.connected.set()
