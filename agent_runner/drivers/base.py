"""What every driver is: the rules of one CLI's I/O contract, with no I/O.

A driver owns, for one agent:

* how a command reaches the CLI (:meth:`Driver.frame`: the bytes written to its stdin);
* how its output is interpreted (:meth:`Driver.read`: one whole stdout line in, a
  :class:`Reading` out — the readable events to publish, the failures to surface, the end
  of a turn, bytes to answer the CLI with at once);
* how a permission prompt is answered (:meth:`Driver.answer`).

The agent (``agent_runner/agent.py``) is the adapter: it feeds lines in and publishes,
writes and times what comes out. ``passthrough`` drivers (plain line tools) have their
output published as it is, piece by piece; the others replace each line with its readable
events or text (the line itself rides along in ``raw``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from shared.errors import ErrorCode
from shared.protocol import AgentEvent, NoticeEvent, TurnEndEvent

#: ``agent:error`` codes drivers report (stable: frontends and alerts key on them), the
#: names of their ErrorCodes (the number is the event's ``errorCode`` and a waiting
#: command's ack ``code``).
AUTH_REQUIRED = ErrorCode.AGENT_AUTH_REQUIRED.name
RATE_LIMITED = ErrorCode.AGENT_RATE_LIMITED.name
API_ERROR = ErrorCode.AGENT_API_ERROR.name
API_UNREACHABLE = ErrorCode.AGENT_API_UNREACHABLE.name
TURN_FAILED = ErrorCode.AGENT_TURN_FAILED.name

#: A retry storm: this many attempts in one turn without a reply are reported once.
RETRY_STORM_ATTEMPTS = 3
#: Longest summary of a tool's input or result (characters).
SUMMARY_CHARS = 200


class DriverError(ValueError):
    """A request the driver cannot carry out (e.g. answering an unknown prompt)."""


@dataclass(frozen=True, slots=True)
class Failure:
    """Something the CLI reported as a failure: an ``agent:error`` (``code``, ``message``)
    and an ``agent`` alert for the owner, correlated with the command being run."""

    #: An ErrorCode name (one of the constants above).
    code: str
    message: str

    @property
    def error_code(self) -> ErrorCode:
        return ErrorCode[self.code]


@dataclass(frozen=True, slots=True)
class Shown:
    """One output event: its text (``agent:output`` ``data``) and what it means (``None``:
    plain text, e.g. a terminal tool's line with its escape sequences rendered)."""

    text: str
    event: AgentEvent | None


@dataclass(slots=True)
class Reading:
    """What a driver made of one output line."""

    shown: list[Shown] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    #: Set when this line ended the oldest pending command's turn.
    turn_end: TurnEndEvent | None = None
    #: Bytes to write to the CLI's stdin at once (an answer it waits for).
    reply: bytes | None = None

    def show(self, text: str, event: AgentEvent | None) -> None:
        """Publish ``event`` with ``text`` (a newline is added; empty stays empty)."""
        self.shown.append(Shown(text if not text or text.endswith("\n") else text + "\n", event))


class Driver(Protocol):
    #: True: output is published as the CLI wrote it (``read`` only detects things).
    passthrough: bool
    #: Whether a command may keep its newlines.
    multiline: bool
    #: False when the end of a turn cannot be detected (a command's timeout then is not
    #: enforced, and a command cannot wait for its turn: ``wait: "completed"`` is refused).
    detects_turns: bool
    #: True while the CLI waits for the reply to a prompt it printed (``input_request``):
    #: the next command is that reply, within the current turn, not a turn of its own.
    awaiting_reply: bool

    def frame(self, command: str) -> bytes:
        """The bytes written to the CLI's stdin for one (sanitized) command."""
        ...

    def read(self, line: str) -> Reading:
        """Interpret one whole stdout line (with its newline, if it had one)."""
        ...

    def read_partial(self, text: str) -> Reading:
        """Interpret text the CLI left without a newline for a while (a prompt)."""
        ...

    def answer(self, request_id: str, *, allow: bool, message: str | None) -> tuple[bytes, str]:
        """The bytes that answer the permission request ``request_id`` and its tool's name;
        raises :class:`DriverError` if there is no such pending request."""
        ...


def clip(text: str, limit: int = SUMMARY_CHARS) -> str:
    """``text`` on one line, at most ``limit`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def first_line(text: str, limit: int = SUMMARY_CHARS) -> str:
    for line in text.splitlines():
        if line.strip():
            return clip(line, limit)
    return ""


def json_line(line: str, reading: Reading) -> dict[str, Any] | None:
    """The JSON object a CLI printed on ``line``; None when it is not one of its JSON lines
    (a warning printed on stdout), which is then shown as it is."""
    try:
        doc = orjson.loads(line)
    except orjson.JSONDecodeError:
        doc = None
    if not isinstance(doc, dict):
        reading.show(line.rstrip("\r\n"), NoticeEvent(kind="notice"))
        return None
    return doc
