"""The error codes of the protocol and the one exception root that carries them.

Every error that can reach a client is a :class:`TeamdashError` (or a subclass) with
an :class:`ErrorCode`, so turning an exception into an ``ack`` or ``agent:error`` is a
single attribute lookup, never a chain of ``if``s.
"""

from __future__ import annotations

from enum import IntEnum


class ErrorCode(IntEnum):
    """Numeric error codes: the spec's ``ErrorCode`` enum, plus the agent errors 2005-2009
    (an addition: how an agent's turn failed, which no spec code says truthfully)."""

    # Authentication errors (1xxx)
    AUTH_FAILED = 1001
    TOKEN_EXPIRED = 1002
    INSUFFICIENT_PERMISSIONS = 1003

    # Agent errors (2xxx)
    AGENT_NOT_FOUND = 2001
    AGENT_SPAWN_FAILED = 2002
    AGENT_LIMIT_EXCEEDED = 2003
    AGENT_COMMAND_TIMEOUT = 2004
    # Additions to the spec: what the agent's CLI reported (read by its driver), as the
    # ``agent:error`` of the failure and the ack of a command sent with ``wait: "completed"``.
    AGENT_TURN_FAILED = 2005
    AGENT_AUTH_REQUIRED = 2006
    AGENT_RATE_LIMITED = 2007
    AGENT_API_UNREACHABLE = 2008
    AGENT_API_ERROR = 2009

    # System errors (3xxx)
    RESOURCE_EXHAUSTED = 3001
    SERVICE_UNAVAILABLE = 3002
    INTERNAL_ERROR = 3003

    # Protocol errors (4xxx)
    INVALID_MESSAGE = 4001
    UNSUPPORTED_TYPE = 4002
    RATE_LIMIT_EXCEEDED = 4003


class TeamdashError(Exception):
    """Root of every error that is reported to a client with a spec error code.

    ``message_id`` is the id of the client message that caused it, when known,
    so the gateway can put it in the ``ack``.
    """

    def __init__(self, code: ErrorCode, message: str, *, message_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.message_id = message_id

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code.name}, {self.message!r})"


class ProtocolError(TeamdashError):
    """A client message that cannot be accepted (bad JSON, wrong fields, unknown type)."""
