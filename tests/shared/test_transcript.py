"""Agent transcripts (``publish.lua`` + :meth:`EventBus.read_history` / ``read_since``)
against a real Redis: the same entries as the replay buffer, kept beyond it, trimmed by
count and by bytes, expiring after the retention, paged both ways."""

from __future__ import annotations

import orjson
import redis.asyncio as aioredis

from shared import protocol as p
from shared.bus import Event, EventBus, Position, TranscriptLimits
from shared.keys import LOGS_TOPIC, Keys, agent_topic

AGENT = "a1"
TOPIC = agent_topic(AGENT)
LIMITS = TranscriptLimits(max_events=100_000, max_bytes=64 * 1024 * 1024, retention_s=3600)


def line(seq: int, size: int = 10) -> p.AgentOutputMessage:
    return p.AgentOutputMessage(
        type="agent:output",
        payload=p.AgentOutputPayload(
            agentId=AGENT,
            stream="stdout" if seq % 2 else "stderr",
            data=f"{seq:0{size}d}\n",
            timestamp=p.now_ms(),
            sequence=seq,
        ),
    )


async def publish_lines(bus: EventBus, n: int, *, size: int = 10, start: int = 1) -> None:
    items = [
        (TOPIC, line(seq, size), ("stdout" if seq % 2 else "stderr", "user:alice"))
        for seq in range(start, start + n)
    ]
    for i in range(0, n, 2000):
        await bus.publish_many(items[i : i + 2000])


def sequences(events: list[Event]) -> list[int]:
    return [orjson.loads(e.data)["payload"]["sequence"] for e in events]


async def test_the_transcript_keeps_what_the_replay_buffer_drops(
    redis: aioredis.Redis, keys: Keys
) -> None:
    bus = EventBus(redis, keys, maxlen=100, transcript=LIMITS)
    await publish_lines(bus, 3000)
    assert await redis.xlen(keys.topic_stream(TOPIC)) < 300
    assert await redis.xlen(keys.transcript(TOPIC)) == 3000
    # The same bytes in both: what a live subscriber got is what history gives.
    [(eid, fields)] = await redis.xrange(keys.topic_stream(TOPIC), min="3000-0", count=1)
    [(tid, tfields)] = await redis.xrange(keys.transcript(TOPIC), min="3000-0", count=1)
    assert (eid, fields) == (tid, tfields)

    page = await bus.read_history(TOPIC, after=None, before=None, limit=1000)
    assert [e.offset for e in page.events] == list(range(1, 1001))
    assert sequences(page.events) == list(range(1, 1001))
    assert page.next == 1000 and page.prev is None and page.missed(None) == 0
    offsets: list[int] = []
    after: int | None = None
    while True:
        page = await bus.read_history(TOPIC, after=after, before=None, limit=700)
        offsets += [e.offset for e in page.events]
        if page.next is None:
            break
        after = page.next
    assert offsets == list(range(1, 3001))
    assert page.head is not None and page.head.offset == 3000


async def test_history_pages_backwards_with_before(redis: aioredis.Redis, keys: Keys) -> None:
    bus = EventBus(redis, keys, transcript=LIMITS)
    await publish_lines(bus, 250)
    page = await bus.read_history(TOPIC, after=None, before=251, limit=100)
    assert [e.offset for e in page.events] == list(range(151, 251))
    assert page.next is None and page.prev == 151
    page = await bus.read_history(TOPIC, after=None, before=page.prev, limit=100)
    assert [e.offset for e in page.events] == list(range(51, 151))
    page = await bus.read_history(TOPIC, after=None, before=page.prev, limit=100)
    assert [e.offset for e in page.events] == list(range(1, 51))
    assert page.prev is None and page.next == 50
    between = await bus.read_history(TOPIC, after=10, before=20, limit=100)
    assert [e.offset for e in between.events] == list(range(11, 20))


async def test_the_transcript_is_trimmed_by_count_from_its_oldest(
    redis: aioredis.Redis, keys: Keys
) -> None:
    bus = EventBus(redis, keys, transcript=TranscriptLimits(500, 64 * 1024 * 1024, 3600))
    await publish_lines(bus, 2000)
    kept = await redis.xlen(keys.transcript(TOPIC))
    assert 500 <= kept <= 500 + 64
    page = await bus.read_history(TOPIC, after=None, before=None, limit=1000)
    assert page.events[-1].offset == 2000
    assert page.oldest == 2001 - kept == page.events[0].offset
    # What a reader from the start is told: how many the transcript no longer has.
    assert page.missed(None) == 2000 - kept
    assert page.missed(0) == 2000 - kept
    assert page.missed(page.oldest) == 0


async def test_the_transcript_is_trimmed_by_bytes_and_counts_them_exactly(
    redis: aioredis.Redis, keys: Keys
) -> None:
    cap = 200_000
    bus = EventBus(redis, keys, transcript=TranscriptLimits(1_000_000, cap, 3600))
    await publish_lines(bus, 3000, size=200)
    entries = await redis.xrange(keys.transcript(TOPIC))
    size = sum(len(f[b"d"]) + len(f[b"t"]) for _, f in entries)
    assert int(await redis.hget(keys.topic_meta(TOPIC), "tbytes")) == size
    assert size <= cap + 65536
    assert int(entries[-1][0].split(b"-")[0]) == 3000
    assert len(entries) < 3000


async def test_the_transcript_expires_after_the_retention_and_keeps_its_topic_alive(
    redis: aioredis.Redis, keys: Keys
) -> None:
    bus = EventBus(redis, keys, ttl_s=60, transcript=TranscriptLimits(1000, 1 << 20, 7200))
    await publish_lines(bus, 3)
    assert 3600 < await redis.ttl(keys.transcript(TOPIC)) <= 7200
    # The offsets and epoch are the transcript's too: they must not expire before it.
    for key in (keys.topic_meta(TOPIC), keys.topic_stream(TOPIC)):
        assert 3600 < await redis.ttl(key) <= 7200


async def test_only_agent_topics_have_transcripts(redis: aioredis.Redis, keys: Keys) -> None:
    bus = EventBus(redis, keys, transcript=LIMITS)
    alert = p.SystemAlertMessage(
        type="system:alert",
        payload=p.SystemAlertPayload(level="info", category="agent", message="x"),
    )
    await bus.publish(LOGS_TOPIC, alert, ("info", "agent"))
    assert not await redis.exists(keys.transcript(LOGS_TOPIC))


async def test_a_new_epoch_starts_a_new_transcript(redis: aioredis.Redis, keys: Keys) -> None:
    bus = EventBus(redis, keys, transcript=LIMITS)
    await publish_lines(bus, 5)
    await redis.delete(keys.topic_meta(TOPIC))  # lost, as after an eviction
    await publish_lines(bus, 2, start=6)
    page = await bus.read_history(TOPIC, after=None, before=None, limit=100)
    assert [e.offset for e in page.events] == [1, 2]
    assert sequences(page.events) == [6, 7]


async def test_read_since_pages_through_the_transcript(redis: aioredis.Redis, keys: Keys) -> None:
    bus = EventBus(redis, keys, maxlen=100, transcript=LIMITS)
    await publish_lines(bus, 2500)
    replay = await bus.read_since(TOPIC, Position(0, None), paged=True)
    assert [e.offset for e in replay.events] == list(range(1, 1001))
    assert replay.more and replay.recovered and replay.missed == 0
    head = replay.events[-1].position
    replay = await bus.read_since(TOPIC, Position(2000, head.epoch), paged=True)
    assert [e.offset for e in replay.events] == list(range(2001, 2501))
    assert not replay.more
    # Not paged (a route's resync), or without a transcript: the newest 1000 and the
    # count of the others, as before.
    replay = await bus.read_since(TOPIC, Position(0, None))
    assert replay.events[-1].offset == 2500 and replay.missed > 0 and not replay.more
    plain = EventBus(redis, keys, maxlen=100)
    replay = await plain.read_since(TOPIC, Position(0, None), paged=True)
    assert replay.events[-1].offset == 2500 and replay.missed > 0 and not replay.more


async def test_history_without_transcripts_reads_the_replay_buffer(
    redis: aioredis.Redis, keys: Keys
) -> None:
    bus = EventBus(redis, keys, maxlen=100)
    await publish_lines(bus, 1000)
    page = await bus.read_history(TOPIC, after=None, before=None, limit=1000)
    assert page.events[-1].offset == 1000 and page.oldest == page.events[0].offset
    assert page.missed(None) == page.oldest - 1 > 0
