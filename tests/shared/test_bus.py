"""The Redis event bus (shared/bus.py) against the real Redis of tests/conftest.py: positions,
the stored and published bytes, replay after gaps and epoch changes, and live delivery
through :class:`PubSubHub`, including a killed pub/sub connection."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import cast
from urllib.parse import urlsplit, urlunsplit

import orjson
import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from shared import protocol as p
from shared.bus import (
    MAX_EVENTS_PER_CALL,
    REPLAY_LIMIT,
    Event,
    EventBus,
    Position,
    PubSubHub,
    event_prefix,
    parse_channel_message,
)
from shared.keys import AGENTS_TOPIC, LOGS_TOPIC, METRICS_TOPIC, Keys, agent_topic
from tests.helpers import free_port, t, wait_for

AGENT_ID = "a-1"


def alert(n: int, **metadata: object) -> p.SystemAlertMessage:
    return p.SystemAlertMessage(
        type="system:alert",
        payload=p.SystemAlertPayload(level="warning", category="resource", message=f"alert {n}"),
        metadata=p.Metadata(**metadata) if metadata else None,  # type: ignore[arg-type]
    )


def output(seq: int) -> p.AgentOutputMessage:
    return p.AgentOutputMessage(
        type="agent:output",
        payload=p.AgentOutputPayload(
            agentId=AGENT_ID,
            stream="stdout",
            data=f"line {seq}\n",
            timestamp=p.now_ms(),
            sequence=seq,
        ),
    )


async def stream_entries(redis: aioredis.Redis, key: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """The raw entries of a topic stream: ``(entry id, {b"d": data, b"t": tags})``."""
    return cast(list[tuple[bytes, dict[bytes, bytes]]], await redis.xrange(key))


async def publish_n(bus: EventBus, topic: str, n: int) -> list[Position]:
    return [await bus.publish(topic, alert(i), ("warning", "resource")) for i in range(n)]


# ---------------------------------------------------------------------------
# Positions
# ---------------------------------------------------------------------------


def test_position_text_round_trip() -> None:
    for pos in (Position(0, None), Position(5, "abc123"), Position(12, None)):
        assert Position.from_str(pos.to_str()) == pos
    assert Position(5, "e").to_str() == "5:e"
    assert Position(0, None).to_str() == "0:"


async def test_publish_returns_increasing_offsets_with_one_epoch(bus: EventBus) -> None:
    positions = await publish_n(bus, LOGS_TOPIC, 5)
    assert [pos.offset for pos in positions] == [1, 2, 3, 4, 5]
    epochs = {pos.epoch for pos in positions}
    assert len(epochs) == 1 and None not in epochs
    assert await bus.head(LOGS_TOPIC) == positions[-1]


async def test_topics_count_independently(bus: EventBus) -> None:
    a = await bus.publish(LOGS_TOPIC, alert(1))
    b = await bus.publish(METRICS_TOPIC, alert(2))
    c = await bus.publish(LOGS_TOPIC, alert(3))
    assert (a.offset, b.offset, c.offset) == (1, 1, 2)
    assert a.epoch == c.epoch


async def test_head_of_an_empty_topic(bus: EventBus) -> None:
    assert await bus.head("nothing-here") == Position(0, None)


# ---------------------------------------------------------------------------
# The bytes: stored == published == what a client receives
# ---------------------------------------------------------------------------


async def test_stored_bytes_are_the_full_message_with_its_position(
    bus: EventBus, redis: aioredis.Redis, keys: Keys
) -> None:
    topic = agent_topic(AGENT_ID)
    msg = p.AgentStatusMessage(
        type="agent:status",
        payload=p.AgentStatusPayload(
            agentId=AGENT_ID, status="running", details=p.AgentStatusDetails(pid=42)
        ),
        # A stale position on the message is replaced by the real one.
        metadata=p.Metadata(
            correlationId="req-1", agentId=AGENT_ID, topic="old", offset=99, epoch="stale"
        ),
    )
    pos = await bus.publish(topic, msg, ("status", "user:alice"))
    entries = await stream_entries(redis, keys.topic_stream(topic))
    assert len(entries) == 1
    entry_id, fields = entries[0]
    assert entry_id == f"{pos.offset}-0".encode()
    assert fields[b"t"] == b"status,user:alice"
    data = fields[b"d"]
    doc = orjson.loads(data)
    assert doc["metadata"] == {
        "correlationId": "req-1",
        "agentId": AGENT_ID,
        "topic": topic,
        "offset": pos.offset,
        "epoch": pos.epoch,
    }
    assert list(doc["metadata"])[-3:] == ["topic", "offset", "epoch"]
    back = p.decode_server_message(data)
    assert isinstance(back, p.AgentStatusMessage)
    assert back.id == msg.id and back.timestamp == msg.timestamp
    assert back.payload == msg.payload
    assert back.metadata == p.Metadata(
        correlationId="req-1", agentId=AGENT_ID, topic=topic, offset=pos.offset, epoch=pos.epoch
    )


async def test_message_without_metadata_gets_one(
    bus: EventBus, redis: aioredis.Redis, keys: Keys
) -> None:
    msg = output(0)
    pos = await bus.publish(agent_topic(AGENT_ID), msg, ("stdout",))
    [(_, fields)] = await stream_entries(redis, keys.topic_stream(agent_topic(AGENT_ID)))
    back = p.decode_server_message(fields[b"d"])
    assert isinstance(back, p.AgentOutputMessage)
    assert back.payload == msg.payload
    assert back.metadata == p.Metadata(
        topic=f"agent:{AGENT_ID}", offset=pos.offset, epoch=pos.epoch
    )


async def test_published_bytes_equal_the_stored_ones(
    bus: EventBus, redis: aioredis.Redis, keys: Keys
) -> None:
    pubsub = redis.pubsub()
    await pubsub.subscribe(keys.topic_channel(METRICS_TOPIC))
    try:
        msg = p.MetricsUpdateMessage(
            type="metrics:update",
            payload=p.MetricsUpdatePayload(
                agents=[p.AgentMetrics(agentId=AGENT_ID, cpu=1.0, memory=1, threads=1)]
            ),
        )
        pos = await bus.publish(METRICS_TOPIC, msg, ("system", "agents"))
        raw = None
        deadline = asyncio.get_running_loop().time() + t(5)
        while raw is None and asyncio.get_running_loop().time() < deadline:
            got = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
            raw = got["data"] if got else None
        assert raw is not None, "no live event"
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
    event = parse_channel_message(METRICS_TOPIC, raw)
    assert (event.topic, event.offset, event.epoch) == (METRICS_TOPIC, pos.offset, pos.epoch)
    assert event.position == pos
    assert event.tags == ("system", "agents")
    [(_, fields)] = await stream_entries(redis, keys.topic_stream(METRICS_TOPIC))
    assert event.data == fields[b"d"]
    assert isinstance(p.decode_server_message(event.data), p.MetricsUpdateMessage)


def test_parse_channel_message_without_tags() -> None:
    event = parse_channel_message("logs", b'3 ep1 \n{"x":1}')
    assert event == Event("logs", 3, "ep1", (), b'{"x":1}')


async def test_tags_with_spaces_or_newlines_are_refused(bus: EventBus) -> None:
    for bad in (("a b",), ("a\nb",)):
        with pytest.raises(ValueError):
            await bus.publish(LOGS_TOPIC, alert(0), bad)
    assert await bus.head(LOGS_TOPIC) == Position(0, None)


async def test_publish_sets_the_ttl(redis: aioredis.Redis, keys: Keys) -> None:
    bus = EventBus(redis, keys, ttl_s=120)
    await bus.publish(LOGS_TOPIC, alert(0))
    for key in (keys.topic_stream(LOGS_TOPIC), keys.topic_meta(LOGS_TOPIC)):
        assert 0 < await redis.ttl(key) <= 120


# ---------------------------------------------------------------------------
# read_since
# ---------------------------------------------------------------------------


async def test_read_since_in_the_same_epoch_gives_exactly_the_newer_events(bus: EventBus) -> None:
    positions = await publish_n(bus, LOGS_TOPIC, 10)
    replay = await bus.read_since(LOGS_TOPIC, positions[3])
    assert [e.offset for e in replay.events] == [5, 6, 7, 8, 9, 10]
    assert all(e.epoch == positions[0].epoch and e.topic == LOGS_TOPIC for e in replay.events)
    assert all(e.tags == ("warning", "resource") for e in replay.events)
    assert replay.head == positions[-1]
    assert (replay.missed, replay.recovered) == (0, True)
    messages = [p.decode_server_message(e.data) for e in replay.events]
    assert all(isinstance(m, p.SystemAlertMessage) for m in messages)
    alerts = cast(list[p.SystemAlertMessage], messages)
    assert [m.payload.message for m in alerts] == [f"alert {i}" for i in range(4, 10)]
    assert [m.metadata.offset if m.metadata else None for m in alerts] == [5, 6, 7, 8, 9, 10]


async def test_read_since_at_the_head_is_empty_and_recovered(bus: EventBus) -> None:
    positions = await publish_n(bus, LOGS_TOPIC, 3)
    replay = await bus.read_since(LOGS_TOPIC, positions[-1])
    assert (replay.events, replay.head, replay.missed, replay.recovered) == (
        [],
        positions[-1],
        0,
        True,
    )


async def test_read_since_without_epoch_reads_the_topic_from_its_start(bus: EventBus) -> None:
    await publish_n(bus, LOGS_TOPIC, 4)
    replay = await bus.read_since(LOGS_TOPIC, Position(0, None))
    assert [e.offset for e in replay.events] == [1, 2, 3, 4]
    assert (replay.missed, replay.recovered) == (0, True)


async def test_read_since_after_trimming_counts_the_missed_events(
    bus: EventBus, redis: aioredis.Redis, keys: Keys
) -> None:
    positions = await publish_n(bus, LOGS_TOPIC, 20)
    await redis.xtrim(keys.topic_stream(LOGS_TOPIC), maxlen=5, approximate=False)
    replay = await bus.read_since(LOGS_TOPIC, positions[1])  # reader saw offsets 1-2
    assert [e.offset for e in replay.events] == [16, 17, 18, 19, 20]
    assert replay.missed == 13  # offsets 3..15 are gone
    assert replay.recovered is False
    assert replay.head == positions[-1]


async def test_read_since_returns_only_the_newest_limit_events(bus: EventBus) -> None:
    positions = await publish_n(bus, LOGS_TOPIC, 20)
    replay = await bus.read_since(LOGS_TOPIC, positions[2], limit=5)
    assert [e.offset for e in replay.events] == [16, 17, 18, 19, 20]
    assert replay.missed == 12  # 4..15: retained, but beyond the limit
    assert replay.recovered is False


async def test_replay_limit_is_the_specs_1000() -> None:
    assert REPLAY_LIMIT == 1000


async def test_approximate_maxlen_keeps_a_contiguous_tail(
    redis: aioredis.Redis, keys: Keys
) -> None:
    bus = EventBus(redis, keys, maxlen=10)
    items = [(LOGS_TOPIC, alert(i), ()) for i in range(300)]
    positions = await bus.publish_many(items)
    replay = await bus.read_since(LOGS_TOPIC, Position(0, positions[0].epoch))
    offsets = [e.offset for e in replay.events]
    assert offsets == list(range(offsets[0], 301))
    assert 10 <= len(offsets) < 300  # trimmed, approximately
    assert replay.missed == 300 - len(offsets)
    assert replay.recovered is False


async def test_read_since_with_an_unknown_epoch_is_not_recovered(bus: EventBus) -> None:
    positions = await publish_n(bus, LOGS_TOPIC, 3)
    replay = await bus.read_since(LOGS_TOPIC, Position(2, "some-other-epoch"))
    # Offsets of another epoch mean nothing here: everything retained is replayed.
    assert [e.offset for e in replay.events] == [1, 2, 3]
    assert replay.recovered is False
    assert replay.head == positions[-1]
    # Even with a "future" offset of the old epoch.
    replay = await bus.read_since(LOGS_TOPIC, Position(50, "some-other-epoch"))
    assert [e.offset for e in replay.events] == [1, 2, 3]
    assert replay.recovered is False


async def test_read_since_on_an_empty_topic(bus: EventBus) -> None:
    for since in (Position(0, None), Position(7, "gone")):
        replay = await bus.read_since("never-published", since)
        assert (replay.events, replay.head, replay.missed, replay.recovered) == ([], None, 0, True)


async def test_losing_the_meta_hash_starts_a_new_epoch_and_wipes_the_stream(
    bus: EventBus, redis: aioredis.Redis, keys: Keys
) -> None:
    old = await publish_n(bus, LOGS_TOPIC, 5)
    await redis.delete(keys.topic_meta(LOGS_TOPIC))  # eviction, expiry, a flush…
    assert await bus.head(LOGS_TOPIC) == Position(0, None)
    new = await bus.publish(LOGS_TOPIC, alert(99))
    assert new.offset == 1
    assert new.epoch is not None and new.epoch != old[-1].epoch
    entries = await stream_entries(redis, keys.topic_stream(LOGS_TOPIC))
    assert [eid for eid, _ in entries] == [b"1-0"]  # nothing of the old epoch is left
    replay = await bus.read_since(LOGS_TOPIC, old[-1])
    assert [e.offset for e in replay.events] == [1]
    assert replay.events[0].epoch == new.epoch
    assert replay.recovered is False
    msg = p.decode_server_message(replay.events[0].data)
    assert msg.metadata is not None and msg.metadata.epoch == new.epoch


# ---------------------------------------------------------------------------
# publish_many
# ---------------------------------------------------------------------------


async def test_publish_many_keeps_order(bus: EventBus) -> None:
    topic = agent_topic(AGENT_ID)
    items = [(topic if i % 3 else AGENTS_TOPIC, output(i), ("stdout",)) for i in range(30)]
    positions = await bus.publish_many(items)
    assert len(positions) == 30
    agent_offsets = [
        pos.offset for (tp, _, _), pos in zip(items, positions, strict=True) if tp == topic
    ]
    lifecycle_offsets = [
        pos.offset for (tp, _, _), pos in zip(items, positions, strict=True) if tp == AGENTS_TOPIC
    ]
    assert agent_offsets == list(range(1, 21))
    assert lifecycle_offsets == list(range(1, 11))
    replay = await bus.read_since(topic, Position(0, None))
    outputs = [p.decode_server_message(e.data) for e in replay.events]
    sequences = [m.payload.sequence for m in outputs if isinstance(m, p.AgentOutputMessage)]
    assert sequences == [i for i in range(30) if i % 3]


async def test_publish_many_of_nothing(bus: EventBus) -> None:
    assert await bus.publish_many([]) == []


async def test_publish_many_mixing_topics_gives_consecutive_positions_in_order(
    bus: EventBus, redis: aioredis.Redis, keys: Keys
) -> None:
    a, b = agent_topic("a-1"), agent_topic("b-2")
    before = await bus.publish(a, output(0), ("stdout",))  # `a` has an epoch already
    plan = [a, a, a, b, b, a, LOGS_TOPIC, a, a, b]  # runs: a×3, b×2, a, logs, a×2, b
    items: list[tuple[str, p.WSMessage, tuple[str, ...]]] = [
        (topic, output(i) if topic != LOGS_TOPIC else alert(i), ("stderr" if i % 2 else "stdout",))
        for i, topic in enumerate(plan, 1)
    ]
    positions = await bus.publish_many(items)
    assert len(positions) == len(items)
    assert [pos.offset for pos in positions] == [2, 3, 4, 1, 2, 5, 1, 6, 7, 3]
    pairs = list(enumerate(zip(items, positions, strict=True)))
    for topic in (a, b, LOGS_TOPIC):
        mine = [(i, pos) for i, ((tp, _, _), pos) in pairs if tp == topic]
        epochs = {pos.epoch for _, pos in mine}
        assert len(epochs) == 1 and None not in epochs
        if topic == a:
            assert epochs == {before.epoch}
        assert await bus.head(topic) == mine[-1][1]
        entries = await stream_entries(redis, keys.topic_stream(topic))
        stored = entries[-len(mine) :]
        assert [eid for eid, _ in stored] == [f"{pos.offset}-0".encode() for _, pos in mine]
        for (i, pos), (_, fields) in zip(mine, stored, strict=True):
            assert set(fields) == {b"d", b"t"}
            assert fields[b"t"] == (b"stderr" if (i + 1) % 2 else b"stdout")
            doc = orjson.loads(fields[b"d"])
            assert doc["id"] == items[i][1].id
            assert doc["metadata"]["topic"] == topic
            assert (doc["metadata"]["offset"], doc["metadata"]["epoch"]) == (pos.offset, pos.epoch)
            assert list(doc["metadata"])[-3:] == ["topic", "offset", "epoch"]


async def test_publish_many_splits_a_long_run_into_calls_without_gaps(
    redis: aioredis.Redis, keys: Keys
) -> None:
    bus = EventBus(redis, keys, maxlen=5000)
    n = 2 * MAX_EVENTS_PER_CALL + 7
    topic = agent_topic(AGENT_ID)
    items = [(topic, output(i), ("stdout",)) for i in range(n)]
    items.insert(MAX_EVENTS_PER_CALL + 3, (LOGS_TOPIC, alert(0), ()))
    positions = await bus.publish_many(items)
    mine = [pos for (tp, _, _), pos in zip(items, positions, strict=True) if tp == topic]
    assert [pos.offset for pos in mine] == list(range(1, n + 1))
    assert len({pos.epoch for pos in mine}) == 1
    entries = await stream_entries(redis, keys.topic_stream(topic))
    assert [eid for eid, _ in entries] == [f"{i}-0".encode() for i in range(1, n + 1)]
    sequences = [orjson.loads(f[b"d"])["payload"]["sequence"] for _, f in entries]
    assert sequences == list(range(n))


async def test_a_batch_on_a_topic_without_epoch_starts_one_and_drops_the_stale_stream(
    bus: EventBus, redis: aioredis.Redis, keys: Keys
) -> None:
    topic = agent_topic(AGENT_ID)
    stream = keys.topic_stream(topic)
    for i in range(1, 6):  # left over from an epoch whose meta hash is gone
        await redis.xadd(stream, {"d": b"old", "t": b""}, id=f"{i}-0")
    old_epoch = (await bus.publish_many([(LOGS_TOPIC, alert(0), ())]))[0].epoch
    positions = await bus.publish_many([(topic, output(i), ("stdout",)) for i in range(3)])
    assert [pos.offset for pos in positions] == [1, 2, 3]
    epoch = positions[0].epoch
    assert epoch and {pos.epoch for pos in positions} == {epoch}
    assert epoch != old_epoch  # each call has its own candidate epoch
    assert await redis.hget(keys.topic_meta(topic), "epoch") == epoch.encode()
    entries = await stream_entries(redis, stream)
    assert [eid for eid, _ in entries] == [b"1-0", b"2-0", b"3-0"]
    assert all(fields[b"d"] != b"old" for _, fields in entries)


async def test_channel_messages_of_a_batch_arrive_framed_and_in_order(
    bus: EventBus, redis: aioredis.Redis, keys: Keys
) -> None:
    topic = agent_topic(AGENT_ID)
    pubsub = redis.pubsub()
    await pubsub.subscribe(keys.topic_channel(topic))
    tag_sets = [("stdout", "user:alice"), ("stderr", "user:alice"), ()]
    items = [(topic, output(i), tag_sets[(i // 3) % 3]) for i in range(40)]
    try:
        positions = await bus.publish_many(items)
        raws: list[bytes] = []
        deadline = asyncio.get_running_loop().time() + t(5)
        while len(raws) < len(items) and asyncio.get_running_loop().time() < deadline:
            got = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
            if got:
                raws.append(got["data"])
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
    assert len(raws) == len(items)
    entries = await stream_entries(redis, keys.topic_stream(topic))
    for (_, message, tags), pos, raw, (entry_id, fields) in zip(
        items, positions, raws, entries, strict=True
    ):
        assert entry_id == f"{pos.offset}-0".encode()
        assert fields[b"t"] == ",".join(tags).encode()
        head = f"{pos.offset} {pos.epoch} {','.join(tags)}\n".encode()
        assert raw == head + fields[b"d"]  # the framing, byte for byte
        event = parse_channel_message(topic, raw)
        assert (event.offset, event.epoch, event.tags) == (pos.offset, pos.epoch, tags)
        decoded = p.decode_server_message(event.data)
        assert isinstance(decoded, p.AgentOutputMessage) and decoded.id == message.id


async def test_an_event_encoded_for_another_topic_is_refused(bus: EventBus) -> None:
    encoded = event_prefix(output(1), agent_topic("other"))
    with pytest.raises(ValueError):
        await bus.publish_many(
            [(LOGS_TOPIC, alert(1), ()), (agent_topic(AGENT_ID), encoded, ("stdout",))]
        )
    assert await bus.head(LOGS_TOPIC) == Position(0, None)  # nothing of the batch went out
    pos = await bus.publish(agent_topic("other"), encoded, ("stdout",))
    assert pos.offset == 1


async def test_inconsistent_script_arguments_write_nothing(
    bus: EventBus, redis: aioredis.Redis, keys: Keys
) -> None:
    keys_, argv = bus._args(LOGS_TOPIC, alert(1), ("warning",))
    argv[6] = 2  # the run claims two events, one is given
    with pytest.raises(ResponseError):
        await bus._script(keys=keys_, args=argv)
    assert await redis.exists(keys.topic_meta(LOGS_TOPIC), keys.topic_stream(LOGS_TOPIC)) == 0


async def test_a_retried_call_is_not_published_twice(
    bus: EventBus, redis: aioredis.Redis, keys: Keys
) -> None:
    """What redis-py's retry does when the connection drops after Redis ran the script but
    before its reply arrived: the same call again. It must get the same position and add
    nothing (neither to the stream nor on the channel)."""
    pubsub = redis.pubsub()
    await pubsub.subscribe(keys.topic_channel(LOGS_TOPIC))
    await pubsub.get_message(timeout=1)  # the subscribe confirmation
    keys_, argv = bus._args(LOGS_TOPIC, alert(1), ("warning",))
    first = await bus._script(keys=keys_, args=argv)
    again = await bus._script(keys=keys_, args=argv)
    assert again == first
    later = await bus.publish(LOGS_TOPIC, alert(2))  # a new call: published
    assert later.offset == int(first[0]) + 1
    assert await redis.xlen(keys.topic_stream(LOGS_TOPIC)) == 2
    # The later call is a barrier: had the retry published, its copy would come before it.
    got = []
    while len(got) < 2:
        m = await pubsub.get_message(timeout=5)
        assert m is not None
        got.append(int(m["data"].split(b" ", 1)[0]))
    assert got == [int(first[0]), later.offset], "the retried call published nothing"
    await pubsub.aclose()


async def test_publishing_after_the_script_cache_was_flushed(bus: EventBus) -> None:
    await bus.publish(LOGS_TOPIC, alert(0))
    for items in (
        [(LOGS_TOPIC, alert(1), ())],  # one script call
        [(LOGS_TOPIC, alert(2), ()), (METRICS_TOPIC, alert(3), ())],  # a pipeline
    ):
        await bus.redis.script_flush()
        positions = await bus.publish_many(items)
        assert all(pos.offset >= 1 for pos in positions)
    assert (await bus.head(LOGS_TOPIC)).offset == 3


# ---------------------------------------------------------------------------
# PubSubHub
# ---------------------------------------------------------------------------


class Collector:
    def __init__(self) -> None:
        self.received: list[tuple[str, bytes]] = []
        self.batches: list[int] = []  # the size of each handler call
        self.reconnects = 0

    def handler(self, messages: list[tuple[str, bytes]]) -> None:
        self.batches.append(len(messages))
        self.received.extend(messages)

    def on_reconnect(self) -> None:
        self.reconnects += 1

    def events(self, topic: str, keys: Keys) -> list[Event]:
        channel = keys.topic_channel(topic)
        return [parse_channel_message(topic, d) for c, d in self.received if c == channel]


async def barrier(hub: PubSubHub, got: Collector, redis: aioredis.Redis, keys: Keys) -> None:
    """Return once the hub has delivered everything published before the call: Redis sends
    one connection its messages in the order they were published, so a marker published now
    on a channel of its own comes after them."""
    channel = keys.topic_channel("barrier")
    await hub.subscribe(channel)
    marker = uuid.uuid4().bytes
    await redis.publish(channel, marker)
    await wait_for(lambda: (channel, marker) in got.received, what="the barrier's marker")


def with_query(url: str, query: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{query}"


@pytest.fixture
def hub_name() -> str:
    return f"hub-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def hub_url(redis_url: str, hub_name: str) -> str:
    """The hub's URL, naming its connection so a test can kill exactly that one (and no
    other client's, should the tests share a Redis through REDIS_URL)."""
    return with_query(redis_url, f"client_name={hub_name}")


async def kill_pubsub(redis: aioredis.Redis, name: str) -> int:
    """``CLIENT KILL`` the hub's pub/sub connection (found among ``CLIENT LIST TYPE pubsub``
    by its name), as a network failure or a Redis restart would; returns how many
    connections were killed."""
    killed = 0
    for client in await redis.client_list(_type="pubsub"):
        if client["name"] == name:
            killed += await redis.execute_command(  # type: ignore[no-untyped-call]
                "CLIENT", "KILL", "ID", client["id"]
            )
    return killed


@pytest.fixture
async def hub_and_collector(hub_url: str) -> AsyncIterator[tuple[PubSubHub, Collector]]:
    got = Collector()
    hub = PubSubHub(hub_url, got.handler, on_reconnect=got.on_reconnect)
    await hub.start()
    yield hub, got
    await hub.close()


async def test_hub_delivers_live_events(
    hub_and_collector: tuple[PubSubHub, Collector],
    bus: EventBus,
    redis: aioredis.Redis,
    keys: Keys,
) -> None:
    hub, got = hub_and_collector
    assert hub.connected.is_set()
    await hub.subscribe(keys.topic_channel(LOGS_TOPIC))
    await hub.subscribe(keys.topic_channel(LOGS_TOPIC))  # idempotent
    assert hub.channels == {keys.topic_channel(LOGS_TOPIC)}
    pos = await bus.publish(LOGS_TOPIC, alert(1, correlationId="c"), ("warning", "resource"))
    await bus.publish(METRICS_TOPIC, alert(2))  # not subscribed
    await wait_for(lambda: got.received, what="a live event")
    [event] = got.events(LOGS_TOPIC, keys)
    assert (event.topic, event.offset, event.epoch, event.tags) == (
        LOGS_TOPIC,
        pos.offset,
        pos.epoch,
        ("warning", "resource"),
    )
    msg = p.decode_server_message(event.data)
    assert isinstance(msg, p.SystemAlertMessage)
    assert msg.metadata == p.Metadata(
        correlationId="c", topic=LOGS_TOPIC, offset=pos.offset, epoch=pos.epoch
    )
    [replayed] = (await bus.read_since(LOGS_TOPIC, Position(0, None))).events
    assert replayed == event  # live and replayed events are identical
    await barrier(hub, got, redis, keys)
    assert len(got.events(LOGS_TOPIC, keys)) == 1 and not got.events(METRICS_TOPIC, keys)


async def test_hub_unsubscribe_stops_delivery(
    hub_and_collector: tuple[PubSubHub, Collector],
    bus: EventBus,
    redis: aioredis.Redis,
    keys: Keys,
) -> None:
    hub, got = hub_and_collector
    channel = keys.topic_channel(LOGS_TOPIC)
    await hub.subscribe(channel)
    await bus.publish(LOGS_TOPIC, alert(1))
    await wait_for(lambda: len(got.received) == 1, what="the first event")
    await hub.unsubscribe(channel)
    await hub.unsubscribe(channel)  # idempotent
    assert hub.channels == frozenset()
    await bus.publish(LOGS_TOPIC, alert(2))
    await barrier(hub, got, redis, keys)
    assert len(got.events(LOGS_TOPIC, keys)) == 1


async def test_hub_handler_errors_do_not_stop_delivery(
    redis_url: str, bus: EventBus, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    got: list[bytes] = []
    reconnects: list[None] = []

    def handler(messages: list[tuple[str, bytes]]) -> None:
        got.extend(data for _, data in messages)
        if len(got) == 1:
            raise RuntimeError("a bug in a handler")

    hub = PubSubHub(redis_url, handler, on_reconnect=lambda: reconnects.append(None))
    await hub.start()
    try:
        await hub.subscribe(keys.topic_channel(LOGS_TOPIC))
        await bus.publish(LOGS_TOPIC, alert(1))
        await wait_for(lambda: len(got) == 1, what="the first event")
        assert "a bug in a handler" in caplog.text  # logged, with its traceback
        for i in range(2, 5):
            await bus.publish(LOGS_TOPIC, alert(i))
        await wait_for(lambda: len(got) == 4, what="delivery after a handler error")
        offsets = [parse_channel_message(LOGS_TOPIC, d).offset for d in got]
        assert offsets == [1, 2, 3, 4]
        # The connection itself was never dropped.
        assert hub.connected.is_set() and reconnects == []
    finally:
        await hub.close()


async def test_hub_delivers_a_burst_complete_in_order_and_batched(
    hub_and_collector: tuple[PubSubHub, Collector],
    bus: EventBus,
    redis: aioredis.Redis,
    keys: Keys,
) -> None:
    hub, got = hub_and_collector
    await hub.subscribe(keys.topic_channel(LOGS_TOPIC))
    positions = await bus.publish_many([(LOGS_TOPIC, alert(i), ()) for i in range(500)])
    await wait_for(lambda: len(got.received) >= 500, what="the whole burst")
    await barrier(hub, got, redis, keys)
    events = got.events(LOGS_TOPIC, keys)
    assert [e.position for e in events] == positions
    assert [e.offset for e in events] == list(range(1, 501))
    assert 0 not in got.batches  # never called with nothing
    assert sum(got.batches) == 501  # and the barrier's marker
    assert len(got.batches) < 500  # several messages per call


async def test_hub_delivers_binary_data_intact(
    hub_and_collector: tuple[PubSubHub, Collector], redis: aioredis.Redis, keys: Keys
) -> None:
    hub, got = hub_and_collector
    channel = keys.topic_channel("binary")
    await hub.subscribe(channel)
    payloads = [
        bytes(range(256)),
        b"\xff\xfe\x00not utf-8\r\n*3\r\n$7\r\nmessage\r\n",
        b"",
        b"\x80" * 100_000,  # larger than one socket read
    ]
    for data in payloads:
        await redis.publish(channel, data)
    await wait_for(lambda: len(got.received) == len(payloads), what="the binary messages")
    assert got.received == [(channel, data) for data in payloads]


async def test_hub_start_fails_on_a_wrong_url(redis_url: str) -> None:
    hub = PubSubHub(f"redis://127.0.0.1:{free_port()}/0", lambda messages: None)
    with pytest.raises(OSError):
        await hub.start()
    assert not hub.connected.is_set() and hub._task is None
    await hub.close()  # harmless
    with pytest.raises(ValueError):
        PubSubHub("http://127.0.0.1:6379", lambda messages: None)


async def test_hub_start_fails_on_an_error_reply(redis_url: str) -> None:
    url = urlsplit(redis_url)
    if url.password is not None:
        pytest.skip("REDIS_URL has a password")
    # AUTH with a password this Redis does not have: Redis answers with an error.
    bad = urlunsplit(url._replace(netloc=f":wrong-password@{url.hostname}:{url.port}"))
    hub = PubSubHub(bad, lambda messages: None)
    with pytest.raises(RedisConnectionError, match="Redis refused"):
        await hub.start()
    assert not hub.connected.is_set() and hub._task is None


async def test_hub_survives_a_killed_connection(
    hub_and_collector: tuple[PubSubHub, Collector],
    bus: EventBus,
    redis: aioredis.Redis,
    hub_name: str,
    keys: Keys,
) -> None:
    hub, got = hub_and_collector
    channels = [keys.topic_channel(LOGS_TOPIC), keys.topic_channel(METRICS_TOPIC)]
    for channel in channels:
        await hub.subscribe(channel)
    first = await bus.publish(LOGS_TOPIC, alert(1))
    await wait_for(lambda: len(got.received) == 1, what="the first event")

    assert await kill_pubsub(redis, hub_name) == 1
    # Published while the subscription may be down: it must not be lost silently.
    during = await bus.publish(LOGS_TOPIC, alert(2))

    await wait_for(lambda: got.reconnects >= 1, what="on_reconnect", timeout=15)
    assert hub.connected.is_set()
    assert hub.channels == frozenset(channels)
    numsub = dict(await redis.pubsub_numsub(*channels))
    assert all(numsub[c.encode()] >= 1 for c in channels)

    # The owner resyncs from its last position: the event from the outage is there.
    replay = await bus.read_since(LOGS_TOPIC, first)
    assert [e.position for e in replay.events] == [during]
    assert replay.recovered is True

    # And live delivery goes on, on every channel that was subscribed.
    logs_pos = await bus.publish(LOGS_TOPIC, alert(3))
    metrics_pos = await bus.publish(METRICS_TOPIC, alert(4))
    await wait_for(
        lambda: (
            logs_pos in [e.position for e in got.events(LOGS_TOPIC, keys)]
            and metrics_pos in [e.position for e in got.events(METRICS_TOPIC, keys)]
        ),
        what="live events after the reconnect",
    )


async def test_hub_subscriptions_made_while_disconnected_are_restored(
    hub_and_collector: tuple[PubSubHub, Collector],
    bus: EventBus,
    redis: aioredis.Redis,
    hub_name: str,
    keys: Keys,
) -> None:
    hub, got = hub_and_collector
    assert await kill_pubsub(redis, hub_name) == 1
    channel = keys.topic_channel(LOGS_TOPIC)
    # Races with the lost connection; returns once the reconnect has confirmed it.
    await asyncio.wait_for(hub.subscribe(channel), t(15))
    assert channel in hub.channels
    await wait_for(lambda: got.reconnects >= 1, what="on_reconnect", timeout=15)
    await asyncio.wait_for(hub.unsubscribe(keys.topic_channel("other")), t(5))  # a no-op

    async def delivered() -> bool:
        await bus.publish(LOGS_TOPIC, alert(1))
        await asyncio.sleep(0.1)
        return bool(got.events(LOGS_TOPIC, keys))

    await wait_for(delivered, what="delivery on a channel subscribed during the outage")


async def test_hub_close_stops_the_reader(redis_url: str) -> None:
    hub = PubSubHub(redis_url, lambda messages: None)
    await hub.start()
    task = hub._task
    assert task is not None and not task.done()
    await hub.close()
    assert task.done()
    assert not hub.connected.is_set()
    await hub.close()  # idempotent


async def test_hub_unsubscribe_during_an_outage_is_not_restored(
    hub_and_collector: tuple[PubSubHub, Collector],
    bus: EventBus,
    redis: aioredis.Redis,
    hub_name: str,
    keys: Keys,
) -> None:
    hub, got = hub_and_collector
    keep, drop = keys.topic_channel(METRICS_TOPIC), keys.topic_channel(LOGS_TOPIC)
    await hub.subscribe(keep)
    await hub.subscribe(drop)
    assert await kill_pubsub(redis, hub_name) == 1
    await asyncio.wait_for(hub.unsubscribe(drop), t(15))
    assert hub.channels == {keep}
    await wait_for(lambda: got.reconnects >= 1, what="on_reconnect", timeout=15)

    async def kept_delivered() -> bool:
        await bus.publish(METRICS_TOPIC, alert(1))
        await asyncio.sleep(0.1)
        return bool(got.events(METRICS_TOPIC, keys))

    await wait_for(kept_delivered, what="delivery on the kept channel")
    await bus.publish(LOGS_TOPIC, alert(2))
    await barrier(hub, got, redis, keys)
    assert got.events(LOGS_TOPIC, keys) == []
