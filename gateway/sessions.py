"""Sessions in Redis, so that any gateway can resume any session (the Redis adapter).

A session is the hash ``Keys.session(id)`` with a TTL of ``TEAMDASH_SESSION_TTL_S``,
refreshed while a connection holds it:

==============  ===================================================================
field           holds
==============  ===================================================================
``userId``      the owner; only this user may resume the session
``clientId``    the client id given at auth
``connectedAt`` / ``lastActivity``  unix ms
``gatewayId``   the gateway serving it now ('' when disconnected)
``conn``        the id of the connection holding it (a resume takes it over; writes
                from an older holder are ignored)
``subs``        JSON: subscription id → {kind, topic, filters, hidden}
``agents``      JSON list of the agent ids the session created
``cur:{subId}`` the subscription's delivered cursor ``offset:epoch``
==============  ===================================================================

Cursors are written in batches (about once a second) and on close, with one script per
session that checks ``conn`` first, so a gateway that lost a session to a resume elsewhere
cannot move its cursors back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis

from shared.bus import Position, as_text
from shared.keys import Keys

# KEYS[1] session; ARGV[1] conn id; ARGV[2] ttl s; ARGV[3..] field/value pairs.
# Writes only while the caller still holds the session; returns 1 if written.
_WRITE_IF_HOLDER = """
if redis.call('hget', KEYS[1], 'conn') ~= ARGV[1] then return 0 end
if #ARGV > 2 then redis.call('hset', KEYS[1], unpack(ARGV, 3)) end
redis.call('expire', KEYS[1], tonumber(ARGV[2]))
return 1
"""


@dataclass(frozen=True, slots=True)
class StoredSubscription:
    id: str
    kind: str
    topic: str
    filters: tuple[str, ...]
    hidden: bool
    cursor: Position | None


@dataclass(frozen=True, slots=True)
class StoredSession:
    id: str
    user_id: str
    subscriptions: list[StoredSubscription]
    agents: list[str]


class SessionStore:
    def __init__(self, redis: aioredis.Redis, keys: Keys, ttl_s: int) -> None:
        self.redis = redis
        self.keys = keys
        self.ttl_s = ttl_s
        self._write = redis.register_script(_WRITE_IF_HOLDER)

    async def load(self, session_id: str) -> StoredSession | None:
        raw = await self.redis.hgetall(self.keys.session(session_id))
        if not raw or b"userId" not in raw:
            return None
        fields = {as_text(k): as_text(v) for k, v in raw.items()}
        subs_doc: dict[str, dict[str, Any]] = orjson.loads(fields.get("subs", "{}"))
        subs = []
        for sub_id, spec in subs_doc.items():
            cursor = fields.get(f"cur:{sub_id}")
            subs.append(
                StoredSubscription(
                    id=sub_id,
                    kind=spec["kind"],
                    topic=spec["topic"],
                    filters=tuple(spec.get("filters", ())),
                    hidden=bool(spec.get("hidden", False)),
                    cursor=Position.from_str(cursor) if cursor else None,
                )
            )
        return StoredSession(
            id=session_id,
            user_id=fields["userId"],
            subscriptions=subs,
            agents=list(orjson.loads(fields.get("agents", "[]"))),
        )

    async def hold(
        self,
        session_id: str,
        *,
        conn_id: str,
        user_id: str,
        client_id: str,
        gateway_id: str,
        now_ms: int,
        new: bool,
    ) -> None:
        """Create the session, or take over an existing one for this connection."""
        key = self.keys.session(session_id)
        mapping: dict[str, str | int] = {
            "userId": user_id,
            "clientId": client_id,
            "lastActivity": now_ms,
            "gatewayId": gateway_id,
            "conn": conn_id,
        }
        async with self.redis.pipeline(transaction=True) as pipe:
            if new:
                pipe.delete(key)
                mapping.update(connectedAt=now_ms, subs="{}", agents="[]")
            pipe.hset(key, mapping=mapping)  # type: ignore[arg-type]  # redis-py's key type is invariant
            pipe.expire(key, self.ttl_s)
            await pipe.execute()

    @staticmethod
    def subscription_fields(subs: list[StoredSubscription], agents: list[str]) -> dict[str, str]:
        doc = {
            s.id: {"kind": s.kind, "topic": s.topic, "filters": list(s.filters), "hidden": s.hidden}
            for s in subs
        }
        fields = {
            "subs": orjson.dumps(doc).decode(),
            "agents": orjson.dumps(sorted(agents)).decode(),
        }
        for s in subs:
            if s.cursor is not None:
                fields[f"cur:{s.id}"] = s.cursor.to_str()
        return fields

    async def write(self, session_id: str, conn_id: str, fields: dict[str, str | int]) -> bool:
        """Write fields while ``conn_id`` still holds the session; refreshes its TTL."""
        args: list[str | int] = [conn_id, self.ttl_s]
        for k, v in fields.items():
            args += [k, v]
        written = await self._write(keys=[self.keys.session(session_id)], args=args)
        return bool(written)

    async def write_many(self, batch: list[tuple[str, str, dict[str, str | int]]]) -> None:
        """Several sessions' writes in one round trip."""
        if not batch:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for session_id, conn_id, fields in batch:
                args: list[str | int] = [conn_id, self.ttl_s]
                for k, v in fields.items():
                    args += [k, v]
                await self._write(keys=[self.keys.session(session_id)], args=args, client=pipe)
            await pipe.execute()

    async def forget_subscription(
        self, session_id: str, conn_id: str, sub_id: str, fields: dict[str, str | int]
    ) -> None:
        await self.write(session_id, conn_id, fields)
        await self.redis.hdel(self.keys.session(session_id), f"cur:{sub_id}")
