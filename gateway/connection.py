"""One client connection, the WebSocket adapter of :mod:`gateway.client_session`.

The rules live in the core (:class:`gateway.client_session.ClientSession`); this file moves
data: it reads frames, feeds them to the core with the clock, carries out the actions the
core returns in order, and does the I/O the core asks for — the session in Redis
(:mod:`gateway.sessions`), topic routes (:mod:`gateway.routes`), agent requests
(:mod:`gateway.runners`). It owns the connection's timers: the auth deadline (the first
message must be ``auth`` within ``auth_timeout_s``) and the token's expiry.

Every frame is written synchronously through :class:`gateway.sending.Sender`, so what the
core returns in one list reaches the client in that order with nothing in between: the
``ack`` of a subscribe before its first event, ``connection:status`` before the replay.
Agent requests wait for the runner's real outcome in their own task, so a slow runner never
blocks this connection's pings or other requests.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from gateway.audit import Kind, SecurityAudit
from gateway.client_session import (
    Action,
    Audit,
    ClientSession,
    Close,
    ContinueCatchUp,
    Detach,
    Phase,
    Send,
    SendFrames,
    SessionUpdate,
    StartExpiryTimer,
    WriteSession,
)
from gateway.guard import limit_key
from gateway.metrics import GatewayMetrics
from gateway.redis_limits import SharedLimits
from gateway.router import Subscription, drop_queued
from gateway.routes import Routes
from gateway.runners import ControlMessage, RunnerClient
from gateway.sending import Sender
from gateway.sessions import SessionStore
from gateway.settings import GatewaySettings
from shared.bus import Position, Replay
from shared.errors import ErrorCode, TeamdashError
from shared.protocol import (
    AckMessage,
    AgentHistoryMessage,
    AgentListMessage,
    AuthMessage,
    ClientMessage,
    CreateAgentMessage,
    SubscribeMessage,
    UnsubscribeMessage,
    encode,
    new_id,
    now_ms,
)
from shared.redis_conn import describe, is_connection_error
from shared.tasks import OwnedTasks
from shared.tokens import TokenVerifier
from shared.topics import agent_topic

log = logging.getLogger("ws.conn")
auth_log = logging.getLogger("ws.auth")


@dataclass(frozen=True, slots=True)
class ConnectionParts:
    """What a connection needs of its gateway (built once by :class:`gateway.server.Gateway`)."""

    settings: GatewaySettings
    gateway_id: str
    verifier: TokenVerifier
    sessions: SessionStore
    runners: RunnerClient
    routes: Routes
    sender: Sender
    limits: SharedLimits
    audit: SecurityAudit
    metrics: GatewayMetrics
    #: The client's address (behind trusted proxies: from X-Forwarded-For).
    client_ip: Callable[[ServerConnection], str]
    #: A Redis call failed on a connection error (the gateway's Redis watch decides).
    redis_failed: Callable[[BaseException], None]


class Connection:
    def __init__(self, parts: ConnectionParts, ws: ServerConnection) -> None:
        self.parts = parts
        self.ws = ws
        self.id = ws.id.hex[:12]  # websockets' own uuid4: one less to make per connection
        self.ip = parts.client_ip(ws)
        self.session: ClientSession[ServerConnection] = ClientSession(
            ws,
            parts.settings,
            connection_id=self.id,
            ip=self.ip,
            ip_key=limit_key(self.ip),
            admit=parts.limits.admit,
            now=time.monotonic(),
            leeway_s=parts.verifier.leeway_s,
        )
        self.tasks = OwnedTasks(log, f"connection {self.id}")
        #: The token timer: a loop timer, re-armed at least every minute (see _arm_expiry).
        self._expiry: asyncio.TimerHandle | None = None

    # -- lifecycle ----------------------------------------------------------------
    async def run(self) -> None:
        log.debug("connection %s from %s", self.id, self.ws.remote_address)
        try:
            if not await self._authenticate():
                return
            async for raw in self.ws:
                received = self.session.receive(raw, time.monotonic(), time.time())
                self.parts.metrics.count_in(received.type)
                await self._carry_out(received.actions)
                if received.message is not None:
                    await self._answering(received.message, self._serve(received.message))
        except ConnectionClosed:
            pass
        finally:
            await self._cleanup()
            log.debug(
                "connection %s closed (%s %s)", self.id, self.ws.close_code, self.ws.close_reason
            )

    async def _cleanup(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        await self.tasks.close()
        subs, update = self.session.closed(now_ms())
        for sub in subs:
            await self.parts.routes.detach(sub)
        if update is not None:
            await self._write_session(update, what="update the session on close")

    # -- carrying out the core's actions ------------------------------------------------
    async def _carry_out(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                message = action.message
                self.parts.sender.send_many(self.ws, [encode(message)])
                if isinstance(message, AckMessage) and message.payload.code is not None:
                    self.parts.metrics.errors.labels(message.payload.code.name).inc()
            elif isinstance(action, SendFrames):
                self.parts.sender.send_many(self.ws, action.frames)
            elif isinstance(action, Audit):
                self._audit(action.kind, action.reason)
            elif isinstance(action, Close):
                if action.wait:
                    await self.ws.close(action.code, action.reason)
                else:
                    self._spawn(self.ws.close(action.code, action.reason), "close")
            elif isinstance(action, Detach):
                await self.parts.routes.detach(action.subscription)
            elif isinstance(action, StartExpiryTimer):
                self._arm_expiry(action, False)
            elif isinstance(action, WriteSession):
                await self._write_session(action.update, what="save the session")
            elif isinstance(action, ContinueCatchUp):
                self._spawn(self._catch_up(action.subscriptions), "catch-up")

    async def _catch_up(self, group: list[Subscription[ServerConnection]]) -> None:
        """Page through a transcript for ``group`` (see :class:`ContinueCatchUp`)."""
        session, bus = self.session, self.parts.routes.bus
        try:
            while (cursor := session.catching_up(group)) is not None:
                await self.ws.drain()  # the client took the previous page
                drop_queued(group)  # safe before a read: the transcript holds them too
                replay = await bus.read_since(group[0].topic, cursor, paged=True)
                await self._carry_out(session.caught_up_page(group, replay))
        except ConnectionClosed:
            pass
        except Exception as e:
            if not is_connection_error(e):
                log.exception("connection %s: catch-up of %s failed", self.id, group[0].topic)
            await self._carry_out(session.catch_up_failed(group))

    def _spawn(self, coro: Coroutine[Any, Any, None], what: str) -> asyncio.Task[None]:
        return self.tasks.spawn(coro, f"{what}:{self.id}")

    def _audit(self, kind: Kind, reason: str) -> None:
        """Record a security event of this connection (see :mod:`gateway.audit`)."""
        self.parts.audit.record(
            kind, reason, ip=self.ip, user_id=self.session.user_id, connection_id=self.id
        )

    async def _write_session(self, update: SessionUpdate, *, what: str) -> None:
        session_id = self.session.session_id
        if session_id is None:
            return
        try:
            await self.parts.sessions.write(session_id, self.id, update)
        except Exception as e:  # noqa: BLE001 - never a second ack: the next write catches up
            log.warning("connection %s: could not %s: %s", self.id, what, e)

    # -- authentication ------------------------------------------------------------
    async def _authenticate(self) -> bool:
        message: AuthMessage | None = None
        # A loop timer that closes the connection, not a cancel scope or wait_for: nothing
        # is cancelled, so nothing can be swallowed (wait_for on 3.11 can lose the
        # connection's own cancellation), and it costs a tenth of anyio's scope.
        deadline = asyncio.get_running_loop().call_later(
            self.parts.settings.auth_timeout_s, self._auth_deadline
        )
        try:
            while message is None and self.session.phase is Phase.AWAITING_AUTH:
                raw = await self.ws.recv()
                received = self.session.receive(raw, time.monotonic(), time.time())
                self.parts.metrics.count_in(received.type)
                await self._carry_out(received.actions)
                if isinstance(received.message, AuthMessage):
                    message = received.message
        finally:
            deadline.cancel()
        if message is None or self.session.phase is not Phase.AWAITING_AUTH:
            # Closed for flooding or for the deadline, from a task: read (and drop) what is
            # queued in front of the client's close frame until the close completes.
            async for _ in self.ws:
                pass
            return False
        return await self._open(message)

    def _auth_deadline(self) -> None:
        if self.session.phase is Phase.AWAITING_AUTH:
            auth_log.info("connection %s: no auth in time", self.id)
            self._spawn(self._carry_out(self.session.auth_timed_out()), "auth-deadline")

    async def _open(self, message: AuthMessage) -> bool:
        """Verify the token, create or resume the session, restore its subscriptions, then
        ``connection:status`` and the missed events."""
        session, parts = self.session, self.parts
        creds = message.credentials
        replays: dict[str, Replay] = {}
        try:
            identity = parts.verifier.verify(creds.token)
            stored = await parts.sessions.load(creds.sessionId) if creds.sessionId else None
            session.authenticate(identity, stored, new_session_id=new_id())
            assert session.session_id is not None
            await parts.sessions.hold(
                session.session_id,
                conn_id=self.id,
                user_id=identity.user_id,
                client_id=creds.clientId,
                gateway_id=parts.gateway_id,
                now_ms=now_ms(),
                new=stored is None,
            )
            if stored is not None:
                positions = {
                    topic: Position(p.offset, p.epoch)
                    for topic, p in (creds.positions or {}).items()
                }
                for sub, since in session.resume_plan(stored, positions):
                    replay = await parts.routes.attach(sub, since)
                    if replay is not None:
                        replays[sub.id] = replay
        except TeamdashError as e:
            auth_log.info("connection %s from %s: %s", self.id, self.ip, e.message)
            await self._carry_out(session.auth_refused(message.id, e))
            return False
        except Exception as e:
            if not is_connection_error(e):
                raise
            await self._carry_out(
                session.auth_unavailable(message.id, self._unavailable(e, "auth"))
            )
            return False
        actions = session.opened(
            message.id, resumed=stored is not None, replays=replays, gateway_id=parts.gateway_id
        )
        await self._carry_out(actions)
        parts.metrics.sessions.labels("resumed" if stored is not None else "new").inc()
        if stored is not None:
            parts.metrics.replayed.inc(session.replayed)
            parts.metrics.missed.inc(session.missed)
            log.info(
                "session %s resumed on connection %s: %d subscriptions, %d replayed, %d missed",
                session.session_id,
                self.id,
                len(session.subscriptions),
                session.replayed,
                session.missed,
            )
        auth_log.debug("connection %s authenticated as %s", self.id, identity.user_id)
        return True

    # -- requests ------------------------------------------------------------------
    async def _answering(self, message: ClientMessage, work: Coroutine[Any, Any, None]) -> None:
        """Await ``work`` for ``message``; a failure becomes its ack (an unexpected one is
        logged and answered INTERNAL_ERROR)."""
        try:
            await work
        except TeamdashError as e:
            await self._carry_out(self.session.answer(message.id, error=e))
        except ConnectionClosed:
            pass  # the client left before its answer: nobody to tell (the reader sees it)
        except Exception as e:
            if is_connection_error(e):
                error = self._unavailable(e, message.type)
            else:
                log.exception("connection %s: %s failed", self.id, message.type)
                error = TeamdashError(
                    ErrorCode.INTERNAL_ERROR, f"internal error: {type(e).__name__}"
                )
            await self._carry_out(self.session.answer(message.id, error=error))

    def _unavailable(self, error: BaseException, what: str) -> TeamdashError:
        """SERVICE_UNAVAILABLE for a request that failed because Redis is unreachable: one
        warning line (no traceback), and the gateway's Redis watch is told."""
        self.parts.redis_failed(error)
        reason = describe(error)
        log.warning("connection %s: %s failed: Redis unreachable (%s)", self.id, what, reason)
        return TeamdashError(
            ErrorCode.SERVICE_UNAVAILABLE,
            f"the gateway cannot reach Redis ({reason}); try again later",
        )

    async def _serve(self, message: ClientMessage) -> None:
        session, parts = self.session, self.parts
        if isinstance(message, SubscribeMessage):
            agent_id = message.payload.agentId
            owner = None
            if agent_id is not None and message.type == "subscribe:agent":
                owner = (await parts.runners.agent(agent_id)).owner
            sub, since = session.subscribe(message, owner)
            try:
                # Routed first, so every event published after the ack reaches the client;
                # the ack is written before any of them (subscribed() puts it first).
                replay = await parts.routes.attach(sub, since)
            except BaseException:
                session.forget(sub)
                raise
            since_given = message.payload.since is not None
            await self._carry_out(
                session.subscribed(message.id, sub, replay, since_given=since_given)
            )
        elif isinstance(message, AgentListMessage):
            owner = session.agent_list_owner(message)
            snapshot = await parts.runners.agent_snapshot(now_ms())
            await self._carry_out(session.agents_listed(message, owner, snapshot))
        elif isinstance(message, AgentHistoryMessage):
            p, filt = message.payload, session.history_filter(message)
            page = await parts.routes.bus.read_history(
                agent_topic(p.agentId), after=p.after, before=p.before, limit=p.limit
            )
            owner = await parts.runners.owner_of(p.agentId)
            await self._carry_out(session.history_read(message, owner, filt, page))
        elif isinstance(message, UnsubscribeMessage):
            await self._carry_out(session.unsubscribe(message))
        elif isinstance(message, AuthMessage):
            identity = parts.verifier.verify(message.credentials.token)
            # An agent gone from the registry (None) has nothing more to show.
            recheck = session.agents_to_recheck(identity)
            owners = {a: await parts.runners.owner_of(a) for a in recheck}
            await self._carry_out(session.refresh(message.id, identity, owners))
        elif isinstance(message, CreateAgentMessage | ControlMessage):
            session.require_control()
            work = self._agent_request(message)  # in its own task; its outcome is the ack
            self._spawn(self._answering(message, work), f"{message.type}:{message.id}")

    async def _agent_request(self, message: CreateAgentMessage | ControlMessage) -> None:
        session, runners = self.session, self.parts.runners
        assert session.identity is not None
        if not isinstance(message, CreateAgentMessage):
            result = await runners.control_agent(session.identity, message)
            await self._carry_out(session.answer(message.id, result=result))
            return
        agent_id, result = await runners.create_agent(session.identity, message)
        acked, sub = session.agent_created(message, agent_id, result)
        await self._carry_out(acked)
        # Lifecycle events of the new agent, from its very first one (agent:created).
        try:
            replay = await self.parts.routes.attach(sub, Position(0, None))
        except Exception as e:  # noqa: BLE001 - already acked: report it in the log, not twice
            session.forget(sub)
            log.error(
                "connection %s: agent %s's events cannot be followed: %s", self.id, agent_id, e
            )
            return
        await self._carry_out(session.followed(sub, replay))

    # -- timers ----------------------------------------------------------------------
    def heartbeat_due(self, now: float) -> bool:
        """One tick of the gateway's heartbeat (one timer for all connections,
        ``Gateway._heartbeat_forever``): True when this connection gets the tick's ``ping``.
        One silent for two intervals is closed with 1001 instead, once."""
        if self.ws.state is not State.OPEN:
            return False
        verdict = self.session.heartbeat(now)
        if verdict == "close":
            log.info("connection %s: two heartbeats unanswered, closing", self.id)
            self._spawn(self.ws.close(1001, "heartbeat timeout"), "heartbeat")
        return verdict == "ping"

    def session_update(self, now: float) -> SessionUpdate | None:
        """What the gateway's periodic flush writes for this connection (see
        :meth:`gateway.client_session.ClientSession.session_update`)."""
        transport = self.ws.transport
        return self.session.session_update(
            now,
            now_ms(),
            drained=transport is not None and transport.get_write_buffer_size() == 0,
            position_of=self.parts.routes.position_of,
            gateway_id=self.parts.gateway_id,
        )

    def _arm_expiry(self, timer: StartExpiryTimer, warned: bool) -> None:
        """(Re)arm the token timer: warn at ``timer.warn_at`` (unless ``warned``), close at
        ``timer.expire_at`` (a refresh re-arms it). A loop timer, not a task per connection
        (~10 µs of a connect+auth); the wall clock is re-read at least every minute."""
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        warn_at = None if warned else timer.warn_at
        left = (warn_at if warn_at is not None else timer.expire_at) - time.time()
        if left > 0:
            loop = asyncio.get_running_loop()
            self._expiry = loop.call_later(min(left, 60.0), self._arm_expiry, timer, warned)
        elif warn_at is not None:
            self._spawn(self._carry_out(self.session.expiry_warning(time.time())), "expiry")
            self._arm_expiry(timer, True)
        else:
            self._spawn(self._carry_out(self.session.token_expired(None)), "expiry")
