"""Sessions survive disconnects: resume on the same or another gateway with exact replay,
limits of the replay buffer, refusals and expiry, slow consumers."""

from __future__ import annotations

import socket

from shared.errors import ErrorCode
from shared.keys import LOGS_TOPIC
from tests.gateway.conftest import token, ws_url
from tests.gateway.test_connection import expect_closed
from tests.gateway.test_fanout import alert
from tests.helpers import free_port, port_open, wait_for
from tests.wsclient import WSClient


async def publish_alerts(bus, n: int, start: int = 0) -> None:
    items = [
        (
            LOGS_TOPIC,
            alert("info").model_copy(
                update={
                    "payload": alert("info").payload.model_copy(update={"message": str(start + i)})
                }
            ),
            ("info", "resource"),
        )
        for i in range(n)
    ]
    for i in range(0, n, 200):
        await bus.publish_many(items[i : i + 200])


def numbers(messages: list[dict]) -> list[int]:
    return [int(m["payload"]["message"]) for m in messages if m["type"] == "system:alert"]


async def resume(url: str, session_id: str, user: str = "alice", **extra) -> WSClient:
    client = await WSClient.open(url)
    await client.send(
        "auth", {"token": token(user), "clientId": "c", "sessionId": session_id, **extra}
    )
    return client


async def test_resume_after_a_clean_close_replays_exactly_what_was_missed(gateway, bus):
    client = await WSClient.authed(ws_url(gateway), token())
    session_id = client.status["sessionId"]
    await client.subscribe("logs")
    await publish_alerts(bus, 3, 0)
    assert numbers([await client.recv_type("system:alert") for _ in range(3)]) == [0, 1, 2]
    await gateway.flush_sessions()
    await client.close()
    await publish_alerts(bus, 5, 3)

    again = await resume(ws_url(gateway), session_id)
    status = (await again.recv_type("connection:status"))["payload"]
    assert status["sessionId"] == session_id
    assert status["resumed"] is True and status["recovered"] is True
    assert status["replayed"] == 5 and status["missed"] == 0
    got = [await again.recv_type("system:alert") for _ in range(5)]
    assert numbers(got) == [3, 4, 5, 6, 7]
    await publish_alerts(bus, 2, 8)  # the second one is the barrier: nothing comes between
    assert numbers([await again.recv_type("system:alert") for _ in range(2)]) == [8, 9]
    await again.close()


async def test_resume_on_another_gateway_before_any_event(make_gateway, bus):
    gw1, gw2 = await make_gateway(), await make_gateway()
    client = await WSClient.authed(ws_url(gw1), token())
    session_id = client.status["sessionId"]
    sid = await client.subscribe("logs", filters=["warning"])
    await client.close()
    await publish_alerts(bus, 2, 0)  # info: filtered out
    await bus.publish(LOGS_TOPIC, alert("warning"), ("warning", "resource"))

    again = await resume(ws_url(gw2), session_id)
    status = (await again.recv_type("connection:status"))["payload"]
    assert status["resumed"] and status["gatewayId"] == gw2.id
    assert status["replayed"] == 1
    msg = await again.recv_type("system:alert")
    assert msg["payload"]["level"] == "warning"
    # the restored subscription keeps its id, and connection:status says what came back
    assert status["subscriptions"] == [
        {"subscriptionId": sid, "kind": "logs", "topic": "logs", "filters": ["warning"]}
    ]
    ack = await again.request("unsubscribe", {"subscriptionId": sid})
    assert ack["success"]
    await again.close()


async def test_more_than_1000_missed_events(gateway, bus):
    client = await WSClient.authed(ws_url(gateway), token())
    session_id = client.status["sessionId"]
    await client.subscribe("logs")
    await client.close()
    await publish_alerts(bus, 1100, 0)
    again = await resume(ws_url(gateway), session_id)
    status = (await again.recv_type("connection:status"))["payload"]
    assert status["recovered"] is False
    assert status["missed"] == 100 and status["replayed"] == 1000
    got = [await again.recv_type("system:alert") for _ in range(1000)]
    assert numbers(got) == list(range(100, 1100))
    await again.close()


async def test_client_positions_make_the_replay_exact(gateway, bus):
    client = await WSClient.authed(ws_url(gateway), token())
    session_id = client.status["sessionId"]
    await client.subscribe("logs")
    await publish_alerts(bus, 4, 0)
    got = [await client.recv_type("system:alert") for _ in range(4)]
    # The server's cursor may lag behind (it is flushed in batches); the client knows.
    await client.close()
    last = got[-1]["metadata"]
    again = await resume(
        ws_url(gateway),
        session_id,
        positions={LOGS_TOPIC: {"offset": last["offset"], "epoch": last["epoch"]}},
    )
    status = (await again.recv_type("connection:status"))["payload"]
    assert status["replayed"] == 0 and status["recovered"] is True
    await publish_alerts(bus, 1, 4)
    assert numbers([await again.recv_type("system:alert")]) == [4]
    await again.close()


async def test_someone_elses_session_is_refused(gateway):
    client = await WSClient.authed(ws_url(gateway), token("alice"))
    session_id = client.status["sessionId"]
    await client.close()
    mallory = await WSClient.open(ws_url(gateway))
    mid = await mallory.send(
        "auth", {"token": token("mallory"), "clientId": "m", "sessionId": session_id}
    )
    ack = await mallory.ack_for(mid)
    assert ack["success"] is False and ack["code"] == ErrorCode.INSUFFICIENT_PERMISSIONS
    code, _ = await expect_closed(mallory)
    assert code == 1008


async def test_expired_session_starts_fresh(make_gateway, redis, keys):
    gw = await make_gateway(TEAMDASH_SESSION_TTL_S="1")
    client = await WSClient.authed(ws_url(gw), token())
    session_id = client.status["sessionId"]
    await client.subscribe("logs")
    await client.close()
    # The barrier: the session hash has expired in Redis.
    await wait_for(
        lambda: _gone(redis, keys.session(session_id)), timeout=5, what="the session to expire"
    )
    again = await resume(ws_url(gw), session_id)
    status = (await again.recv_type("connection:status"))["payload"]
    assert status["resumed"] is False
    assert status["sessionId"] != session_id
    await again.close()


async def _gone(redis, key: str) -> bool:
    return not await redis.exists(key)


async def _cursor_written(redis, key: str) -> bool:
    fields = await redis.hgetall(key)
    return any(k.startswith(b"cur:") and int(v.split(b":")[0]) > 0 for k, v in fields.items())


async def test_resume_after_the_gateway_is_killed(
    service_env, start_service, make_gateway, bus, redis, keys
):
    port = free_port()
    env = {
        **service_env,
        "TEAMDASH_GATEWAY_PORT": str(port),
        "TEAMDASH_CURSOR_FLUSH_INTERVAL_S": "0.05",
    }
    doomed = start_service("gateway", env)
    await wait_for(lambda: port_open(port), timeout=15, what="gateway port")
    client = await WSClient.authed(f"ws://127.0.0.1:{port}/ws", token())
    session_id = client.status["sessionId"]
    await client.subscribe("logs")
    await publish_alerts(bus, 10, 0)
    assert numbers([await client.recv_type("system:alert") for _ in range(10)]) == list(range(10))
    # The barrier: a cursor flush has recorded some of them.
    await wait_for(lambda: _cursor_written(redis, keys.session(session_id)), what="a cursor flush")
    doomed.kill()
    await publish_alerts(bus, 10, 10)
    survivor = await make_gateway()
    again = await resume(ws_url(survivor), session_id)
    status = (await again.recv_type("connection:status"))["payload"]
    assert status["resumed"] is True
    got = numbers([await again.recv_type("system:alert") for _ in range(status["replayed"])])
    # Nothing lost; what the server's cursor had not yet recorded may come again, in order.
    assert got[-10:] == list(range(10, 20))
    assert got == sorted(got) and len(got) == len(set(got))
    await again.close()
    await client.ws.close()


async def test_a_client_that_never_reads_does_not_delay_the_others(make_gateway, bus):
    gw = await make_gateway(TEAMDASH_SEND_BUFFER_BYTES=str(256 * 1024))
    fast = await WSClient.authed(ws_url(gw), token())
    await fast.subscribe("logs")
    # A client whose socket buffers are tiny and who never reads.
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", gw.port))
    slow = await WSClient.authed(ws_url(gw), token(), max_queue=1, sock=sock)
    await slow.subscribe("logs")
    big = alert("info").payload.model_copy(update={"message": "x" * 20000})
    msg = alert("info").model_copy(update={"payload": big})
    n = 600
    for _ in range(0, n, 100):
        await bus.publish_many([(LOGS_TOPIC, msg, ("info", "resource"))] * 100)
        for _ in range(100):
            await fast.recv_type("system:alert", timeout=5)
    # The slow one was cut off with 1013 (it can resume from its cursor).
    code, reason = await expect_closed(slow, timeout=10)
    assert code == 1013 and "slow" in reason
    await fast.close()
