"""One client's state and rules, with no I/O: the core that :mod:`gateway.connection` drives.

How it works
------------
The adapter (:class:`gateway.connection.Connection`) owns the socket, the timers and the
calls to Redis and the runners. It feeds this core what happened — a frame, the verified
identity of an ``auth``, the stored session, a replay, the clock — and carries out the
:data:`Action` s it gets back, in order: :class:`Send` (one message, written at once, never
awaited: what follows it stays behind it), :class:`SendFrames`, :class:`Audit`,
:class:`Close`, :class:`Detach`, :class:`WriteSession`, :class:`StartExpiryTimer`. Where the
core needs the outcome of I/O before it can go on (a subscription must be routed before it
is acked), a request is served in two calls: ``subscribe`` → the adapter attaches the route →
``subscribed`` (likewise ``authenticate`` → ``opened``, ``agent_created`` → ``followed``).

The connection's phase moves only through :data:`TRANSITIONS`; a move that is not in the
table raises :class:`IllegalTransition`::

    awaiting auth ──auth accepted──▶ open ──token refreshed──▶ open
         │  auth refused / timed out   │  token expired, flood, heartbeat lost
         │  flood                      ▼
         └──────────────────────────▶ closing ──close──▶ closed
    (close from any phase but closed: the socket ended)

Rules kept here: auth comes first (anything else gets AUTH_FAILED, pings are ignored);
admission of every frame (complexity check, parser, this connection's token bucket and the
limits all gateways share; over :data:`FLOOD_DISCONNECT_AFTER` refusals in a row closes with
1008); the token's expiry (a request after it gets TOKEN_EXPIRED and the connection closes);
who sees which agent (admins and viewers all, operators their own); the subscription limit;
resume planning (restored subscriptions start from the client's or the stored cursor); and
the delivered cursors written to the session.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Generic, Literal, TypeVar

from gateway.audit import Kind
from gateway.guard import check_frame
from gateway.limits import TokenBucket
from gateway.router import Filter, Gap, Subscription, catch_up, gap_notice, parse_filters
from gateway.settings import GatewaySettings
from shared.agent_info import ENDED_STATES, AgentSnapshot
from shared.bus import HistoryPage, Position, Replay
from shared.errors import ErrorCode, ProtocolError, TeamdashError
from shared.protocol import (
    PROTOCOL_VERSION,
    AgentHistoryMessage,
    AgentInfo,
    AgentListMessage,
    AgentListResult,
    AuthMessage,
    ClientMessage,
    CreateAgentMessage,
    HeartbeatMessage,
    HeartbeatPayload,
    Metadata,
    StreamPosition,
    SubscribeMessage,
    SubscriptionGapMessage,
    SystemAlertMessage,
    SystemAlertPayload,
    UnsubscribeMessage,
    WSMessage,
    ack,
    ack_with_events,
    decode_client_message,
    encode_fields,
    new_id,
)
from shared.tokens import Identity
from shared.topics import (
    AGENTS_TOPIC,
    LIFECYCLE_KINDS,
    LOGS_TOPIC,
    METRICS_TOPIC,
    SUBSCRIBE_TYPES,
    agent_of_topic,
    agent_topic,
    owner_of,
    subscription_kind,
)

C = TypeVar("C")

#: Consecutive rate-limited messages after which a flooding client is disconnected.
FLOOD_DISCONNECT_AFTER = 200
#: A rate-limit trip is audited once; a new one only after this long without refusals.
TRIP_QUIET_S = 1.0
#: Longest error text echoed in an ack (errors may quote the client's input).
MAX_ERROR_CHARS = 1000
#: Close codes: policy violation (auth, abuse); "try again later" (no Redis at auth);
#: going away (heartbeat lost).
CLOSE_POLICY = 1008
CLOSE_TRY_AGAIN = 1013
CLOSE_GOING_AWAY = 1001

#: Which error codes in an ack are security events, and of which kind.
_AUDITED: Final[Mapping[ErrorCode, Kind]] = {
    ErrorCode.AUTH_FAILED: "auth_failed",
    ErrorCode.TOKEN_EXPIRED: "token_expired",
    ErrorCode.INSUFFICIENT_PERMISSIONS: "permission_denied",
    ErrorCode.RATE_LIMIT_EXCEEDED: "rate_limited",
}


# -- the phase machine ------------------------------------------------------------------------
class Phase(enum.StrEnum):
    AWAITING_AUTH = "awaiting auth"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


class Trigger(enum.StrEnum):
    AUTH_ACCEPTED = "auth accepted"
    AUTH_REFUSED = "auth refused"
    AUTH_TIMED_OUT = "auth timed out"
    TOKEN_REFRESHED = "token refreshed"
    TOKEN_EXPIRED = "token expired"
    FLOOD = "flood"
    HEARTBEAT_LOST = "heartbeat lost"
    CLOSE = "close"


P, T = Phase, Trigger

#: (phase, trigger) → next phase. The only place where the connection's phase changes.
TRANSITIONS: Final[Mapping[tuple[Phase, Trigger], Phase]] = {
    (P.AWAITING_AUTH, T.AUTH_ACCEPTED): P.OPEN,
    (P.AWAITING_AUTH, T.AUTH_REFUSED): P.CLOSING,
    (P.AWAITING_AUTH, T.AUTH_TIMED_OUT): P.CLOSING,
    (P.AWAITING_AUTH, T.FLOOD): P.CLOSING,
    (P.AWAITING_AUTH, T.CLOSE): P.CLOSED,
    (P.OPEN, T.TOKEN_REFRESHED): P.OPEN,
    (P.OPEN, T.TOKEN_EXPIRED): P.CLOSING,
    (P.OPEN, T.FLOOD): P.CLOSING,
    (P.OPEN, T.HEARTBEAT_LOST): P.CLOSING,
    (P.OPEN, T.CLOSE): P.CLOSED,
    (P.CLOSING, T.CLOSE): P.CLOSED,
}

del P, T


class IllegalTransition(Exception):
    """``trigger`` cannot happen in ``phase``: a bug in the adapter, never the client's."""

    def __init__(self, phase: Phase, trigger: Trigger) -> None:
        super().__init__(f"{trigger.value} is not possible when the connection is {phase.value}")
        self.phase = phase
        self.trigger = trigger


# -- actions ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Send:
    """Write this message now (no await before the next action)."""

    message: WSMessage


@dataclass(frozen=True, slots=True)
class SendFrames:
    """Write these encoded events now, in order (a catch-up)."""

    frames: list[bytes]


@dataclass(frozen=True, slots=True)
class Audit:
    kind: Kind
    reason: str


@dataclass(frozen=True, slots=True)
class Close:
    """Close the socket; ``wait=False``: from a task, the reader keeps draining meanwhile."""

    code: int
    reason: str
    wait: bool = True


@dataclass(frozen=True, slots=True)
class Detach(Generic[C]):
    """Take the subscription off its topic route."""

    subscription: Subscription[C]


@dataclass(frozen=True, slots=True)
class StartExpiryTimer:
    """(Re)start the token timer: warn at ``warn_at`` (None: no warning), expire at
    ``expire_at`` (wall-clock seconds); then feed :meth:`ClientSession.expiry_warning`
    and :meth:`ClientSession.token_expired`."""

    warn_at: float | None
    expire_at: float


@dataclass(frozen=True, slots=True)
class WriteSession:
    """Write this update to the session (while this connection holds it); a failure is
    logged, never answered (the next change or flush writes it again)."""

    update: SessionUpdate


@dataclass(frozen=True, slots=True)
class ContinueCatchUp(Generic[C]):
    """These subscriptions (one topic) catch up from a transcript a page at a time: read
    the next page after their cursor, hand it to :meth:`ClientSession.caught_up_page`, and
    so on while it says ``more``: from a task, and waiting for the client to take each
    page (the connection goes on meanwhile; their live events queue)."""

    subscriptions: list[Subscription[C]]


Action = (
    Send
    | SendFrames
    | Audit
    | Close
    | Detach[Any]
    | StartExpiryTimer
    | WriteSession
    | ContinueCatchUp[Any]
)


# -- session records (what gateway.sessions stores) -------------------------------------------
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


@dataclass(frozen=True, slots=True)
class SessionUpdate:
    """What changed in a session (see :mod:`gateway.sessions` for how it is stored)."""

    #: subscription id → delivered cursor.
    cursors: dict[str, Position] = field(default_factory=dict)
    #: Subscriptions whose cursors are dropped.
    forget: tuple[str, ...] = ()
    #: The whole list of subscriptions and created agents (None: unchanged).
    subscriptions: tuple[StoredSubscription, ...] | None = None
    agents: tuple[str, ...] | None = None
    last_activity_ms: int | None = None
    #: The gateway serving the session ('' when disconnected; also refreshes the TTL).
    gateway_id: str | None = None


#: (user id or None, client IP key, wall clock) → which shared limit refused: user / ip / None.
Admit = Callable[[str | None, str, float], str | None]


@dataclass(frozen=True, slots=True)
class Received:
    """What a frame turned into: what to do first, and the message left for the adapter to
    serve (None: nothing; it never is a ``ping``/``pong``). ``type``: the message type
    (``invalid`` when it did not parse), for the metrics."""

    type: str
    actions: list[Action]
    message: ClientMessage | None = None


class ClientSession(Generic[C]):
    """The state and rules of one client connection (``conn`` is opaque: what routes write to)."""

    def __init__(
        self,
        conn: C,
        settings: GatewaySettings,
        *,
        connection_id: str,
        ip: str,
        ip_key: str,
        admit: Admit,
        now: float,
        leeway_s: float = 0.0,
    ) -> None:
        self.conn = conn
        self.settings = settings
        self.id = connection_id
        self.ip = ip
        self._ip_key = ip_key
        self._admit = admit
        self._leeway_s = leeway_s
        self.phase = Phase.AWAITING_AUTH
        self.identity: Identity | None = None
        self.session_id: str | None = None
        self.subscriptions: dict[str, Subscription[C]] = {}
        #: Agents this session created (their lifecycle events are delivered to it).
        self.agents: set[str] = set()
        self._bucket = TokenBucket(settings.messages_per_second, now=now)
        self._limited_in_a_row = 0
        self._last_limited = float("-inf")
        self._last_seen = now
        #: Cursors as last written to the session (to write only what changed).
        self._flushed: dict[str, Position] = {}
        self._active_since_flush = False
        self._last_session_write = now
        #: Of the resume, for the adapter's log and metrics: events replayed, and missed.
        self.replayed = self.missed = 0

    # -- phase -----------------------------------------------------------------------------
    def _move(self, trigger: Trigger) -> None:
        try:
            self.phase = TRANSITIONS[(self.phase, trigger)]
        except KeyError:
            raise IllegalTransition(self.phase, trigger) from None

    @property
    def user_id(self) -> str | None:
        return self.identity.user_id if self.identity is not None else None

    # -- admission -------------------------------------------------------------------------
    def receive(self, raw: str | bytes, now: float, wall: float) -> Received:
        """One frame from the client: checked, parsed and rate-limited. In the open phase a
        request after the token's expiry ends the connection; before auth, only ``auth``
        is served."""
        if self.phase is Phase.CLOSING or self.phase is Phase.CLOSED:
            return Received("dropped", [])  # being closed: what is still queued is dropped
        self._last_seen = now
        self._active_since_flush = True
        message: ClientMessage | None = None
        error: ProtocolError | None = None
        actions: list[Action] = []
        try:
            check_frame(raw)
        except ProtocolError as e:
            error = e
            actions.append(self.audit("frame_refused", e.message))
        else:
            try:
                message = decode_client_message(raw)
            except ProtocolError as e:
                error = e
        kind = message.type if message is not None else "invalid"
        refused_by = self._over_limit(now, wall)
        if refused_by is not None:
            return Received(kind, actions + self._refuse(message, error, refused_by, now))
        if error is not None:
            actions += self.answer(error.message_id or new_id(), error=error)
            return Received(kind, actions)
        assert message is not None
        if self.phase is Phase.AWAITING_AUTH:
            if isinstance(message, AuthMessage):
                return Received(kind, actions, message)
            if not isinstance(message, HeartbeatMessage):
                refusal = TeamdashError(
                    ErrorCode.AUTH_FAILED, "authenticate first: send an auth message"
                )
                actions += self.answer(message.id, error=refusal, audit=False)
            return Received(kind, actions)
        if not isinstance(message, AuthMessage) and self.token_expired_at(wall):
            heartbeat = isinstance(message, HeartbeatMessage)
            return Received(kind, actions + self.token_expired(None if heartbeat else message.id))
        if isinstance(message, HeartbeatMessage):
            if message.type == "ping":
                pong = HeartbeatMessage(
                    type="pong",
                    payload=HeartbeatPayload(),
                    metadata=Metadata(correlationId=message.id),
                )
                actions.append(Send(pong))
            return Received(kind, actions)
        return Received(kind, actions, message)

    def _over_limit(self, now: float, wall: float) -> str | None:
        """Count one message against every limit; which limit refused it, or None."""
        s = self.settings
        if not self._bucket.take(now):
            return f"more than {s.messages_per_second} messages/s on this connection"
        user_id = self.user_id
        refused = self._admit(user_id, self._ip_key, wall)
        if refused == "user":
            return f"more than {s.user_messages_per_second} messages/s for user {user_id}"
        if refused == "ip":
            return f"more than {s.ip_messages_per_second} messages/s from {self.ip}"
        self._limited_in_a_row = 0
        return None

    def _refuse(
        self, message: ClientMessage | None, error: ProtocolError | None, why: str, now: float
    ) -> list[Action]:
        actions: list[Action] = []
        self._limited_in_a_row += 1
        if now - self._last_limited > TRIP_QUIET_S:
            actions.append(self.audit("rate_limited", why))
        self._last_limited = now
        if self._limited_in_a_row > FLOOD_DISCONNECT_AFTER:
            self._move(Trigger.FLOOD)
            reason = f"{self._limited_in_a_row} messages in a row over the limit: {why}"
            # Closed from a task while the reader keeps draining (and dropping) the frames
            # queued behind: the client's close frame is behind them, and awaiting the
            # close would hold the connection for the whole close timeout.
            actions += [
                self.audit("flood_disconnect", reason),
                Close(CLOSE_POLICY, "RATE_LIMIT_EXCEEDED", wait=False),
            ]
            return actions
        if isinstance(message, HeartbeatMessage):
            return actions
        if message is not None:
            message_id = message.id
        else:
            message_id = error.message_id if error is not None and error.message_id else new_id()
        refusal = TeamdashError(ErrorCode.RATE_LIMIT_EXCEEDED, why)
        return actions + self.answer(message_id, error=refusal, audit=False)

    # -- answers ---------------------------------------------------------------------------
    def answer(
        self,
        message_id: str,
        *,
        error: BaseException | None = None,
        result: dict[str, Any] | None = None,
        audit: bool = True,
    ) -> list[Action]:
        """One ``ack``; with ``audit``, a failure that is a security event is recorded."""
        if isinstance(error, TeamdashError) and len(error.message) > MAX_ERROR_CHARS:
            error = TeamdashError(error.code, error.message[:MAX_ERROR_CHARS] + "…")
        reply = ack(message_id, error=error, result=result)
        code = reply.payload.code
        kind = _AUDITED.get(code) if code is not None and audit else None
        if kind is None:
            return [Send(reply)]
        return [self.audit(kind, reply.payload.error or kind), Send(reply)]

    def audit(self, kind: Kind, reason: str) -> Audit:
        return Audit(kind, reason)

    # -- authentication --------------------------------------------------------------------
    def auth_timed_out(self) -> list[Action]:
        self._move(Trigger.AUTH_TIMED_OUT)
        why = f"no auth message within {self.settings.auth_timeout_s:g}s"
        return [self.audit("auth_failed", why), Close(CLOSE_POLICY, f"AUTH_FAILED: {why}")]

    def auth_refused(self, message_id: str, error: TeamdashError) -> list[Action]:
        """The token (or the session it names) was refused: the error, then close 1008."""
        self._move(Trigger.AUTH_REFUSED)
        return [*self.answer(message_id, error=error), Close(CLOSE_POLICY, error.code.name)]

    def auth_unavailable(self, message_id: str, error: TeamdashError) -> list[Action]:
        """No session without Redis: say so, then close with "try again later" (the
        client's reconnect, with backoff, is the retry)."""
        self._move(Trigger.AUTH_REFUSED)
        return [
            *self.answer(message_id, error=error),
            Close(CLOSE_TRY_AGAIN, "SERVICE_UNAVAILABLE: try again later"),
        ]

    def authenticate(
        self, identity: Identity, stored: StoredSession | None, *, new_session_id: str
    ) -> None:
        """The verified ``identity`` of the ``auth`` and the session it resumes (None: a new
        one, named ``new_session_id``). The caller then holds the session, attaches what
        :meth:`resume_plan` restores and calls :meth:`opened`. Raises
        INSUFFICIENT_PERMISSIONS for another user's session (refuse with
        :meth:`auth_refused`)."""
        if self.phase is not Phase.AWAITING_AUTH:
            raise IllegalTransition(self.phase, Trigger.AUTH_ACCEPTED)
        if stored is not None and stored.user_id != identity.user_id:
            self.identity = identity
            raise TeamdashError(
                ErrorCode.INSUFFICIENT_PERMISSIONS, "that session belongs to another user"
            )
        self.identity = identity
        self.session_id = stored.id if stored is not None else new_session_id

    def resume_plan(
        self, stored: StoredSession, positions: Mapping[str, Position]
    ) -> list[tuple[Subscription[C], Position]]:
        """The subscriptions of a resumed session with today's permissions, each with the
        position it catches up from: the client's own for its topic if given, else the
        stored cursor, else the start."""
        self.agents = set(stored.agents)
        plan = []
        for saved in stored.subscriptions:
            sub = self._restore(saved)
            if sub is None:
                continue
            self.subscriptions[sub.id] = sub
            plan.append((sub, positions.get(saved.topic) or saved.cursor or Position(0, None)))
        return plan

    def _restore(self, saved: StoredSubscription) -> Subscription[C] | None:
        kind = subscription_kind(saved.kind)
        if kind is None:
            return None
        try:
            filt = parse_filters(kind, saved.filters)
        except ProtocolError:
            return None
        if saved.hidden:
            filt = Filter((LIFECYCLE_KINDS,))
        return Subscription(
            id=saved.id,
            conn=self.conn,
            kind=kind,
            topic=saved.topic,
            filter=filt.restricted_to(self.visible_owner()),
            requested_filters=saved.filters,
            hidden=saved.hidden,
        )

    def opened(
        self,
        message_id: str,
        *,
        resumed: bool,
        replays: Mapping[str, Replay],
        gateway_id: str,
    ) -> list[Action]:
        """The session is held and the restored subscriptions attached (``replays`` by
        subscription id): ``connection:status``, then the missed events, in one go."""
        assert self.identity is not None and self.session_id is not None
        self._move(Trigger.AUTH_ACCEPTED)
        frames: list[bytes] = []
        missed = 0
        recovered = True
        by_topic: dict[str, list[Subscription[C]]] = {}
        for sub in self.subscriptions.values():
            by_topic.setdefault(sub.topic, []).append(sub)
        paged: list[ContinueCatchUp[C]] = []
        for group in by_topic.values():
            mine = [replays[s.id] for s in group if s.id in replays]
            more = any(r.more for r in mine)
            frames += catch_up(group, (r.events for r in mine), more=more)
            if more:
                paged.append(ContinueCatchUp(group))
            missed += max((r.missed for r in mine), default=0)
            recovered = recovered and all(r.recovered for r in mine)
        self.replayed, self.missed = len(frames), missed
        # The one frame every connect+auth writes: built from its fields (a third of the
        # cost of the pydantic model), in ConnectionStatusPayload's order; a test checks it.
        status: dict[str, Any] = {
            "status": "authenticated",
            "sessionId": self.session_id,
            "userId": self.identity.user_id,
            "resumed": resumed,
        }
        if resumed:
            status["recovered"] = recovered
        status |= {
            "replayed": len(frames),
            "missed": missed,
            "heartbeatIntervalMs": int(self.settings.heartbeat_interval_s * 1000),
            "gatewayId": gateway_id,
        }
        if resumed:
            status["subscriptions"] = [
                {"subscriptionId": sub.id, "kind": sub.kind, "topic": sub.topic}
                | ({"filters": list(sub.requested_filters)} if sub.requested_filters else {})
                for sub in self.subscriptions.values()
                if not sub.hidden
            ]
        status |= {"roles": sorted(self.identity.roles), "protocolVersion": PROTOCOL_VERSION}
        frames.insert(0, encode_fields("connection:status", status, correlation_id=message_id))
        actions: list[Action] = [self._expiry_timer(), SendFrames(frames)]
        if resumed:
            actions.append(WriteSession(self._subscriptions_update()))
        actions += paged
        return actions

    # -- token -----------------------------------------------------------------------------
    def _expiry_timer(self) -> StartExpiryTimer:
        assert self.identity is not None
        expires = self.identity.expires_at
        warning_s = self.settings.token_expiry_warning_s
        return StartExpiryTimer(expires - warning_s if warning_s > 0 else None, self.expires_at)

    @property
    def expires_at(self) -> float:
        """When the token counts as expired (wall clock, with the verifier's leeway)."""
        assert self.identity is not None
        return self.identity.expires_at + self._leeway_s

    def token_expired_at(self, wall: float) -> bool:
        return self.identity is not None and wall >= self.expires_at

    def expiry_warning(self, wall: float) -> list[Action]:
        assert self.identity is not None
        if self.phase is not Phase.OPEN:
            return []
        left = max(0, round(self.identity.expires_at - wall))
        return [
            Send(
                _notice(
                    "warning",
                    f"your token expires in {left}s: send an auth message with a fresh token "
                    "to stay connected",
                    {"expiresAt": int(self.identity.expires_at * 1000)},
                )
            )
        ]

    def token_expired(self, message_id: str | None) -> list[Action]:
        """TOKEN_EXPIRED: to the request ``message_id`` if given, then a notice and close 1008."""
        assert self.identity is not None
        if self.phase is not Phase.OPEN:
            return []
        self._move(Trigger.TOKEN_EXPIRED)
        actions: list[Action] = []
        if message_id is not None:
            error = TeamdashError(ErrorCode.TOKEN_EXPIRED, "token expired")
            actions += self.answer(message_id, error=error, audit=False)
        details = {
            "code": int(ErrorCode.TOKEN_EXPIRED),
            "error": "TOKEN_EXPIRED",
            "expiresAt": int(self.identity.expires_at * 1000),
        }
        text = "your token expired: the connection is closed; reconnect with a fresh token"
        return [
            *actions,
            self.audit("token_expired", "token expired on a live connection"),
            Send(_notice("error", text, details)),
            Close(CLOSE_POLICY, ErrorCode.TOKEN_EXPIRED.name),
        ]

    def agents_to_recheck(self, identity: Identity) -> list[str]:
        """The agents whose owners :meth:`refresh` needs when ``identity`` replaces the
        current one (only when the roles change: then some may no longer be visible)."""
        assert self.identity is not None
        if identity.roles == self.identity.roles:
            return []
        out = []
        for sub in self.subscriptions.values():
            agent_id = agent_of_topic(sub.topic)
            if not sub.hidden and agent_id is not None:
                out.append(agent_id)
        return out

    def refresh(
        self, message_id: str, identity: Identity, owners: Mapping[str, str | None]
    ) -> list[Action]:
        """A new token on a live connection (``owners``: agent id → owner for
        :meth:`agents_to_recheck`, None when the agent is gone): same user; restarts the
        expiry timer. When the new roles see fewer agents, subscriptions are narrowed or
        ended (their ids are in the ack's ``result.endedSubscriptions``)."""
        if self.phase is not Phase.OPEN or self.identity is None:
            raise IllegalTransition(self.phase, Trigger.TOKEN_REFRESHED)
        if identity.user_id != self.identity.user_id:
            raise TeamdashError(ErrorCode.AUTH_FAILED, "a connection cannot change its user")
        roles_changed = identity.roles != self.identity.roles
        self._move(Trigger.TOKEN_REFRESHED)
        self.identity = identity
        actions: list[Action] = [self._expiry_timer()]
        result: dict[str, Any] = {"expiresAt": int(identity.expires_at * 1000)}
        ended: list[str] = []
        if roles_changed:
            for sub in list(self.subscriptions.values()):
                sub.filter = sub.filter.restricted_to(self.visible_owner())
                agent_id = agent_of_topic(sub.topic)
                if sub.hidden or agent_id is None:
                    continue
                owner = owners.get(agent_id)
                if owner is not None and not self.may_see(owner):
                    actions += self._drop(sub)
                    ended.append(sub.id)
        if ended:
            result["endedSubscriptions"] = ended
            actions.append(
                self.audit("permission_denied", f"refreshed roles end subscriptions {ended}")
            )
        actions += self.answer(message_id, result=result)
        if ended:
            actions.append(WriteSession(self._subscriptions_update(forget=tuple(ended))))
        return actions

    # -- visibility and permissions --------------------------------------------------------
    def sees_all_agents(self) -> bool:
        """Admins and read-only viewers see every agent; operators their own, unless
        TEAMDASH_OPERATORS_SEE_ALL_AGENTS is set."""
        assert self.identity is not None
        roles = self.identity.roles
        if "admin" in roles or self.settings.operators_see_all_agents:
            return True
        return "operator" not in roles

    def visible_owner(self) -> str | None:
        """Whose agents this user sees in every topic: None for all, else their own."""
        assert self.identity is not None
        return None if self.sees_all_agents() else self.identity.user_id

    def may_see(self, owner: str) -> bool:
        assert self.identity is not None
        return self.sees_all_agents() or owner == self.identity.user_id

    def require_control(self) -> None:
        """INSUFFICIENT_PERMISSIONS unless this user's role may create or control agents."""
        assert self.identity is not None
        if not self.identity.can_control_agents():
            raise TeamdashError(
                ErrorCode.INSUFFICIENT_PERMISSIONS, "your role may not create or control agents"
            )

    # -- subscriptions ---------------------------------------------------------------------
    def subscribe(
        self, message: SubscribeMessage, owner: str | None = None
    ) -> tuple[Subscription[C], Position | None]:
        """A new subscription for ``message`` (``owner``: of the agent it names, if it names
        one) and where it catches up from (None: live from now). The caller attaches it,
        then calls :meth:`subscribed` (or :meth:`forget` if that failed). Raises the error
        to answer with (limit, filters, permissions)."""
        assert self.identity is not None
        limit = self.settings.max_subscriptions
        if sum(not s.hidden for s in self.subscriptions.values()) >= limit:
            raise TeamdashError(
                ErrorCode.RATE_LIMIT_EXCEEDED,
                f"at most {limit} active subscriptions per connection",
            )
        kind = SUBSCRIBE_TYPES[message.type]
        filt = parse_filters(kind, message.payload.filters)
        since: Position | None = None
        agent_id = message.payload.agentId
        if kind == "agent" and agent_id is not None:
            assert owner is not None, "subscribe to an agent needs its owner"
            if not self.may_see(owner):
                raise TeamdashError(
                    ErrorCode.INSUFFICIENT_PERMISSIONS,
                    f"agent {agent_id!r} belongs to another user",
                )
            topic = agent_topic(agent_id)
            if agent_id in self.agents:
                # The session created this agent: give it everything since the start.
                since = Position(0, None)
        else:
            topic = {"agent": AGENTS_TOPIC, "metrics": METRICS_TOPIC, "logs": LOGS_TOPIC}[kind]
        if message.payload.since is not None:
            since = Position(message.payload.since.offset, message.payload.since.epoch)
        sub: Subscription[C] = Subscription(
            id=new_id(),
            conn=self.conn,
            kind=kind,
            topic=topic,
            filter=filt.restricted_to(self.visible_owner()),
            requested_filters=tuple(message.payload.filters or ()),
        )
        self.subscriptions[sub.id] = sub
        return sub, since

    def forget(self, sub: Subscription[C]) -> None:
        """``sub`` could not be attached: it never existed."""
        self.subscriptions.pop(sub.id, None)

    def subscribed(
        self,
        message_id: str,
        sub: Subscription[C],
        replay: Replay | None,
        *,
        since_given: bool = False,
    ) -> list[Action]:
        """``sub`` is routed (events published from now on reach the connection): the ack,
        then its catch-up, then the session write. A subscribe with ``since`` learns in
        the ack what the catch-up could not give (``missed``, ``recovered``)."""
        result: dict[str, Any] = {"subscriptionId": sub.id, "topic": sub.topic}
        if since_given:
            result["missed"] = replay.missed if replay is not None else 0
            result["recovered"] = replay.recovered if replay is not None else True
        actions: list[Action] = [*self.answer(message_id, result=result)]
        actions += self._caught_up([sub], replay)
        actions.append(WriteSession(self._subscriptions_update()))
        return actions

    def _caught_up(
        self, group: list[Subscription[C]], replay: Replay | None, *, first: bool = True
    ) -> list[Action]:
        """The frames of ``replay`` for ``group``; after the ``first`` page of a paged
        catch-up, the action that reads the others (the pages after it are read by that)."""
        if replay is None:
            return []
        frames = catch_up(group, [replay.events], more=replay.more)
        actions: list[Action] = [SendFrames(frames)] if frames else []
        if replay.more and first:
            actions.append(ContinueCatchUp(group))
        return actions

    def catching_up(self, group: list[Subscription[C]]) -> Position | None:
        """Where the next page of ``group``'s catch-up starts (the earliest cursor), or
        None when there is nothing more to read (unsubscribed, or caught up)."""
        live = [s for s in group if self.subscriptions.get(s.id) is s and s.catching_up]
        if len(live) != len(group) or self.phase is not Phase.OPEN:
            return None
        return _earliest(group)

    def caught_up_page(self, group: list[Subscription[C]], replay: Replay) -> list[Action]:
        """The next page of ``group``'s catch-up (read after :meth:`catching_up`), and the
        cursors saved. Events the transcript lost meanwhile (its caps) are announced with
        a ``subscription:gap`` before what follows them."""
        actions: list[Action] = []
        if replay.missed and group:
            since = group[0].cursor or Position(0, None)
            first = replay.events[0].offset - 1 if replay.events else since.offset
            actions.append(
                Send(self._gap(group, since, Position(first, since.epoch), replay.missed))
            )
        actions += self._caught_up(group, replay, first=False)
        actions.append(WriteSession(self._subscriptions_update()))
        return actions

    def catch_up_failed(self, group: list[Subscription[C]]) -> list[Action]:
        """The rest of the catch-up cannot be read (Redis failed): go live from what was
        queued, after a ``subscription:gap`` (how many were missed is unknown)."""
        if self.catching_up(group) is None:
            return []
        since = _earliest(group)
        queued = [e for s in group for e in s.queued]
        first = min((e.offset for e in queued), default=since.offset + 1)
        notice = self._gap(group, since, Position(first - 1, since.epoch), None)
        frames = catch_up(group, [])
        return [Send(notice), SendFrames(frames), WriteSession(self._subscriptions_update())]

    def _gap(
        self, group: list[Subscription[C]], since: Position, position: Position, missed: int | None
    ) -> SubscriptionGapMessage:
        ids = [s.id for s in group if not s.hidden]
        return gap_notice(group[0].topic, ids, Gap("events-lost", missed, since, position))

    def unsubscribe(self, message: UnsubscribeMessage) -> list[Action]:
        sub = self.subscriptions.get(message.payload.subscriptionId)
        if sub is None or sub.hidden:
            raise TeamdashError(
                ErrorCode.INVALID_MESSAGE,
                f"no subscription {message.payload.subscriptionId!r} on this connection",
            )
        return [
            *self._drop(sub),
            *self.answer(message.id, result={"subscriptionId": sub.id}),
            WriteSession(self._subscriptions_update(forget=(sub.id,))),
        ]

    def _drop(self, sub: Subscription[C]) -> list[Action]:
        del self.subscriptions[sub.id]
        self._flushed.pop(sub.id, None)
        return [Detach(sub)]

    # -- agents ----------------------------------------------------------------------------
    def agent_list_owner(self, message: AgentListMessage) -> str | None:
        """Whose agents ``message`` may list (None: everyone's); raises
        INSUFFICIENT_PERMISSIONS when an operator asks for another user's. The caller
        reads the registry, then calls :meth:`agents_listed`."""
        visible, asked = self.visible_owner(), message.payload.owner
        if visible is not None and asked is not None and asked != visible:
            raise TeamdashError(
                ErrorCode.INSUFFICIENT_PERMISSIONS, "your role lists only your own agents"
            )
        return asked if asked is not None else visible

    def agents_listed(
        self, message: AgentListMessage, owner: str | None, snapshot: AgentSnapshot
    ) -> list[Action]:
        """The ack of ``agent:list``: the page of ``snapshot`` that ``message`` asks for,
        ordered by start time then id, with the snapshot's position."""
        p = message.payload
        after: tuple[int, str] | None = None
        if p.after is not None:
            start, _, agent_id = p.after.partition(":")
            if not start.isdigit() or not agent_id:
                raise TeamdashError(
                    ErrorCode.INVALID_MESSAGE, f"after {p.after!r} is not a page's next"
                )
            after = (int(start), agent_id)
        statuses = set(p.status or ())

        def wanted(a: AgentInfo) -> bool:
            if owner is not None and a.owner != owner:
                return False
            if statuses:
                return a.status in statuses
            return p.includeEnded or a.status not in ENDED_STATES

        matching = sorted(filter(wanted, snapshot.agents), key=_list_key)
        page = [a for a in matching if after is None or _list_key(a) > after][: p.limit]
        more = bool(page) and _list_key(page[-1]) < _list_key(matching[-1])
        position = snapshot.position
        result = AgentListResult(
            agents=page,
            position=StreamPosition(offset=position.offset, epoch=position.epoch),
            next="{}:{}".format(*_list_key(page[-1])) if more else None,
            total=len(matching),
        )
        return self.answer(message.id, result=result.model_dump(mode="json", exclude_none=True))

    def history_filter(self, message: AgentHistoryMessage) -> Filter:
        """The filter ``agent:history`` asks for. The caller then reads the page and the
        agent's registry record, and calls :meth:`history_read`."""
        return parse_filters("agent", message.payload.filters)

    def history_read(
        self, message: AgentHistoryMessage, owner: str | None, filt: Filter, page: HistoryPage
    ) -> list[Action]:
        """The ack of ``agent:history``: the page's events ``filt`` accepts, if this user may
        see the agent. ``owner`` is the registry's (None once the registry forgot the agent:
        then the owner its events name, for a transcript outlives the registry's record)."""
        p = message.payload
        if owner is None:
            owner = next((o for e in page.events if (o := owner_of(e.tags))), None)
        if owner is None:
            raise TeamdashError(ErrorCode.AGENT_NOT_FOUND, f"agent {p.agentId!r} not found")
        if not self.may_see(owner):
            raise TeamdashError(
                ErrorCode.INSUFFICIENT_PERMISSIONS, f"agent {p.agentId!r} belongs to another user"
            )
        head = page.head or Position(0, None)
        result: dict[str, Any] = {
            "next": page.next,
            "prev": page.prev,
            "position": StreamPosition(offset=head.offset, epoch=head.epoch).model_dump(
                exclude_none=True
            ),
            "missed": page.missed(p.after) if p.before is None or p.after is not None else 0,
        }
        # Absent, not null, like every optional field (``next``: on the last page).
        result = {k: v for k, v in result.items() if v is not None}
        events = [e.data for e in page.events if filt.accepts(e.tags)]
        return [SendFrames([ack_with_events(message.id, result, events)])]

    def agent_created(
        self, message: CreateAgentMessage, agent_id: str, result: dict[str, Any]
    ) -> tuple[list[Action], Subscription[C]]:
        """The runner started the agent: the ack, and the hidden subscription that follows
        its lifecycle from its very first event (attach it from the start, then
        :meth:`followed`)."""
        self.agents.add(agent_id)
        actions = self.answer(message.id, result={"agentId": agent_id, **result})
        sub: Subscription[C] = Subscription(
            id=new_id(),
            conn=self.conn,
            kind="agent",
            topic=agent_topic(agent_id),
            filter=Filter((LIFECYCLE_KINDS,)),
            hidden=True,
        )
        self.subscriptions[sub.id] = sub
        return actions, sub

    def followed(self, sub: Subscription[C], replay: Replay | None) -> list[Action]:
        return [*self._caught_up([sub], replay), WriteSession(self._subscriptions_update())]

    # -- heartbeat -------------------------------------------------------------------------
    def heartbeat(self, now: float) -> Literal["ping", "close"] | None:
        """One tick of the gateway's heartbeat: ``ping`` this connection; or ``close`` it
        (1001, once) when it sent nothing for two intervals (two pings unanswered)."""
        if self.phase is not Phase.OPEN:
            return None
        if now - self._last_seen > 2 * self.settings.heartbeat_interval_s:
            self._move(Trigger.HEARTBEAT_LOST)
            return "close"
        return "ping"

    # -- session state ---------------------------------------------------------------------
    def _subscriptions_update(self, forget: tuple[str, ...] = ()) -> SessionUpdate:
        """The session's subscriptions, agent associations and cursors (on every change)."""
        stored = tuple(
            StoredSubscription(
                id=sub.id,
                kind=sub.kind,
                topic=sub.topic,
                filters=sub.requested_filters,
                hidden=sub.hidden,
                cursor=sub.cursor,
            )
            for sub in self.subscriptions.values()
        )
        cursors = {}
        for sub in self.subscriptions.values():
            if sub.cursor is not None:
                cursors[sub.id] = self._flushed[sub.id] = sub.cursor
        return SessionUpdate(
            cursors=cursors, forget=forget, subscriptions=stored, agents=tuple(sorted(self.agents))
        )

    def session_update(
        self,
        now: float,
        wall_ms: int,
        *,
        drained: bool,
        position_of: Callable[[str], Position | None],
        gateway_id: str,
    ) -> SessionUpdate | None:
        """What changed since the last write: the delivered cursors, and ``lastActivity``.
        With ``drained`` (everything sent so far has left the send buffer), a live
        subscription's cursor moves to its route's position (``position_of(topic)``, None
        while the route is held).

        ``lastActivity`` is not worth a write of its own each time the client says
        something (every heartbeat would cost a Redis call): it goes with cursors that
        changed, else at most once per ``session_ttl_s / 3`` — which is also when a session
        with nothing else to write gets its TTL refreshed (``gatewayId``)."""
        if self.session_id is None:
            return None
        due = now - self._last_session_write > self.settings.session_ttl_s / 3
        if not due and not self.subscriptions:
            return None  # the common idle case: no cursor can have moved, nothing is due
        if drained:
            for sub in self.subscriptions.values():
                position = position_of(sub.topic)
                if position is not None and not sub.catching_up:
                    sub.cursor = position
        cursors = self._moved_cursors()
        last_activity: int | None = None
        if self._active_since_flush and (cursors or due):
            self._active_since_flush = False
            last_activity = wall_ms
        gateway: str | None = None
        if not cursors and last_activity is None:
            if not due:
                return None
            gateway = gateway_id  # keeps an idle session's TTL fresh
        self._last_session_write = now
        return SessionUpdate(cursors=cursors, last_activity_ms=last_activity, gateway_id=gateway)

    def _moved_cursors(self) -> dict[str, Position]:
        cursors = {}
        for sub in self.subscriptions.values():
            if sub.cursor is not None and self._flushed.get(sub.id) != sub.cursor:
                cursors[sub.id] = self._flushed[sub.id] = sub.cursor
        return cursors

    def closed(self, wall_ms: int) -> tuple[list[Subscription[C]], SessionUpdate | None]:
        """The socket ended: the subscriptions to detach, and the session's last write
        (None without a session). What was still in the send buffer is lost with the
        socket: cursors stay at the last position known to be handed over."""
        if self.phase is not Phase.CLOSED:
            self._move(Trigger.CLOSE)
        subs = list(self.subscriptions.values())
        update = None
        if self.session_id is not None:
            update = SessionUpdate(
                cursors=self._moved_cursors(), last_activity_ms=wall_ms, gateway_id=""
            )
        self.subscriptions.clear()
        return subs, update


def _list_key(agent: AgentInfo) -> tuple[int, str]:
    return (agent.startTime or 0, agent.agentId)


def _earliest(group: list[Subscription[C]]) -> Position:
    """The earliest cursor of a catching-up group (the start when none has one yet)."""
    cursors = [s.cursor for s in group if s.cursor is not None]
    return min(cursors, key=lambda c: c.offset) if cursors else Position(0, None)


def _notice(
    level: Literal["warning", "error"], message: str, details: dict[str, Any]
) -> SystemAlertMessage:
    """A ``system:alert`` (category security) for this connection only."""
    return SystemAlertMessage(
        type="system:alert",
        payload=SystemAlertPayload(
            level=level, category="security", message=message, details=details
        ),
        metadata=Metadata(priority="high"),
    )
