"""The connection lifecycle through a real gateway and real WebSocket clients: auth,
validation and acks, size limit, heartbeat, rate limit, health endpoints."""

from __future__ import annotations

import asyncio
import json
import time

import jwt
import pytest
from websockets.exceptions import ConnectionClosed

from shared.errors import ErrorCode
from tests.conftest import JWT_SECRET
from tests.gateway.conftest import token, ws_url
from tests.helpers import http_get, t
from tests.wsclient import WSClient


async def expect_closed(client: WSClient, timeout: float = 5.0) -> tuple[int | None, str | None]:
    """Read until the server closes; returns (code, reason)."""
    try:
        while True:
            await asyncio.wait_for(client.ws.recv(), t(timeout))
    except ConnectionClosed:
        pass
    assert client.ws.close_code is not None
    return client.ws.close_code, client.ws.close_reason


async def test_auth_with_payload_shape_gets_connection_status(gateway):
    client = await WSClient.open(ws_url(gateway))
    mid = await client.send("auth", {"token": token("alice"), "clientId": "c1"})
    msg = await client.recv()
    assert msg["type"] == "connection:status"
    assert msg["metadata"]["correlationId"] == mid
    p = msg["payload"]
    assert p["status"] == "authenticated"
    assert p["userId"] == "alice"
    assert p["resumed"] is False and p["replayed"] == 0 and p["missed"] == 0
    assert p["heartbeatIntervalMs"] == 30000
    assert p["gatewayId"] == gateway.id
    assert p["sessionId"]
    assert {"id", "type", "timestamp", "payload"} <= msg.keys()
    await client.close()


async def test_auth_with_flat_shape(gateway):
    client = await WSClient.open(ws_url(gateway))
    await client.send_raw(json.dumps({"type": "auth", "token": token("bob"), "clientId": "c2"}))
    msg = await client.recv()
    assert msg["type"] == "connection:status"
    assert msg["payload"]["userId"] == "bob"
    await client.close()


async def test_session_is_stored_in_redis(gateway, redis, keys):
    client = await WSClient.authed(ws_url(gateway), token("alice"))
    session = await redis.hgetall(keys.session(client.status["sessionId"]))
    assert session[b"userId"] == b"alice"
    assert session[b"gatewayId"] == gateway.id.encode()
    assert await redis.ttl(keys.session(client.status["sessionId"])) > 0
    await client.close()


@pytest.mark.parametrize(
    ("make_token", "code"),
    [
        (
            lambda: token("alice").replace(token("alice").split(".")[2], "A" * 43),
            ErrorCode.AUTH_FAILED,
        ),
        (
            lambda: jwt.encode({"sub": "a", "exp": time.time() + 60}, "wrong-secret-" * 3, "HS256"),
            ErrorCode.AUTH_FAILED,
        ),
        (lambda: token("alice", now=time.time() - 7200), ErrorCode.TOKEN_EXPIRED),
        (lambda: jwt.encode({"sub": "a"}, JWT_SECRET, "HS256"), ErrorCode.AUTH_FAILED),
        (lambda: "not-a-jwt", ErrorCode.AUTH_FAILED),
    ],
    ids=["bad-signature", "wrong-secret", "expired", "no-exp", "garbage"],
)
async def test_bad_tokens_are_refused_and_closed(gateway, make_token, code):
    client = await WSClient.open(ws_url(gateway))
    mid = await client.send("auth", {"token": make_token(), "clientId": "c"})
    ack = await client.ack_for(mid)
    assert ack["success"] is False
    assert ack["code"] == code
    close_code, reason = await expect_closed(client)
    assert close_code == 1008
    assert reason == code.name


async def test_no_auth_within_timeout_closes(make_gateway):
    gw = await make_gateway(TEAMDASH_AUTH_TIMEOUT_S="0.3")
    client = await WSClient.open(ws_url(gw))
    start = time.monotonic()
    code, reason = await expect_closed(client)
    assert code == 1008
    assert "no auth" in reason
    assert time.monotonic() - start < t(3)


async def test_the_auth_deadline_ends_with_the_auth(make_gateway):
    """The deadline is a loop timer: once authenticated, its passing changes nothing."""
    gw = await make_gateway(TEAMDASH_AUTH_TIMEOUT_S="0.3")
    client = await WSClient.open(ws_url(gw))
    await client.send("auth", {"token": token(), "clientId": "c"})
    await client.recv_type("connection:status")
    await asyncio.sleep(0.6)  # the deadline would have passed (timer, not an event)
    mid = await client.send("ping", {})
    pong = await client.recv_type("pong")  # the barrier: still open, still served
    assert pong["metadata"]["correlationId"] == mid
    await client.close()


async def test_requests_before_auth_are_refused_but_auth_still_works(gateway):
    client = await WSClient.open(ws_url(gateway))
    ack = await client.request("subscribe:metrics", {})
    assert ack["success"] is False and ack["code"] == ErrorCode.AUTH_FAILED
    await client.send("auth", {"token": token(), "clientId": "c"})
    assert (await client.recv_type("connection:status"))["payload"]["userId"] == "alice"
    await client.close()


async def test_malformed_json_is_answered_and_connection_stays_open(gateway):
    client = await WSClient.authed(ws_url(gateway), token())
    await client.send_raw("{this is not json")
    ack = (await client.recv_type("ack"))["payload"]
    assert ack["success"] is False and ack["code"] == ErrorCode.INVALID_MESSAGE
    assert "malformed JSON" in ack["error"]
    # still usable
    ack = await client.request("subscribe:metrics", {})
    assert ack["success"] is True
    await client.close()


async def test_wrong_fields_are_invalid_message(gateway):
    client = await WSClient.authed(ws_url(gateway), token())
    ack = await client.request("agent:command", {"agentId": "x"})
    assert ack["success"] is False and ack["code"] == ErrorCode.INVALID_MESSAGE
    assert "command" in ack["error"]
    ack = await client.request("subscribe:metrics", {"unknownField": 1})
    assert ack["code"] == ErrorCode.INVALID_MESSAGE
    await client.close()


async def test_unknown_type_is_unsupported(gateway):
    client = await WSClient.authed(ws_url(gateway), token())
    ack = await client.request("agent:teleport", {})
    assert ack["success"] is False
    assert ack["code"] == ErrorCode.UNSUPPORTED_TYPE
    assert "agent:teleport" in ack["error"]
    await client.close()


async def test_message_without_id_gets_an_ack_with_an_assigned_id(gateway):
    client = await WSClient.authed(ws_url(gateway), token())
    await client.send_raw(json.dumps({"type": "subscribe:metrics", "payload": {}}))
    ack = (await client.recv_type("ack"))["payload"]
    assert ack["success"] is True and len(ack["messageId"]) == 36
    await client.close()


async def test_oversize_message_closes_with_1009(gateway):
    client = await WSClient.authed(ws_url(gateway), token())
    await client.send_raw("x" * (1024 * 1024 + 1))
    code, _ = await expect_closed(client)
    assert code == 1009


async def test_message_just_under_the_limit_is_answered(gateway):
    client = await WSClient.authed(ws_url(gateway), token())
    big = json.dumps(
        {"type": "agent:command", "payload": {"agentId": "a", "command": "y" * (1024 * 1024 - 100)}}
    )
    assert len(big) <= 1024 * 1024
    await client.send_raw(big)
    ack = (await client.recv_type("ack"))["payload"]
    assert ack["code"] == ErrorCode.INVALID_MESSAGE  # command over its own length cap
    await client.close()


async def test_client_ping_gets_pong(gateway):
    client = await WSClient.authed(ws_url(gateway), token())
    mid = await client.send("ping", {"timestamp": 123})
    pong = await client.recv_type("pong")
    assert pong["metadata"]["correlationId"] == mid
    assert isinstance(pong["payload"]["timestamp"], int)
    await client.close()


async def test_server_pings_and_drops_a_silent_client(make_gateway):
    gw = await make_gateway(TEAMDASH_HEARTBEAT_INTERVAL_S="0.2")
    client = await WSClient.authed(ws_url(gw), token())
    ping = await client.recv_type("ping")
    assert isinstance(ping["payload"]["timestamp"], int)
    code, reason = await expect_closed(client)
    assert code == 1001 and "heartbeat" in reason


async def test_a_client_answering_pings_stays_connected(make_gateway):
    gw = await make_gateway(TEAMDASH_HEARTBEAT_INTERVAL_S="0.2")
    client = await WSClient.authed(ws_url(gw), token())
    deadline = time.monotonic() + 1.2
    pings = 0
    while time.monotonic() < deadline:
        await client.recv_type("ping")
        pings += 1
        await client.send("pong", {"timestamp": int(time.time() * 1000)})
    assert pings >= 3
    ack = await client.request("subscribe:metrics", {})
    assert ack["success"]
    await client.close()


async def test_message_rate_limit_per_connection(make_gateway):
    gw = await make_gateway(TEAMDASH_MESSAGES_PER_SECOND="5")
    client = await WSClient.authed(ws_url(gw), token())
    ids = [await client.send("subscribe:metrics", {}) for _ in range(12)]
    acks = [await client.ack_for(i) for i in ids]
    limited = [a for a in acks if not a["success"]]
    assert limited and all(a["code"] == ErrorCode.RATE_LIMIT_EXCEEDED for a in limited)
    assert sum(a["success"] for a in acks) <= 6
    await client.close()


async def test_subscription_limit(make_gateway):
    gw = await make_gateway(TEAMDASH_MAX_SUBSCRIPTIONS="3")
    client = await WSClient.authed(ws_url(gw), token())
    for _ in range(3):
        await client.subscribe("metrics")
    ack = await client.request("subscribe:logs", {})
    assert ack["code"] == ErrorCode.RATE_LIMIT_EXCEEDED
    await client.close()


async def test_unknown_filter_and_unknown_unsubscribe(gateway):
    client = await WSClient.authed(ws_url(gateway), token())
    ack = await client.request("subscribe:logs", {"filters": ["loud"]})
    assert ack["code"] == ErrorCode.INVALID_MESSAGE and "loud" in ack["error"]
    ack = await client.request("unsubscribe", {"subscriptionId": "nope"})
    assert ack["code"] == ErrorCode.INVALID_MESSAGE
    await client.close()


async def test_viewer_cannot_create_agents(gateway):
    client = await WSClient.authed(ws_url(gateway), token("vera", roles=("viewer",)))
    ack = await client.request("agent:create", {"name": "a", "model": "echo", "workspace": "w"})
    assert ack["code"] == ErrorCode.INSUFFICIENT_PERMISSIONS
    await client.close()


async def test_create_without_runner_is_service_unavailable(gateway):
    client = await WSClient.authed(ws_url(gateway), token())
    ack = await client.request("agent:create", {"name": "a", "model": "echo", "workspace": "w"})
    assert ack["code"] == ErrorCode.SERVICE_UNAVAILABLE
    await client.close()


async def test_command_to_unknown_agent_is_not_found(gateway):
    client = await WSClient.authed(ws_url(gateway), token())
    ack = await client.request("agent:command", {"agentId": "ghost", "command": "hi"})
    assert ack["code"] == ErrorCode.AGENT_NOT_FOUND
    ack = await client.request("subscribe:agent", {"agentId": "ghost"})
    assert ack["code"] == ErrorCode.AGENT_NOT_FOUND
    await client.close()


async def test_health_endpoints_and_unknown_paths(gateway):
    base = f"http://127.0.0.1:{gateway.port}"
    assert await asyncio.to_thread(http_get, base + "/healthz") == (200, "ok\n")
    status, body = await asyncio.to_thread(http_get, base + "/readyz")
    assert status == 200, body
    status, body = await asyncio.to_thread(http_get, base + "/nope")
    assert status == 404 and "/ws" in body
