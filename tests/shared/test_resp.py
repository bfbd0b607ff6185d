"""``shared/resp.py`` against a real Redis: pipelines in order, error replies as redis-py's
exceptions, the URL's credentials and database, and a lost connection."""

from __future__ import annotations

import asyncio
import uuid
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, ResponseError

from shared.redis_conn import is_connection_error
from shared.redis_server import free_port
from shared.resp import RespClient, command


def _with(url: str, *, netloc: str | None = None, path: str | None = None) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, netloc or parts.netloc, path or parts.path, parts.query, ""))


async def test_concurrent_pipelines_get_their_own_replies_in_order(
    redis_url: str, prefix: str
) -> None:
    client = RespClient(redis_url)
    try:

        async def one(i: int) -> list[object]:
            key = f"{prefix}:n{i}"
            return await client.execute(
                [command(b"SET", key, i), command(b"INCRBY", key, 1000), command(b"GET", key)]
            )

        results = await asyncio.gather(*(one(i) for i in range(200)))
        assert results == [[b"OK", 1000 + i, str(1000 + i).encode()] for i in range(200)]
    finally:
        client.close()


async def test_an_error_reply_is_that_command_s_result_as_redis_py_s_exception(
    redis_url: str, prefix: str
) -> None:
    client = RespClient(redis_url)
    try:
        ok, wrong, noscript, after = await client.execute(
            [
                command(b"SET", f"{prefix}:s", b"x"),
                command(b"INCR", f"{prefix}:s"),  # not an integer
                command(b"EVALSHA", b"0" * 40, 0),
                command(b"GET", f"{prefix}:s"),
            ]
        )
        assert ok == b"OK" and after == b"x"
        assert type(wrong) is ResponseError and "not an integer" in str(wrong)
        assert isinstance(noscript, NoScriptError)
    finally:
        client.close()


async def test_the_url_s_user_password_and_database_are_used(
    redis_url: str, redis: aioredis.Redis, prefix: str
) -> None:
    user, password = f"u{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    await redis.acl_setuser(
        user, enabled=True, passwords=[f"+{password}"], keys=["*"], commands=["+@all"]
    )
    host = urlsplit(redis_url).netloc.rsplit("@", 1)[-1]
    url = _with(redis_url, netloc=f"{user}:{password}@{host}", path="/3")
    client = RespClient(url + "?client_name=resp-test")
    try:
        who, name, _ = await client.execute(
            [
                command(b"ACL", b"WHOAMI"),
                command(b"CLIENT", b"GETNAME"),
                command(b"SET", f"{prefix}:db3", b"here"),
            ]
        )
        assert (who, name) == (user.encode(), b"resp-test")
        db3 = aioredis.Redis.from_url(_with(redis_url, path="/3"))
        try:
            assert await db3.get(f"{prefix}:db3") == b"here"
            assert await redis.get(f"{prefix}:db3") is None  # not in database 0
            await db3.delete(f"{prefix}:db3")
        finally:
            await db3.aclose()
        bad = RespClient(_with(redis_url, netloc=f"{user}:wrong@{host}"))
        with pytest.raises(aioredis.ConnectionError, match="refused"):
            await bad.execute([command(b"PING")])
    finally:
        client.close()
        await redis.acl_deluser(user)


async def _kill(redis: aioredis.Redis, name: str) -> int:
    killed = 0
    for c in await redis.client_list():
        if c.get("name") == name:
            killed += await redis.client_kill_filter(_id=c["id"])
    return killed


async def test_a_killed_connection_is_replaced(redis_url: str, redis: aioredis.Redis) -> None:
    client = RespClient(redis_url + "?client_name=resp-kill")
    try:
        assert await client.execute([command(b"PING")]) == [b"PONG"]
        assert await _kill(redis, "resp-kill") == 1
        await asyncio.sleep(0.05)  # the close reaches the client
        assert await client.execute([command(b"PING")]) == [b"PONG"]
    finally:
        client.close()


async def test_a_call_in_flight_on_a_killed_connection_is_sent_again(
    redis_url: str, redis: aioredis.Redis
) -> None:
    client = RespClient(redis_url + "?client_name=resp-retry")
    key = uuid.uuid4().hex
    try:
        waiting = asyncio.ensure_future(client.execute([command(b"BLPOP", key, 2)]))
        await asyncio.sleep(0.1)
        assert await _kill(redis, "resp-retry") == 1
        await asyncio.sleep(0.1)
        await redis.rpush(key, b"sent again")  # only the new connection's BLPOP can take it
        assert await asyncio.wait_for(waiting, 3) == [[key.encode(), b"sent again"]]
    finally:
        client.close()


async def test_an_unreachable_redis_is_a_connection_error() -> None:
    client = RespClient(f"redis://127.0.0.1:{free_port()}")
    with pytest.raises(aioredis.ConnectionError) as caught:
        await client.execute([command(b"PING")])
    assert is_connection_error(caught.value)


async def test_replies_in_flight_fail_when_the_client_is_closed(redis_url: str) -> None:
    client = RespClient(redis_url)
    blocked = asyncio.ensure_future(client.execute([command(b"BLPOP", uuid.uuid4().hex, 5)]))
    await asyncio.sleep(0.05)
    client.close()
    with pytest.raises(aioredis.ConnectionError):
        await asyncio.wait_for(blocked, 2)
