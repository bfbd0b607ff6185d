"""Limits shared by every gateway, counted in Redis: messages per user and per client IP,
and new connections per client IP.

Messages are never a Redis round trip each. Each gateway counts them locally
(:class:`gateway.limits.WindowLimiter`, one per limit) and decides locally; every
``sync_interval_s`` (100 ms by default) one script call adds each active key's local count to
its one-second window counter in Redis (INCRBY, EXPIRE) and reads back the shared totals of
that window and the one before (GET), which the next decisions use. Only keys counted here
since the last sync and keys near their limit are synced; when there are none (an idle
gateway) there is no round trip at all. A client that spreads
its traffic over several gateways is therefore limited to the shared rate, give or take
what the other gateways accept within one sync interval.

New connections are rare enough to be counted in Redis directly, exactly: one pipeline per
WebSocket handshake on a one-minute window (sliding, like the message windows). Attempts
are counted, refused ones included, so a client hammering the endpoint stays refused.

When Redis cannot be reached the limits fail open (local counts only) with a warning: a
Redis outage must not lock every user out.
"""

from __future__ import annotations

import asyncio
import logging
import time

import redis.asyncio as aioredis

from gateway.limits import WindowLimiter
from shared.keys import Keys
from shared.tasks import raise_if_cancelled

log = logging.getLogger("ws.limits")

#: How many windows a counter outlives its own (read back as "the previous window").
_TTL_WINDOWS = 3

# One sync in one command (one reply to read, not three per key). KEYS: per item, its
# window's counter then the previous window's; ARGV[1] the counters' TTL in s, ARGV[1 + i]
# item i's delta. Returns per item: the window's total after adding the delta, and the
# previous window's total (nil when there is none).
_SYNC = """
local out = {}
for i = 1, #KEYS / 2 do
  out[2 * i - 1] = redis.call('incrby', KEYS[2 * i - 1], ARGV[i + 1])
  redis.call('expire', KEYS[2 * i - 1], ARGV[1])
  out[2 * i] = redis.call('get', KEYS[2 * i])
end
return out
"""


class SharedLimits:
    def __init__(
        self,
        redis: aioredis.Redis,
        prefix: str,
        *,
        user_messages_per_second: int,
        ip_messages_per_second: int,
        ip_connections_per_minute: int,
        sync_interval_s: float,
    ) -> None:
        self.redis = redis
        self.keys = Keys(prefix)
        self.users = WindowLimiter(user_messages_per_second, 1.0)
        self.ips = WindowLimiter(ip_messages_per_second, 1.0)
        self.ip_connections_per_minute = ip_connections_per_minute
        self.sync_interval_s = sync_interval_s
        self._failing = False
        self._sync_script = redis.register_script(_SYNC)

    # -- messages (local decision) -------------------------------------------------------
    def admit(self, user_id: str | None, ip_key: str, now: float) -> str | None:
        """Count one message of ``user_id`` (None before auth) from ``ip_key`` at ``now``
        (wall clock: the windows are shared by every gateway); or, when one of the shared
        limits is reached, count nothing and return which: ``user`` / ``ip``."""
        user = self.users.reserve(user_id, now) if user_id is not None else None
        if user_id is not None and user is None:
            return "user"
        ip = self.ips.reserve(ip_key, now)
        if ip is None:
            return "ip"
        if user is not None:
            WindowLimiter.commit(user, now)
        WindowLimiter.commit(ip, now)
        return None

    # -- the sync ------------------------------------------------------------------------
    async def run(self) -> None:
        """Sync forever (a task owned by the gateway); a failure is logged, never fatal."""
        while True:
            await asyncio.sleep(self.sync_interval_s)
            try:
                await self.sync()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug must not end the shared limits for good
                log.exception("rate-limit sync failed")
            raise_if_cancelled()

    async def sync(self) -> None:
        now = time.time()
        batches = (
            (self.users, self.users.pending(now), self.keys.user_message_rate),
            (self.ips, self.ips.pending(now), self.keys.ip_message_rate),
        )
        if not any(items for _, items, _ in batches):
            return  # nothing counted here and no key near its limit: no round trip
        keys: list[str] = []
        args: list[int] = [_TTL_WINDOWS]
        for _, items, name in batches:
            for item in items:
                keys += (name(item.key, item.window), name(item.key, item.window - 1))
                args.append(item.delta)
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
            # that arrives as the reply does, and the gateway's close would wait forever.
            async with asyncio.timeout(max(1.0, 10 * self.sync_interval_s)):
                # client=: the client in use now (tests swap it), not the one registered.
                results = await self._sync_script(keys=keys, args=args, client=self.redis)
            raise_if_cancelled()
        except asyncio.CancelledError:
            for limiter, items, _ in batches:
                limiter.failed(items)
            raise
        except Exception as e:  # noqa: BLE001 - Redis down or slow: fail open, count locally
            for limiter, items, _ in batches:
                limiter.failed(items)
            raise_if_cancelled()
            if not self._failing:
                log.warning(
                    "rate-limit counters cannot be synced with Redis (%s); limits are per gateway until it is back",
                    e,
                )
            self._failing = True
            return
        if self._failing:
            log.info("rate-limit counters synced with Redis again")
            self._failing = False
        i = 0
        for limiter, items, _ in batches:
            for item in items:
                total, previous = results[i], results[i + 1]
                i += 2
                limiter.apply(item, int(total), int(previous) if previous is not None else None)

    # -- connections (exact, one round trip per handshake) -------------------------------
    async def admit_connection(self, ip_key: str) -> bool:
        """Count one handshake from ``ip_key``; False when over the per-minute limit."""
        limit = self.ip_connections_per_minute
        if limit <= 0:
            return True
        position = time.time() / 60.0
        window = int(position)
        key = self.keys.ip_connection_rate(ip_key, window)
        try:
            async with asyncio.timeout(2.0):
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.incr(key)
                    pipe.expire(key, 60 * _TTL_WINDOWS)
                    pipe.get(self.keys.ip_connection_rate(ip_key, window - 1))
                    count, _, previous = await pipe.execute()
            raise_if_cancelled()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - Redis down or slow: fail open
            raise_if_cancelled()
            log.warning("connection limit not checked (Redis: %s)", e)
            return True
        estimate = int(previous or 0) * (1.0 - (position - window)) + int(count)
        return estimate <= limit
