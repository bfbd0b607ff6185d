"""One client connection: authentication, the request loop, acks, heartbeat, cleanup.

Lifecycle: the first message must be a valid ``auth`` within ``auth_timeout_s``; anything
else before that gets an error ``ack`` (the deadline keeps running). A bad or expired token
gets an ``ack`` with AUTH_FAILED / TOKEN_EXPIRED, then close 1008 with the error name as the
reason. After ``connection:status``, every request gets exactly one ``ack``; malformed
input is answered, never fatal (only a frame over the size limit closes, with 1009, done by
websockets). Agent requests wait for the runner's real outcome in their own task, so a
slow runner never blocks this connection's pings or other requests.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

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
    AuthMessage,
    ClientMessage,
    ConnectionStatusMessage,
    ConnectionStatusPayload,
    CreateAgentMessage,
    HeartbeatMessage,
    HeartbeatPayload,
    Metadata,
    SubscribeMessage,
    TerminateAgentMessage,
    UnsubscribeMessage,
    WSMessage,
    ack,
    decode_client_message,
    encode,
    new_id,
    now_ms,
)
from shared.tokens import Identity

if TYPE_CHECKING:
    from gateway.server import Gateway

log = logging.getLogger("ws.conn")
auth_log = logging.getLogger("ws.auth")

#: Close code for policy violations (auth failures, abuse).
CLOSE_POLICY = 1008
#: Consecutive rate-limited messages after which a flooding client is disconnected.
FLOOD_DISCONNECT_AFTER = 200


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
        self._tasks: set[asyncio.Task[None]] = set()
        self._bucket = TokenBucket(self.settings.messages_per_second)
        self._limited_in_a_row = 0
        self._last_seen = time.monotonic()
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
    ) -> None:
        reply = ack(message_id, error=error, result=result)
        if reply.payload.code is not None:
            self.gateway.metrics.errors.labels(reply.payload.code.name).inc()
        await self.send(reply)

    # -- lifecycle ----------------------------------------------------------------
    async def run(self) -> None:
        remote = self.ws.remote_address
        log.debug("connection %s from %s", self.id, remote)
        try:
            if not await self._authenticate():
                return
            heartbeat = asyncio.create_task(self._heartbeat(), name=f"heartbeat:{self.id}")
            self._tasks.add(heartbeat)
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
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for sub in list(self.subscriptions.values()):
            await self.gateway.remove_subscription(sub)
        if self.session_id is not None:
            # What was still in the send buffer is lost with the socket: cursors stay at
            # the last position known to be handed over.
            fields = self.session_updates(advance=False)
            fields.update(lastActivity=now_ms(), gatewayId="")
            try:
                await self.gateway.sessions.write(self.session_id, self.id, fields)
            except Exception as e:  # Redis down: the session keeps its last flushed state
                log.warning("could not update session %s on close: %s", self.session_id, e)
        self.subscriptions.clear()

    def _spawn(self, coro: Any, name: str) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- authentication ------------------------------------------------------------
    async def _authenticate(self) -> bool:
        deadline = time.monotonic() + self.settings.auth_timeout_s
        while True:
            remaining = deadline - time.monotonic()
            try:
                raw = await asyncio.wait_for(self.ws.recv(), max(remaining, 0))
            except TimeoutError:
                auth_log.info("connection %s: no auth within %.1fs", self.id, self.settings.auth_timeout_s)
                await self.ws.close(
                    CLOSE_POLICY, f"AUTH_FAILED: no auth message within {self.settings.auth_timeout_s:g}s"
                )
                return False
            try:
                message = decode_client_message(raw)
            except ProtocolError as e:
                self.gateway.metrics.count_in("invalid")
                await self.send_ack(e.message_id or new_id(), error=e)
                continue
            self.gateway.metrics.count_in(message.type)
            if not isinstance(message, AuthMessage):
                await self.send_ack(
                    message.id,
                    error=TeamdashError(ErrorCode.AUTH_FAILED, "authenticate first: send an auth message"),
                )
                continue
            try:
                identity = self.gateway.verifier.verify(message.credentials.token)
            except TeamdashError as e:
                auth_log.info("connection %s from %s: %s", self.id, self.ws.remote_address, e.message)
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
                self.session_id, self.id, len(self.subscriptions), replayed, missed,
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
                ),
                metadata=Metadata(correlationId=message.id),
            )
        )
        self.gateway.metrics.sessions.labels("resumed" if stored is not None else "new").inc()
        if stored is not None:
            self.gateway.metrics.replayed.inc(replayed)
            self.gateway.metrics.missed.inc(missed)
        for subs, events in groups:
            catch_up(subs, events, self.gateway.send_one)

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
        elif saved.topic == AGENTS_TOPIC and not self._sees_all_agents():
            filt = Filter(filt.dimensions, owner=self.identity.user_id)
        return Subscription(
            id=saved.id,
            conn=self.ws,
            kind=kind,
            topic=saved.topic,
            filter=filt,
            requested_filters=saved.filters,
            hidden=saved.hidden,
        )

    # -- session state -------------------------------------------------------------
    def session_updates(self, *, advance: bool = True) -> dict[str, str | int]:
        """Session fields that changed since the last write: the delivered cursors, and
        ``lastActivity``. With ``advance``, a live subscription's cursor moves to its
        route's position when everything sent so far has left the send buffer."""
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
        if self._active_since_flush:
            self._active_since_flush = False
            fields["lastActivity"] = now_ms()
        now = time.monotonic()
        if not fields and now - self._last_session_write > self.settings.session_ttl_s / 3:
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
    async def _heartbeat(self) -> None:
        interval = self.settings.heartbeat_interval_s
        while True:
            await asyncio.sleep(interval)
            if time.monotonic() - self._last_seen > 2 * interval:
                log.info("connection %s: two heartbeats unanswered, closing", self.id)
                await self.ws.close(1001, "heartbeat timeout")
                return
            await self.send(HeartbeatMessage(type="ping"))

    # -- requests ------------------------------------------------------------------
    async def _on_frame(self, raw: str | bytes) -> None:
        metrics = self.gateway.metrics
        try:
            message = decode_client_message(raw)
        except ProtocolError as e:
            metrics.count_in("invalid")
            log.debug("connection %s: %s", self.id, e.message)
            await self.send_ack(e.message_id or new_id(), error=e)
            return
        metrics.count_in(message.type)
        if not self._bucket.take():
            self._limited_in_a_row += 1
            if self._limited_in_a_row > FLOOD_DISCONNECT_AFTER:
                await self.ws.close(CLOSE_POLICY, "RATE_LIMIT_EXCEEDED")
                return
            if not isinstance(message, HeartbeatMessage):
                await self.send_ack(
                    message.id,
                    error=TeamdashError(
                        ErrorCode.RATE_LIMIT_EXCEEDED,
                        f"more than {self.settings.messages_per_second} messages/s",
                    ),
                )
            return
        self._limited_in_a_row = 0
        try:
            await self._dispatch(message)
        except TeamdashError as e:
            await self.send_ack(message.id, error=e)
        except ConnectionClosed:
            raise
        except Exception as e:
            log.exception("connection %s: %s failed", self.id, message.type)
            await self.send_ack(
                message.id, error=TeamdashError(ErrorCode.INTERNAL_ERROR, f"internal error: {type(e).__name__}")
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
            await self._save_subscriptions()
            assert self.session_id is not None
            await self.gateway.redis.hdel(self.gateway.keys.session(self.session_id), f"cur:{sub.id}")
        elif isinstance(message, AuthMessage):
            await self._refresh_token(message)
        elif isinstance(message, CreateAgentMessage):
            self._require_control()
            self._spawn(self._request(self._create_agent, message), f"create:{message.id}")
        else:
            self._require_control()
            self._spawn(self._request(self._control_agent, message), f"{message.type}:{message.id}")

    async def _request(self, handler: Any, message: ClientMessage) -> None:
        """Run an agent request in its own task; its outcome becomes the ack."""
        try:
            await handler(message)
        except TeamdashError as e:
            await self.send_ack(message.id, error=e)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.exception("connection %s: %s failed", self.id, message.type)
            await self.send_ack(
                message.id, error=TeamdashError(ErrorCode.INTERNAL_ERROR, f"internal error: {type(e).__name__}")
            )

    async def _refresh_token(self, message: AuthMessage) -> None:
        assert self.identity is not None
        identity = self.gateway.verifier.verify(message.credentials.token)
        if identity.user_id != self.identity.user_id:
            raise TeamdashError(ErrorCode.AUTH_FAILED, "a connection cannot change its user")
        self.identity = identity
        await self.send_ack(message.id, result={"expiresAt": int(identity.expires_at * 1000)})

    # -- subscriptions -------------------------------------------------------------
    async def _subscribe(self, message: SubscribeMessage) -> None:
        assert self.identity is not None
        if sum(not s.hidden for s in self.subscriptions.values()) >= self.settings.max_subscriptions:
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
                    ErrorCode.INSUFFICIENT_PERMISSIONS, f"agent {agent_id!r} belongs to another user"
                )
            topic = agent_topic(agent_id)
            if agent_id in self.agents:
                # The session created this agent: give it everything since the start.
                since = Position(0, None)
        elif kind == "agent":
            topic = AGENTS_TOPIC
            if not self._sees_all_agents():
                filt = Filter(filt.dimensions, owner=self.identity.user_id)
        elif kind == "metrics":
            topic = METRICS_TOPIC
        else:
            topic = LOGS_TOPIC
        sub: Subscription[ServerConnection] = Subscription(
            id=new_id(),
            conn=self.ws,
            kind=kind,  # type: ignore[arg-type]
            topic=topic,
            filter=filt,
            requested_filters=tuple(message.payload.filters or ()),
        )
        self.subscriptions[sub.id] = sub
        # The ack goes first, so the client knows the subscription id before its events.
        await self.send_ack(message.id, result={"subscriptionId": sub.id, "topic": topic})
        try:
            await self.gateway.subscribe(sub, since)
        except BaseException:
            self.subscriptions.pop(sub.id, None)
            raise
        await self._save_subscriptions()

    def _sees_all_agents(self) -> bool:
        """Admins and read-only viewers see every agent; operators their own, unless
        TEAMDASH_OPERATORS_SEE_ALL_AGENTS is set."""
        assert self.identity is not None
        roles = self.identity.roles
        if "admin" in roles or self.settings.operators_see_all_agents:
            return True
        return "operator" not in roles

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
        await self.gateway.subscribe(sub, Position(0, None))
        await self._save_subscriptions()

    async def _control_agent(
        self, message: AgentCommandMessage | AgentControlMessage | TerminateAgentMessage
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
        if not await runners.runner_alive(record.runner_id):
            raise TeamdashError(
                ErrorCode.SERVICE_UNAVAILABLE,
                f"the runner of agent {agent_id!r} is not responding",
            )
        kind = "command" if isinstance(message, AgentCommandMessage) else message.type.removeprefix("agent:")
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


def _reply_error(code: int | None, error: str | None) -> TeamdashError:
    try:
        ecode = ErrorCode(code) if code is not None else ErrorCode.INTERNAL_ERROR
    except ValueError:
        ecode = ErrorCode.INTERNAL_ERROR
    return TeamdashError(ecode, error or ecode.name)
