"""The agent status state machine: THE transition table, and nothing else.

Every status change of an agent — in the runner, the reaper and restart reconciliation — goes
through :data:`TRANSITIONS`; a move that is not in the table raises :class:`IllegalTransition`.

::

    starting ──started──▶ running ──pause──▶ paused
        │                  ▲   │  ◀──resume──  │
        │                  │   │               │
        └──terminate──▶ stopping ◀──terminate──┘
                           │
                        reaped ──▶ stopped
    running/paused ──exited (code 0, by itself)──▶ stopped
    starting/running/paused ──failed (non-zero, signal, OOM)──▶ crashed
    starting/running/paused/stopping ──lost (runner lost or restarted)──▶ crashed

An agent that exits *after* it was asked to stop is ``stopped`` whatever its exit status
(the runner ended it); one that ends by itself is ``stopped`` with code 0 and ``crashed``
otherwise. ``stopped`` and ``crashed`` are final.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Final

from agent_runner.errors import InvalidRequest


class Status(StrEnum):
    """The spec's agent statuses (``agent:status`` ``payload.status``)."""

    STARTING = "starting"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPING = "stopping"
    STOPPED = "stopped"
    CRASHED = "crashed"


class Event(StrEnum):
    """What can happen to an agent."""

    #: The process exec'd and was announced (``agent:created``).
    STARTED = "started"
    PAUSE = "pause"
    RESUME = "resume"
    #: Stop requested (client ``agent:terminate``, runner shutdown); repeating it escalates.
    TERMINATE = "terminate"
    #: The process ended by itself with exit code 0.
    EXITED = "exited"
    #: The process ended by itself with a non-zero code or a signal (OOM included).
    FAILED = "failed"
    #: The process ended after it was asked to stop.
    REAPED = "reaped"
    #: The runner that owned the process is gone or restarted: no process is behind it.
    LOST = "lost"


S, E = Status, Event

#: (status, event) → next status. The only place where agent status transitions are defined.
TRANSITIONS: Final[Mapping[tuple[Status, Event], Status]] = {
    (S.STARTING, E.STARTED): S.RUNNING,
    (S.STARTING, E.TERMINATE): S.STOPPING,
    (S.STARTING, E.FAILED): S.CRASHED,
    (S.STARTING, E.LOST): S.CRASHED,
    (S.RUNNING, E.PAUSE): S.PAUSED,
    (S.RUNNING, E.TERMINATE): S.STOPPING,
    (S.RUNNING, E.EXITED): S.STOPPED,
    (S.RUNNING, E.FAILED): S.CRASHED,
    (S.RUNNING, E.LOST): S.CRASHED,
    (S.PAUSED, E.RESUME): S.RUNNING,
    (S.PAUSED, E.TERMINATE): S.STOPPING,
    (S.PAUSED, E.EXITED): S.STOPPED,
    (S.PAUSED, E.FAILED): S.CRASHED,
    (S.PAUSED, E.LOST): S.CRASHED,
    (S.STOPPING, E.TERMINATE): S.STOPPING,
    (S.STOPPING, E.REAPED): S.STOPPED,
    (S.STOPPING, E.LOST): S.CRASHED,
}

#: Statuses with (supposedly) a process behind them.
LIVE: Final[frozenset[Status]] = frozenset({S.STARTING, S.RUNNING, S.PAUSED, S.STOPPING})
FINAL: Final[frozenset[Status]] = frozenset({S.STOPPED, S.CRASHED})

del S, E


class IllegalTransition(InvalidRequest):
    """``event`` is not allowed in ``status`` (reported to clients as INVALID_MESSAGE)."""

    def __init__(self, status: Status, event: Event) -> None:
        super().__init__(f"cannot {event.value} an agent that is {status.value}")
        self.status = status
        self.event = event


def next_status(status: Status, event: Event) -> Status:
    """The status after ``event``; raises :class:`IllegalTransition` when it is not allowed."""
    try:
        return TRANSITIONS[(status, event)]
    except KeyError:
        raise IllegalTransition(status, event) from None


class AgentState:
    """The status of one agent, changed only through :meth:`handle`."""

    __slots__ = ("status",)

    def __init__(self, status: Status = Status.STARTING) -> None:
        self.status = status

    def can(self, event: Event) -> bool:
        return (self.status, event) in TRANSITIONS

    def handle(self, event: Event) -> Status:
        """Apply ``event``; returns the new status or raises :class:`IllegalTransition`."""
        self.status = next_status(self.status, event)
        return self.status

    @property
    def live(self) -> bool:
        return self.status in LIVE

    def __repr__(self) -> str:
        return f"AgentState({self.status.value})"
