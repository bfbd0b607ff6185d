"""Building every service's Redis client, and waiting for Redis at start-up.

One factory (:func:`redis_client`) so that gateway, runner and collector behave alike when
Redis restarts: a pooled connection that Redis closed while it was away fails on its first
use ("Connection closed by server"); redis-py's ``retry`` re-runs such a command once on a
fresh connection, and ``health_check_interval`` PINGs a connection idle for longer than that
before handing it out, so a command after an outage does not fail on a dead socket. A command
that fails twice is a real outage and surfaces as ``redis.exceptions.ConnectionError``
(:func:`is_connection_error` recognises it and its relatives).

:func:`wait_for_redis` is what a service does first: PING until Redis answers, one log line
per attempt series ("waiting for Redis at redis://…: Connection refused; retrying") instead
of a traceback and an exit, and give up only when the service is told to stop.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import anyio
import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.connection import HiredisRespSerializer
from redis.exceptions import BusyLoadingError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger("redis")

#: Retries of a command that failed on a connection error (one: a dead pooled socket).
COMMAND_RETRIES = 1
#: A pooled connection idle this long is PINGed before it is used again.
HEALTH_CHECK_INTERVAL_S = 5.0
#: Delays between start-up attempts: doubling up to the cap.
WAIT_FIRST_S = 0.2
WAIT_MAX_S = 2.0

#: What redis-py (and the sockets under it) raise when Redis cannot be reached. A Redis
#: that is still loading its data set answers LOADING (BusyLoadingError): not ready either.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    BusyLoadingError,
    ConnectionError,
    TimeoutError,
    OSError,
)


def is_connection_error(error: BaseException) -> bool:
    """True when ``error`` means "Redis is unreachable" (as opposed to a bad command)."""
    return isinstance(error, CONNECTION_ERRORS)


def describe(error: BaseException) -> str:
    """A one-line reason for a connection error ("Connection refused", "Timeout…")."""
    cause: BaseException | None = error
    for _ in range(5):  # the socket error under redis-py's wrapper names the reason best
        if cause is None:
            break
        if isinstance(cause, OSError) and cause.errno:
            return os.strerror(cause.errno)
        cause = cause.__cause__ or cause.__context__
    text = str(error) or type(error).__name__
    # redis-py says "Error 111 connecting to host:port. Connection refused." — keep the
    # reason, the URL is logged next to it.
    if "connecting to" in text and ". " in text:
        text = text.rsplit(". ", 1)[-1]
    return text.rstrip(".") or type(error).__name__


def redacted(url: str) -> str:
    """``url`` without its password (for logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else "***@"
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))


def _retry_options() -> dict[str, object]:
    return {
        "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), COMMAND_RETRIES),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
        "health_check_interval": HEALTH_CHECK_INTERVAL_S,
    }


class _HiredisPacking:
    """Commands packed by hiredis, in C, as redis-py's synchronous client packs them when
    hiredis is installed (the same bytes, the same DataError for a bad argument type);
    its asyncio client packs in Python, ~2 µs per argument: 20 µs for each session ``hold``
    of a gateway, on every connect+auth."""

    _serializer = HiredisRespSerializer()

    def pack_command(self, *args: Any) -> list[bytes]:
        return self._serializer.pack(*args)  # type: ignore[no-any-return]


def _pack_with_hiredis(pool: aioredis.ConnectionPool) -> aioredis.ConnectionPool:
    base = pool.connection_class  # chosen by the URL: TCP, TLS or a Unix socket
    packed = type(f"Hiredis{base.__name__}", (_HiredisPacking, base), {})
    pool.connection_class = cast(type[AbstractConnection], packed)
    return pool


def redis_client(
    url: str, *, max_connections: int | None = None, pool_timeout_s: float | None = None
) -> aioredis.Redis:
    """The Redis client of a service: retries a command once on a connection error, checks
    idle connections before use, packs commands with hiredis. With ``max_connections`` the
    pool is a blocking one (callers wait up to ``pool_timeout_s`` for a free connection
    instead of failing)."""
    if max_connections is None:
        pool = aioredis.ConnectionPool.from_url(url, **_retry_options())
    else:
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=pool_timeout_s, **_retry_options()
        )
    return aioredis.Redis.from_pool(_pack_with_hiredis(pool))


async def wait_for_redis(
    redis: aioredis.Redis,
    url: str,
    *,
    stop: asyncio.Event | None = None,
    logger: logging.Logger | None = None,
) -> bool:
    """PING until Redis answers (True), or until ``stop`` is set (False). Each failure is
    one warning line — the first, then one every ~10 s while it goes on — never a traceback."""
    logger = logger or log
    delay = WAIT_FIRST_S
    failures = 0
    last_logged = float("-inf")
    loop = asyncio.get_running_loop()
    while stop is None or not stop.is_set():
        try:
            await redis.ping()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - anything but an answer means "not yet"
            if not is_connection_error(e):
                raise
            failures += 1
            if loop.time() - last_logged >= 10.0:
                last_logged = loop.time()
                logger.warning("waiting for Redis at %s: %s; retrying", redacted(url), describe(e))
            if stop is None:
                await asyncio.sleep(delay)
            else:
                # A cancel scope, not wait_for: on 3.11 wait_for loses a cancellation that
                # lands as ``stop`` is set (tests/shared/test_timeouts.py).
                with anyio.move_on_after(delay):
                    await stop.wait()
            delay = min(delay * 2, WAIT_MAX_S)
            continue
        if failures:
            logger.info("Redis at %s answers after %d failed attempt(s)", redacted(url), failures)
        return True
    return False
