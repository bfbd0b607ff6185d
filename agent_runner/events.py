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

``agent:output`` (one per line an agent prints) is encoded straight to the bus's wire form
(:func:`outputs`, no pydantic model per line); everything else is built from the protocol
models.

Every agent event has ``metadata.agentId``; events caused by a request carry
``metadata.correlationId`` = that request's id. ``agent:error`` codes the runner uses:

* ``AGENT_COMMAND_TIMEOUT`` (``errorCode`` 2004): a command's ``timeout`` passed before the
  agent reported completion;
* ``AGENT_EXITED`` (no ``errorCode``): the agent ended by itself with a non-zero code or a
  signal (status ``crashed``);
* ``AGENT_OOM`` (no ``errorCode``): it exceeded its memory limit (status ``crashed``,
  reason ``oom``);
* ``AGENT_LOST`` (no ``errorCode``): its runner died or restarted (status ``crashed``,
  reason ``runner-lost`` / ``runner-restarted``);
* what a driver read in the CLI's output (:mod:`agent_runner.drivers.base`, each with an
  ``agent`` alert, correlated with the command whose turn it was, and its ``errorCode``
  2005-2009): ``AGENT_AUTH_REQUIRED`` (not logged in, credentials refused),
  ``AGENT_RATE_LIMITED``, ``AGENT_API_UNREACHABLE`` (a retry storm without a reply),
  ``AGENT_API_ERROR``, ``AGENT_TURN_FAILED``.

Drivers that read a structured format publish ``agent:output`` events built from the model
(:func:`readable`): ``data`` is readable text, ``event`` says what it is, ``raw`` is the
CLI's line.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, cast

import orjson

from shared.bus import EncodedEvent
from shared.errors import ErrorCode
from shared.keys import AGENTS_TOPIC, LOGS_TOPIC, agent_topic
from shared.protocol import (
    MAX_RAW_CHARS,
    AgentCreatedMessage,
    AgentCreatedPayload,
    AgentErrorDetail,
    AgentErrorMessage,
    AgentErrorPayload,
    AgentEvent,
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
from shared.topics import user_tag

#: One publish: (topic, message, tags); ``agent:output`` comes already encoded (see
#: :func:`outputs`).
Item = tuple[str, WSMessage | EncodedEvent, tuple[str, ...]]

CODE_EXITED = "AGENT_EXITED"
CODE_OOM = "AGENT_OOM"
CODE_LOST = "AGENT_LOST"


def _meta(agent_id: str, correlation_id: str | None) -> Metadata:
    return Metadata(agentId=agent_id, correlationId=correlation_id)


def _lifecycle(agent_id: str, owner: str, kind: str, message: WSMessage) -> list[Item]:
    tags = (kind, user_tag(owner))
    return [(agent_topic(agent_id), message, tags), (AGENTS_TOPIC, message, tags)]


def output_message(
    agent_id: str,
    stream: OutputStream,
    data: str,
    sequence: int,
    ts: int,
    *,
    message_id: str | None = None,
) -> AgentOutputMessage:
    """The ``agent:output`` event as a protocol model: the reference :func:`outputs` encodes
    the same bytes as (tests hold them to it); not used on the output path."""
    return AgentOutputMessage(
        **({"id": message_id} if message_id is not None else {}),
        type="agent:output",
        timestamp=ts,
        payload=AgentOutputPayload(
            agentId=agent_id, stream=stream, data=data, timestamp=ts, sequence=sequence
        ),
        metadata=Metadata(agentId=agent_id),
    )


#: Where each character of a UUID v4 text comes from: a digit of 32 random hex digits, or
#: ``None`` for the fixed ones (the ``-``, the version ``4`` and the variant digit).
_UUID_DIGITS = (*range(8), None, *range(8, 12), None, None, *range(13, 16), None, None,
                *range(17, 20), None, *range(20, 32))  # fmt: skip
#: The variant digit (RFC 4122: 8, 9, a or b) from a random hex digit.
_VARIANT = bytes.maketrans(b"0123456789abcdef", b"89ab89ab89ab89ab")


def message_ids(n: int) -> list[bytes]:
    """``n`` fresh message ids, ASCII UUID v4 text like :func:`shared.protocol.new_id`, from
    one ``os.urandom`` call laid out with strided copies (``uuid.uuid4()`` per id was a
    quarter of an output event's encoding cost)."""
    digits = os.urandom(16 * n).hex().encode()
    out = bytearray(36 * n)
    for pos, digit in enumerate(_UUID_DIGITS):
        if digit is not None:
            out[pos::36] = digits[digit::32]
    for pos in (8, 13, 18, 23):
        out[pos::36] = b"-" * n
    out[14::36] = b"4" * n
    out[19::36] = digits[16::32].translate(_VARIANT)
    text = bytes(out)
    return [text[i : i + 36] for i in range(0, 36 * n, 36)]


def outputs(
    agent_id: str,
    owner: str,
    stream: OutputStream,
    texts: Sequence[str],
    first_sequence: int,
    ts: int,
) -> list[Item]:
    """``agent:output`` events of consecutive pieces of one stream (sequence numbers from
    ``first_sequence``), already encoded for the bus (:data:`shared.bus.EncodedEvent`).

    This runs once per line an agent prints, so no model is built: the bytes are put
    together from parts made once per call, each variable value encoded by orjson, and are
    exactly what :func:`shared.bus.event_prefix` makes of :func:`output_message` (same
    keys in the same order, ``None`` left out; the tests hold the two to it)."""
    topic = agent_topic(agent_id)
    tags = (stream, user_tag(owner))
    agent = orjson.dumps(agent_id)
    # {"id":"…","type":"agent:output","timestamp":…,"payload":{"agentId":…,"stream":…,
    # "data":…,"timestamp":…,"sequence":…},"metadata":{"agentId":…,"topic":…   (cut open)
    start = b'{"id":"'
    envelope = b'","type":"agent:output","timestamp":%d,"payload":{"agentId":%b,"stream":%b,'
    before_data = envelope % (ts, agent, orjson.dumps(stream)) + b'"data":'
    before_sequence = b',"timestamp":%d,"sequence":' % ts
    end = b'},"metadata":{"agentId":%b,"topic":%b' % (agent, orjson.dumps(topic))
    ids = message_ids(len(texts))
    dumps, join = orjson.dumps, b"".join
    encoded = [
        join(
            (
                start,
                ids[k],
                before_data,
                dumps(text),
                before_sequence,
                b"%d" % (first_sequence + k),
                end,
            )
        )
        for k, text in enumerate(texts)
    ]
    return [(topic, cast(EncodedEvent, data), tags) for data in encoded]


def output(
    agent_id: str, owner: str, stream: OutputStream, data: str, sequence: int, ts: int
) -> Item:
    """One ``agent:output`` event (see :func:`outputs`)."""
    return outputs(agent_id, owner, stream, (data,), sequence, ts)[0]


def readable(
    agent_id: str,
    owner: str,
    text: str,
    event: AgentEvent | None,
    sequence: int,
    ts: int,
    *,
    raw: str | None,
    correlation_id: str | None,
) -> Item:
    """One ``agent:output`` event a driver read (``stdout``; ``raw`` cut at MAX_RAW_CHARS)."""
    cut = raw is not None and len(raw) > MAX_RAW_CHARS
    message = AgentOutputMessage(
        type="agent:output",
        timestamp=ts,
        payload=AgentOutputPayload(
            agentId=agent_id,
            stream="stdout",
            data=text,
            timestamp=ts,
            sequence=sequence,
            event=event,
            raw=raw[:MAX_RAW_CHARS] if raw is not None and cut else raw,
            rawTruncated=True if cut else None,
        ),
        metadata=_meta(agent_id, correlation_id),
    )
    return (agent_topic(agent_id), message, ("stdout", user_tag(owner)))


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
