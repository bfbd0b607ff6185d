"""Reconnection: backoff with jitter (through the sleep/random seam, no real waiting), exact
resume with positions across a closed or killed gateway, pending requests on a drop, a
session that expired, refusals that stop the client, heartbeats and dead connections."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal

import pytest
from websockets.asyncio.server import ServerConnection, serve

from shared.client import ClientError, ConnectionLost, DashboardClient, StateChange
from shared.errors import ErrorCode
from shared.protocol import (
    ConnectionStatusMessage,
    ConnectionStatusPayload,
    Metadata,
    encode,
)
from tests.client.helpers import live, numbers, publish_alerts, take, warm_up
from tests.gateway.conftest import token, ws_url
from tests.helpers import free_port, port_open, t, wait_for

FAST = (0.05, 0.1, 0.2)


async def test_reconnect_resumes_exactly_across_a_gateway_restart(make_gateway, bus) -> None:
    first = await make_gateway()
    port = first.port
    changes: list[StateChange] = []
    client = DashboardClient(ws_url(first), token(), backoff=FAST, on_state=changes.append)
    await client.connect()
    try:
        session_id = client.session_id
        sub = await client.subscribe_logs()
        warnings = await client.subscribe_logs(["warning"])
        await live(first, sub, warnings)
        await publish_alerts(bus, range(5))
        assert numbers(await take(sub, 5)) == [0, 1, 2, 3, 4]

        await first.close()  # 1001 going away
        await wait_for(lambda: not client.connected, what="the client to see the drop")
        await publish_alerts(bus, range(5, 10))  # published during the outage
        await publish_alerts(bus, [10], level="warning")
        second = await make_gateway(TEAMDASH_GATEWAY_PORT=str(port))

        got = await take(sub, 6, timeout=15)
        assert numbers(got) == [5, 6, 7, 8, 9, 10]
        assert numbers(await take(warnings, 1)) == [10]
        assert client.reconnects == 1
        status = client.status
        assert status is not None and status.resumed and status.recovered
        assert status.sessionId == session_id and status.gatewayId == second.id
        assert status.replayed == 6  # exactly what was missed: the positions were used
        # live again, same Subscription objects and ids
        await publish_alerts(bus, [11, 12])
        assert numbers(await take(sub, 2)) == [11, 12]
        await publish_alerts(bus, [13])  # the barrier: it comes next, nothing before it
        assert numbers(await take(sub, 1)) == [13]
        assert {s.id for s in client.subscriptions} == {sub.id, warnings.id}
        states = [c.state for c in changes]
        assert states[:2] == ["connected", "disconnected"] and states[-1] == "reconnected"
        assert changes[1].code == 1001
    finally:
        await client.close()


async def test_reconnect_after_the_gateway_process_is_killed(
    service_env, start_service, bus
) -> None:
    port = free_port()
    env = {**service_env, "TEAMDASH_GATEWAY_PORT": str(port)}
    doomed = start_service("gateway", env)
    await wait_for(lambda: port_open(port), timeout=15, what="gateway port")
    async with DashboardClient(f"ws://127.0.0.1:{port}/ws", token(), backoff=FAST) as client:
        sub = await client.subscribe_logs()
        await warm_up(bus, sub)  # a gateway process: no access to its routes
        await publish_alerts(bus, range(10))
        assert numbers(await take(sub, 10)) == list(range(10))
        doomed.kill()  # SIGKILL: no close frame, no session write on close
        await wait_for(lambda: not client.connected, what="the client to see the drop")
        await publish_alerts(bus, range(10, 20))
        start_service("gateway", env)
        got = await take(sub, 10, timeout=20)
        assert numbers(got) == list(range(10, 20))  # no gap, no duplicate
        assert client.status is not None and client.status.resumed
        assert client.status.replayed == 10
        await publish_alerts(bus, [20])
        assert numbers(await take(sub, 1)) == [20]


async def test_backoff_delays_follow_the_spec_with_jitter(make_gateway) -> None:
    first = await make_gateway()
    port = first.port
    delays: list[float] = []
    enough = asyncio.Event()

    async def fake_sleep(delay: float) -> None:
        delays.append(delay)
        if len(delays) >= 8:
            enough.set()
        await asyncio.sleep(0.005)  # don't wait the delay, but let the loop run

    rng = random.Random(42)
    changes: list[StateChange] = []
    client = DashboardClient(
        ws_url(first), token(), sleep=fake_sleep, random=rng.random, on_state=changes.append
    )
    await client.connect()
    try:
        await first.close()
        await asyncio.wait_for(enough.wait(), t(10))
        second = await make_gateway(TEAMDASH_GATEWAY_PORT=str(port))
        await wait_for(lambda: client.connected, what="the reconnection")
        expected = [1, 2, 4, 8, 16, 30] + [30] * (len(delays) - 6)
        for delay, base in zip(delays, expected, strict=True):
            assert base * 0.8 <= delay <= base * 1.2, (delays, expected)
        assert len({round(d / b, 6) for d, b in zip(delays, expected, strict=True)}) > 1  # jittered
        attempts = [c.attempt for c in changes if c.state == "reconnecting"]
        assert attempts == list(range(1, len(delays) + 1))
        assert [c.delay for c in changes if c.state == "reconnecting"] == delays

        # After a successful reconnect the backoff starts again at 1 s.
        before = len(delays)
        await second.close()
        await wait_for(lambda: len(delays) > before, what="the next reconnection attempt")
        assert 0.8 <= delays[before] <= 1.2
    finally:
        await client.close()


async def test_max_attempts_gives_up_and_fails_subscriptions(make_gateway) -> None:
    gw = await make_gateway()

    async def no_sleep(delay: float) -> None:
        await asyncio.sleep(0)

    client = DashboardClient(ws_url(gw), token(), sleep=no_sleep, max_attempts=3)
    await client.connect()
    sub = await client.subscribe_logs()
    await gw.close()
    with pytest.raises(ConnectionLost):
        await sub.next(t(10))
    with pytest.raises(ConnectionLost):
        await client.subscribe_metrics()
    await client.close()


async def test_pending_request_fails_on_a_drop_and_new_ones_wait_for_the_reconnection(
    make_gateway, runner
) -> None:
    # A runner that looks alive (fresh heartbeat) but does not answer: agent:create waits.
    os.kill(runner.pid, signal.SIGSTOP)
    try:
        first = await make_gateway()
        port = first.port
        changes: list[StateChange] = []
        client = DashboardClient(ws_url(first), token(), backoff=FAST, on_state=changes.append)
        await client.connect()
        try:
            create = asyncio.create_task(client.create_agent("a1", "echo", "ws1"))
            await wait_for(lambda: first.runners.pending_count == 1, what="a pending create")
            await first.close()
            with pytest.raises(ConnectionLost) as err:
                await create
            assert err.value.code == ErrorCode.SERVICE_UNAVAILABLE
            assert "may or may not" in err.value.message
            # Made while disconnected: sent once the client is back.
            subscribe = asyncio.create_task(client.subscribe_logs())
            attempts = len(changes)

            def tried_twice_since() -> bool:
                return sum(c.state == "reconnecting" for c in changes[attempts:]) >= 2

            # The barrier: two more reconnection attempts (each one fails to connect: an
            # await), so the subscribe has run and would have been refused by now.
            await wait_for(tried_twice_since, what="two more reconnection attempts")
            assert not subscribe.done()
            await make_gateway(TEAMDASH_GATEWAY_PORT=str(port))
            sub = await asyncio.wait_for(subscribe, t(10))
            assert sub.topic == "logs"
        finally:
            await client.close()
    finally:
        os.kill(runner.pid, signal.SIGCONT)


async def test_an_expired_session_is_recreated_and_subscriptions_restored(
    make_gateway, bus
) -> None:
    first = await make_gateway(TEAMDASH_SESSION_TTL_S="1")
    port = first.port
    client = DashboardClient(ws_url(first), token(), backoff=FAST)
    await client.connect()
    try:
        old_session = client.session_id
        sub = await client.subscribe_logs(["warning"])
        old_id = sub.id
        await live(first, sub)
        await publish_alerts(bus, [1], level="warning")
        assert numbers(await take(sub, 1)) == [1]
        await first.close()
        # Published while no gateway runs: the new session's subscription starts after the
        # last event received (1), so these are replayed, not lost.
        await publish_alerts(bus, [2, 3], level="warning")
        await asyncio.sleep(1.5)  # the session expires meanwhile
        second = await make_gateway(TEAMDASH_GATEWAY_PORT=str(port), TEAMDASH_SESSION_TTL_S="1")
        await wait_for(lambda: client.connected and sub.id != old_id, what="re-subscription")
        await live(second, sub)
        assert client.status is not None and not client.status.resumed
        assert client.session_id != old_session
        await publish_alerts(bus, [4], level="info")
        await publish_alerts(bus, [5], level="warning")
        assert numbers(await take(sub, 3)) == [2, 3, 5]
        assert sub.missed == 0
    finally:
        await client.close()


async def test_an_auth_refusal_on_reconnect_stops_the_client(make_gateway, bus) -> None:
    first = await make_gateway()
    port = first.port
    tokens = iter([token("alice"), "not-a-valid-token"])
    changes: list[StateChange] = []
    client = DashboardClient(
        ws_url(first), lambda: next(tokens), backoff=FAST, on_state=changes.append
    )
    await client.connect()
    sub = await client.subscribe_logs()
    await first.close()
    await make_gateway(TEAMDASH_GATEWAY_PORT=str(port))
    with pytest.raises(ClientError) as err:
        await sub.next(t(10))
    assert err.value.code == ErrorCode.AUTH_FAILED
    assert changes[-1].state == "failed"
    with pytest.raises(ClientError) as err:
        await client.subscribe_metrics()
    assert err.value.code == ErrorCode.AUTH_FAILED
    await client.close()


async def test_the_client_answers_server_pings(make_gateway) -> None:
    gw = await make_gateway(TEAMDASH_HEARTBEAT_INTERVAL_S="0.2")
    async with DashboardClient(ws_url(gw), token(), reconnect=False) as client:
        assert client.status is not None and client.status.heartbeatIntervalMs == 200
        # The server closes a connection it hears nothing from for two intervals.
        await asyncio.sleep(1.2)
        assert client.connected and client.reconnects == 0
        assert (await client.subscribe_logs()).topic == "logs"


async def test_a_silent_connection_is_detected_and_replaced() -> None:
    """A server that stops sending anything (no pings) while TCP stays up."""
    connections = 0

    async def silent(ws: ServerConnection) -> None:
        nonlocal connections
        connections += 1
        auth = json.loads(await ws.recv())
        status = ConnectionStatusMessage(
            type="connection:status",
            payload=ConnectionStatusPayload(
                status="authenticated",
                sessionId="s-1",
                userId="alice",
                heartbeatIntervalMs=100,
                gatewayId="silent",
                resumed=auth["payload"].get("sessionId") == "s-1",
            ),
            metadata=Metadata(correlationId=auth["id"]),
        )
        await ws.send(encode(status).decode())
        await ws.wait_closed()

    async with serve(silent, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        changes: list[StateChange] = []
        client = DashboardClient(
            f"ws://127.0.0.1:{port}/ws", "tok", backoff=(0.01,), on_state=changes.append
        )
        await client.connect()
        try:
            # default dead_after = 2.5 x heartbeat + 1 s
            await wait_for(lambda: client.reconnects >= 1, timeout=10, what="a reconnection")
            assert connections >= 2
            assert any(c.state == "disconnected" for c in changes)
        finally:
            await client.close()


async def test_a_new_client_can_resume_a_saved_session(gateway, bus) -> None:
    async with DashboardClient(ws_url(gateway), token()) as first:
        sub = await first.subscribe_logs()
        await live(gateway, sub)
        await publish_alerts(bus, range(3))
        assert numbers(await take(sub, 3)) == [0, 1, 2]
        saved_session, saved_positions = first.session_id, first.positions
    assert saved_positions["logs"].offset > 0
    await publish_alerts(bus, [3, 4])
    later = DashboardClient(
        ws_url(gateway), token(), session_id=saved_session, positions=saved_positions
    )
    stream = later.events()  # before connecting: the replay follows connection:status
    await later.connect()
    try:
        assert later.status is not None and later.status.resumed
        assert later.session_id == saved_session and later.status.replayed == 2
        assert numbers([await stream.next(t(5)) for _ in range(2)]) == [3, 4]
    finally:
        await later.close()
