"""``gateway/sessions.py`` against a real Redis: the session rules, and the one writer that
sends every queued write in the same round trip."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from gateway.client_session import SessionUpdate
from gateway.sessions import SessionStore
from shared.bus import Position
from shared.keys import Keys
from shared.redis_server import free_port
from shared.resp import RespClient

ACTIVE = SessionUpdate(last_activity_ms=2)


@pytest.fixture
async def store(redis: aioredis.Redis, redis_url: str, keys: Keys) -> AsyncIterator[SessionStore]:
    store = SessionStore(redis, RespClient(redis_url), keys, ttl_s=60)
    writer = asyncio.create_task(store.run())
    yield store
    writer.cancel()
    await asyncio.gather(writer, return_exceptions=True)
    store.writer.close()


async def hold(store: SessionStore, sid: str, conn: str, *, new: bool) -> None:
    await store.hold(
        sid, conn_id=conn, user_id="alice", client_id="c", gateway_id="g1", now_ms=1, new=new
    )


async def test_hold_write_and_take_over(store: SessionStore, redis: aioredis.Redis, keys: Keys):
    await redis.hset(keys.session("s1"), "stale", "x")
    await hold(store, "s1", "conn-1", new=True)
    raw = await redis.hgetall(keys.session("s1"))
    assert raw[b"conn"] == b"conn-1" and raw[b"subs"] == b"{}" and b"stale" not in raw
    assert 0 < await redis.ttl(keys.session("s1")) <= 60
    assert await store.write("s1", "conn-1", SessionUpdate(cursors={"a": Position(5, "e")}))
    # a resume elsewhere takes the session over: the old holder can no longer write
    await hold(store, "s1", "conn-2", new=False)
    assert not await store.write("s1", "conn-1", SessionUpdate(cursors={"a": Position(1, "e")}))
    session = await store.load("s1")
    assert session is not None and session.user_id == "alice"
    assert (await redis.hget(keys.session("s1"), "cur:a")) == b"5:e"
    assert (await redis.hget(keys.session("s1"), "connectedAt")) == b"1"  # kept on take-over


async def test_concurrent_writes_share_round_trips(store: SessionStore, monkeypatch):
    pipelines = 0
    real = store.writer.execute

    async def counting(commands):
        nonlocal pipelines
        pipelines += 1
        return await real(commands)

    monkeypatch.setattr(store.writer, "execute", counting)
    await asyncio.gather(*(hold(store, f"s{i}", f"c{i}", new=True) for i in range(500)))
    written = await asyncio.gather(*(store.write(f"s{i}", f"c{i}", ACTIVE) for i in range(500)))
    assert all(written)
    assert pipelines <= 4, pipelines  # 1,000 writes, a handful of round trips


async def test_a_failed_round_trip_fails_its_callers_not_the_writer(store: SessionStore):
    real = store.writer
    store.writer = RespClient(f"redis://127.0.0.1:{free_port()}")  # nothing listens there
    with pytest.raises(aioredis.ConnectionError):
        await hold(store, "s1", "c1", new=True)
    store.writer = real
    await hold(store, "s1", "c1", new=True)  # the writer is still there
    assert await store.write("s1", "c1", ACTIVE)


async def test_writes_after_the_writer_stopped_fail_at_once(
    redis: aioredis.Redis, redis_url: str, keys: Keys
):
    store = SessionStore(redis, RespClient(redis_url), keys, ttl_s=60)
    writer = asyncio.create_task(store.run())
    await asyncio.sleep(0)
    writer.cancel()
    await asyncio.gather(writer, return_exceptions=True)
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(store.write("s1", "c1", ACTIVE), 2)


async def test_writes_survive_a_script_flush(store: SessionStore, redis: aioredis.Redis):
    """A restarted or flushed Redis has forgotten the scripts: the calls refused with
    NOSCRIPT (nothing ran) go again, with the scripts loaded first."""
    await hold(store, "s1", "c1", new=True)
    await redis.script_flush()
    written = await asyncio.gather(
        store.write("s1", "c1", SessionUpdate(last_activity_ms=4)),
        hold(store, "s2", "c2", new=True),
    )
    assert written[0]
    assert (await redis.hget(store.keys.session("s1"), "lastActivity")) == b"4"
    assert (await redis.hget(store.keys.session("s2"), "conn")) == b"c2"


async def test_the_scripts_are_loaded_once_not_every_round_trip(
    store: SessionStore, redis: aioredis.Redis
):
    async def script_commands() -> int:
        stats = await redis.info("commandstats")  # Redis 7 counts "cmdstat_script|load"
        return sum(int(v["calls"]) for k, v in stats.items() if k.startswith("cmdstat_script"))

    before = await script_commands()
    for i in range(5):
        await hold(store, f"s{i}", f"c{i}", new=True)
    assert await script_commands() - before == 2  # SCRIPT LOAD of each script, once


async def test_a_connection_that_lost_its_session_cannot_delete_the_new_holder_s_cursor(
    store: SessionStore, redis: aioredis.Redis, keys: Keys
):
    await hold(store, "s1", "conn-1", new=True)
    # Resumed elsewhere: the new holder writes its cursor of subscription "b".
    await hold(store, "s1", "conn-2", new=False)
    assert await store.write("s1", "conn-2", SessionUpdate(cursors={"b": Position(7, "e")}))
    # The old connection unsubscribes "b" late: its delete is refused with its write.
    assert not await store.write("s1", "conn-1", SessionUpdate(forget=("b",)))
    assert (await redis.hget(keys.session("s1"), "cur:b")) == b"7:e"
    # The holder's own delete goes through.
    assert await store.write("s1", "conn-2", SessionUpdate(forget=("b",)))
    assert (await redis.hget(keys.session("s1"), "cur:b")) is None
