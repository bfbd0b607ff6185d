"""Errors of the agent runner. All are :class:`shared.errors.TeamdashError`\\ s with the spec's
numeric code, so the reply to the gateway is built by one lookup (``err.code``)."""

from __future__ import annotations

from typing import ClassVar

from shared.errors import ErrorCode, TeamdashError


class RunnerError(TeamdashError):
    """Root of the runner's errors; each subclass fixes its ErrorCode."""

    default_code: ClassVar[ErrorCode] = ErrorCode.INTERNAL_ERROR

    def __init__(self, message: str) -> None:
        super().__init__(self.default_code, message)


class SpawnFailed(RunnerError):
    """The agent could not be started (unknown model, missing program, bad workspace or
    environment, exec failure)."""

    default_code = ErrorCode.AGENT_SPAWN_FAILED


class AgentNotFound(RunnerError):
    """No live agent with that id on this runner."""

    default_code = ErrorCode.AGENT_NOT_FOUND


class LimitExceeded(RunnerError):
    """The runner or the user has reached the agent limit."""

    default_code = ErrorCode.AGENT_LIMIT_EXCEEDED


class InvalidRequest(RunnerError):
    """The request cannot be carried out as asked (bad payload, wrong agent state)."""

    default_code = ErrorCode.INVALID_MESSAGE


class CommandTimeout(RunnerError):
    """The agent did not take or complete a command in time."""

    default_code = ErrorCode.AGENT_COMMAND_TIMEOUT


class Busy(RunnerError):
    """Too many requests are queued for one agent."""

    default_code = ErrorCode.RATE_LIMIT_EXCEEDED
