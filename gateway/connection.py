"""One client connection: authentication, the request loop, acks, heartbeat, cleanup.

Lifecycle: the first message must be a valid ``auth`` within ``auth_timeout_s``; anything
else before that gets an error ``ack`` (the deadline keeps running). A bad or expired token
gets an ``ack`` with AUTH_FAILED / TOKEN_EXPIRED, then close 1008 with the error name as the
reason. After ``connection:status``, every request gets exactly one ``ack``; malformed
input is answered, never fatal (only a frame over the size limit closes, with 1009, done by
websockets). Agent requests wait for the runner's real outcome in their own task, so a
slow runner never blocks this connection's pings or other requests.

Every frame, before and after auth, passes the same gate (:meth:`Connection._accept`): a
cheap complexity check (:func:`gateway.guard.check_frame`), the parser, then the rate limits
— this connection's token bucket, and the limits per user and per client IP that all
gateways share (:class:`gateway.redis_limits.SharedLimits`, decided locally). A client that
keeps going over a limit is closed with 1008 ``RATE_LIMIT_EXCEEDED``.

The token's expiry is enforced by a timer the connection owns: ``token_expiry_warning_s``
before ``exp`` the client gets a connection-only ``system:alert`` (warning, security); at
``exp`` it gets another (error, TOKEN_EXPIRED) and the connection is closed with 1008
``TOKEN_EXPIRED`` — unless a fresh ``auth`` refreshed the token in time, which restarts the
timer. Refusals that matter for security are reported to :class:`gateway.audit.SecurityAudit`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, Literal

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from gateway.audit import Kind
from gateway.guard import check_frame, limit_key
from gateway.limits import TokenBucket
from gateway.router import (
    LIFECYCLE_KINDS,
    Filter,
    Subscription,
    SubscriptionKind,
    catch_up,
    parse_filters,
    plan_catch_up,
)
from gateway.sessions import StoredSession, StoredSubscription
from shared.bus import Event, Position, Replay
from shared.errors import ErrorCode, ProtocolError, TeamdashError
from shared.keys import AGENTS_TOPIC, LOGS_TOPIC, METRICS_TOPIC, agent_topic
from shared.protocol import (
    AgentCommandMessage,
    AgentControlMessage,
    AgentPermissionMessage,
    AuthMessage,
    ClientMessage,
    ConnectionStatusMessage,
    ConnectionStatusPayload,
    CreateAgentMessage,
    HeartbeatMessage,
    HeartbeatPayload,
    Metadata,
    RestoredSubscription,
    SubscribeMessage,
    SystemAlertMessage,
    SystemAlertPayload,
    TerminateAgentMessage,
    UnsubscribeMessage,
    WSMessage,
    ack,
    decode_client_message,
    encode,
    new_id,
    now_ms,
)
from shared.redis_conn import describe, is_connection_error
from shared.tasks import OwnedTasks
from shared.tokens import Identity

if TYPE_CHECKING:
    from gateway.server import Gateway

log = logging.getLogger("ws.conn")
auth_log = logging.getLogger("ws.auth")

#: Close code for policy violations (auth failures, abuse).
CLOSE_POLICY = 1008
#: Close code of an ``auth`` that cannot be served now (Redis unreachable): RFC 6455's
#: "try again later"; clients reconnect with their backoff.
CLOSE_TRY_AGAIN = 1013
#: Consecutive rate-limited messages after which a flooding client is disconnected.
FLOOD_DISCONNECT_AFTER = 200
#: A rate-limit trip is audited once; a new one only after this long without refusals.
TRIP_QUIET_S = 1.0
#: Longest error text echoed in an ack (errors may quote the client's input).
MAX_ERROR_CHARS = 1000

#: Which error codes in an ack are security events, and of which kind.
_AUDITED: dict[ErrorCode, Kind] = {
    ErrorCode.AUTH_FAILED: "auth_failed",
    ErrorCode.TOKEN_EXPIRED: "token_expired",
    ErrorCode.INSUFFICIENT_PERMISSIONS: "permission_denied",
    ErrorCode.RATE_LIMIT_EXCEEDED: "rate_limited",
}


class Connection:
    def __init__(self, gateway: Gateway, ws: ServerConnection) -> None:
        self.gateway = gateway
        self.ws = ws
        self.settings = gateway.settings
        self.id = uuid.uuid4().hex[:12]
        self.identity: Identity | None = None
        self.session_id: str | None = None
        self.subscriptions: dict[str, Subscription[ServerConnection]] = {}
        #: Agents this session created (their lifecycle events are delivered to it).
        self.agents: set[str] = set()
        self.tasks = OwnedTasks(log, f"connection {self.id}")
        #: The client's address (behind trusted proxies: from X-Forwarded-For).
        self.ip = gateway.client_ip(ws)
        self._ip_key = limit_key(self.ip)
        self._bucket = TokenBucket(self.settings.messages_per_second)
        self._limited_in_a_row = 0
        self._last_limited = float("-inf")
        self._expiry_timer: asyncio.Task[None] | None = None
        #: Set once the connection is being closed for abuse: frames still queued are dropped.
        self._closing = False
        self._last_seen = time.monotonic()
        #: Pinged by the gateway's heartbeat ticker (from auth until a heartbeat timeout).
        self._heartbeat_on = False
        #: Cursors as last written to the session (to write only what changed).
        self._flushed: dict[str, Position] = {}
        self._active_since_flush = False
        self._last_session_write = time.monotonic()

    # -- sending ------------------------------------------------------------------
    async def send(self, message: WSMessage) -> None:
        try:
            await self.ws.send(encode(message), text=True)
        except ConnectionClosed:
            return
        self.gateway.metrics.count_out(message.type)

    async def send_ack(
        self,
        message_id: str,
        *,
        error: BaseException | None = None,
        result: dict[str, Any] | None = None,
        audit: bool = True,
    ) -> None:
        """One ``ack``; with ``audit``, a failure that is a security event is recorded."""
        if isinstance(error, TeamdashError) and len(error.message) > MAX_ERROR_CHARS:
            error = TeamdashError(error.code, error.message[:MAX_ERROR_CHARS] + "…")
        reply = ack(message_id, error=error, result=result)
        code = reply.payload.code
        if code is not None:
            self.gateway.metrics.errors.labels(code.name).inc()
            kind = _AUDITED.get(code)
            if audit and kind is not None:
                self.audit(kind, reply.payload.error or code.name)
        await self.send(reply)

    def audit(self, kind: Kind, reason: str) -> None:
        """Record a security event of this connection (see :mod:`gateway.audit`)."""
        self.gateway.audit.record(
            kind,
            reason,
            ip=self.ip,
            user_id=self.identity.user_id if self.identity is not None else None,
            connection_id=self.id,
        )

    async def send_notice(
        self, level: Literal["warning", "error"], message: str, details: dict[str, Any]
    ) -> None:
        """A ``system:alert`` (category security) for this connection only."""
        await self.send(
            SystemAlertMessage(
                type="system:alert",
                payload=SystemAlertPayload(
                    level=level, category="security", message=message, details=details
                ),
                metadata=Metadata(priority="high"),
            )
        )

    # -- lifecycle ----------------------------------------------------------------
    async def run(self) -> None:
        remote = self.ws.remote_address
        log.debug("connection %s from %s", self.id, remote)
        try:
            if not await self._authenticate():
                return
            self._start_heartbeat()
            async for raw in self.ws:
                self._last_seen = time.monotonic()
                self._active_since_flush = True
                await self._on_frame(raw)
        except ConnectionClosed:
            pass
        finally:
            await self._cleanup()
            log.debug(
                "connection %s closed (%s %s)", self.id, self.ws.close_code, self.ws.close_reason
            )

    async def _cleanup(self) -> None:
        await self.tasks.close()
        for sub in list(self.subscriptions.values()):
            await self.gateway.remove_subscription(sub)
        if self.session_id is not None:
            # What was still in the send buffer is lost with the socket: cursors stay at
            # the last position known to be handed over.
            fields = self.session_updates(advance=False)
            fields.update(lastActivity=now_ms(), gatewayId="")
            try:
                await self.gateway.sessions.write(self.session_id, self.id, fields)
            except Exception as e:  # noqa: BLE001 - Redis down: the session keeps its last flushed state
                log.warning("could not update session %s on close: %s", self.session_id, e)
        self.subscriptions.clear()

    # -- authentication ------------------------------------------------------------
    async def _authenticate(self) -> bool:
        deadline = time.monotonic() + self.settings.auth_timeout_s
        while True:
            remaining = deadline - time.monotonic()
            try:
                raw = await asyncio.wait_for(self.ws.recv(), max(remaining, 0))
            except TimeoutError:
                auth_log.info(
                    "connection %s: no auth within %.1fs", self.id, self.settings.auth_timeout_s
                )
                self.audit(
                    "auth_failed", f"no auth message within {self.settings.auth_timeout_s:g}s"
                )
                await self.ws.close(
                    CLOSE_POLICY,
                    f"AUTH_FAILED: no auth message within {self.settings.auth_timeout_s:g}s",
                )
                return False
            message = await self._accept(raw)
            if message is None:
                continue
            if not isinstance(message, AuthMessage):
                if not isinstance(message, HeartbeatMessage):
                    await self.send_ack(
                        message.id,
                        error=TeamdashError(
                            ErrorCode.AUTH_FAILED, "authenticate first: send an auth message"
                        ),
                        audit=False,
                    )
                continue
            try:
                identity = self.gateway.verifier.verify(message.credentials.token)
            except TeamdashError as e:
                auth_log.info("connection %s from %s: %s", self.id, self.ip, e.message)
                await self.send_ack(message.id, error=e)
                await self.ws.close(CLOSE_POLICY, e.code.name)
                return False
            self.identity = identity
            try:
                await self._start_session(message)
            except TeamdashError as e:
                auth_log.info("connection %s: %s", self.id, e.message)
                await self.send_ack(message.id, error=e)
                await self.ws.close(CLOSE_POLICY, e.code.name)
                return False
            except Exception as e:
                if not is_connection_error(e):
                    raise
                # No session without Redis: say so, then close with "try again later" (the
                # client's reconnect, with backoff, is the retry).
                await self.send_ack(message.id, error=self.gateway_unavailable(e, "auth"))
                await self.ws.close(CLOSE_TRY_AGAIN, "SERVICE_UNAVAILABLE: try again later")
                return False
            self._start_expiry_timer()
            return True

    async def _start_session(self, message: AuthMessage) -> None:
        """Create a session, or resume the one named in ``auth``: restore its subscriptions
        and agent associations, then send ``connection:status`` and the missed events."""
        assert self.identity is not None
        creds = message.credentials
        store = self.gateway.sessions
        stored: StoredSession | None = None
        if creds.sessionId is not None:
            stored = await store.load(creds.sessionId)
            if stored is not None and stored.user_id != self.identity.user_id:
                raise TeamdashError(
                    ErrorCode.INSUFFICIENT_PERMISSIONS, "that session belongs to another user"
                )
        self.session_id = stored.id if stored is not None else new_id()
        await store.hold(
            self.session_id,
            conn_id=self.id,
            user_id=self.identity.user_id,
            client_id=creds.clientId,
            gateway_id=self.gateway.id,
            now_ms=now_ms(),
            new=stored is None,
        )
        groups: list[tuple[list[Subscription[ServerConnection]], list[Event]]] = []
        replayed = missed = 0
        recovered = True
        if stored is not None:
            self.agents = set(stored.agents)
            client_positions = creds.positions or {}
            by_topic: dict[str, tuple[list[Subscription[ServerConnection]], list[Replay]]] = {}
            for saved in stored.subscriptions:
                sub = self._restore(saved)
                if sub is None:
                    continue
                given = client_positions.get(saved.topic)
                since = (
                    Position(given.offset, given.epoch)
                    if given is not None
                    else saved.cursor or Position(0, None)
                )
                self.subscriptions[sub.id] = sub
                replay = await self.gateway.attach(sub, since)
                subs, replays = by_topic.setdefault(sub.topic, ([], []))
                subs.append(sub)
                if replay is not None:
                    replays.append(replay)
            for subs, replays in by_topic.values():
                events = sorted(
                    {(e.epoch, e.offset): e for r in replays for e in r.events}.values(),
                    key=lambda e: (e.epoch, e.offset),
                )
                replayed += len(plan_catch_up(subs, events)[0])
                missed += max((r.missed for r in replays), default=0)
                recovered = recovered and all(r.recovered for r in replays)
                groups.append((subs, events))
            await self._save_subscriptions()
            log.info(
                "session %s resumed on connection %s: %d subscriptions, %d replayed, %d missed",
                self.session_id,
                self.id,
                len(self.subscriptions),
                replayed,
                missed,
            )
        auth_log.debug("connection %s authenticated as %s", self.id, self.identity.user_id)
        await self.send(
            ConnectionStatusMessage(
                type="connection:status",
                payload=ConnectionStatusPayload(
                    status="authenticated",
                    sessionId=self.session_id,
                    userId=self.identity.user_id,
                    resumed=stored is not None,
                    recovered=recovered if stored is not None else None,
                    replayed=replayed,
                    missed=missed,
                    heartbeatIntervalMs=int(self.settings.heartbeat_interval_s * 1000),
                    gatewayId=self.gateway.id,
                    roles=sorted(self.identity.roles),
                    subscriptions=(
                        [
                            RestoredSubscription(
                                subscriptionId=sub.id,
                                kind=sub.kind,
                                topic=sub.topic,
                                filters=list(sub.requested_filters) or None,
                            )
                            for sub in self.subscriptions.values()
                            if not sub.hidden
                        ]
                        if stored is not None
                        else None
                    ),
                ),
                metadata=Metadata(correlationId=message.id),
            )
        )
        self.gateway.metrics.sessions.labels("resumed" if stored is not None else "new").inc()
        if stored is not None:
            self.gateway.metrics.replayed.inc(replayed)
            self.gateway.metrics.missed.inc(missed)
        for subs, events in groups:
            catch_up(subs, events, self.gateway.send_many)

    def _restore(self, saved: StoredSubscription) -> Subscription[ServerConnection] | None:
        """A subscription of a resumed session, with today's permissions applied."""
        assert self.identity is not None
        kind: SubscriptionKind = saved.kind  # type: ignore[assignment]
        try:
            filt = parse_filters(kind, saved.filters)
        except ProtocolError:
            return None
        if saved.hidden:
            filt = Filter((LIFECYCLE_KINDS,))
        return Subscription(
            id=saved.id,
            conn=self.ws,
            kind=kind,
            topic=saved.topic,
            filter=filt.restricted_to(self._visible_owner()),
            requested_filters=saved.filters,
            hidden=saved.hidden,
        )

    # -- session state -------------------------------------------------------------
    def session_updates(self, *, advance: bool = True) -> dict[str, str | int]:
        """Session fields that changed since the last write: the delivered cursors, and
        ``lastActivity``. With ``advance``, a live subscription's cursor moves to its
        route's position when everything sent so far has left the send buffer.

        ``lastActivity`` is not worth a write of its own each time the client says
        something (every heartbeat would cost a Redis call): it goes with cursors that
        changed, else at most once per ``session_ttl_s / 3`` — which is also when a session
        with nothing else to write gets its TTL refreshed (``gatewayId``)."""
        now = time.monotonic()
        due = now - self._last_session_write > self.settings.session_ttl_s / 3
        if not due and not self.subscriptions:
            return {}  # the common idle case: no cursor can have moved, nothing is due
        fields: dict[str, str | int] = {}
        if advance:
            transport = self.ws.transport
            drained = transport is not None and transport.get_write_buffer_size() == 0
            if drained:
                routes = self.gateway.routes
                for sub in self.subscriptions.values():
                    route = routes.get(sub.topic)
                    if route is not None and not sub.catching_up and not route.held:
                        sub.cursor = route.position
        for sub in self.subscriptions.values():
            if sub.cursor is not None and self._flushed.get(sub.id) != sub.cursor:
                fields[f"cur:{sub.id}"] = sub.cursor.to_str()
                self._flushed[sub.id] = sub.cursor
        if self._active_since_flush and (fields or due):
            self._active_since_flush = False
            fields["lastActivity"] = now_ms()
        if not fields and due:
            fields["gatewayId"] = self.gateway.id  # keeps an idle session's TTL fresh
        if fields:
            self._last_session_write = now
        return fields

    async def _save_subscriptions(self) -> None:
        """Write the session's subscriptions and agent associations (on every change)."""
        if self.session_id is None:
            return
        stored = [
            StoredSubscription(
                id=sub.id,
                kind=sub.kind,
                topic=sub.topic,
                filters=sub.requested_filters,
                hidden=sub.hidden,
                cursor=sub.cursor,
            )
            for sub in self.subscriptions.values()
        ]
        fields: dict[str, str | int] = dict(
            self.gateway.sessions.subscription_fields(stored, sorted(self.agents))
        )
        for sub in self.subscriptions.values():
            if sub.cursor is not None:
                self._flushed[sub.id] = sub.cursor
        await self.gateway.sessions.write(self.session_id, self.id, fields)

    # -- heartbeat -----------------------------------------------------------------
    # One timer for all connections: every heartbeat_interval_s the gateway's ticker
    # (Gateway._heartbeat_forever) asks each connection heartbeat_due() and writes one
    # shared, once-encoded ``ping`` to those that answer True.
    def _start_heartbeat(self) -> None:
        """From now on (authenticated) the gateway's ticker pings this connection."""
        self._last_seen = time.monotonic()  # the auth message was heard just now
        self._heartbeat_on = True

    def heartbeat_due(self, now: float) -> bool:
        """One tick of the heartbeat: True when this connection is to get the tick's
        ``ping``. One that sent nothing for two intervals (two pings unanswered) is closed
        with 1001 instead, once."""
        if not self._heartbeat_on or self.ws.state is not State.OPEN:
            return False
        if now - self._last_seen > 2 * self.settings.heartbeat_interval_s:
            self._heartbeat_on = False
            log.info("connection %s: two heartbeats unanswered, closing", self.id)
            self.tasks.spawn(self.ws.close(1001, "heartbeat timeout"), f"heartbeat:{self.id}")
            return False
        return True

    # -- token expiry ----------------------------------------------------------------
    def _start_expiry_timer(self) -> None:
        """(Re)start the timer that warns before, and closes at, the token's expiry."""
        assert self.identity is not None
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
        self._expiry_timer = self.tasks.spawn(
            self._expiry_watch(self.identity), f"expiry:{self.id}"
        )

    def _token_expired(self) -> bool:
        assert self.identity is not None
        return time.time() >= self.identity.expires_at + self.gateway.verifier.leeway_s

    async def _expiry_watch(self, identity: Identity) -> None:
        warning_s = self.settings.token_expiry_warning_s
        if warning_s > 0:
            await _sleep_until(identity.expires_at - warning_s)
            left = max(0, round(identity.expires_at - time.time()))
            await self.send_notice(
                "warning",
                f"your token expires in {left}s: send an auth message with a fresh token "
                "to stay connected",
                {"expiresAt": int(identity.expires_at * 1000)},
            )
        await _sleep_until(identity.expires_at + self.gateway.verifier.leeway_s)
        await self._expire(None)

    async def _expire(self, message_id: str | None) -> None:
        """TOKEN_EXPIRED: to the request ``message_id`` if given, then a notice and close 1008."""
        assert self.identity is not None
        expires_ms = int(self.identity.expires_at * 1000)
        error = TeamdashError(ErrorCode.TOKEN_EXPIRED, "token expired")
        if message_id is not None:
            await self.send_ack(message_id, error=error, audit=False)
        self.audit("token_expired", "token expired on a live connection")
        await self.send_notice(
            "error",
            "your token expired: the connection is closed; reconnect with a fresh token",
            {
                "code": int(ErrorCode.TOKEN_EXPIRED),
                "error": "TOKEN_EXPIRED",
                "expiresAt": expires_ms,
            },
        )
        await self.ws.close(CLOSE_POLICY, ErrorCode.TOKEN_EXPIRED.name)

    # -- requests ------------------------------------------------------------------
    async def _accept(self, raw: str | bytes) -> ClientMessage | None:
        """Check, parse and rate-limit one frame. Returns the message to serve, or None
        when the frame was answered here (an error ack) or dropped."""
        if self._closing:
            return None
        metrics = self.gateway.metrics
        message: ClientMessage | None = None
        error: ProtocolError | None = None
        try:
            check_frame(raw)
        except ProtocolError as e:
            error = e
            self.audit("frame_refused", e.message)
        else:
            try:
                message = decode_client_message(raw)
            except ProtocolError as e:
                error = e
        metrics.count_in(message.type if message is not None else "invalid")
        refused_by = self._over_limit()
        if refused_by is not None:
            await self._refuse(message, error, refused_by)
            return None
        if error is not None:
            log.debug("connection %s: %s", self.id, error.message)
            await self.send_ack(error.message_id or new_id(), error=error)
            return None
        return message

    def _over_limit(self) -> str | None:
        """Count one message against every limit; which limit refused it, or None."""
        if not self._bucket.take():
            return f"more than {self.settings.messages_per_second} messages/s on this connection"
        user_id = self.identity.user_id if self.identity is not None else None
        refused = self.gateway.limits.admit(user_id, self._ip_key)
        if refused == "user":
            return (
                f"more than {self.settings.user_messages_per_second} messages/s for user {user_id}"
            )
        if refused == "ip":
            return f"more than {self.settings.ip_messages_per_second} messages/s from {self.ip}"
        self._limited_in_a_row = 0
        return None

    async def _refuse(
        self, message: ClientMessage | None, error: ProtocolError | None, why: str
    ) -> None:
        self._limited_in_a_row += 1
        now = time.monotonic()
        if now - self._last_limited > TRIP_QUIET_S:
            self.audit("rate_limited", why)
        self._last_limited = now
        if self._limited_in_a_row > FLOOD_DISCONNECT_AFTER:
            self.audit(
                "flood_disconnect",
                f"{self._limited_in_a_row} messages in a row over the limit: {why}",
            )
            # Closed from a task while the reader keeps draining (and dropping) the frames
            # queued behind: the client's close frame is behind them, and awaiting the
            # close here would hold the connection for the whole close timeout.
            self._closing = True
            self.tasks.spawn(self.ws.close(CLOSE_POLICY, "RATE_LIMIT_EXCEEDED"), f"close:{self.id}")
            return
        if isinstance(message, HeartbeatMessage):
            return
        if message is not None:
            message_id = message.id
        else:
            message_id = error.message_id if error is not None and error.message_id else new_id()
        await self.send_ack(
            message_id, error=TeamdashError(ErrorCode.RATE_LIMIT_EXCEEDED, why), audit=False
        )

    async def _on_frame(self, raw: str | bytes) -> None:
        message = await self._accept(raw)
        if message is None:
            return
        if not isinstance(message, AuthMessage) and self._token_expired():
            await self._expire(None if isinstance(message, HeartbeatMessage) else message.id)
            return
        await self._answering(message, self._dispatch(message))

    async def _answering(self, message: ClientMessage, work: Awaitable[None]) -> None:
        """Await ``work`` for ``message``; a failure becomes its ack (an unexpected one is
        logged and answered INTERNAL_ERROR)."""
        try:
            await work
        except TeamdashError as e:
            await self.send_ack(message.id, error=e)
        except ConnectionClosed:
            raise
        except Exception as e:
            if is_connection_error(e):
                await self.send_ack(message.id, error=self.gateway_unavailable(e, message.type))
                return
            log.exception("connection %s: %s failed", self.id, message.type)
            await self.send_ack(
                message.id,
                error=TeamdashError(
                    ErrorCode.INTERNAL_ERROR, f"internal error: {type(e).__name__}"
                ),
            )

    def gateway_unavailable(self, error: BaseException, what: str) -> TeamdashError:
        """SERVICE_UNAVAILABLE for a request that failed because Redis is unreachable: one
        warning line (no traceback), and the gateway's Redis watch is told."""
        self.gateway.redis_failed(error)
        reason = describe(error)
        log.warning("connection %s: %s failed: Redis unreachable (%s)", self.id, what, reason)
        return TeamdashError(
            ErrorCode.SERVICE_UNAVAILABLE,
            f"the gateway cannot reach Redis ({reason}); try again later",
        )

    async def _dispatch(self, message: ClientMessage) -> None:
        if isinstance(message, HeartbeatMessage):
            if message.type == "ping":
                await self.send(
                    HeartbeatMessage(
                        type="pong",
                        payload=HeartbeatPayload(),
                        metadata=Metadata(correlationId=message.id),
                    )
                )
        elif isinstance(message, SubscribeMessage):
            await self._subscribe(message)
        elif isinstance(message, UnsubscribeMessage):
            sub = self.subscriptions.get(message.payload.subscriptionId)
            if sub is None or sub.hidden:
                raise TeamdashError(
                    ErrorCode.INVALID_MESSAGE,
                    f"no subscription {message.payload.subscriptionId!r} on this connection",
                )
            del self.subscriptions[sub.id]
            self._flushed.pop(sub.id, None)
            await self.gateway.remove_subscription(sub)
            await self.send_ack(message.id, result={"subscriptionId": sub.id})
            await self._save_after_ack(forget=sub.id)
        elif isinstance(message, AuthMessage):
            await self._refresh_token(message)
        elif isinstance(message, CreateAgentMessage):
            self._require_control()
            self.tasks.spawn(self._request(self._create_agent, message), f"create:{message.id}")
        else:
            self._require_control()
            self.tasks.spawn(
                self._request(self._control_agent, message), f"{message.type}:{message.id}"
            )

    async def _request(self, handler: Any, message: ClientMessage) -> None:
        """Run an agent request in its own task; its outcome becomes the ack."""
        try:
            await self._answering(message, handler(message))
        except ConnectionClosed:
            pass  # the client left before its answer: nobody to tell

    async def _refresh_token(self, message: AuthMessage) -> None:
        """A new token on a live connection: same user; restarts the expiry timer. When the
        new token's roles see fewer agents, subscriptions are narrowed or ended (their ids
        are in the ack's ``result.endedSubscriptions``)."""
        assert self.identity is not None
        identity = self.gateway.verifier.verify(message.credentials.token)
        if identity.user_id != self.identity.user_id:
            raise TeamdashError(ErrorCode.AUTH_FAILED, "a connection cannot change its user")
        roles_changed = identity.roles != self.identity.roles
        self.identity = identity
        self._start_expiry_timer()
        result: dict[str, Any] = {"expiresAt": int(identity.expires_at * 1000)}
        if roles_changed:
            ended = await self._reapply_permissions()
            if ended:
                result["endedSubscriptions"] = ended
        await self.send_ack(message.id, result=result)

    async def _reapply_permissions(self) -> list[str]:
        """Apply the current roles to the open subscriptions; the ids of those ended."""
        assert self.identity is not None
        ended = []
        for sub in list(self.subscriptions.values()):
            sub.filter = sub.filter.restricted_to(self._visible_owner())
            if sub.hidden or sub.kind != "agent" or sub.topic == AGENTS_TOPIC:
                continue
            try:
                record = await self.gateway.runners.agent(sub.topic.removeprefix("agent:"))
            except TeamdashError:
                continue  # the agent is gone: nothing more to see
            if not self._may_see(record.owner):
                del self.subscriptions[sub.id]
                self._flushed.pop(sub.id, None)
                await self.gateway.remove_subscription(sub)
                ended.append(sub.id)
        if ended:
            self.audit("permission_denied", f"refreshed roles end subscriptions {ended}")
            await self._save_subscriptions()
        return ended

    # -- subscriptions -------------------------------------------------------------
    async def _subscribe(self, message: SubscribeMessage) -> None:
        assert self.identity is not None
        if (
            sum(not s.hidden for s in self.subscriptions.values())
            >= self.settings.max_subscriptions
        ):
            raise TeamdashError(
                ErrorCode.RATE_LIMIT_EXCEEDED,
                f"at most {self.settings.max_subscriptions} active subscriptions per connection",
            )
        kind = message.type.removeprefix("subscribe:")
        filt = parse_filters(kind, message.payload.filters)  # type: ignore[arg-type]
        since: Position | None = None
        if kind == "agent" and message.payload.agentId is not None:
            agent_id = message.payload.agentId
            record = await self.gateway.runners.agent(agent_id)
            if not self._may_see(record.owner):
                raise TeamdashError(
                    ErrorCode.INSUFFICIENT_PERMISSIONS,
                    f"agent {agent_id!r} belongs to another user",
                )
            topic = agent_topic(agent_id)
            if agent_id in self.agents:
                # The session created this agent: give it everything since the start.
                since = Position(0, None)
        elif kind == "agent":
            topic = AGENTS_TOPIC
        elif kind == "metrics":
            topic = METRICS_TOPIC
        else:
            topic = LOGS_TOPIC
        sub: Subscription[ServerConnection] = Subscription(
            id=new_id(),
            conn=self.ws,
            kind=kind,  # type: ignore[arg-type]
            topic=topic,
            filter=filt.restricted_to(self._visible_owner()),
            requested_filters=tuple(message.payload.filters or ()),
        )
        self.subscriptions[sub.id] = sub
        try:
            # Routed first, so every event published after the ack reaches the client...
            replay = await self.gateway.attach(sub, since)
        except BaseException:
            self.subscriptions.pop(sub.id, None)
            raise
        # ...and the ack is written before any of them (no await in between): the client
        # knows the subscription id before its first event.
        await self.send_ack(message.id, result={"subscriptionId": sub.id, "topic": topic})
        if replay is not None:
            catch_up([sub], replay.events, self.gateway.send_many)
        await self._save_after_ack()

    async def _save_after_ack(self, *, forget: str | None = None) -> None:
        """Persist the session after a request was acked (dropping the cursor of the
        subscription ``forget``): a failure here is logged, never answered with a second
        ack (the next change or flush writes the session again)."""
        try:
            await self._save_subscriptions()
            if forget is not None and self.session_id is not None:
                await self.gateway.redis.hdel(
                    self.gateway.keys.session(self.session_id), f"cur:{forget}"
                )
        except Exception as e:  # noqa: BLE001 - Redis trouble must not turn into a second ack
            log.warning("connection %s: could not save the session: %s", self.id, e)

    def _sees_all_agents(self) -> bool:
        """Admins and read-only viewers see every agent; operators their own, unless
        TEAMDASH_OPERATORS_SEE_ALL_AGENTS is set."""
        assert self.identity is not None
        roles = self.identity.roles
        if "admin" in roles or self.settings.operators_see_all_agents:
            return True
        return "operator" not in roles

    def _visible_owner(self) -> str | None:
        """Whose agents this user sees in every topic: None for all, else their own."""
        assert self.identity is not None
        return None if self._sees_all_agents() else self.identity.user_id

    def _may_see(self, owner: str) -> bool:
        assert self.identity is not None
        return self._sees_all_agents() or owner == self.identity.user_id

    # -- agents --------------------------------------------------------------------
    def _require_control(self) -> None:
        assert self.identity is not None
        if not self.identity.can_control_agents():
            raise TeamdashError(
                ErrorCode.INSUFFICIENT_PERMISSIONS, "your role may not create or control agents"
            )

    async def _create_agent(self, message: CreateAgentMessage) -> None:
        assert self.identity is not None
        runners = self.gateway.runners
        await runners.check_capacity()
        agent_id = str(uuid.uuid4())
        try:
            reply = await runners.request(
                "create",
                request_id=message.id,
                identity=self.identity,
                agent_id=agent_id,
                payload=message.payload.model_dump(mode="json", exclude_none=True),
            )
        except TeamdashError as e:
            if e.code is ErrorCode.SERVICE_UNAVAILABLE:
                # Nobody took it: if that is because every runner is full, say so.
                await runners.check_capacity()
            raise
        if not reply.success:
            raise _reply_error(reply.code, reply.error)
        self.agents.add(agent_id)
        result = {"agentId": agent_id, **(reply.result or {})}
        await self.send_ack(message.id, result=result)
        # Lifecycle events of the new agent, from its very first one (agent:created).
        sub: Subscription[ServerConnection] = Subscription(
            id=new_id(),
            conn=self.ws,
            kind="agent",
            topic=agent_topic(agent_id),
            filter=Filter((LIFECYCLE_KINDS,)),
            hidden=True,
        )
        self.subscriptions[sub.id] = sub
        try:
            await self.gateway.subscribe(sub, Position(0, None))
        except Exception as e:  # noqa: BLE001 - already acked: report it in the log, not twice
            self.subscriptions.pop(sub.id, None)
            log.error(
                "connection %s: agent %s's events cannot be followed: %s", self.id, agent_id, e
            )
            return
        await self._save_after_ack()

    async def _control_agent(
        self,
        message: AgentCommandMessage
        | AgentControlMessage
        | TerminateAgentMessage
        | AgentPermissionMessage,
    ) -> None:
        assert self.identity is not None
        runners = self.gateway.runners
        agent_id = message.payload.agentId
        record = await runners.agent(agent_id)
        if not self.identity.is_admin and record.owner != self.identity.user_id:
            raise TeamdashError(
                ErrorCode.INSUFFICIENT_PERMISSIONS, f"agent {agent_id!r} belongs to another user"
            )
        if isinstance(message, AgentCommandMessage):
            await runners.count_command(agent_id)
        await runners.check_runner(record.runner_id)
        kind = (
            "command"
            if isinstance(message, AgentCommandMessage)
            else message.type.removeprefix("agent:")
        )
        reply = await runners.request(
            kind,  # type: ignore[arg-type]
            request_id=message.id,
            identity=self.identity,
            agent_id=agent_id,
            payload=message.payload.model_dump(mode="json", exclude_none=True),
            runner_id=record.runner_id,
        )
        if not reply.success:
            raise _reply_error(reply.code, reply.error)
        await self.send_ack(message.id, result={"agentId": agent_id, **(reply.result or {})})


async def _sleep_until(wall_time: float) -> None:
    """Sleep until the wall clock reads ``wall_time`` (re-checked, as it may be adjusted)."""
    while (left := wall_time - time.time()) > 0:  # noqa: ASYNC110 - a timer, not a poll
        await asyncio.sleep(min(left, 60.0))


def _reply_error(code: int | None, error: str | None) -> TeamdashError:
    try:
        ecode = ErrorCode(code) if code is not None else ErrorCode.INTERNAL_ERROR
    except ValueError:
        ecode = ErrorCode.INTERNAL_ERROR
    return TeamdashError(ecode, error or ecode.name)
