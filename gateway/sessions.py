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

Every write goes through one writer task (:meth:`SessionStore.run`, owned by the gateway):
callers queue their scripts and await the result, and the writer sends everything queued
since its last round trip as ONE pipeline. A thousand clients authenticating (``hold``) or
disconnecting (the write on close) in the same instant cost a few round trips, not a
thousand, and never more Redis connections than one. The writer speaks RESP on its own
connection (:class:`shared.resp.RespClient`): a redis-py pipeline cost ~200 µs per round
trip, a quarter of the gateway's CPU per connect+auth in a burst.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from gateway.client_session import SessionUpdate, StoredSession, StoredSubscription
from shared.bus import Position, as_text
from shared.keys import Keys
from shared.resp import RespClient, command
from shared.tasks import raise_if_cancelled

log = logging.getLogger("ws.sessions")

# KEYS[1] session; ARGV[1] conn id; ARGV[2] ttl s; ARGV[3] n, the number of fields to
# delete, ARGV[4 .. 3 + n] those fields; then field/value pairs to set. Writes only while
# the caller still holds the session; returns 1 if written.
_WRITE_IF_HOLDER = """
if redis.call('hget', KEYS[1], 'conn') ~= ARGV[1] then return 0 end
local n = tonumber(ARGV[3])
if n > 0 then redis.call('hdel', KEYS[1], unpack(ARGV, 4, 3 + n)) end
if #ARGV > 3 + n then redis.call('hset', KEYS[1], unpack(ARGV, 4 + n)) end
redis.call('expire', KEYS[1], tonumber(ARGV[2]))
return 1
"""

# KEYS[1] session; ARGV[1] ttl s; ARGV[2] '1' for a new session (whatever the key held is
# dropped); ARGV[3..7] userId, clientId, now (ms), gatewayId, conn. Takes the session for
# that connection. The field names are written here, not sent: every argument costs the
# gateway ~1 µs to pack, on every auth.
_HOLD = """
if ARGV[2] == '1' then
  redis.call('del', KEYS[1])
  redis.call('hset', KEYS[1], 'connectedAt', ARGV[5], 'subs', '{}', 'agents', '[]')
end
redis.call('hset', KEYS[1], 'userId', ARGV[3], 'clientId', ARGV[4], 'lastActivity', ARGV[5],
  'gatewayId', ARGV[6], 'conn', ARGV[7])
redis.call('expire', KEYS[1], tonumber(ARGV[1]))
return 1
"""


@dataclass(frozen=True, slots=True)
class _Script:
    """A Lua script and its SHA1, the name ``EVALSHA`` calls it by."""

    source: bytes
    sha: bytes

    @classmethod
    def of(cls, source: str) -> _Script:
        raw = source.encode()
        return cls(raw, hashlib.sha1(raw).hexdigest().encode())


#: One queued script call: (script, session key, argv).
_Call = tuple[_Script, str, list[str | int]]


@dataclass(slots=True)
class _Batch:
    calls: list[_Call]
    done: asyncio.Future[list[Any]]


class SessionStore:
    """Sessions in Redis: ``load`` reads with ``redis``; every write goes through the
    writer, on ``writer``'s connection."""

    def __init__(self, redis: aioredis.Redis, writer: RespClient, keys: Keys, ttl_s: int) -> None:
        self.redis = redis
        self.keys = keys
        self.ttl_s = ttl_s
        self.writer = writer
        self._write = _Script.of(_WRITE_IF_HOLDER)
        self._hold = _Script.of(_HOLD)
        self._scripts = (self._write, self._hold)
        #: The scripts were loaded by an earlier round trip (a NOSCRIPT reply loads them again).
        self._loaded = False
        self._queue: list[_Batch] = []
        self._wake = asyncio.Event()
        self._closed = False

    # -- the writer --------------------------------------------------------------------
    async def run(self) -> None:
        """The writer: one pipeline per round trip for everything queued meanwhile. Run it
        as a task for as long as the store is used; cancelling it fails what is queued."""
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                batches, self._queue = self._queue, []
                await self._execute(batches)
                raise_if_cancelled()
        finally:
            self._closed = True
            self._fail(self._queue, ConnectionError("the session writer stopped"))
            self._queue = []

    async def _execute(self, batches: list[_Batch]) -> None:
        calls = [call for batch in batches for call in batch.calls]
        try:
            results = await self._evalsha(calls, load=not self._loaded)
            self._loaded = True
            again = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
            if again:
                # Redis lost the scripts (a restart, SCRIPT FLUSH): those calls ran nothing.
                retried = await self._evalsha([calls[i] for i in again], load=True)
                for i, result in zip(again, retried, strict=True):
                    results[i] = result
        except asyncio.CancelledError:
            self._fail(batches, ConnectionError("the session writer stopped"))
            raise
        except Exception as e:  # noqa: BLE001 - Redis trouble: each caller decides
            self._fail(batches, e)
            return
        start = 0
        for batch in batches:
            mine = results[start : start + len(batch.calls)]
            start += len(batch.calls)
            if batch.done.done():
                continue  # its caller gave up waiting
            error = next((r for r in mine if isinstance(r, Exception)), None)
            if error is not None:
                batch.done.set_exception(error)
            else:
                batch.done.set_result(mine)

    async def _evalsha(self, calls: list[_Call], *, load: bool) -> list[Any]:
        """One pipeline of ``calls`` (their results, errors included); with ``load``, the
        scripts are loaded first in the same round trip. Not on every round trip: two more
        commands to pack, send and parse in a batch of a few ``hold`` calls was a fifth of
        the writer's time in a connection burst. Not redis-py's own way either: it would
        ask SCRIPT EXISTS in a round trip of its own."""
        commands = [command(b"SCRIPT", b"LOAD", s.source) for s in self._scripts] if load else []
        commands += [command(b"EVALSHA", script.sha, 1, key, *args) for script, key, args in calls]
        results = await self.writer.execute(commands)
        return results[len(self._scripts) :] if load else results

    @staticmethod
    def _fail(batches: list[_Batch], error: BaseException) -> None:
        for batch in batches:
            if not batch.done.done():
                batch.done.set_exception(error)
                batch.done.exception()  # retrieved: nobody may be waiting any more

    async def _call(self, calls: list[_Call]) -> list[Any]:
        """Queue ``calls`` for the writer's next round trip; their results, in order."""
        if self._closed:
            raise ConnectionError("the session writer stopped")
        done: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._queue.append(_Batch(calls, done))
        self._wake.set()
        return await done

    def _write_call(self, session_id: str, conn_id: str, update: SessionUpdate) -> _Call:
        forget = [_cursor_field(sub_id) for sub_id in update.forget]
        args: list[str | int] = [conn_id, self.ttl_s, len(forget), *forget]
        for k, v in fields_of(update).items():
            args += [k, v]
        return (self._write, self.keys.session(session_id), args)

    async def load(self, session_id: str) -> StoredSession | None:
        raw = await self.redis.hgetall(self.keys.session(session_id))
        if not raw or b"userId" not in raw:
            return None
        fields = {as_text(k): as_text(v) for k, v in raw.items()}
        subs_doc: dict[str, dict[str, Any]] = orjson.loads(fields.get("subs", "{}"))
        subs = []
        for sub_id, spec in subs_doc.items():
            cursor = fields.get(_cursor_field(sub_id))
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
        args: list[str | int] = [
            *(self.ttl_s, "1" if new else "0"),
            *(user_id, client_id, now_ms, gateway_id, conn_id),
        ]
        await self._call([(self._hold, self.keys.session(session_id), args)])

    async def write(self, session_id: str, conn_id: str, update: SessionUpdate) -> bool:
        """Write ``update`` while ``conn_id`` still holds the session (a connection that
        lost it to a resume changes nothing, deletions included); refreshes its TTL."""
        (written,) = await self._call([self._write_call(session_id, conn_id, update)])
        return bool(written)

    async def write_many(self, batch: list[tuple[str, str, SessionUpdate]]) -> None:
        """Several sessions' writes in the same round trip."""
        if batch:
            await self._call([self._write_call(*item) for item in batch])


def _cursor_field(sub_id: str) -> str:
    return f"cur:{sub_id}"


def fields_of(update: SessionUpdate) -> dict[str, str | int]:
    """The hash fields of ``update`` (the table at the top)."""
    fields: dict[str, str | int] = {}
    if update.subscriptions is not None:
        doc = {
            s.id: {"kind": s.kind, "topic": s.topic, "filters": list(s.filters), "hidden": s.hidden}
            for s in update.subscriptions
        }
        fields["subs"] = orjson.dumps(doc).decode()
    if update.agents is not None:
        fields["agents"] = orjson.dumps(sorted(update.agents)).decode()
    for sub_id, cursor in update.cursors.items():
        fields[_cursor_field(sub_id)] = cursor.to_str()
    if update.last_activity_ms is not None:
        fields["lastActivity"] = update.last_activity_ms
    if update.gateway_id is not None:
        fields["gatewayId"] = update.gateway_id
    return fields
