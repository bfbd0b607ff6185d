"""``shared/redis_conn.py``: the services' Redis client packs commands with hiredis, byte for
byte as redis-py's own packer, whatever the URL's kind of connection."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import (
    AbstractConnection,
    SSLConnection,
    UnixDomainSocketConnection,
)
from redis.exceptions import DataError

from shared.redis_conn import redis_client

COMMANDS: list[tuple[object, ...]] = [
    ("PING",),
    ("SCRIPT LOAD", "return 1"),
    (b"SCRIPT LOAD", b"return 1"),
    ("EVALSHA", "a" * 40, 1, "td:session:s1", 3600, "1", "alice", "c1", 1796123939777),
    ("SET", "k", 1.5, "EX", 10),
    ("SET", "k", 1e20),
    ("SET", "ké", "välue", -3, 2**70),
    ("SET", "k", b"\x00\xff\r\n" * 5000),
    ("SET", "k", memoryview(b"abc")),
]


@pytest.mark.parametrize("args", COMMANDS)
def test_the_same_bytes_as_redis_py_packs(args: tuple[object, ...]) -> None:
    conn = redis_client("redis://127.0.0.1:1").connection_pool.make_connection()
    ours = b"".join(conn.pack_command(*args))
    assert ours == b"".join(AbstractConnection.pack_command(conn, *args))  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [True, None, ["a"]])
def test_a_bad_argument_is_a_data_error_as_before(bad: object) -> None:
    conn = redis_client("redis://127.0.0.1:1").connection_pool.make_connection()
    with pytest.raises(DataError):
        conn.pack_command("SET", "k", bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("rediss://127.0.0.1:1", SSLConnection),
        ("unix:///tmp/none.sock", UnixDomainSocketConnection),
    ],
)
def test_the_url_still_chooses_the_connection(url: str, kind: type[AbstractConnection]) -> None:
    for client in (redis_client(url), redis_client(url, max_connections=2, pool_timeout_s=1)):
        assert issubclass(client.connection_pool.connection_class, kind)


@pytest.mark.parametrize("max_connections", [None, 4])
async def test_commands_pipelines_and_scripts_round_trip(
    redis_url: str, prefix: str, max_connections: int | None
) -> None:
    client: aioredis.Redis = redis_client(redis_url, max_connections=max_connections)
    try:
        await client.set(f"{prefix}k", "välue")
        script = client.register_script("return redis.call('get', KEYS[1])")
        async with client.pipeline(transaction=False) as pipe:
            pipe.script_load(script.script)
            pipe.evalsha(script.sha, 1, f"{prefix}k")
            pipe.incrbyfloat(f"{prefix}n", 1.5)
            results = await pipe.execute()
        assert results[1:] == ["välue".encode(), 1.5]
    finally:
        await client.aclose()


def test_packed_by_hiredis_in_one_piece() -> None:
    """redis-py's Python packer cuts a large value out into chunks of its own; hiredis
    writes one buffer (what makes it cheaper, and shows it is the one packing)."""
    conn = redis_client("redis://127.0.0.1:1").connection_pool.make_connection()
    assert len(conn.pack_command("SET", "k", b"x" * 10_000)) == 1
    assert len(AbstractConnection.pack_command(conn, "SET", "k", b"x" * 10_000)) > 1
