"""The agent registry's record as clients see it (``agent:list``), with no I/O.

:func:`agent_info` turns a registry record (:class:`shared.agent_record.AgentRecord`) into
the protocol's :class:`shared.protocol.AgentInfo`. The gateway reads the hashes, the
``agents`` topic's position and the runners' latest samples in one Lua call
(``gateway.runners.RunnerClient.agent_snapshot``) and hands them here.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.agent_record import ENDED_STATES as ENDED_STATES
from shared.agent_record import AgentRecord
from shared.bus import Position
from shared.protocol import AgentInfo, AgentLimits, AgentUsage


@dataclass(frozen=True, slots=True)
class AgentSnapshot:
    """Every agent in the registry, and the position of the ``agents`` topic it reflects:
    every event up to ``position`` is in it (the runners write the registry before they
    publish), later ones may be too."""

    position: Position
    agents: list[AgentInfo]


def agent_info(
    record: AgentRecord,
    *,
    usage: AgentUsage | None,
    last_activity: int | None,
    now_ms: int,
) -> AgentInfo:
    """The client's view of one record (a status this version does not know shows as
    ``crashed``). ``uptime`` runs until ``endTime`` for an ended agent, until ``now_ms``
    else."""
    start, end = record.start_time, record.end_time
    uptime = None
    if start is not None:
        uptime = max(0, (end if end is not None else now_ms) - start)
    return AgentInfo(
        agentId=record.agent_id,
        name=record.name,
        model=record.model,
        owner=record.owner,
        status=record.status or "crashed",
        pid=record.pid,
        startTime=start,
        uptime=uptime,
        lastActivity=last_activity,
        runner=record.runner_id,
        workspace=record.workspace,
        limits=AgentLimits(memory=record.memory_mb, cpu=record.cpu_cores),
        usage=None if record.ended else usage,
        endTime=end,
        exitCode=record.exit_code,
        signal=record.signal,
        reason=record.reason,
    )
