"""The Python client SDK of the Team Dashboard: :class:`DashboardClient`.

How it works
------------
One :class:`DashboardClient` owns one WebSocket connection at a time and one *supervisor*
task. The supervisor runs a *reader* task per connection; the reader parses every frame once
(:func:`shared.protocol.decode_server_message`), answers server ``ping``\\ s with ``pong``,
resolves the request whose ``ack`` arrived, and routes events:

* every event carries its position ``metadata.{topic, offset, epoch}``; a per-topic
  :class:`SeenWindow` drops what was already received (a resume may replay a few events
  again), and the last position per topic is what the client sends back in ``auth.positions``
  so that a resume replays *exactly* what it missed;
* an event goes to each :class:`Subscription` of its topic whose ``filters`` accept it
  (filters are re-applied on the client because the server sends an event once per
  connection, not once per subscription), and to every :meth:`DashboardClient.events`
  stream;
* queues are bounded and *drop the oldest* event when full (counted in ``dropped``): the
  reader never blocks on a slow consumer, so heartbeats keep flowing;
* a ``subscription:gap`` notice (events the server lost) is yielded, in order, by the
  subscriptions it names and by every ``events()`` stream, and moves the topic's duplicate
  window to the notice's position (a new epoch included).

When the connection drops (anything but a close by the user, an authentication refusal or a
1008 policy close; a 1013 "try again later", e.g. an ``auth`` refused with SERVICE_UNAVAILABLE
while the gateway cannot reach Redis, is retried like any drop), the supervisor fails the requests that were waiting for an ack with
:class:`ConnectionLost` (they may or may not have been carried out; nothing is re-sent
automatically), then reconnects with the spec's backoff — 1, 2, 4, 8, 16, then 30 s
repeatedly, each ± ``jitter`` — and resumes the session (``sessionId`` + ``positions``).
The server restores the session's subscriptions with the same ids, so existing
:class:`Subscription` objects simply keep yielding. If the session could not be resumed
(expired; ``status.resumed`` is false), the client subscribes again, each subscription from
the newest event received on its topic: what the server still holds is replayed, and what it
no longer holds is counted in ``Subscription.missed``. Requests made while reconnecting wait for the connection (within
``request_timeout``).

Backoff delays come from :func:`backoff_delay` (pure); ``sleep`` and ``random`` are
injectable so tests can check the delays without waiting for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random as _random
import uuid
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Generic, Literal, Self, TypeAlias, TypeVar

import anyio
from pydantic import ValidationError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from shared.errors import ErrorCode, ProtocolError, TeamdashError
from shared.protocol import (
    AckMessage,
    AgentCommandMessage,
    AgentCommandPayload,
    AgentControlMessage,
    AgentCreatedMessage,
    AgentErrorMessage,
    AgentEventFilter,
    AgentHistoryMessage,
    AgentHistoryPayload,
    AgentHistoryResult,
    AgentListMessage,
    AgentListPayload,
    AgentListResult,
    AgentOutputMessage,
    AgentPermissionMessage,
    AgentPermissionPayload,
    AgentPermissions,
    AgentRef,
    AgentState,
    AgentStatusMessage,
    AuthMessage,
    AuthPayload,
    CommandWait,
    ConnectionStatusMessage,
    ConnectionStatusPayload,
    CreateAgentMessage,
    CreateAgentPayload,
    HeartbeatMessage,
    Metadata,
    MetricsUpdateMessage,
    ResourceLimits,
    StreamPosition,
    SubscribeMessage,
    SubscribePayload,
    SubscriptionGapMessage,
    SystemAlertMessage,
    TerminateAgentMessage,
    TerminateAgentPayload,
    TopicEvent,
    UnsubscribeMessage,
    UnsubscribePayload,
    WSMessage,
    decode_server_message,
    encode,
    new_id,
)
from shared.topics import (
    AGENTS_TOPIC,
    ALERT_CATEGORIES,
    ALERT_LEVELS,
    LOGS_TOPIC,
    METRICS_SECTIONS,
    METRICS_TOPIC,
    SubscriptionKind,
    agent_topic,
)

log = logging.getLogger("teamdash.client")

#: The spec's reconnection delays (seconds); the last one repeats.
DEFAULT_BACKOFF: tuple[float, ...] = (1, 2, 4, 8, 16, 30)
#: Events kept per subscription (and per ``events()`` stream) before the oldest is dropped.
DEFAULT_QUEUE_SIZE = 10_000
#: Largest message the gateway accepts (bigger ones close the connection with 1009).
MAX_MESSAGE_BYTES = 1024 * 1024
#: Offsets remembered per topic for duplicate detection (the server replays at most 1000).
SEEN_WINDOW = 2048
#: Positions sent in ``auth`` at most (the server's limit).
MAX_POSITIONS = 200

#: Errors of an ``auth`` that reconnecting with the same credentials cannot fix.
AUTH_CODES = frozenset(
    {ErrorCode.AUTH_FAILED, ErrorCode.TOKEN_EXPIRED, ErrorCode.INSUFFICIENT_PERMISSIONS}
)

#: What a subscription or ``events()`` yields: the typed topic events of the protocol, and
#: the notice that some of them were lost (``subscription:gap``, in order with the events).
DashboardEvent: TypeAlias = TopicEvent | SubscriptionGapMessage
TokenProvider: TypeAlias = Callable[[], "str | Awaitable[str]"]
Sleep: TypeAlias = Callable[[float], Awaitable[Any]]

# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


class ClientError(TeamdashError):
    """A request or the connection failed; ``code`` is the spec's :class:`ErrorCode`
    (from the server's ``ack``, or chosen by the client for local failures)."""


class ConnectionLost(ClientError):
    """The connection is gone (or could not be opened) and this request got no ack.

    ``code`` is SERVICE_UNAVAILABLE. A request that was already sent may or may not have been
    carried out by the server: it is not re-sent automatically."""

    def __init__(self, message: str, *, message_id: str | None = None) -> None:
        super().__init__(ErrorCode.SERVICE_UNAVAILABLE, message, message_id=message_id)


class RequestTimeout(ClientError):
    """No ack within ``request_timeout`` (SERVICE_UNAVAILABLE)."""

    def __init__(self, message: str, *, message_id: str | None = None) -> None:
        super().__init__(ErrorCode.SERVICE_UNAVAILABLE, message, message_id=message_id)


# ---------------------------------------------------------------------------
# Pure cores: backoff, duplicate detection, client-side filters
# ---------------------------------------------------------------------------


def backoff_delay(
    backoff: Sequence[float],
    attempt: int,
    jitter: float,
    rand: Callable[[], float] = _random.random,
) -> float:
    """The delay before reconnection attempt ``attempt`` (0-based): ``backoff[attempt]``
    (the last value repeats) times a random factor in ``[1 - jitter, 1 + jitter]``."""
    if not backoff:
        raise ValueError("backoff needs at least one delay")
    base = float(backoff[min(attempt, len(backoff) - 1)])
    return max(0.0, base * (1.0 + jitter * (2.0 * rand() - 1.0)))


@dataclass(slots=True)
class SeenWindow:
    """Which offsets of one topic were received, to drop duplicates.

    Remembers the offsets within ``size`` of the highest one (``last``) of the current
    epoch. An event is new when its offset was not seen; an offset older than the window
    counts as seen (the server never replays that far back). A new epoch starts a new history
    (offsets restart); events of an epoch that was left are dropped."""

    size: int = SEEN_WINDOW
    epoch: str | None = None
    last: int = 0
    _seen: set[int] = field(default_factory=set)
    _old_epochs: set[str] = field(default_factory=set)

    def add(self, epoch: str, offset: int) -> bool:
        """Record the event; True if it had not been seen before."""
        if epoch != self.epoch:
            if epoch in self._old_epochs:
                return False
            if self.epoch is not None:
                self._old_epochs.add(self.epoch)
            self.epoch, self.last = epoch, 0
            self._seen.clear()
        if offset in self._seen or offset <= self.last - self.size:
            return False
        self._seen.add(offset)
        if offset > self.last:
            self.last = offset
            if len(self._seen) > 2 * self.size:
                floor = self.last - self.size
                self._seen = {o for o in self._seen if o > floor}
        return True

    def reset(self, epoch: str | None, offset: int) -> None:
        """A gap: delivery goes on after ``(offset, epoch)`` (a new epoch is taken as the
        topic's current one, whatever was seen before)."""
        if epoch is None:
            return
        if epoch != self.epoch:
            if self.epoch is not None:
                self._old_epochs.add(self.epoch)
            self._old_epochs.discard(epoch)
            self.epoch, self.last = epoch, offset
            self._seen.clear()
        elif offset > self.last:
            self.last = offset

    @property
    def position(self) -> StreamPosition | None:
        """The position of the newest event received (what a resume continues after)."""
        if self.epoch is None or self.last <= 0:
            return None
        return StreamPosition(offset=self.last, epoch=self.epoch)


def event_kind(event: DashboardEvent) -> str:
    """The filter name of an agent event: ``stdout``/``stderr``/``status``/``error``/``created``."""
    if isinstance(event, AgentOutputMessage):
        return event.payload.stream
    return {
        "agent:status": "status",
        "agent:error": "error",
        "agent:created": "created",
    }.get(event.type, event.type)


def filter_accepts(kind: SubscriptionKind, filters: Sequence[str], event: DashboardEvent) -> bool:
    """The server's filter rules (``docs/protocol.md``), applied on the client to route an
    event to the subscriptions that asked for it."""
    wanted = frozenset(filters)
    if kind == "agent":
        if not isinstance(
            event, AgentOutputMessage | AgentStatusMessage | AgentErrorMessage | AgentCreatedMessage
        ):
            return False
        return not wanted or event_kind(event) in wanted
    if kind == "metrics":
        return isinstance(event, MetricsUpdateMessage)
    if not isinstance(event, SystemAlertMessage):
        return False
    levels, categories = wanted & ALERT_LEVELS, wanted & ALERT_CATEGORIES
    if levels and event.payload.level not in levels:
        return False
    return not categories or event.payload.category in categories


def metrics_sections(event: MetricsUpdateMessage, filters: Sequence[str]) -> MetricsUpdateMessage:
    """The update with only the sections a ``subscribe:metrics`` filter asked for."""
    keep = frozenset(filters) & METRICS_SECTIONS
    if not keep or keep == METRICS_SECTIONS:
        return event
    drop = {s: None for s in METRICS_SECTIONS - keep}
    return event.model_copy(update={"payload": event.payload.model_copy(update=drop)})


def topic_of(event: DashboardEvent) -> str:
    """The event's topic: ``metadata.topic``, or derived from its type for events without one."""
    if isinstance(event, SubscriptionGapMessage):
        return event.payload.topic
    if event.metadata is not None and event.metadata.topic is not None:
        return event.metadata.topic
    if isinstance(event, MetricsUpdateMessage):
        return METRICS_TOPIC
    if isinstance(event, SystemAlertMessage):
        return LOGS_TOPIC
    return agent_topic(event.payload.agentId)


def position_of(event: DashboardEvent) -> tuple[str, int] | None:
    """``(epoch, offset)`` of a topic event, None when the server sent no position."""
    meta = event.metadata
    if meta is None or meta.offset is None or meta.epoch is None:
        return None
    return meta.epoch, meta.offset


# ---------------------------------------------------------------------------
# Bounded queues, subscriptions, event streams
# ---------------------------------------------------------------------------

T = TypeVar("T")


class _DropOldestQueue(Generic[T]):
    """A queue whose ``put`` never blocks: when full, the oldest item is dropped and counted.
    ``end()`` lets consumers drain what is left, then stop (or raise ``error``)."""

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("queue size must be at least 1")
        self._items: deque[T] = deque()
        self._maxsize = maxsize
        self._nonempty = asyncio.Event()
        self._ended = False
        self._error: BaseException | None = None
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def ended(self) -> bool:
        return self._ended

    def put(self, item: T) -> None:
        if self._ended:
            return
        if len(self._items) >= self._maxsize:
            self._items.popleft()
            self.dropped += 1
        self._items.append(item)
        self._nonempty.set()

    def end(self, error: BaseException | None = None) -> None:
        if not self._ended:
            self._ended = True
            self._error = error
        self._nonempty.set()

    async def get(self) -> T:
        while not self._items:
            if self._ended:
                if self._error is not None:
                    raise self._error
                raise StopAsyncIteration
            self._nonempty.clear()
            await self._nonempty.wait()
        return self._items.popleft()


class Subscription:
    """One subscription: an async iterator over the typed events it matches, in order.

    ``async for event in sub`` ends after :meth:`unsubscribe` or the client's ``close()``
    (events already queued are still yielded first); it raises the :class:`ClientError` that
    stopped the client for good (e.g. AUTH_FAILED on a reconnect). ``dropped`` counts events
    discarded because the consumer fell more than ``queue_size`` events behind. ``id`` is the
    server's subscription id; it stays the same across a resumed reconnect and changes only if
    the session had to be re-created."""

    def __init__(
        self,
        client: DashboardClient,
        *,
        subscription_id: str,
        kind: SubscriptionKind,
        topic: str,
        agent_id: str | None,
        filters: tuple[str, ...],
        queue_size: int,
    ) -> None:
        self._client = client
        self.id = subscription_id
        self.kind: SubscriptionKind = kind
        self.topic = topic
        self.agent_id = agent_id
        self.filters = filters
        self._queue: _DropOldestQueue[DashboardEvent] = _DropOldestQueue(queue_size)
        self._seen = SeenWindow()
        #: Every ``subscription:gap`` notice this subscription got (also yielded in order).
        self.gaps: list[SubscriptionGapMessage] = []
        #: Subscribed with ``since``: events after it no longer retained (its ack's
        #: ``missed``).
        self.missed = 0

    def __repr__(self) -> str:
        return f"Subscription(id={self.id!r}, topic={self.topic!r}, filters={list(self.filters)})"

    @property
    def dropped(self) -> int:
        return self._queue.dropped

    @property
    def active(self) -> bool:
        return not self._queue.ended

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> DashboardEvent:
        return await self._queue.get()

    async def next(self, timeout: float | None = None) -> DashboardEvent:
        """The next event (TimeoutError after ``timeout`` seconds; StopAsyncIteration at the end)."""
        with anyio.fail_after(timeout):
            return await self._queue.get()

    async def unsubscribe(self) -> None:
        """Stop the subscription on the server and end this iterator."""
        if self.active:
            await self._client.unsubscribe(self.id)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.unsubscribe()
        except ClientError as e:  # the connection is gone: nothing to undo on the server
            log.debug("unsubscribe of %s on exit failed: %s", self.id, e)
        self._queue.end()

    # -- called by the client's reader ----------------------------------------------
    def _offer(self, event: DashboardEvent) -> None:
        if not filter_accepts(self.kind, self.filters, event):
            return
        pos = position_of(event)
        if pos is not None and not self._seen.add(*pos):
            return
        if isinstance(event, MetricsUpdateMessage):
            event = metrics_sections(event, self.filters)
        self._queue.put(event)

    def _gap(self, notice: SubscriptionGapMessage) -> None:
        position = notice.payload.position
        self._seen.reset(position.epoch, position.offset)
        self.gaps.append(notice)
        self._queue.put(notice)

    def _end(self, error: BaseException | None = None) -> None:
        self._queue.end(error)


class EventStream:
    """Every event the client receives (each once), from the moment it was created. Use as
    ``async with client.events() as stream: async for event in stream: ...``; leaving the
    block (or :meth:`close`) stops it."""

    def __init__(self, client: DashboardClient, queue_size: int) -> None:
        self._client = client
        self._queue: _DropOldestQueue[DashboardEvent] = _DropOldestQueue(queue_size)

    @property
    def dropped(self) -> int:
        return self._queue.dropped

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> DashboardEvent:
        return await self._queue.get()

    async def next(self, timeout: float | None = None) -> DashboardEvent:
        with anyio.fail_after(timeout):
            return await self._queue.get()

    def close(self) -> None:
        self._client._streams.discard(self)
        self._queue.end()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------
# Connection state notifications and results
# ---------------------------------------------------------------------------

State = Literal["connected", "disconnected", "reconnecting", "reconnected", "failed", "closed"]


@dataclass(frozen=True, slots=True)
class StateChange:
    """Given to ``on_state``: ``connected`` (first time), ``disconnected`` (with the close
    ``code``/``reason``), ``reconnecting`` (``attempt`` starting at 1 and the ``delay`` about to
    be slept), ``reconnected`` (with the new ``status``), ``failed`` (``error``: the client
    gave up), ``closed`` (by the user)."""

    state: State
    attempt: int = 0
    delay: float | None = None
    code: int | None = None
    reason: str | None = None
    error: BaseException | None = None
    status: ConnectionStatusPayload | None = None


@dataclass(frozen=True, slots=True)
class CreatedAgent:
    """The ack result of ``agent:create``."""

    agent_id: str
    pid: int | None
    result: dict[str, Any]


@dataclass(slots=True)
class _Pending:
    future: asyncio.Future[dict[str, Any]]
    type: str
    #: Run by the reader when the ack succeeds, before any later frame is handled (so a
    #: subscription exists before its first event is routed).
    on_success: Callable[[dict[str, Any]], None] | None = None


# ---------------------------------------------------------------------------
# The client
# ---------------------------------------------------------------------------


class DashboardClient:
    """An asyncio client of the Team Dashboard gateway.

    ``token`` is a JWT string or a callable (sync or async) returning one; a callable is asked
    again before every (re)connection. Use ``async with DashboardClient(url, token) as c:``, or
    :meth:`connect` and :meth:`close`.

    Keyword options:

    * ``client_id``: the ``clientId`` sent in ``auth`` (default: a random one);
    * ``session_id``/``positions``: resume a session on the first connection (e.g. saved by a
      previous process from :attr:`session_id` and :attr:`positions`);
    * ``reconnect``: reconnect and resume when the connection drops (default True);
    * ``backoff``/``jitter``: delays in seconds before reconnection attempts (the last
      repeats), each multiplied by a random factor in ``[1 - jitter, 1 + jitter]``;
    * ``max_attempts``: give up after that many failed reconnection attempts (default never);
    * ``request_timeout``: seconds to wait for an ack (and for a connection, while
      reconnecting) before :class:`RequestTimeout`;
    * ``connect_timeout``: seconds for opening a connection and authenticating;
    * ``dead_after``: seconds without any frame from the server after which the connection
      is considered dead and replaced (default ``2.5 × heartbeatIntervalMs + 1 s``);
    * ``queue_size``: events buffered per subscription / event stream (drop-oldest beyond);
    * ``on_state``: called with a :class:`StateChange` on every connection state change;
    * ``sleep``/``random``: seams for tests (the backoff sleep and the jitter source).
    """

    def __init__(
        self,
        url: str,
        token: str | TokenProvider,
        *,
        client_id: str | None = None,
        session_id: str | None = None,
        positions: dict[str, StreamPosition] | None = None,
        reconnect: bool = True,
        backoff: Sequence[float] = DEFAULT_BACKOFF,
        jitter: float = 0.2,
        max_attempts: int | None = None,
        request_timeout: float = 30.0,
        connect_timeout: float = 10.0,
        dead_after: float | None = None,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        on_state: Callable[[StateChange], None] | None = None,
        sleep: Sleep = asyncio.sleep,
        random: Callable[[], float] = _random.random,
    ) -> None:
        if not backoff or any(d < 0 for d in backoff):
            raise ValueError("backoff must be a non-empty sequence of delays >= 0")
        if not 0 <= jitter < 1:
            raise ValueError("jitter must be a fraction in [0, 1)")
        self.url = url
        self._token = token
        self.client_id = client_id or f"py-{uuid.uuid4().hex[:12]}"
        self.reconnect = reconnect
        self.backoff = tuple(float(d) for d in backoff)
        self.jitter = jitter
        self.max_attempts = max_attempts
        self.request_timeout = request_timeout
        self.connect_timeout = connect_timeout
        self.dead_after = dead_after
        self.queue_size = queue_size
        self._on_state = on_state
        self._sleep = sleep
        self._random = random

        #: The session (set by ``connection:status``; sent back on reconnect).
        self.session_id: str | None = session_id
        #: The last ``connection:status`` payload.
        self.status: ConnectionStatusPayload | None = None
        #: Successful reconnections so far.
        self.reconnects = 0
        self._topics: dict[str, SeenWindow] = {}
        for topic, pos in (positions or {}).items():
            window = self._topics[topic] = SeenWindow()
            if pos.epoch is not None:
                window.add(pos.epoch, pos.offset)
        self._ws: ClientConnection | None = None
        self._pending: dict[str, _Pending] = {}
        self._subs: dict[str, Subscription] = {}
        self._streams: set[EventStream] = set()
        self._event_ids: OrderedDict[str, None] = OrderedDict()
        self._supervisor: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._closing = False
        self._failure: ClientError | None = None

    # -- properties ------------------------------------------------------------------
    @property
    def gateway_id(self) -> str | None:
        return self.status.gatewayId if self.status is not None else None

    @property
    def user_id(self) -> str | None:
        return self.status.userId if self.status is not None else None

    @property
    def connected(self) -> bool:
        return self._ws is not None

    @property
    def subscriptions(self) -> list[Subscription]:
        return list(self._subs.values())

    @property
    def positions(self) -> dict[str, StreamPosition]:
        """Topic → position of the newest event received (sent in ``auth`` on resume)."""
        out: dict[str, StreamPosition] = {}
        for topic, window in self._topics.items():
            pos = window.position
            if pos is not None:
                out[topic] = pos
        return out

    # -- lifecycle -------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        """Open the connection and authenticate (resuming ``session_id`` if given).

        Raises :class:`ClientError` (AUTH_FAILED, TOKEN_EXPIRED, …) when ``auth`` is refused,
        :class:`ConnectionLost` when the gateway cannot be reached. No retry here: reconnection
        only applies to a connection that was established once."""
        if self._supervisor is not None:
            raise RuntimeError("this client is already connected; create a new one to reconnect")
        if self._closing:
            raise RuntimeError("this client is closed")
        ws = await self._open()
        self._set_connected(ws)
        self._supervisor = asyncio.create_task(self._supervise(ws), name="teamdash-client")
        self._notify(StateChange("connected", status=self.status))

    async def close(self) -> None:
        """Close the connection (1000) and stop: pending requests fail with
        :class:`ConnectionLost`; subscriptions and event streams end after what they hold.
        The session stays resumable on the server until it expires."""
        if self._closing:
            return
        self._closing = True
        ws = self._ws
        if ws is not None:
            try:
                with anyio.fail_after(self.connect_timeout):
                    await ws.close(1000, "client closed")
            except (TimeoutError, OSError):
                if ws.transport is not None:
                    ws.transport.abort()
        if self._supervisor is not None:
            self._supervisor.cancel()
            try:
                await self._supervisor
            except asyncio.CancelledError:
                pass
            self._supervisor = None
        self._ws = None
        self._fail_pending(ConnectionLost("the client was closed"))
        self._end_all(None)
        self._changed.set()
        self._notify(StateChange("closed"))

    # -- requests --------------------------------------------------------------------
    async def create_agent(
        self,
        name: str,
        model: str,
        workspace: str,
        environment: dict[str, str] | None = None,
        memory_mb: float | None = None,
        cpu: float | None = None,
        permission_mode: str | None = None,
        allowed_tools: Sequence[str] | None = None,
    ) -> CreatedAgent:
        """Create an agent; returns its id and pid once the runner has started it.

        ``memory_mb`` and ``cpu`` are the spec's ``resourceLimits`` and go together (the
        protocol requires both). ``permission_mode`` and ``allowed_tools`` are
        ``payload.permissions`` (left out: the model's defaults); each must be in the
        model's operator-set allow-list. Errors: AGENT_SPAWN_FAILED (also a permission
        outside the allow-list), AGENT_LIMIT_EXCEEDED, SERVICE_UNAVAILABLE (no runner),
        INSUFFICIENT_PERMISSIONS, INVALID_MESSAGE."""
        limits = None
        if memory_mb is not None or cpu is not None:
            if memory_mb is None or cpu is None:
                raise ClientError(
                    ErrorCode.INVALID_MESSAGE,
                    "resource limits need both memory_mb and cpu (the protocol requires both)",
                )
            limits = _build(ResourceLimits, memory=memory_mb, cpu=cpu)
        permissions = None
        if permission_mode is not None or allowed_tools is not None:
            permissions = _build(
                AgentPermissions,
                mode=permission_mode,
                allowedTools=list(allowed_tools) if allowed_tools is not None else None,
            )
        payload = _build(
            CreateAgentPayload,
            name=name,
            model=model,
            workspace=workspace,
            environment=environment,
            resourceLimits=limits,
            permissions=permissions,
        )
        result = await self.request(CreateAgentMessage(type="agent:create", payload=payload))
        pid = result.get("pid")
        return CreatedAgent(str(result["agentId"]), int(pid) if pid is not None else None, result)

    async def send_command(
        self,
        agent_id: str,
        command: str,
        timeout_ms: int | None = None,
        interactive: bool | None = None,
        wait: CommandWait | None = None,
    ) -> dict[str, Any]:
        """Write ``command`` to the agent's stdin; returns the ack result. By default the
        ack says it was delivered: its completion (or AGENT_COMMAND_TIMEOUT after
        ``timeout_ms``) arrives as events on the agent's topic.

        With ``wait="completed"`` the ack comes when the command's turn ended: the result's
        ``turn`` is its ``turn_end`` event (duration, cost, usage); a failed turn raises
        :class:`ClientError` with the failure's code (AGENT_AUTH_REQUIRED,
        AGENT_RATE_LIMITED, AGENT_TURN_FAILED…, AGENT_COMMAND_TIMEOUT after ``timeout_ms``,
        AGENT_NOT_FOUND if the agent ended first, SERVICE_UNAVAILABLE if its runner died;
        INVALID_MESSAGE if the agent's model cannot tell when a turn ends). The ack is then
        awaited ``timeout_ms`` plus ``request_timeout``, or without a limit when there is
        no ``timeout_ms``."""
        payload = _build(
            AgentCommandPayload,
            agentId=agent_id,
            command=command,
            timeout=timeout_ms,
            interactive=interactive,
            wait=wait,
        )
        ack_timeout: float | None = self.request_timeout
        if wait == "completed":
            ack_timeout = None if timeout_ms is None else timeout_ms / 1000 + self.request_timeout
        return await self.request(
            AgentCommandMessage(type="agent:command", payload=payload), ack_timeout=ack_timeout
        )

    async def answer_permission(
        self, agent_id: str, request_id: str, allow: bool, message: str | None = None
    ) -> dict[str, Any]:
        """Answer the agent's ``permission_request`` event whose ``requestId`` is
        ``request_id``: ``allow`` lets the tool run, else it is denied (``message`` tells the
        agent why, or what to do instead). Returns the ack result (``agentId``, ``tool``); a
        ``permission_resolved`` event follows on the agent's topic, then the rest of its turn.
        Errors: INVALID_MESSAGE (no such request is waiting), AGENT_NOT_FOUND,
        INSUFFICIENT_PERMISSIONS (not the owner's operator, nor an admin)."""
        payload = _build(
            AgentPermissionPayload,
            agentId=agent_id,
            requestId=request_id,
            decision="allow" if allow else "deny",
            message=message,
        )
        return await self.request(AgentPermissionMessage(type="agent:permission", payload=payload))

    async def pause(self, agent_id: str) -> dict[str, Any]:
        return await self.request(
            AgentControlMessage(type="agent:pause", payload=_build(AgentRef, agentId=agent_id))
        )

    async def resume(self, agent_id: str) -> dict[str, Any]:
        return await self.request(
            AgentControlMessage(type="agent:resume", payload=_build(AgentRef, agentId=agent_id))
        )

    async def terminate(self, agent_id: str, force: bool = False) -> dict[str, Any]:
        payload = _build(TerminateAgentPayload, agentId=agent_id, force=force or None)
        return await self.request(TerminateAgentMessage(type="agent:terminate", payload=payload))

    async def list_agents(
        self,
        *,
        status: Sequence[AgentState] | None = None,
        owner: str | None = None,
        include_ended: bool = False,
        limit: int = 100,
        after: str | None = None,
    ) -> AgentListResult:
        """One page of the agents you may see (``agent:list``), oldest start first. Pass
        the page's ``next`` as ``after`` for the next one (None: the last page). To follow
        changes from there, subscribe with ``since`` = the first page's ``position``:
        every later lifecycle event arrives exactly once."""
        payload = _build(
            AgentListPayload,
            status=list(status) if status else None,
            owner=owner,
            includeEnded=include_ended,
            limit=limit,
            after=after,
        )
        result = await self.request(AgentListMessage(type="agent:list", payload=payload))
        return AgentListResult.model_validate(result)

    async def agent_history(
        self,
        agent_id: str,
        *,
        after: int | None = None,
        before: int | None = None,
        limit: int = 100,
        filters: Sequence[AgentEventFilter] | None = None,
    ) -> AgentHistoryResult:
        """One page of an agent's past events (``agent:history``), oldest first: after
        ``after`` (the previous page's ``next``; None: from the oldest kept) and before
        ``before`` (a page's ``prev``, to scroll back; alone: the newest ``limit`` before
        it). ``result.missed`` counts events the transcript no longer keeps. To go on live,
        subscribe with ``since`` = the last page's ``position``."""
        payload = _build(
            AgentHistoryPayload,
            agentId=agent_id,
            after=after,
            before=before,
            limit=limit,
            filters=list(filters) if filters else None,
        )
        result = await self.request(AgentHistoryMessage(type="agent:history", payload=payload))
        return AgentHistoryResult.model_validate(result)

    async def history(
        self,
        agent_id: str,
        *,
        after: int | None = None,
        page_size: int = 1000,
        filters: Sequence[AgentEventFilter] | None = None,
    ) -> AsyncIterator[AgentHistoryResult]:
        """Every page of an agent's history from ``after`` on, up to its newest event when
        the last page was read (that page's ``position``: subscribe ``since`` it to go on)."""
        while True:
            page = await self.agent_history(agent_id, after=after, limit=page_size, filters=filters)
            yield page
            if page.next is None:
                return
            after = page.next

    async def subscribe_agent(
        self,
        agent_id: str | None = None,
        filters: Sequence[str] | None = None,
        *,
        since: StreamPosition | None = None,
    ) -> Subscription:
        """With ``agent_id``: that agent's output, status and errors (topic ``agent:{id}``);
        without: lifecycle events of every agent you may see (topic ``agents``). ``filters``:
        ``stdout``, ``stderr``, ``status``, ``error``, ``created``. ``since``: start after
        this position of the topic (e.g. an ``agent:list`` result's ``position``) instead of
        live from now; the subscription's ``ack`` tells what could not be replayed
        (``subscription.missed``)."""
        return await self._subscribe("agent", agent_id, filters, since=since)

    async def subscribe_metrics(self, filters: Sequence[str] | None = None) -> Subscription:
        """``metrics:update`` events (topic ``metrics``); ``filters``: ``system``, ``agents``."""
        return await self._subscribe("metrics", None, filters)

    async def subscribe_logs(self, filters: Sequence[str] | None = None) -> Subscription:
        """``system:alert`` events (topic ``logs``); ``filters``: levels and/or categories."""
        return await self._subscribe("logs", None, filters)

    async def unsubscribe(self, subscription_id: str) -> None:
        """Stop a subscription; its iterator ends (after what it already holds)."""
        message = UnsubscribeMessage(
            type="unsubscribe", payload=_build(UnsubscribePayload, subscriptionId=subscription_id)
        )

        def done(result: dict[str, Any]) -> None:
            sub = self._subs.pop(subscription_id, None)
            if sub is not None:
                sub._end()

        await self.request(message, on_success=done)

    async def refresh_token(self, token: str) -> dict[str, Any]:
        """Send a new ``auth`` on the live connection: the session continues with the new
        token (same user). Returns the ack result (``expiresAt``, Unix ms). When the client
        was given a token string, the new one is also used for later reconnections."""
        message = AuthMessage(
            type="auth", payload=_build(AuthPayload, token=token, clientId=self.client_id)
        )
        result = await self.request(message)
        if isinstance(self._token, str):
            self._token = token
        return result

    def events(self) -> EventStream:
        """A stream of every event this client receives from now on, each once (an agent
        event that arrives on both ``agent:{id}`` and ``agents`` is yielded once)."""
        stream = EventStream(self, self.queue_size)
        if self._closing or self._failure is not None:
            stream._queue.end(self._failure)
        else:
            self._streams.add(stream)
        return stream

    async def request(
        self,
        message: WSMessage,
        *,
        on_success: Callable[[dict[str, Any]], None] | None = None,
        ack_timeout: float | None | Literal["default"] = "default",
    ) -> dict[str, Any]:
        """Send any client message and return its ack ``result`` (``{}`` when absent).

        Raises :class:`ClientError` with the ack's code, :class:`ConnectionLost` if the
        connection dropped before the ack, :class:`RequestTimeout` after ``ack_timeout``
        seconds (default ``request_timeout``; None: no limit once sent).
        While the client is reconnecting, the request waits for the new connection. A request
        refused with TOKEN_EXPIRED (it was not carried out) is retried once after a token
        refresh when the client has a token provider."""
        limit = self.request_timeout if ack_timeout == "default" else ack_timeout
        try:
            return await self._request_once(message, on_success, limit)
        except ClientError as e:
            if (
                e.code != ErrorCode.TOKEN_EXPIRED
                or isinstance(self._token, str)
                or isinstance(message, AuthMessage)
            ):
                raise
        await self.refresh_token(await self._get_token())
        retry = message.model_copy(update={"id": new_id()})
        return await self._request_once(retry, on_success, limit)

    async def _request_once(
        self,
        message: WSMessage,
        on_success: Callable[[dict[str, Any]], None] | None,
        ack_timeout: float | None,
    ) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + self.request_timeout
        data = encode(message)
        if len(data) > MAX_MESSAGE_BYTES:
            raise ClientError(
                ErrorCode.INVALID_MESSAGE,
                f"{message.type} is {len(data)} bytes; the gateway accepts at most "
                f"{MAX_MESSAGE_BYTES} (split it)",
                message_id=message.id,
            )
        ws = await self._wait_connected(deadline, message)
        future: asyncio.Future[dict[str, Any]] = loop.create_future()
        # A caller that stopped waiting (its own timeout or cancel scope) leaves nobody to
        # retrieve a later ConnectionLost: mark it retrieved, or asyncio logs "Future
        # exception was never retrieved" (seen in the soak).
        future.add_done_callback(_retrieved)
        self._pending[message.id] = _Pending(future, message.type, on_success)
        try:
            try:
                await ws.send(data, text=True)
            except ConnectionClosed:
                raise ConnectionLost(
                    f"the connection closed before {message.type} could be sent",
                    message_id=message.id,
                ) from None
            # The wait for a connection counts against the ack's time.
            left = None if ack_timeout is None else max(start + ack_timeout - loop.time(), 0)
            try:
                with anyio.fail_after(left):
                    return await future
            except TimeoutError:
                raise RequestTimeout(
                    f"no ack for {message.type} within {ack_timeout:g}s",
                    message_id=message.id,
                ) from None
        finally:
            self._pending.pop(message.id, None)

    # -- internals: subscriptions --------------------------------------------------------
    async def _subscribe(
        self,
        kind: SubscriptionKind,
        agent_id: str | None,
        filters: Sequence[str] | None,
        existing: Subscription | None = None,
        *,
        since: StreamPosition | None = None,
    ) -> Subscription:
        wanted = tuple(filters or ())
        message = SubscribeMessage(
            type=f"subscribe:{kind}",  # type: ignore[arg-type]
            payload=_build(
                SubscribePayload, agentId=agent_id, filters=list(wanted) or None, since=since
            ),
        )
        made: list[Subscription] = []

        def done(result: dict[str, Any]) -> None:
            sub_id = str(result["subscriptionId"])
            topic = str(result.get("topic") or _expected_topic(kind, agent_id))
            if existing is not None:
                self._subs.pop(existing.id, None)
                existing.id, existing.topic = sub_id, topic
                sub = existing
            else:
                sub = Subscription(
                    self,
                    subscription_id=sub_id,
                    kind=kind,
                    topic=topic,
                    agent_id=agent_id,
                    filters=wanted,
                    queue_size=self.queue_size,
                )
            sub.missed = int(result.get("missed") or 0)
            self._subs[sub_id] = sub
            made.append(sub)

        await self.request(message, on_success=done)
        return made[0]

    async def _resubscribe(self) -> None:
        """After a reconnect that could not resume the session: subscribe again, each from
        the newest event received on its topic, so what was published meanwhile is replayed
        (or counted in ``missed``) instead of skipped without a word."""
        positions = self.positions
        for sub in list(self._subs.values()):
            since = positions.get(sub.topic)
            try:
                await self._subscribe(
                    sub.kind, sub.agent_id, sub.filters, existing=sub, since=since
                )
            except ConnectionLost:
                return  # the next reconnect tries again
            except ClientError as e:
                log.warning("could not restore subscription to %s: %s", sub.topic, e.message)
                self._subs.pop(sub.id, None)
                sub._end(e)

    # -- internals: connection -------------------------------------------------------
    async def _get_token(self) -> str:
        if isinstance(self._token, str):
            return self._token
        value = self._token()
        if inspect.isawaitable(value):
            value = await value
        return str(value)

    def _auth_message(self, token: str) -> AuthMessage:
        positions: dict[str, StreamPosition] | None = None
        if self.session_id is not None:
            current = self.positions
            # The server takes at most MAX_POSITIONS; the subscribed topics matter most.
            wanted = [s.topic for s in self._subs.values() if s.topic in current]
            rest = [t for t in current if t not in wanted]
            positions = {t: current[t] for t in [*wanted, *rest][:MAX_POSITIONS]} or None
        payload = _build(
            AuthPayload,
            token=token,
            clientId=self.client_id,
            sessionId=self.session_id,
            positions=positions,
        )
        return AuthMessage(type="auth", payload=payload)

    async def _open(self) -> ClientConnection:
        """One connection attempt: connect, ``auth``, wait for ``connection:status``."""
        try:
            token = await self._get_token()
        except Exception as e:  # e.g. an identity service that is down: try again later
            raise ConnectionLost(f"the token provider failed: {e!r}") from e
        try:
            ws = await connect(
                self.url,
                open_timeout=self.connect_timeout,
                close_timeout=5,
                compression=None,
                max_size=16 * MAX_MESSAGE_BYTES,
            )
        except InvalidURI as e:
            raise ClientError(ErrorCode.INVALID_MESSAGE, f"invalid gateway URL: {e}") from e
        except (OSError, TimeoutError, InvalidHandshake) as e:
            raise ConnectionLost(f"cannot connect to {self.url}: {_describe(e)}") from e
        try:
            auth = self._auth_message(token)
            await ws.send(encode(auth), text=True)
            with anyio.fail_after(self.connect_timeout):
                status = await self._await_status(ws, auth.id)
        except BaseException as e:
            if ws.transport is not None:
                ws.transport.abort()
            if isinstance(e, ClientError | asyncio.CancelledError):
                raise
            if isinstance(e, TimeoutError):
                raise ConnectionLost(
                    f"no answer to auth from {self.url} within {self.connect_timeout:g}s"
                ) from e
            if isinstance(e, ConnectionClosed):
                raise _close_error(ws.close_code, ws.close_reason) from e
            raise
        self.status = status
        self.session_id = status.sessionId
        return ws

    async def _await_status(self, ws: ClientConnection, auth_id: str) -> ConnectionStatusPayload:
        while True:
            msg = _decode(await ws.recv())
            if isinstance(msg, ConnectionStatusMessage):
                return msg.payload
            if isinstance(msg, AckMessage) and msg.payload.messageId == auth_id:
                p = msg.payload
                if p.success:  # not what the protocol says: no session to work with
                    raise ClientError(ErrorCode.INTERNAL_ERROR, "auth was acked without a status")
                raise ClientError(
                    p.code or ErrorCode.AUTH_FAILED, p.error or "authentication failed"
                )
            if msg is not None:
                log.debug("ignored %s before connection:status", msg.type)

    def _set_connected(self, ws: ClientConnection) -> None:
        self._ws = ws
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait_connected(self, deadline: float, message: WSMessage) -> ClientConnection:
        loop = asyncio.get_running_loop()
        while True:
            if self._failure is not None:
                raise self._failure
            if self._closing or (self._supervisor is None and self._ws is None):
                raise ConnectionLost("the client is not connected", message_id=message.id)
            if self._ws is not None:
                return self._ws
            changed = self._changed
            try:
                with anyio.fail_after(max(deadline - loop.time(), 0)):
                    await changed.wait()
            except TimeoutError:
                raise RequestTimeout(
                    f"not reconnected within {self.request_timeout:g}s; {message.type} not sent",
                    message_id=message.id,
                ) from None

    def _dead_after(self) -> float:
        if self.dead_after is not None:
            return self.dead_after
        interval_s = (self.status.heartbeatIntervalMs if self.status else 30_000) / 1000
        return 2.5 * interval_s + 1.0

    async def _supervise(self, ws: ClientConnection) -> None:
        """Owns the reader of each connection and the reconnections (see the module doc)."""
        try:
            resubscribe = False
            while True:
                reader = asyncio.create_task(self._read(ws), name="teamdash-client-reader")
                try:
                    if resubscribe:
                        await self._resubscribe()
                    await reader
                finally:
                    if not reader.done():
                        reader.cancel()
                        await asyncio.gather(reader, return_exceptions=True)
                if self._closing:
                    return
                code, reason = ws.close_code, ws.close_reason
                self._notify(StateChange("disconnected", code=code, reason=reason))
                stop = self._terminal_close(code, reason)
                if stop is not None or not self.reconnect:
                    self._give_up(stop or ConnectionLost(f"connection closed ({code} {reason})"))
                    return
                ws = await self._reconnect()
                self.reconnects += 1
                self._set_connected(ws)
                assert self.status is not None
                resubscribe = not self.status.resumed and bool(self._subs)
                self._notify(StateChange("reconnected", status=self.status))
        except asyncio.CancelledError:
            raise
        except ClientError as e:
            self._give_up(e)
        except Exception as e:  # a bug here must not leave callers waiting forever
            log.exception("client supervisor failed")
            self._give_up(ClientError(ErrorCode.INTERNAL_ERROR, f"client failed: {e!r}"))

    def _terminal_close(self, code: int | None, reason: str | None) -> ClientError | None:
        """A close that reconnecting cannot fix: 1008 (policy: auth refused, flooding),
        unless it is TOKEN_EXPIRED and a token provider can give a fresh token."""
        if code != 1008:
            return None
        error = _close_error(code, reason)
        if error.code == ErrorCode.TOKEN_EXPIRED and not isinstance(self._token, str):
            return None
        return error

    async def _reconnect(self) -> ClientConnection:
        attempt = 0
        while True:
            if self.max_attempts is not None and attempt >= self.max_attempts:
                raise ConnectionLost(f"gave up after {attempt} reconnection attempts")
            delay = backoff_delay(self.backoff, attempt, self.jitter, self._random)
            attempt += 1
            self._notify(StateChange("reconnecting", attempt=attempt, delay=delay))
            await self._sleep(delay)
            try:
                return await self._open()
            except ConnectionLost as e:
                log.info("reconnection attempt %d failed: %s", attempt, e.message)
            except ClientError as e:
                if e.code in AUTH_CODES:
                    raise
                log.info("reconnection attempt %d refused: %s", attempt, e.message)

    def _give_up(self, error: ClientError) -> None:
        self._failure = error
        self._ws = None
        self._fail_pending(error)
        self._end_all(error)
        self._changed.set()
        self._notify(StateChange("failed", error=error))

    def _end_all(self, error: BaseException | None) -> None:
        for sub in self._subs.values():
            sub._end(error)
        for stream in list(self._streams):
            stream._queue.end(error)
        self._streams.clear()

    def _fail_pending(self, error: ClientError) -> None:
        pending, self._pending = self._pending, {}
        for mid, p in pending.items():
            if not p.future.done():
                if isinstance(error, ConnectionLost) and not self._closing:
                    err: ClientError = ConnectionLost(
                        f"the connection dropped before the ack of {p.type} arrived; "
                        "it may or may not have been carried out",
                        message_id=mid,
                    )
                else:
                    err = error
                p.future.set_exception(err)

    def _notify(self, change: StateChange) -> None:
        if self._on_state is None:
            return
        try:
            self._on_state(change)
        except Exception:  # a broken callback must not break the connection
            log.exception("on_state callback failed")

    # -- internals: reading -----------------------------------------------------------
    async def _read(self, ws: ClientConnection) -> None:
        """Handle frames until the connection ends; then fail what waited on it."""
        try:
            while True:
                try:
                    with anyio.fail_after(self._dead_after()):
                        raw = await ws.recv()
                except TimeoutError:
                    log.warning(
                        "nothing from the gateway for %.1fs: connection considered dead",
                        self._dead_after(),
                    )
                    if ws.transport is not None:
                        ws.transport.abort()
                    with contextlib.suppress(TimeoutError):
                        with anyio.fail_after(5):
                            await ws.wait_closed()
                    return
                except ConnectionClosed:
                    return
                await self._on_frame(ws, raw)
        finally:
            if self._ws is ws:
                self._ws = None
            self._fail_pending(ConnectionLost("connection lost"))

    async def _on_frame(self, ws: ClientConnection, raw: str | bytes) -> None:
        msg = _decode(raw)
        if msg is None:
            return
        if isinstance(msg, AckMessage):
            self._on_ack(msg)
        elif isinstance(msg, HeartbeatMessage):
            if msg.type == "ping":
                pong = HeartbeatMessage(type="pong", metadata=Metadata(correlationId=msg.id))
                try:
                    await ws.send(encode(pong), text=True)
                except ConnectionClosed:
                    pass
        elif isinstance(msg, ConnectionStatusMessage):
            self.status = msg.payload
            self.session_id = msg.payload.sessionId
        elif isinstance(msg, SubscriptionGapMessage):
            self._on_gap(msg)
        else:
            self._route(msg)

    def _on_gap(self, notice: SubscriptionGapMessage) -> None:
        """Events of a topic were lost on the server: tell the subscriptions it names (all
        of the topic's when it names none) and every event stream, and continue the topic's
        duplicate window after the notice's position (its new epoch, if any)."""
        p = notice.payload
        log.warning(
            "topic %s: %s, %s events missed; continuing after %s:%s",
            p.topic,
            p.reason,
            "unknown" if p.missed is None else p.missed,
            p.position.offset,
            p.position.epoch,
        )
        self._topics.setdefault(p.topic, SeenWindow()).reset(p.position.epoch, p.position.offset)
        named = set(p.subscriptionIds)
        for sub in self._subs.values():
            if sub.topic == p.topic and (not named or sub.id in named):
                sub._gap(notice)
        for stream in self._streams:
            stream._queue.put(notice)

    def _on_ack(self, msg: AckMessage) -> None:
        p = msg.payload
        pending = self._pending.pop(p.messageId, None)
        if pending is None:
            if not p.success:
                log.warning("error ack for no pending request: %s %s", p.code, p.error)
            return
        if pending.future.done():  # the caller gave up (timeout, cancel)
            return
        if p.success:
            result = p.result or {}
            if pending.on_success is not None:
                pending.on_success(result)
            pending.future.set_result(result)
        else:
            pending.future.set_exception(
                ClientError(
                    p.code or ErrorCode.INTERNAL_ERROR,
                    p.error or "request failed",
                    message_id=p.messageId,
                )
            )

    def _route(self, event: DashboardEvent) -> None:
        topic = topic_of(event)
        pos = position_of(event)
        new = pos is None or self._topics.setdefault(topic, SeenWindow()).add(*pos)
        for sub in self._subs.values():
            if sub.topic == topic:
                sub._offer(event)
        if new and self._streams and self._first_copy(event.id):
            for stream in self._streams:
                stream._queue.put(event)

    def _first_copy(self, event_id: str) -> bool:
        """False for an event id seen recently (the same agent event on two topics)."""
        if event_id in self._event_ids:
            return False
        self._event_ids[event_id] = None
        if len(self._event_ids) > SEEN_WINDOW:
            self._event_ids.popitem(last=False)
        return True


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

M = TypeVar("M")


def _retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _build(model_type: type[M], /, **fields: Any) -> M:
    """A protocol model from keyword fields (``None`` = left out), validated here so that a
    bad argument is a :class:`ClientError` INVALID_MESSAGE before anything is sent."""
    try:
        return model_type(**{k: v for k, v in fields.items() if v is not None})
    except ValidationError as e:
        details = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
            for err in e.errors(include_url=False)[:5]
        )
        raise ClientError(ErrorCode.INVALID_MESSAGE, details) from e


def _decode(raw: str | bytes) -> Any:
    """A server frame as a typed message, or None (logged) if it cannot be parsed: one odd
    frame (say, from a newer server) must not break the connection."""
    try:
        return decode_server_message(raw)
    except ProtocolError as e:
        log.warning("ignored a server message that does not parse: %s", e.message)
        return None


def _expected_topic(kind: SubscriptionKind, agent_id: str | None) -> str:
    if kind == "agent":
        return agent_topic(agent_id) if agent_id is not None else AGENTS_TOPIC
    return METRICS_TOPIC if kind == "metrics" else LOGS_TOPIC


def _close_error(code: int | None, reason: str | None) -> ClientError:
    """The error a close stands for: 1008 names the ErrorCode in its reason."""
    text = reason or ""
    if code == 1008:
        name = text.split(":", 1)[0].strip()
        ecode = ErrorCode.__members__.get(name, ErrorCode.AUTH_FAILED)
        return ClientError(ecode, f"the gateway closed the connection (1008 {text})".strip())
    return ConnectionLost(f"the gateway closed the connection ({code} {text})".strip())


def _describe(e: BaseException) -> str:
    return str(e) or type(e).__name__
