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

A ``command`` sent with ``wait: "completed"`` gets two replies with the same ``requestId``:
the first once the command was written (``outcomeFollows: true``; an error instead when it
could not be, or when the agent's driver cannot tell when a turn ends), the second when its
turn ended — success with ``result.turn`` (the ``turn_end`` event), or the failure's
ErrorCode (the CLI's failure, AGENT_COMMAND_TIMEOUT, AGENT_NOT_FOUND when the agent ended
first). Between the two the gateway watches the runner's heartbeat and its own Redis link.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator

from shared.protocol import (
    AgentCommandPayload,
    AgentPermissionPayload,
    AgentRef,
    CreateAgentPayload,
    TerminateAgentPayload,
)

RequestKind = Literal["create", "command", "permission", "pause", "resume", "terminate"]

#: The client payload of each kind of request, validated once by the gateway's codec.
RunnerPayload = (
    CreateAgentPayload
    | AgentCommandPayload
    | AgentPermissionPayload
    | TerminateAgentPayload
    | AgentRef
)
PAYLOADS: dict[RequestKind, type[RunnerPayload]] = {
    "create": CreateAgentPayload,
    "command": AgentCommandPayload,
    "permission": AgentPermissionPayload,
    "pause": AgentRef,
    "resume": AgentRef,
    "terminate": TerminateAgentPayload,
}

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
    #: The client's payload: the protocol model of ``kind`` (:data:`PAYLOADS`, the
    #: discriminator), whose ``agentId`` (all but ``create``) is the request's.
    payload: RunnerPayload
    #: Unix ms after which the gateway no longer waits for the reply.
    deadlineMs: int

    @model_validator(mode="before")
    @classmethod
    def _payload_of_kind(cls, data: Any) -> Any:
        # The union is discriminated by ``kind``, a field beside it: validate the payload
        # as that kind's model (a bare union would take a terminate payload for AgentRef).
        if isinstance(data, dict):
            model = PAYLOADS.get(data.get("kind"))  # type: ignore[arg-type]
            payload = data.get("payload")
            if model is not None and not isinstance(payload, model):
                data = {**data, "payload": model.model_validate(payload)}
        return data

    @model_validator(mode="after")
    def _same_agent(self) -> RunnerRequest:
        if type(self.payload) is not PAYLOADS[self.kind]:
            raise ValueError(f"a {self.kind} request needs a {PAYLOADS[self.kind].__name__}")
        agent_id = getattr(self.payload, "agentId", self.agentId)
        if agent_id != self.agentId:
            raise ValueError("payload.agentId does not match the request's agentId")
        return self


class RunnerReply(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    requestId: str
    success: bool
    #: Numeric ErrorCode when ``success`` is false.
    code: int | None = None
    error: str | None = None
    result: dict[str, Any] | None = None
    runnerId: str | None = None
    #: True on the first reply of a command that waits for its turn: it was delivered, and
    #: its outcome is a second reply.
    outcomeFollows: bool | None = None
