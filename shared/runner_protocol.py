"""The internal messages between gateways and agent runners (not seen by clients).

A gateway sends a :class:`RunnerRequest` as the JSON field ``r`` of a stream entry:

* ``create`` goes to the shared stream ``Keys.create_stream`` (consumer group
  ``runners``: the first runner with capacity takes it);
* every other kind goes to ``Keys.runner_commands(runnerId)`` of the runner that owns the
  agent (from the agent's registry hash ``Keys.agent(agentId)``, field ``runnerId``).

The runner answers with one :class:`RunnerReply` PUBLISHed on ``Keys.reply_channel(gatewayId)``
once the outcome is real (process started, signal delivered, command written) and before
it publishes the events that follow (``agent:created``, ``agent:status``…), which carry
``metadata.correlationId = requestId``. A request whose ``deadlineMs`` has passed is
dropped by the runner: the gateway has already answered SERVICE_UNAVAILABLE.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

RequestKind = Literal["create", "command", "permission", "pause", "resume", "terminate"]

#: Field of the stream entry that holds the request JSON.
REQUEST_FIELD = "r"


class RunnerRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: RequestKind
    #: The client message id (ack ``messageId`` and events' ``correlationId``).
    requestId: str
    #: The gateway waiting for the reply (its reply channel).
    gatewayId: str
    userId: str
    roles: list[str]
    agentId: str
    #: The validated client payload (``CreateAgentPayload``, ``AgentCommandPayload``, …).
    payload: dict[str, Any]
    #: Unix ms after which the gateway no longer waits for the reply.
    deadlineMs: int


class RunnerReply(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    requestId: str
    success: bool
    #: Numeric ErrorCode when ``success`` is false.
    code: int | None = None
    error: str | None = None
    result: dict[str, Any] | None = None
    runnerId: str | None = None
