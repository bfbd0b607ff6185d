"""Every message of the WebSocket protocol as a pydantic model, and the one codec.

The spec (``websocket-protocol.md``) is mirrored one interface → one model. Where the spec
is silent, DESIGN.md's "Protocol decisions" apply:

* every message is a full envelope ``{id, type, timestamp, payload, metadata?}``; a client
  message without ``id`` gets one assigned when it is parsed (and that id is used in its
  ``ack``); unknown fields are rejected;
* ``auth`` is accepted in both shapes the spec shows (flat and with ``payload``);
* the server answers a successful ``auth`` with ``connection:status``;
* ``ack`` carries the numeric ``code`` and an optional ``result``.

Client messages are validated here once, at the boundary (:func:`decode_client_message`).
Server messages are built by their producers from these models and encoded once
(:func:`encode`); nothing re-validates them on the fan-out path.
"""

from __future__ import annotations

import os
import time
from typing import Annotated, Any, Literal, TypeAlias

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from shared.errors import ErrorCode, ProtocolError

PROTOCOL_VERSION = "1.0.0"

#: Longest command accepted in ``agent:command`` (characters).
MAX_COMMAND_CHARS = 64 * 1024


def now_ms() -> int:
    """Unix time in milliseconds, the unit of every ``timestamp`` in the protocol."""
    return time.time_ns() // 1_000_000


def new_id() -> str:
    """A fresh message id (UUID v4 text, as ``str(uuid.uuid4())`` without its ~2 µs of
    Python: this runs for every message the gateway writes)."""
    b = bytearray(os.urandom(16))
    b[6] = b[6] & 0x0F | 0x40  # version 4
    b[8] = b[8] & 0x3F | 0x80  # RFC 4122 variant
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


Identifier = Annotated[str, StringConstraints(min_length=1, max_length=128)]
#: The number and boolean fields of what clients send take JSON values as they are: ``true``
#: is not an integer, ``0`` not a boolean, ``"5"`` and ``1.0`` not integers (pydantic's lax
#: mode would convert them all), so a wrongly typed field is INVALID_MESSAGE as the docs
#: say. Strict per field, not per call: validation in strict mode would also refuse the
#: dict that ``AuthMessage._flat_to_payload`` builds. Only the inbound models (and the
#: envelope) use them; the server's own messages are built in Python and never validated
#: on the fan-out path, so their fields stay as they were.
StrictInt = Annotated[int, Strict()]
StrictBool = Annotated[bool, Strict()]
#: A JSON integer is a number too (``"memory": 512``); strict float accepts it.
StrictFloat = Annotated[float, Strict()]
Priority = Literal["low", "normal", "high"]
AgentState = Literal["starting", "running", "paused", "stopping", "stopped", "crashed"]
OutputStream = Literal["stdout", "stderr"]
AlertLevel = Literal["info", "warning", "error", "critical"]
AlertCategory = Literal["resource", "performance", "security", "agent"]
#: The ``filters`` names of each subscription kind (docs/protocol.md, "Subscriptions and
#: filters"); the gateway refuses any other name with INVALID_MESSAGE.
AgentEventFilter = Literal["stdout", "stderr", "status", "error", "created"]
MetricsFilter = Literal["system", "agents"]
LogsFilter = Literal[AlertLevel, AlertCategory]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Metadata(_Strict):
    """Envelope metadata. ``topic``, ``offset`` and ``epoch`` are set by the server on every
    event it delivers from a topic: together they are the event's position, which a client
    sends back (through its session) to resume exactly where it left off."""

    correlationId: str | None = None
    agentId: str | None = None
    priority: Priority | None = None
    topic: str | None = None
    offset: StrictInt | None = None
    epoch: str | None = None


class WSMessage(_Strict):
    """The base envelope (spec: ``WSMessage<T>``). Concrete messages narrow ``type`` and
    ``payload``; the field order here is the order on the wire."""

    id: Identifier = Field(default_factory=new_id)
    type: str
    timestamp: StrictInt = Field(default_factory=now_ms)
    payload: Any = None
    metadata: Metadata | None = None


# ---------------------------------------------------------------------------
# Client → server
# ---------------------------------------------------------------------------


class StreamPosition(_Strict):
    """The position of the last event a client received on a topic (from its metadata)."""

    offset: Annotated[StrictInt, Field(ge=0)]
    epoch: Annotated[str, StringConstraints(max_length=64)] | None = None


class AuthPayload(_Strict):
    token: Annotated[str, StringConstraints(min_length=1, max_length=16384)]
    clientId: Identifier
    #: Resume this session (reconnection protocol); omit for a new session.
    sessionId: Identifier | None = None
    #: With ``sessionId``: topic → position of the last event this client received, so the
    #: replay starts exactly after it (optional; the server's own cursor is used otherwise).
    positions: dict[Annotated[str, StringConstraints(max_length=200)], StreamPosition] | None = (
        Field(default=None, max_length=200)
    )


class AuthMessage(WSMessage):
    """``auth``: must be the first message, within 5 s of connecting. Both shapes of the spec
    are accepted: ``{type, token, clientId}`` and ``{type, payload: {token, clientId}}``; after
    parsing, ``payload`` always holds the credentials."""

    type: Literal["auth"]
    payload: AuthPayload | None = None
    token: str | None = Field(default=None, description="Flat shape: the JWT.")
    clientId: str | None = Field(default=None, description="Flat shape: the client id.")
    sessionId: str | None = Field(default=None, description="Flat shape: session to resume.")

    @model_validator(mode="before")
    @classmethod
    def _flat_to_payload(cls, data: Any) -> Any:
        if isinstance(data, dict) and "payload" not in data and "token" in data:
            data = dict(data)
            flat = {k: data.pop(k) for k in ("token", "clientId", "sessionId") if k in data}
            data["payload"] = flat
        return data

    @model_validator(mode="after")
    def _one_shape(self) -> AuthMessage:
        if self.payload is None:
            raise ValueError("auth needs a token: {type:'auth', payload:{token, clientId}}")
        if self.token is not None or self.clientId is not None or self.sessionId is not None:
            raise ValueError("auth: give the credentials either flat or in payload, not both")
        return self

    @property
    def credentials(self) -> AuthPayload:
        assert self.payload is not None  # guaranteed by _one_shape
        return self.payload


class ResourceLimits(_Strict):
    memory: Annotated[StrictFloat, Field(gt=0, le=1024 * 1024, description="MB")]
    cpu: Annotated[StrictFloat, Field(gt=0, le=1024, description="Cores")]


#: Longest ``raw`` line carried by an ``agent:output`` event (characters).
MAX_RAW_CHARS = 64 * 1024
#: Longest permission mode / tool rule a client may name.
PermissionRule = Annotated[str, StringConstraints(min_length=1, max_length=256)]


class AgentPermissions(_Strict):
    """``agent:create`` ``payload.permissions``: the CLI's permission mode and the tools it
    may use without asking. Each value must be in the model's operator-set allow-list
    (``allowed_permission_modes`` / ``allowable_tools`` in the model configuration), else
    the create fails with AGENT_SPAWN_FAILED."""

    mode: PermissionRule | None = Field(default=None, examples=["acceptEdits", "default"])
    allowedTools: list[PermissionRule] | None = Field(
        default=None, max_length=64, examples=[["Read", "Edit", "Bash(git diff:*)"]]
    )


class CreateAgentPayload(_Strict):
    name: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    #: A model name from the runner's model configuration; the spec's defaults are
    #: ``claude-3-opus`` and ``claude-3-sonnet``.
    model: Annotated[
        str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:/-]+$")
    ] = Field(examples=["claude-3-opus", "claude-3-sonnet"])
    workspace: Annotated[str, StringConstraints(min_length=1, max_length=1024)]
    environment: dict[str, Annotated[str, StringConstraints(max_length=32768)]] | None = Field(
        default=None, max_length=256
    )
    resourceLimits: ResourceLimits | None = None
    #: What the agent may do without asking (an addition to the spec), within what the
    #: runner's operator allows for the model; omitted: the model's defaults.
    permissions: AgentPermissions | None = None


class CreateAgentMessage(WSMessage):
    type: Literal["agent:create"]
    payload: CreateAgentPayload


#: When the ack of an ``agent:command`` is sent (``AgentCommandPayload.wait``).
CommandWait: TypeAlias = Literal["delivered", "completed"]


class AgentCommandPayload(_Strict):
    agentId: Identifier
    command: Annotated[str, StringConstraints(max_length=MAX_COMMAND_CHARS)]
    interactive: StrictBool | None = None
    #: Milliseconds the agent has to complete the command (AGENT_COMMAND_TIMEOUT after).
    timeout: Annotated[StrictInt, Field(gt=0, le=24 * 3600 * 1000)] | None = None
    #: An addition to the spec: when the ack is sent. ``delivered`` (the default): once the
    #: command was written to the agent; ``completed``: once the command's turn ended, with
    #: its ``turn_end`` as ``result.turn``, or an error ack saying how it failed.
    wait: CommandWait | None = None


class AgentCommandMessage(WSMessage):
    type: Literal["agent:command"]
    payload: AgentCommandPayload


class TerminateAgentPayload(_Strict):
    agentId: Identifier
    force: StrictBool | None = None


class TerminateAgentMessage(WSMessage):
    type: Literal["agent:terminate"]
    payload: TerminateAgentPayload


class AgentRef(_Strict):
    agentId: Identifier


class AgentControlMessage(WSMessage):
    type: Literal["agent:pause", "agent:resume"]
    payload: AgentRef


class SubscribePayload(_Strict):
    agentId: Identifier | None = None
    filters: list[Annotated[str, StringConstraints(min_length=1, max_length=64)]] | None = Field(
        default=None, max_length=32
    )
    #: Start after this position of the topic (an addition to the spec): the events after
    #: it that the replay buffer still holds, then live, with no gap and no duplicate
    #: (``offset: 0`` for everything retained). Omitted: live from now.
    since: StreamPosition | None = None


class SubscribeMessage(WSMessage):
    type: Literal["subscribe:agent", "subscribe:metrics", "subscribe:logs"]
    payload: SubscribePayload = Field(default_factory=SubscribePayload)


class UnsubscribePayload(_Strict):
    subscriptionId: Identifier


class UnsubscribeMessage(WSMessage):
    type: Literal["unsubscribe"]
    payload: UnsubscribePayload


class HeartbeatPayload(_Strict):
    timestamp: StrictInt = Field(default_factory=now_ms)


class HeartbeatMessage(WSMessage):
    """``ping`` / ``pong``, in both directions."""

    type: Literal["ping", "pong"]
    payload: HeartbeatPayload = Field(default_factory=HeartbeatPayload)


class AgentPermissionPayload(_Strict):
    agentId: Identifier
    #: The ``requestId`` of the ``permission_request`` event.
    requestId: Identifier
    decision: Literal["allow", "deny"]
    #: Told to the agent with a ``deny`` (why not, what to do instead).
    message: Annotated[str, StringConstraints(max_length=4096)] | None = None


class AgentPermissionMessage(WSMessage):
    """``agent:permission``: answer a ``permission_request`` (an addition to the spec);
    the owner (operator) or an admin only."""

    type: Literal["agent:permission"]
    payload: AgentPermissionPayload


class AgentListPayload(_Strict):
    #: Only agents in one of these statuses (default: every live one; ended ones with
    #: ``includeEnded`` or when asked for by status).
    status: list[AgentState] | None = Field(default=None, max_length=6)
    #: Only this user's agents (an operator may only name themselves).
    owner: Identifier | None = None
    #: Include agents that ended within the history TTL.
    includeEnded: StrictBool = False
    limit: Annotated[StrictInt, Field(ge=1, le=1000)] = 100
    #: The previous page's ``next``.
    after: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None


class AgentListMessage(WSMessage):
    """``agent:list`` (an addition to the spec): the agents the caller may see, paged,
    with the position of the ``agents`` topic the list reflects."""

    type: Literal["agent:list"]
    payload: AgentListPayload = Field(default_factory=AgentListPayload)


class AgentHistoryPayload(_Strict):
    agentId: Identifier
    #: Events after this offset of the agent's topic (the previous page's ``next``);
    #: omitted: from the oldest event the transcript keeps.
    after: Annotated[StrictInt, Field(ge=0)] | None = None
    #: Events before this offset (the previous page's ``prev``, to scroll back); with no
    #: ``after``, the newest ``limit`` of them.
    before: Annotated[StrictInt, Field(ge=1)] | None = None
    limit: Annotated[StrictInt, Field(ge=1, le=1000)] = 100
    #: Only events of these kinds (the ``subscribe:agent`` filter names).
    filters: list[AgentEventFilter] | None = Field(default=None, max_length=8)


class AgentHistoryMessage(WSMessage):
    """``agent:history`` (an addition to the spec): one page of an agent's durable
    transcript, the same events a live subscriber got, with their positions."""

    type: Literal["agent:history"]
    payload: AgentHistoryPayload


ClientMessage: TypeAlias = Annotated[
    AuthMessage
    | CreateAgentMessage
    | AgentCommandMessage
    | TerminateAgentMessage
    | AgentControlMessage
    | SubscribeMessage
    | UnsubscribeMessage
    | HeartbeatMessage
    | AgentPermissionMessage
    | AgentListMessage
    | AgentHistoryMessage,
    Field(discriminator="type"),
]

# ---------------------------------------------------------------------------
# Server → client
# ---------------------------------------------------------------------------


class AgentStatusDetails(_Strict):
    pid: int | None = None
    uptime: int | None = Field(default=None, description="Milliseconds since the agent started.")
    lastActivity: int | None = None
    #: Set when the process ended: its exit code, or the signal that ended it.
    exitCode: int | None = None
    signal: str | None = None
    #: Why the agent stopped or crashed, e.g. ``exited``, ``terminated``, ``oom``,
    #: ``runner-lost``.
    reason: str | None = None
    runnerId: str | None = None


class AgentStatusPayload(_Strict):
    agentId: str
    status: AgentState
    details: AgentStatusDetails | None = None


class AgentStatusMessage(WSMessage):
    type: Literal["agent:status"]
    payload: AgentStatusPayload


class AgentOutputPayload(_Strict):
    agentId: str
    stream: OutputStream
    #: The text to show. For a model whose driver reads a structured output format (Claude
    #: Code, Codex) this is the readable form of ``event``, never the CLI's private JSON.
    data: str
    timestamp: int
    sequence: int
    #: What the output means, for drivers that know (an addition to the spec; see
    #: docs/protocol.md, "Readable agent events"). Absent for plain text output.
    event: AgentEvent | None = None
    #: The CLI's own output line this event was read from (cut at ``MAX_RAW_CHARS``).
    raw: str | None = None
    #: True when ``raw`` was cut.
    rawTruncated: bool | None = None


class AgentOutputMessage(WSMessage):
    type: Literal["agent:output"]
    payload: AgentOutputPayload


class AgentCreatedPayload(_Strict):
    agentId: str
    name: str
    pid: int
    startTime: int


class AgentCreatedMessage(WSMessage):
    type: Literal["agent:created"]
    payload: AgentCreatedPayload


class AgentErrorDetail(_Strict):
    #: The ErrorCode name, e.g. ``AGENT_COMMAND_TIMEOUT``.
    code: str
    message: str
    stack: str | None = None
    #: The numeric ErrorCode, e.g. 2004.
    errorCode: int | None = None


class AgentErrorPayload(_Strict):
    agentId: str
    error: AgentErrorDetail


class AgentErrorMessage(WSMessage):
    type: Literal["agent:error"]
    payload: AgentErrorPayload


class CpuMetrics(_Strict):
    usage: float = Field(description="Percent of all cores, 0-100.")
    cores: int
    temperature: float | None = Field(default=None, description="Degrees Celsius.")


class MemoryMetrics(_Strict):
    total: int
    used: int
    available: int
    percent: float


class DiskMetrics(_Strict):
    total: int
    used: int
    percent: float


class NetworkMetrics(_Strict):
    bytesIn: int
    bytesOut: int
    packetsIn: int
    packetsOut: int
    #: Rates over the last sampling interval (an addition to the spec's counters).
    bytesInPerSec: float | None = None
    bytesOutPerSec: float | None = None


class SystemMetrics(_Strict):
    cpu: CpuMetrics
    memory: MemoryMetrics
    disk: DiskMetrics
    network: NetworkMetrics


class AgentMetrics(_Strict):
    agentId: str
    cpu: float = Field(description="Percent of one core (can exceed 100 on several cores).")
    memory: int = Field(description="Resident bytes of the agent's whole process tree.")
    threads: int
    owner: str | None = Field(
        None,
        description="The user who created the agent. An operator's updates list only "
        "their own agents (unless the gateway lets operators see all agents).",
    )


class MetricsUpdatePayload(_Strict):
    #: Always sent by the collector; left out for a subscription whose ``filters`` are
    #: ``["agents"]`` (the gateway then delivers only the ``agents`` section).
    system: SystemMetrics | None = None
    agents: list[AgentMetrics] | None = None


class MetricsUpdateMessage(WSMessage):
    type: Literal["metrics:update"]
    payload: MetricsUpdatePayload


class SystemAlertPayload(_Strict):
    level: AlertLevel
    category: AlertCategory
    message: str
    details: dict[str, Any] | None = None


class SystemAlertMessage(WSMessage):
    type: Literal["system:alert"]
    payload: SystemAlertPayload


class AckPayload(_Strict):
    messageId: str
    success: bool
    error: str | None = None
    #: The numeric ErrorCode when ``success`` is false.
    code: ErrorCode | None = None
    #: Request-specific result: ``subscriptionId`` for subscribe, ``agentId`` for create.
    result: dict[str, Any] | None = None


class AckMessage(WSMessage):
    type: Literal["ack"]
    payload: AckPayload


# What ``ack.payload.result`` holds on success, per request (``ACK_RESULTS``). The gateway
# builds these results as dicts; the models describe them for the schema and the SDKs.


class SubscribeResult(_Strict):
    subscriptionId: str
    #: The topic the subscription follows (``agent:{id}``, ``agents``, ``metrics``, ``logs``).
    topic: str
    #: With ``since``: events after it that are no longer retained (0: none), and whether
    #: the catch-up is complete (nothing missed, same epoch).
    missed: int | None = None
    recovered: bool | None = None


class AgentUsage(_Strict):
    """An agent's latest resource sample (its runner samples every
    ``TEAMDASH_STATS_INTERVAL_S``)."""

    #: Percent of one core (can exceed 100 on several cores).
    cpu: float
    #: Resident bytes of the agent's whole process tree.
    memory: int
    threads: int
    #: When it was sampled (Unix ms).
    sampledAt: int


class AgentLimits(_Strict):
    #: MB; absent when unlimited.
    memory: float | None = None
    #: Cores; absent when unlimited.
    cpu: float | None = None


class AgentInfo(_Strict):
    """One agent of ``agent:list`` (the spec's ``AgentInfo``, from the agent registry)."""

    agentId: str
    name: str
    model: str
    owner: str
    status: AgentState
    pid: int | None = None
    #: Unix ms.
    startTime: int | None = None
    #: Milliseconds it has run (until its end, for an ended agent).
    uptime: int | None = None
    #: Unix ms of its latest event (output, status, error) the replay buffer holds.
    lastActivity: int | None = None
    #: The runner that owns its process.
    runner: str
    workspace: str | None = None
    limits: AgentLimits
    usage: AgentUsage | None = None
    #: For an ended agent: Unix ms of its end, exit code or signal, and why.
    endTime: int | None = None
    exitCode: int | None = None
    signal: str | None = None
    reason: str | None = None


class AgentListResult(_Strict):
    agents: list[AgentInfo]
    #: The position of the ``agents`` topic this list reflects: every event up to it is in
    #: the list. Subscribe with ``since`` set to it to get every later change exactly once.
    position: StreamPosition
    #: Pass as ``after`` for the next page; absent on the last page.
    next: str | None = None
    #: How many agents match the filters (every page).
    total: int


#: The events of one agent's topic (``agent:{agentId}``), as ``agent:history`` returns them.
AgentTopicEvent: TypeAlias = Annotated[
    AgentOutputMessage | AgentStatusMessage | AgentErrorMessage | AgentCreatedMessage,
    Field(discriminator="type"),
]


class AgentHistoryResult(_Strict):
    """One page of ``agent:history``."""

    #: In order (oldest first), at most ``limit``: ``agent:output``, ``agent:status``,
    #: ``agent:error`` and ``agent:created`` events exactly as a subscriber got them.
    events: list[AgentTopicEvent]
    #: Pass as ``after`` for the next (newer) page; absent when this page reaches the newest
    #: event (subscribe with ``since`` = ``position`` to go on live).
    next: int | None = None
    #: Pass as ``before`` for the page before this one (older); absent at the oldest event kept.
    prev: int | None = None
    #: The newest event of the transcript when it was read (its offset and epoch).
    position: StreamPosition
    #: Events between ``after`` and this page that the transcript no longer keeps (its
    #: caps or retention dropped them); 0 when nothing is missing.
    missed: int = 0


class UnsubscribeResult(_Strict):
    subscriptionId: str


class CreateAgentResult(_Strict):
    agentId: str
    pid: int


class AgentCommandResult(_Strict):
    agentId: str
    #: ``false`` when the agent's model cannot tell when a command completes, so the
    #: command's ``timeout`` is not enforced (absent otherwise).
    timeoutEnforced: bool | None = None
    #: With ``wait: "completed"``: the ``turn_end`` event of the command's turn (``success``
    #: true; duration, cost and usage when the CLI reports them). A failed turn is an error
    #: ack instead.
    turn: TurnEndEvent | None = None


class AgentControlResult(_Strict):
    """The result of ``agent:pause``, ``agent:resume`` and ``agent:terminate``."""

    agentId: str


class AgentPermissionResult(_Strict):
    """The result of ``agent:permission``: the answer reached the agent."""

    agentId: str
    #: The tool the answered request was about.
    tool: str


class TokenRefreshResult(_Strict):
    """The result of an ``auth`` on a live connection (a token refresh)."""

    #: The new token's expiry (Unix ms).
    expiresAt: int
    #: Subscriptions ended because the new token's roles see fewer agents.
    endedSubscriptions: list[str] | None = None


#: Request type → the model of its ack's ``result``.
ACK_RESULTS: dict[str, type[BaseModel]] = {
    "auth": TokenRefreshResult,
    "agent:create": CreateAgentResult,
    "agent:command": AgentCommandResult,
    "agent:pause": AgentControlResult,
    "agent:resume": AgentControlResult,
    "agent:terminate": AgentControlResult,
    "agent:permission": AgentPermissionResult,
    "subscribe:agent": SubscribeResult,
    "subscribe:metrics": SubscribeResult,
    "subscribe:logs": SubscribeResult,
    "unsubscribe": UnsubscribeResult,
    "agent:list": AgentListResult,
    "agent:history": AgentHistoryResult,
}

#: Subscribe request type → the names its ``filters`` may hold.
SUBSCRIBE_FILTERS: dict[str, Any] = {
    "subscribe:agent": AgentEventFilter,
    "subscribe:metrics": MetricsFilter,
    "subscribe:logs": LogsFilter,
}


class RestoredSubscription(_Strict):
    """A subscription a resumed session got back (same id as before the disconnect)."""

    subscriptionId: str
    kind: Literal["agent", "metrics", "logs"]
    topic: str
    filters: list[str] | None = None


class ConnectionStatusPayload(_Strict):
    status: Literal["authenticated"]
    sessionId: str
    userId: str
    #: True when an existing session was resumed.
    resumed: bool = False
    #: True when the resume delivered every missed event (nothing was lost).
    recovered: bool | None = None
    #: Missed events replayed after this message.
    replayed: int = 0
    #: Missed events that were too old to replay.
    missed: int = 0
    heartbeatIntervalMs: int
    gatewayId: str
    #: On a resume: the subscriptions restored (any other from before is gone; subscribe
    #: again). Absent on a new session.
    subscriptions: list[RestoredSubscription] | None = None
    roles: list[str] | None = None
    protocolVersion: str = PROTOCOL_VERSION


class ConnectionStatusMessage(WSMessage):
    type: Literal["connection:status"]
    payload: ConnectionStatusPayload


class SubscriptionGapPayload(_Strict):
    """Events of a topic this connection follows were lost before they could be delivered
    (an extension: see docs/protocol.md, "Subscription gaps")."""

    topic: str
    #: The connection's subscriptions of that topic (visible ones; may be empty when only
    #: an agent association follows it).
    subscriptionIds: list[str]
    #: ``events-lost``: the stream no longer holds them (trimmed, or Redis lost them);
    #: ``epoch-changed``: the topic's history was reset (Redis restarted empty) and its
    #: offsets start again in a new epoch.
    reason: Literal["events-lost", "epoch-changed"]
    #: How many events were lost, when known (absent: unknown, e.g. across an epoch change).
    missed: int | None = None
    #: The last position delivered before the gap.
    since: StreamPosition | None = None
    #: Where delivery goes on: the events that follow are those after this position.
    position: StreamPosition


class SubscriptionGapMessage(WSMessage):
    type: Literal["subscription:gap"]
    payload: SubscriptionGapPayload


#: The events delivered from topics (everything but acks, heartbeats and connection:status).
TopicEvent: TypeAlias = (
    AgentStatusMessage
    | AgentOutputMessage
    | AgentCreatedMessage
    | AgentErrorMessage
    | MetricsUpdateMessage
    | SystemAlertMessage
)

ServerMessage: TypeAlias = Annotated[
    TopicEvent | AckMessage | HeartbeatMessage | ConnectionStatusMessage | SubscriptionGapMessage,
    Field(discriminator="type"),
]

CLIENT_TYPES: frozenset[str] = frozenset(
    {
        "auth",
        "agent:create",
        "agent:command",
        "agent:terminate",
        "agent:pause",
        "agent:resume",
        "subscribe:agent",
        "subscribe:metrics",
        "subscribe:logs",
        "unsubscribe",
        "ping",
        "pong",
        "agent:permission",
        "agent:list",
        "agent:history",
    }
)

# ---------------------------------------------------------------------------
# Readable agent events and permission prompts (additions to the spec)
# ---------------------------------------------------------------------------


class TextEvent(_Strict):
    """The assistant's text (also in ``data``)."""

    kind: Literal["text"]
    text: str


class SessionEvent(_Strict):
    """The CLI started (or continued) its session."""

    kind: Literal["session"]
    sessionId: str | None = None
    model: str | None = None
    permissionMode: str | None = None


class ToolCallEvent(_Strict):
    """The agent calls a tool: its name and a short summary of the input (a path, a
    command line), never the whole input."""

    kind: Literal["tool_call"]
    toolUseId: str | None = None
    name: str
    summary: str


class ToolResultEvent(_Strict):
    """A tool call's result: whether it succeeded and its first line."""

    kind: Literal["tool_result"]
    toolUseId: str | None = None
    success: bool
    summary: str


class TurnUsage(_Strict):
    inputTokens: int | None = None
    outputTokens: int | None = None
    cachedInputTokens: int | None = None


class TurnEndEvent(_Strict):
    """The end of a command's turn (``metadata.correlationId`` = the command's id when the
    runner knows it). When ``success`` is false an ``agent:error`` with the same
    correlation id and ``errorCode`` says why."""

    kind: Literal["turn_end"]
    success: bool
    durationMs: int | None = None
    costUsd: float | None = None
    usage: TurnUsage | None = None
    #: The stable ``agent:error`` code of the failure, e.g. ``AGENT_AUTH_REQUIRED``.
    errorCode: str | None = None
    error: str | None = None


class RetryEvent(_Strict):
    """The CLI retries its API call. One such event per attempt: a frontend shows the
    latest one of the turn in place of the previous (it is one "retrying" line, updated)."""

    kind: Literal["retry"]
    attempt: int
    maxRetries: int | None = None
    delayMs: int | None = None
    #: HTTP status of the failed call, when there was one.
    status: int | None = None
    error: str | None = None


class PermissionRequestEvent(_Strict):
    """The agent waits for a decision: answer with ``agent:permission`` naming
    ``requestId``. Until then the agent's turn does not go on."""

    kind: Literal["permission_request"]
    requestId: str
    tool: str
    summary: str


class PermissionResolvedEvent(_Strict):
    """A permission request was answered (``allow`` / ``deny``) or withdrawn by the CLI
    (``cancelled``): a frontend removes its prompt."""

    kind: Literal["permission_resolved"]
    requestId: str
    decision: Literal["allow", "deny", "cancelled"]


class InputRequestEvent(_Strict):
    """A terminal tool printed a prompt and waits for a reply: answer with an
    ``agent:command`` (its text is typed as the reply)."""

    kind: Literal["input_request"]
    prompt: str


class NoticeEvent(_Strict):
    """Anything else the CLI reported that a person may want to see (``data``), or a line
    the driver does not know (then ``data`` is empty and ``raw`` holds it)."""

    kind: Literal["notice"]


AgentEvent: TypeAlias = Annotated[
    TextEvent
    | SessionEvent
    | ToolCallEvent
    | ToolResultEvent
    | TurnEndEvent
    | RetryEvent
    | PermissionRequestEvent
    | PermissionResolvedEvent
    | InputRequestEvent
    | NoticeEvent,
    Field(discriminator="kind"),
]


# ---------------------------------------------------------------------------
# Codec
# ---------------------------------------------------------------------------

client_message_adapter: TypeAdapter[ClientMessage] = TypeAdapter(ClientMessage)
server_message_adapter: TypeAdapter[ServerMessage] = TypeAdapter(ServerMessage)


def _message_id_of(data: bytes | str) -> str | None:
    """Best-effort id of a message that failed validation (for its ack)."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if isinstance(obj, dict):
        mid = obj.get("id")
        if isinstance(mid, str) and 0 < len(mid) <= 128:
            return mid
    return None


def _describe(err: ValidationError) -> str:
    parts = []
    for e in err.errors(include_url=False)[:5]:
        loc = ".".join(str(p) for p in e["loc"] if not _is_union_tag(p))
        parts.append(f"{loc}: {e['msg']}" if loc else str(e["msg"]))
    return "; ".join(parts)


def _is_union_tag(part: object) -> bool:
    return isinstance(part, str) and part in CLIENT_TYPES


def _protocol_error(err: ValidationError, data: bytes | str) -> ProtocolError:
    first = err.errors(include_url=False)[0]
    message_id = _message_id_of(data) if first["type"] != "json_invalid" else None
    if first["type"] == "json_invalid":
        return ProtocolError(ErrorCode.INVALID_MESSAGE, f"malformed JSON: {first['msg']}")
    if first["type"] == "union_tag_invalid":
        tag = first.get("ctx", {}).get("tag", "?")
        return ProtocolError(
            ErrorCode.UNSUPPORTED_TYPE,
            f"unsupported message type {tag!r}",
            message_id=message_id,
        )
    if first["type"] == "union_tag_not_found":
        return ProtocolError(
            ErrorCode.INVALID_MESSAGE, "message has no 'type' field", message_id=message_id
        )
    if first["type"] in ("dict_type", "model_attributes_type") and not first["loc"]:
        return ProtocolError(ErrorCode.INVALID_MESSAGE, "a message must be a JSON object")
    return ProtocolError(ErrorCode.INVALID_MESSAGE, _describe(err), message_id=message_id)


def decode_client_message(data: bytes | str) -> ClientMessage:
    """Parse and validate one client frame.

    Returns the typed message (with an ``id`` assigned when the client sent none), or raises
    :class:`ProtocolError` with INVALID_MESSAGE (malformed JSON, wrong or missing fields) or
    UNSUPPORTED_TYPE (a ``type`` the protocol does not have).
    """
    try:
        return client_message_adapter.validate_json(data)
    except ValidationError as e:
        raise _protocol_error(e, data) from e


def decode_server_message(data: bytes | str) -> ServerMessage:
    """Parse a server frame (used by clients, the SDK and tests)."""
    try:
        return server_message_adapter.validate_json(data)
    except ValidationError as e:
        raise _protocol_error(e, data) from e


def encode(message: WSMessage) -> bytes:
    """The wire bytes of a message (UTF-8 JSON, unset optional fields left out).

    Send them as a *text* frame (``send(data, text=True)``)."""
    return message.__pydantic_serializer__.to_json(message, exclude_none=True)


def encode_fields(
    type_: str, payload: dict[str, Any], *, correlation_id: str | None = None
) -> bytes:
    """The wire bytes of a ``type_`` message with ``payload`` already as JSON values, as
    :func:`encode` would write the model (a hot path's shortcut: no model to build;
    ``payload`` must hold the model's fields in its order, leaving out the unset ones).
    ``tests/shared/test_protocol.py`` checks every use against the model."""
    doc: dict[str, Any] = {"id": new_id(), "type": type_, "timestamp": now_ms(), "payload": payload}
    if correlation_id is not None:
        doc["metadata"] = {"correlationId": correlation_id}
    return orjson.dumps(doc)


def ack_with_events(message_id: str, result: dict[str, Any], events: list[bytes]) -> bytes:
    """The bytes of a success ``ack`` whose ``result`` is ``events`` (encoded events, as
    stored: spliced in, never decoded or re-encoded) followed by ``result``'s fields."""
    frame = encode(ack(message_id, result={"events": [], **result}))
    head, found, tail = frame.partition(b'"result":{"events":[]')
    assert found, "an ack's result is serialised in order"
    return b"".join((head, b'"result":{"events":[', b",".join(events), b"]", tail))


def ack(
    message_id: str,
    *,
    error: BaseException | None = None,
    result: dict[str, Any] | None = None,
) -> AckMessage:
    """The ``ack`` for a request: success with an optional result, or the error's code."""
    if error is None:
        return AckMessage(
            type="ack",
            payload=AckPayload(messageId=message_id, success=True, result=result),
            metadata=Metadata(correlationId=message_id),
        )
    code = getattr(error, "code", None)
    if not isinstance(code, ErrorCode):  # e.g. a library exception with its own ``code``
        code = ErrorCode.INTERNAL_ERROR
    text = getattr(error, "message", None) or str(error) or code.name
    return AckMessage(
        type="ack",
        payload=AckPayload(messageId=message_id, success=False, error=text, code=code),
        metadata=Metadata(correlationId=message_id),
    )
