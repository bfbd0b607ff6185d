"""The events the runner publishes, built in one place (no I/O).

Where they go, with which filter tags (see :mod:`shared.bus`):

=====================  ==========================================  =============================
event                  topics                                      tags
=====================  ==========================================  =============================
``agent:output``       ``agent:{id}``                              ``stdout``/``stderr``, ``user:{owner}``
``agent:created``      ``agent:{id}`` and ``agents``               ``created``, ``user:{owner}``
``agent:status``       ``agent:{id}`` and ``agents``               ``status``, ``user:{owner}``
``agent:error``        ``agent:{id}`` and ``agents``               ``error``, ``user:{owner}``
``system:alert``       ``logs``                                    level, ``agent``, ``user:{owner}``
=====================  ==========================================  =============================

Every agent event has ``metadata.agentId``; events caused by a request carry
``metadata.correlationId`` = that request's id. ``agent:error`` codes the runner uses:

* ``AGENT_COMMAND_TIMEOUT`` (``errorCode`` 2004): a command's ``timeout`` passed before the
  agent reported completion;
* ``AGENT_EXITED`` (no ``errorCode``): the agent ended by itself with a non-zero code or a
  signal (status ``crashed``);
* ``AGENT_OOM`` (no ``errorCode``): it exceeded its memory limit (status ``crashed``,
  reason ``oom``);
* ``AGENT_LOST`` (no ``errorCode``): its runner died or restarted (status ``crashed``,
  reason ``runner-lost`` / ``runner-restarted``).
"""

from __future__ import annotations

from typing import Any

from shared.errors import ErrorCode
from shared.keys import AGENTS_TOPIC, LOGS_TOPIC, agent_topic
from shared.protocol import (
    AgentCreatedMessage,
    AgentCreatedPayload,
    AgentErrorDetail,
    AgentErrorMessage,
    AgentErrorPayload,
    AgentOutputMessage,
    AgentOutputPayload,
    AgentStatusDetails,
    AgentStatusMessage,
    AgentStatusPayload,
    AlertLevel,
    Metadata,
    OutputStream,
    SystemAlertMessage,
    SystemAlertPayload,
    WSMessage,
    now_ms,
)

#: One publish: (topic, message, tags).
Item = tuple[str, WSMessage, tuple[str, ...]]

CODE_EXITED = "AGENT_EXITED"
CODE_OOM = "AGENT_OOM"
CODE_LOST = "AGENT_LOST"


def user_tag(owner: str) -> str:
    return f"user:{owner}"


def _meta(agent_id: str, correlation_id: str | None) -> Metadata:
    return Metadata(agentId=agent_id, correlationId=correlation_id)


def _lifecycle(agent_id: str, owner: str, kind: str, message: WSMessage) -> list[Item]:
    tags = (kind, user_tag(owner))
    return [(agent_topic(agent_id), message, tags), (AGENTS_TOPIC, message, tags)]


def output(
    agent_id: str, owner: str, stream: OutputStream, data: str, sequence: int, ts: int
) -> Item:
    message = AgentOutputMessage(
        type="agent:output",
        timestamp=ts,
        payload=AgentOutputPayload(
            agentId=agent_id, stream=stream, data=data, timestamp=ts, sequence=sequence
        ),
        metadata=Metadata(agentId=agent_id),
    )
    return (agent_topic(agent_id), message, (stream, user_tag(owner)))


def created(
    agent_id: str, owner: str, name: str, pid: int, start_time: int, correlation_id: str | None
) -> list[Item]:
    message = AgentCreatedMessage(
        type="agent:created",
        payload=AgentCreatedPayload(agentId=agent_id, name=name, pid=pid, startTime=start_time),
        metadata=_meta(agent_id, correlation_id),
    )
    return _lifecycle(agent_id, owner, "created", message)


def status(
    agent_id: str,
    owner: str,
    state: str,
    correlation_id: str | None,
    **details: Any,
) -> list[Item]:
    clean = {k: v for k, v in details.items() if v is not None}
    message = AgentStatusMessage(
        type="agent:status",
        payload=AgentStatusPayload(
            agentId=agent_id,
            status=state,  # type: ignore[arg-type]  # a Status value, checked by pydantic
            details=AgentStatusDetails(**clean) if clean else None,
        ),
        metadata=_meta(agent_id, correlation_id),
    )
    return _lifecycle(agent_id, owner, "status", message)


def error(
    agent_id: str,
    owner: str,
    code: str,
    text: str,
    correlation_id: str | None,
    *,
    error_code: ErrorCode | None = None,
) -> list[Item]:
    message = AgentErrorMessage(
        type="agent:error",
        payload=AgentErrorPayload(
            agentId=agent_id,
            error=AgentErrorDetail(
                code=code, message=text, errorCode=int(error_code) if error_code else None
            ),
        ),
        metadata=_meta(agent_id, correlation_id),
    )
    return _lifecycle(agent_id, owner, "error", message)


def alert(
    level: AlertLevel, text: str, *, owner: str | None, agent_id: str, details: dict[str, Any]
) -> Item:
    message = SystemAlertMessage(
        type="system:alert",
        payload=SystemAlertPayload(level=level, category="agent", message=text, details=details),
        metadata=Metadata(agentId=agent_id),
    )
    tags = (level, "agent", *((user_tag(owner),) if owner else ()))
    return (LOGS_TOPIC, message, tags)


def ended_details(
    *,
    pid: int | None,
    start_time: int | None,
    reason: str,
    runner_id: str | None,
    exit_code: int | None = None,
    signal: str | None = None,
    last_activity: int | None = None,
) -> dict[str, Any]:
    """The ``details`` of a final ``agent:status`` (stopped / crashed)."""
    return {
        "pid": pid,
        "uptime": now_ms() - start_time if start_time else None,
        "lastActivity": last_activity,
        "exitCode": exit_code,
        "signal": signal,
        "reason": reason,
        "runnerId": runner_id,
    }
