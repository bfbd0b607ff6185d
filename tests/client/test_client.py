"""The SDK against a real gateway and Redis: authentication, typed requests and errors,
subscriptions routed by topic and filters, the client-wide event stream."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from shared.client import ClientError, ConnectionLost, DashboardClient, StateChange
from shared.errors import ErrorCode, TeamdashError
from shared.keys import METRICS_TOPIC
from shared.protocol import (
    ConnectionStatusMessage,
    ConnectionStatusPayload,
    Metadata,
    MetricsUpdateMessage,
    ack,
    encode,
)
from tests.client.helpers import live, numbers, publish_alerts, take
from tests.gateway.conftest import token, ws_url
from tests.gateway.test_fanout import metrics
from tests.helpers import free_port, t, wait_for


async def test_connect_authenticates_and_keeps_the_status(gateway) -> None:
    changes: list[StateChange] = []
    async with DashboardClient(ws_url(gateway), token("alice"), on_state=changes.append) as c:
        assert c.connected
        assert c.status is not None and c.status.userId == "alice" and not c.status.resumed
        assert c.session_id == c.status.sessionId
        assert c.gateway_id == gateway.id
    assert not c.connected
    assert [ch.state for ch in changes] == ["connected", "closed"]


async def test_a_token_provider_is_called_for_the_connection(gateway) -> None:
    calls = 0

    async def provider() -> str:
        nonlocal calls
        calls += 1
        return token("bob")

    async with DashboardClient(ws_url(gateway), provider) as c:
        assert c.user_id == "bob"
    assert calls == 1


@pytest.mark.parametrize(
    "bad_token, code",
    [
        (token("alice")[:-6] + "AAAAAA", ErrorCode.AUTH_FAILED),
        ("not-a-jwt", ErrorCode.AUTH_FAILED),
        (token("alice", now=time.time() - 7200), ErrorCode.TOKEN_EXPIRED),
    ],
)
async def test_auth_failure_raises_with_the_spec_code(
    gateway, bad_token: str, code: ErrorCode
) -> None:
    client = DashboardClient(ws_url(gateway), bad_token)
    with pytest.raises(ClientError) as err:
        await client.connect()
    assert isinstance(err.value, TeamdashError)
    assert err.value.code == code
    assert int(err.value.code) in (1001, 1002)
    assert not client.connected


async def test_an_unreachable_gateway_is_connection_lost() -> None:
    client = DashboardClient(f"ws://127.0.0.1:{free_port()}/ws", "x", connect_timeout=t(5))
    with pytest.raises(ConnectionLost) as err:
        await client.connect()
    assert err.value.code == ErrorCode.SERVICE_UNAVAILABLE


async def test_logs_subscription_yields_typed_alerts_in_order(gateway, bus) -> None:
    async with DashboardClient(ws_url(gateway), token()) as c:
        sub = await c.subscribe_logs()
        assert sub.topic == "logs" and sub.id
        await live(gateway, sub)
        await publish_alerts(bus, range(20))
        got = await take(sub, 20)
        assert numbers(got) == list(range(20))
        offsets = [e.metadata.offset for e in got if e.metadata is not None]
        assert offsets == sorted(offsets) and len(set(offsets)) == 20


async def test_subscriptions_on_one_topic_each_get_what_their_filters_accept(gateway, bus) -> None:
    async with DashboardClient(ws_url(gateway), token()) as c:
        everything = await c.subscribe_logs()
        severe = await c.subscribe_logs(["error", "critical"])
        security = await c.subscribe_logs(["security"])
        await live(gateway, everything, severe, security)
        async with c.events() as stream:
            await publish_alerts(bus, [0], "info", "resource")
            await publish_alerts(bus, [1], "critical", "resource")
            await publish_alerts(bus, [2], "warning", "security")
            await publish_alerts(bus, [3], "error", "security")
            assert numbers(await take(everything, 4)) == [0, 1, 2, 3]
            assert numbers(await take(severe, 2)) == [1, 3]
            assert numbers(await take(security, 2)) == [2, 3]
            # the client-wide stream sees each event once
            assert numbers([await stream.next(t(5)) for _ in range(4)]) == [0, 1, 2, 3]
            # The barrier: a marker every subscription takes comes next, nothing before it.
            await publish_alerts(bus, [9], "critical", "security")
            assert numbers([await stream.next(t(5))]) == [9]
        assert numbers(await take(severe, 1)) == [9]


async def test_metrics_subscriptions_with_sections_and_no_duplicates(gateway, bus) -> None:
    async with DashboardClient(ws_url(gateway), token()) as c:
        full = await c.subscribe_metrics()
        system_only = await c.subscribe_metrics(["system"])
        assert full.topic == system_only.topic == "metrics"
        await live(gateway, full, system_only)
        async with c.events() as stream:
            for usage in (1.0, 2.0, 3.0):
                await bus.publish(METRICS_TOPIC, metrics(usage), ("system", "agents"))
            got_full = await take(full, 3)
            got_system = await take(system_only, 3)
            assert all(isinstance(m, MetricsUpdateMessage) for m in got_full + got_system)
            assert [m.payload.system.cpu.usage for m in got_full] == [1.0, 2.0, 3.0]  # type: ignore[union-attr]
            assert all(m.payload.agents for m in got_full)  # type: ignore[union-attr]
            assert all(m.payload.agents is None for m in got_system)  # type: ignore[union-attr]
            # The server sends each update twice (one variant per filter): yielded once —
            # the marker published after them comes next.
            assert len([await stream.next(t(5)) for _ in range(3)]) == 3
            await bus.publish(METRICS_TOPIC, metrics(4.0), ("system", "agents"))
            marker = await stream.next(t(5))
            assert isinstance(marker, MetricsUpdateMessage)
            assert marker.payload.system.cpu.usage == 4.0  # type: ignore[union-attr]
            assert [m.payload.system.cpu.usage for m in await take(full, 1)] == [4.0]  # type: ignore[union-attr]


async def test_unsubscribe_ends_the_iterator(gateway, bus) -> None:
    async with DashboardClient(ws_url(gateway), token()) as c:
        sub = await c.subscribe_logs()
        await live(gateway, sub)
        await publish_alerts(bus, [0])
        assert numbers(await take(sub, 1)) == [0]
        await sub.unsubscribe()
        assert not sub.active and c.subscriptions == []
        await publish_alerts(bus, [1])
        assert [e async for e in sub] == []
        with pytest.raises(ClientError) as err:
            await c.unsubscribe(sub.id)
        assert err.value.code == ErrorCode.INVALID_MESSAGE


async def test_subscription_as_context_manager(gateway, bus) -> None:
    async with DashboardClient(ws_url(gateway), token()) as c:
        async with await c.subscribe_logs() as sub:
            await live(gateway, sub)
            await publish_alerts(bus, [5])
            assert numbers(await take(sub, 1)) == [5]
        assert not sub.active
        assert not any(s.topic == "logs" for s in c.subscriptions)


async def test_typed_errors_from_acks(gateway) -> None:
    async with DashboardClient(ws_url(gateway), token("alice", ("operator",))) as c:
        with pytest.raises(ClientError) as err:
            await c.send_command("no-such-agent", "hello")
        assert err.value.code == ErrorCode.AGENT_NOT_FOUND == 2001
        for call in (c.pause("nope"), c.resume("nope"), c.terminate("nope", force=True)):
            with pytest.raises(ClientError) as err:
                await call
            assert err.value.code == ErrorCode.AGENT_NOT_FOUND
        with pytest.raises(ClientError) as err:
            await c.create_agent("a1", "echo", "ws1")  # no runner is running
        assert err.value.code == ErrorCode.SERVICE_UNAVAILABLE == 3002
        with pytest.raises(ClientError) as err:
            await c.subscribe_logs(["bogus"])
        assert err.value.code == ErrorCode.INVALID_MESSAGE
        with pytest.raises(ClientError) as err:
            await c.subscribe_agent("no-such-agent")
        assert err.value.code == ErrorCode.AGENT_NOT_FOUND
        # the connection is fine after errors
        assert (await c.subscribe_logs()).topic == "logs"


async def test_a_viewer_may_not_create_agents(gateway) -> None:
    async with DashboardClient(ws_url(gateway), token("vera", ("viewer",))) as c:
        with pytest.raises(ClientError) as err:
            await c.create_agent("a1", "echo", "ws1")
        assert err.value.code == ErrorCode.INSUFFICIENT_PERMISSIONS


async def test_bad_arguments_fail_locally_before_anything_is_sent(gateway) -> None:
    async with DashboardClient(ws_url(gateway), token()) as c:
        with pytest.raises(ClientError) as err:
            await c.create_agent("a1", "bad model name!", "ws1")
        assert err.value.code == ErrorCode.INVALID_MESSAGE and "model" in err.value.message
        with pytest.raises(ClientError) as err:
            await c.create_agent("a1", "echo", "ws1", memory_mb=256)
        assert err.value.code == ErrorCode.INVALID_MESSAGE
        with pytest.raises(ClientError) as err:
            await c.send_command("a", "x" * (1024 * 1024))
        assert err.value.code == ErrorCode.INVALID_MESSAGE


async def test_refresh_token_on_the_live_connection(gateway, bus) -> None:
    async with DashboardClient(ws_url(gateway), token("alice")) as c:
        sub = await c.subscribe_logs()
        await live(gateway, sub)
        result = await c.refresh_token(token("alice", ttl_s=1800))
        assert result["expiresAt"] > time.time() * 1000
        with pytest.raises(ClientError) as err:
            await c.refresh_token(token("mallory"))
        assert err.value.code == ErrorCode.AUTH_FAILED
        await publish_alerts(bus, [1])
        assert numbers(await take(sub, 1)) == [1]  # same connection, same session


async def test_requests_after_close_fail_clearly(gateway) -> None:
    c = DashboardClient(ws_url(gateway), token())
    with pytest.raises(ConnectionLost):
        await c.subscribe_logs()  # never connected
    await c.connect()
    sub = await c.subscribe_logs()
    await c.close()
    with pytest.raises(ConnectionLost) as err:
        await c.subscribe_metrics()
    assert err.value.code == ErrorCode.SERVICE_UNAVAILABLE
    with pytest.raises(StopAsyncIteration):
        await sub.next(t(1))


async def test_a_slow_consumer_loses_the_oldest_events_counted(gateway, bus) -> None:
    async with DashboardClient(ws_url(gateway), token(), queue_size=5) as c:
        sub = await c.subscribe_logs()
        await live(gateway, sub)
        async with c.events() as stream:
            await publish_alerts(bus, range(12))
            # wait until everything has arrived (the stream is bounded too)
            await wait_for(lambda: stream.dropped + len(stream._queue) == 12, what="12 events")
            assert numbers(await take(sub, 5)) == list(range(7, 12))
            assert sub.dropped == 7


async def test_a_request_refused_with_token_expired_is_retried_after_a_refresh() -> None:
    """The documented contract (refresh and retry), against a scripted server: the real
    gateway does not refuse requests on a live connection whose token expired yet."""
    seen: list[dict[str, Any]] = []

    async def scripted(ws: ServerConnection) -> None:
        async for raw in ws:
            msg = json.loads(raw)
            seen.append(msg)
            mid = msg["id"]
            if msg["type"] == "auth" and len(seen) == 1:
                status = ConnectionStatusMessage(
                    type="connection:status",
                    payload=ConnectionStatusPayload(
                        status="authenticated",
                        sessionId="s",
                        userId="alice",
                        heartbeatIntervalMs=30_000,
                        gatewayId="scripted",
                    ),
                    metadata=Metadata(correlationId=mid),
                )
                await ws.send(encode(status).decode())
            elif msg["type"] == "auth":
                await ws.send(encode(ack(mid, result={"expiresAt": 1})).decode())
            elif len([m for m in seen if m["type"] == "subscribe:logs"]) == 1:
                expired = TeamdashError(ErrorCode.TOKEN_EXPIRED, "token expired")
                await ws.send(encode(ack(mid, error=expired)).decode())
            else:
                result = {"subscriptionId": "sub-1", "topic": "logs"}
                await ws.send(encode(ack(mid, result=result)).decode())

    tokens = iter(["t1", "t2"])
    async with serve(scripted, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with DashboardClient(f"ws://127.0.0.1:{port}/ws", lambda: next(tokens)) as c:
            sub = await c.subscribe_logs()
            assert sub.id == "sub-1"
    assert [m["type"] for m in seen] == ["auth", "subscribe:logs", "auth", "subscribe:logs"]
    assert seen[2]["payload"]["token"] == "t2"
    assert seen[3]["id"] != seen[1]["id"]
