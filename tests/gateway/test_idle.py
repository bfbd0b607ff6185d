"""What an idle gateway costs: heartbeats from one ticker (one encoded ``ping`` for every
connection), no session write per heartbeat (``lastActivity`` at most once per a third of
the session TTL), and no rate-limit round trip when nothing was counted."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from gateway.client_session import SessionUpdate
from gateway.limits import SyncItem, WindowLimiter
from gateway.redis_limits import SharedLimits
from gateway.sessions import fields_of
from shared.errors import ErrorCode
from tests.gateway.conftest import token, ws_url
from tests.gateway.test_connection import expect_closed
from tests.helpers import t
from tests.wsclient import WSClient


def spy_session_writes(gw: Any) -> list[tuple[str, dict[str, Any]]]:
    """Record every (session id, fields) the gateway's periodic flush writes."""
    writes: list[tuple[str, dict[str, Any]]] = []
    real = gw.sessions.write_many

    async def write_many(batch: list[tuple[str, str, SessionUpdate]]) -> None:
        writes.extend((session_id, fields_of(update)) for session_id, _, update in batch)
        await real(batch)

    gw.sessions.write_many = write_many
    return writes


async def answer_pings(client: WSClient, seconds: float) -> list[dict[str, Any]]:
    """Answer every server ``ping`` with a ``pong`` for ``seconds``; the pings."""
    pings = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            ping = await client.recv_type("ping", timeout=left)
        except AssertionError:
            break
        pings.append(ping)
        await client.send("pong", {"timestamp": int(time.time() * 1000)})
    return pings


async def test_heartbeats_cause_no_session_write_per_flush(make_gateway, redis, keys):
    gw = await make_gateway(
        TEAMDASH_HEARTBEAT_INTERVAL_S="0.2", TEAMDASH_CURSOR_FLUSH_INTERVAL_S="0.1"
    )
    writes = spy_session_writes(gw)
    client = await WSClient.authed(ws_url(gw), token())
    session_id = client.status["sessionId"]
    pings = await answer_pings(client, 1.3)
    assert len(pings) >= 4
    # Every pong made the session "active", yet the 1 s (here 0.1 s) flush wrote nothing:
    # lastActivity waits for a cursor write or a third of the TTL (20 min by default).
    assert [w for w in writes if w[0] == session_id] == []
    assert await redis.ttl(keys.session(session_id)) > 0
    assert (await client.request("subscribe:metrics", {}))["success"]
    await client.close()


async def test_last_activity_is_refreshed_within_a_third_of_the_ttl(make_gateway, redis, keys):
    gw = await make_gateway(TEAMDASH_SESSION_TTL_S="3", TEAMDASH_CURSOR_FLUSH_INTERVAL_S="0.1")
    writes = spy_session_writes(gw)
    client = await WSClient.authed(ws_url(gw), token())
    session_id = client.status["sessionId"]
    key = keys.session(session_id)
    first = int(await redis.hget(key, "lastActivity"))
    # An active client (a ping of its own every 0.1 s) for 2.6 s with a TTL of 3 s.
    deadline = time.monotonic() + 2.6
    while time.monotonic() < deadline:
        await client.send("ping", {"timestamp": 1})
        await client.recv_type("pong")
        await asyncio.sleep(0.1)
    mine = [fields for sid, fields in writes if sid == session_id]
    # Once per TTL/3 (1 s), not once per flush (~25 here).
    assert 1 <= len(mine) <= 3, mine
    assert all("lastActivity" in fields for fields in mine)
    last = int(await redis.hget(key, "lastActivity"))
    assert last - first >= 900
    assert time.time() * 1000 - last <= t(1.6) * 1000  # within TTL/3 + a flush, and slack
    assert await redis.ttl(key) >= 2  # refreshed by those writes
    await client.close()


async def test_one_ping_for_all_and_only_silent_clients_are_dropped(make_gateway):
    gw = await make_gateway(TEAMDASH_HEARTBEAT_INTERVAL_S="0.2")
    answering = await WSClient.authed(ws_url(gw), token("alice"))
    silent = await WSClient.authed(ws_url(gw), token("bob"))
    unauthenticated = await WSClient.open(ws_url(gw))
    silent_pings = asyncio.create_task(until_closed(silent))
    pings = await answer_pings(answering, 1.5)
    got = await asyncio.wait_for(silent_pings, t(5))
    # The silent client got the same pings (one encoding per tick), then was closed.
    silent_ids = {m["id"] for m in got if m["type"] == "ping"}
    assert silent_ids and silent_ids <= {p["id"] for p in pings}
    code, reason = await expect_closed(silent)
    assert code == 1001 and reason == "heartbeat timeout"
    # The answering client stays, is still pinged, and requests work.
    assert len(pings) >= 5
    assert (await answering.request("subscribe:metrics", {}))["success"]
    await answering.recv_type("ping")
    # No ping before auth (the auth deadline deals with those): the answer to a request
    # sent now comes after every ping the ticks above wrote to this connection.
    ack = await unauthenticated.request("subscribe:metrics", {})
    assert ack["code"] == ErrorCode.AUTH_FAILED
    assert [m for m in unauthenticated.drain() if m["type"] == "ping"] == []
    await answering.close()
    await unauthenticated.close()


async def until_closed(client: WSClient) -> list[dict[str, Any]]:
    """Everything the client gets until the server closes the connection."""
    got = []
    with contextlib.suppress(ConnectionClosed):
        while True:
            got.append(json.loads(await client.ws.recv()))
    return got


class CountingRedis:
    """Counts the commands a SharedLimits sends (a script call is one)."""

    def __init__(self, redis: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[str] = []
        real = redis.execute_command

        async def execute_command(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(str(args[0]))
            return await real(*args, **kwargs)

        def no_pipeline(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError("the sync is one command, not a pipeline")

        monkeypatch.setattr(redis, "execute_command", execute_command)
        monkeypatch.setattr(redis, "pipeline", no_pipeline)


def limits(redis: Any, prefix: str, per_second: int) -> SharedLimits:
    return SharedLimits(
        redis,
        prefix,
        user_messages_per_second=per_second,
        ip_messages_per_second=1000,
        ip_connections_per_minute=0,
        sync_interval_s=0.1,
    )


async def test_limits_sync_is_one_command_and_none_when_idle(redis_url, prefix, monkeypatch):
    import redis.asyncio as aioredis

    r1, r2 = aioredis.Redis.from_url(redis_url), aioredis.Redis.from_url(redis_url)
    try:
        gw1, gw2 = limits(r1, prefix, 100), limits(r2, prefix, 100)
        count = CountingRedis(r1, monkeypatch)
        # Wait for a fresh second, so that all of this happens in one window.
        await asyncio.sleep(1.0 - time.time() % 1.0 + 0.01)
        for i in range(50):
            assert gw1.admit(f"user{i}", "198.51.100.7", time.time()) is None
        assert gw2.admit("user0", "198.51.100.8", time.time()) is None
        await gw1.sync()
        assert count.calls == ["EVALSHA"]  # 50 users and an IP in one round trip
        await gw2.sync()
        # The other gateway's sync brought back the shared total of user0: 2.
        assert gw2.users.estimate("user0", time.time()) >= 2
        # Nothing counted since, nothing near its limit: no round trip at all.
        count.calls.clear()
        for _ in range(5):
            await gw1.sync()
        assert count.calls == []
        # One more message: one more (single) command.
        assert gw1.admit("user1", "198.51.100.7", time.time()) is None
        await gw1.sync()
        assert count.calls == ["EVALSHA"]
    finally:
        await r1.aclose()
        await r2.aclose()


def test_window_limiter_hands_out_only_counted_and_near_limit_keys() -> None:
    lim = WindowLimiter(10, 1.0)
    t0 = 1000.0
    for key in ("a", "b"):
        e = lim.reserve(key, t0)
        assert e is not None
        WindowLimiter.commit(e, t0)
    items = lim.pending(t0 + 0.1)
    assert sorted(items, key=lambda i: i.key) == [SyncItem("a", 1000, 1), SyncItem("b", 1000, 1)]
    # Other processes counted 7 more of "a": near its limit (≥ half), so it is refreshed
    # (delta 0) while idle here; "b" is not.
    lim.apply(next(i for i in items if i.key == "a"), 8, None)
    lim.apply(next(i for i in items if i.key == "b"), 1, None)
    assert lim.pending(t0 + 0.2) == [SyncItem("a", 1000, 0)]
    assert lim.pending(t0 + 0.3) == [SyncItem("a", 1000, 0)]
    # Next window: 8 × 0.9 still near; at mid-window 8 × 0.5 = 4 no longer.
    assert lim.pending(t0 + 1.1) == [SyncItem("a", 1001, 0)]
    assert lim.pending(t0 + 1.5) == []
    assert lim.pending(t0 + 1.6) == []
    # A refused key is looked at too (it is at its limit).
    for _ in range(10):
        e = lim.reserve("c", t0 + 1.7)
        assert e is not None
        WindowLimiter.commit(e, t0 + 1.7)
    assert lim.reserve("c", t0 + 1.7) is None
    assert lim.pending(t0 + 1.8) == [SyncItem("c", 1001, 10)]
    assert lim.pending(t0 + 1.9) == [SyncItem("c", 1001, 0)]
    # Keys unused for two windows are forgotten.
    assert lim.pending(t0 + 10) == []
    assert len(lim) == 0
