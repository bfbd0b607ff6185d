"""Rate limits that hold across gateway replicas: messages per user and per client IP
(counted locally, synced through Redis), new connections per IP (429 at the handshake), the
real client IP behind trusted proxies only, and the flood disconnect."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from gateway.guard import client_ip, limit_key
from gateway.settings import trusted_proxies
from shared.errors import ErrorCode
from shared.settings import Env
from tests.gateway.conftest import token, ws_url
from tests.helpers import http_get, t
from tests.security.conftest import closed
from tests.wsclient import WSClient


async def paced(client: WSClient, per_second: int, seconds: float) -> list[str]:
    """Send ``unsubscribe`` of a made-up id at a steady pace (INVALID_MESSAGE when served,
    RATE_LIMIT_EXCEEDED when limited); the ids sent."""
    ids = []
    interval = 1.0 / per_second
    start = time.monotonic()
    for i in range(int(per_second * seconds)):
        delay = start + i * interval - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        ids.append(await client.send("unsubscribe", {"subscriptionId": f"nope-{i}"}))
    return ids


async def outcomes(client: WSClient, ids: list[str]) -> tuple[int, int]:
    """(served, limited) among the acks of ``ids``."""
    served = limited = 0
    for mid in ids:
        ack = await client.ack_for(mid, timeout=10)
        if ack["code"] == ErrorCode.RATE_LIMIT_EXCEEDED:
            limited += 1
        else:
            assert ack["code"] == ErrorCode.INVALID_MESSAGE, ack
            served += 1
    return served, limited


@pytest.mark.parametrize("limit", ["user", "ip"])
async def test_message_limit_holds_across_three_gateways(make_gateway, limit):
    per_second = 30
    env = {
        "TEAMDASH_MESSAGES_PER_SECOND": "1000",
        "TEAMDASH_USER_MESSAGES_PER_SECOND": str(per_second if limit == "user" else 100_000),
        "TEAMDASH_IP_MESSAGES_PER_SECOND": str(per_second if limit == "ip" else 100_000),
    }
    gateways = [await make_gateway(**env) for _ in range(3)]
    # One user on three gateways, or three users from one address (all tests run on loopback).
    users = ["alice"] * 3 if limit == "user" else ["alice", "bob", "carol"]
    clients = [
        await WSClient.authed(ws_url(gw), token(u)) for gw, u in zip(gateways, users, strict=True)
    ]
    seconds, each = 2.0, 40  # 3 x 40/s = 120/s offered, each connection far under its own 1000/s
    start = time.monotonic()
    sent = await asyncio.gather(*(paced(c, each, seconds) for c in clients))
    elapsed = time.monotonic() - start
    results = [await outcomes(c, ids) for c, ids in zip(clients, sent, strict=True)]
    served = sum(s for s, _ in results)
    limited = sum(n for _, n in results)
    offered = sum(len(ids) for ids in sent)
    assert limited > 0, results
    # The shared limit over the sending time, plus one window of slack for the sync interval
    # and the window edges; without the shared counters three gateways would serve it all.
    assert served <= per_second * (elapsed + 1) + per_second, (served, offered, results)
    assert served < offered * 0.75, (served, offered)
    assert all(s > 0 for s, _ in results), "every gateway served its share"
    # Another user from another address is not affected by alice's limit.
    if limit == "user":
        bob = await WSClient.authed(ws_url(gateways[0]), token("bob"))
        assert (await bob.request("unsubscribe", {"subscriptionId": "x"}))[
            "code"
        ] == ErrorCode.INVALID_MESSAGE
        await bob.close()
    for c in clients:
        await c.close()


async def test_a_client_that_keeps_flooding_a_shared_limit_is_disconnected(make_gateway):
    gw = await make_gateway(
        TEAMDASH_MESSAGES_PER_SECOND="100000", TEAMDASH_USER_MESSAGES_PER_SECOND="10"
    )
    client = await WSClient.authed(ws_url(gw), token("alice"))
    frame = '{"type":"unsubscribe","payload":{"subscriptionId":"x"}}'
    assert await flood(client, frame) == (1008, "RATE_LIMIT_EXCEEDED")


async def flood(client: WSClient, frame: str, timeout_s: float = 20.0) -> tuple[Any, Any]:
    """Send ``frame`` until the gateway closes the connection, reading what it sends
    meanwhile; the close (code, reason). A fixed count could be spread over two windows of
    a limit by a slow (loaded) gateway and never trip it."""
    reading = asyncio.create_task(closed(client, timeout=timeout_s))
    deadline = time.monotonic() + t(timeout_s)
    try:
        while not reading.done() and time.monotonic() < deadline:
            for _ in range(50):
                await client.send_raw(frame)
            await asyncio.sleep(0)
    except ConnectionClosed:
        pass
    return await reading


async def test_invalid_frames_count_against_the_limit_too(make_gateway):
    gw = await make_gateway(TEAMDASH_MESSAGES_PER_SECOND="5")
    client = await WSClient.authed(ws_url(gw), token())
    for _ in range(20):
        await client.send_raw("{not json")
    acks = [(await client.recv_type("ack"))["payload"] for _ in range(20)]
    codes = [a["code"] for a in acks]
    assert codes.count(ErrorCode.RATE_LIMIT_EXCEEDED) >= 10, codes
    await client.close()


async def test_requests_before_auth_are_rate_limited(make_gateway):
    gw = await make_gateway(TEAMDASH_MESSAGES_PER_SECOND="5")
    client = await WSClient.open(ws_url(gw))
    assert await flood(client, '{"type":"subscribe:metrics"}') == (1008, "RATE_LIMIT_EXCEEDED")


async def handshake(url: str, forwarded_for: str | None = None) -> int:
    """101 when the WebSocket opens, else the HTTP status of the refusal."""
    headers = [("X-Forwarded-For", forwarded_for)] if forwarded_for else []
    try:
        client = await WSClient.open(url, additional_headers=headers)
    except InvalidStatus as e:
        return e.response.status_code
    await client.close()
    return 101


async def test_new_connections_per_ip_are_limited_across_gateways(make_gateway):
    env = {"TEAMDASH_IP_CONNECTIONS_PER_MINUTE": "4"}
    gw1, gw2 = await make_gateway(**env), await make_gateway(**env)
    assert [await handshake(ws_url(gw)) for gw in (gw1, gw2, gw1, gw2)] == [101] * 4
    assert await handshake(ws_url(gw1)) == 429
    assert await handshake(ws_url(gw2)) == 429
    # X-Forwarded-For from an untrusted peer is ignored: spoofing it buys nothing.
    assert await handshake(ws_url(gw1), forwarded_for=f"203.0.113.{uuid.uuid4().int % 250}") == 429
    # The refusal is an HTTP answer, and health checks are not counted.
    status, _ = await asyncio.to_thread(http_get, f"http://127.0.0.1:{gw1.port}/healthz")
    assert status == 200


async def test_forwarded_for_is_believed_only_from_trusted_proxies(make_gateway):
    gw = await make_gateway(
        TEAMDASH_IP_CONNECTIONS_PER_MINUTE="2", TEAMDASH_TRUSTED_PROXIES="127.0.0.0/8, ::1"
    )
    url = ws_url(gw)
    # Through the trusted proxy (the test's loopback peer): each client address has its own
    # budget, and what a client writes into the header itself (left of the proxy's entry)
    # cannot move it to another budget.
    assert await handshake(url, "198.51.100.7") == 101
    assert await handshake(url, "6.6.6.6, 198.51.100.7") == 101
    assert await handshake(url, "1.2.3.4, 198.51.100.7") == 429
    assert await handshake(url, "198.51.100.8") == 101
    # A chain of trusted proxies is skipped from the right.
    assert await handshake(url, "198.51.100.9, 127.0.0.5") == 101
    assert await handshake(url, "198.51.100.9, 127.0.0.6, 127.0.0.7") == 101
    assert await handshake(url, "198.51.100.9") == 429


def test_client_ip_rules() -> None:
    trusted = trusted_proxies(Env({"TEAMDASH_TRUSTED_PROXIES": "10.0.0.0/8,192.168.1.1"}))
    assert client_ip("203.0.113.5", ["1.1.1.1"], trusted) == "203.0.113.5"  # untrusted peer
    assert client_ip("10.1.2.3", ["1.1.1.1"], trusted) == "1.1.1.1"
    assert client_ip("10.1.2.3", ["9.9.9.9, 1.1.1.1"], trusted) == "1.1.1.1"
    assert client_ip("10.1.2.3", ["1.1.1.1, 192.168.1.1", "10.9.9.9"], trusted) == "1.1.1.1"
    assert client_ip("10.1.2.3", [], trusted) == "10.1.2.3"
    assert client_ip("10.1.2.3", ["10.4.4.4"], trusted) == "10.4.4.4"  # all trusted: left-most
    assert client_ip("10.1.2.3", ["junk, 10.4.4.4"], trusted) == "10.4.4.4"
    assert client_ip("10.1.2.3", ["[2001:db8::1]:443"], trusted) == "2001:db8::1"
    assert client_ip("::ffff:10.1.2.3", ["1.1.1.1:8080"], trusted) == "1.1.1.1"
    assert client_ip("127.0.0.1", ["1.1.1.1"], ()) == "127.0.0.1"  # nothing trusted by default
    assert limit_key("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
    assert limit_key("198.51.100.7") == "198.51.100.7"


async def test_limits_fail_open_when_redis_is_down(make_gateway):
    gw = await make_gateway(TEAMDASH_IP_CONNECTIONS_PER_MINUTE="1000")
    client = await WSClient.authed(ws_url(gw), token())
    real = gw.limits.redis
    gw.limits.redis = type(real).from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    try:
        ack = await client.request("unsubscribe", {"subscriptionId": "x"})
        assert ack["code"] == ErrorCode.INVALID_MESSAGE
        await gw.limits.sync()  # fails: Redis is unreachable (the background one does too)
        ack = await client.request("unsubscribe", {"subscriptionId": "y"})
        assert ack["code"] == ErrorCode.INVALID_MESSAGE
        assert await gw.limits.admit_connection("198.51.100.1") is True
    finally:
        await gw.limits.redis.aclose()
        gw.limits.redis = real
    await client.close()


def test_window_limiter_core() -> None:
    from gateway.limits import SyncItem, WindowLimiter

    lim = WindowLimiter(10, 1.0)
    t0 = 1000.0
    for i in range(10):
        entry = lim.reserve("a", t0 + i * 0.01)
        assert entry is not None
        WindowLimiter.commit(entry, t0 + i * 0.01)
    assert lim.reserve("a", t0 + 0.2) is None  # full
    assert lim.reserve("b", t0 + 0.2) is not None  # per key
    # The sync hands out the local count; another process's 5 come back in the total.
    items = lim.pending(t0 + 0.3)
    assert items == [SyncItem("a", 1000, 10)]
    lim.apply(items[0], 15, None)
    assert lim.estimate("a", t0 + 0.3) == 15
    # Next window: the previous one still weighs (sliding), fading over the second.
    assert lim.reserve("a", t0 + 1.1) is None  # 15 * 0.9 = 13.5 > 10
    assert lim.reserve("a", t0 + 1.95) is not None  # 15 * 0.05 = 0.75
    # A failed sync puts the events back to be sent again.
    e = lim.reserve("c", t0 + 2.0)
    assert e is not None
    WindowLimiter.commit(e, t0 + 2.0)
    items = [i for i in lim.pending(t0 + 2.05) if i.key == "c"]
    lim.failed(items)
    assert [i for i in lim.pending(t0 + 2.1) if i.key == "c"] == [SyncItem("c", 1002, 1)]
    # Keys unused for two windows are forgotten.
    lim.pending(t0 + 10)
    assert len(lim) == 0
