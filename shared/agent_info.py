"""The agent registry's record as clients see it (``agent:list``), with no I/O.

The registry hash (fields in :mod:`agent_runner.registry`) holds strings; :func:`agent_info`
turns one into the typed :class:`shared.protocol.AgentInfo`. The gateway reads the hashes,
the ``agents`` topic's position and the runners' latest samples in one Lua call
(``gateway.runners.RunnerClient.agent_snapshot``) and hands them here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import get_args

from shared.bus import Position
from shared.protocol import AgentInfo, AgentLimits, AgentState, AgentUsage

_STATES: dict[str, AgentState] = {state: state for state in get_args(AgentState)}
#: Statuses of an agent that has no process any more.
ENDED_STATES: frozenset[str] = frozenset({"stopped", "crashed"})


@dataclass(frozen=True, slots=True)
class AgentSnapshot:
    """Every agent in the registry, and the position of the ``agents`` topic it reflects:
    every event up to ``position`` is in it (the runners write the registry before they
    publish), later ones may be too."""

    position: Position
    agents: list[AgentInfo]


def _int(value: str | None) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(float(value))
    except ValueError:
        return None


def _float(value: str | None) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        return None


def agent_info(
    fields: Mapping[str, str],
    *,
    usage: AgentUsage | None,
    last_activity: int | None,
    now_ms: int,
) -> AgentInfo | None:
    """The record of one registry hash (None when it lacks an id or an owner: a hash being
    written). ``uptime`` runs until ``endTime`` for an ended agent, until ``now_ms`` else."""
    agent_id, owner = fields.get("agentId"), fields.get("owner")
    if not agent_id or not owner:
        return None
    status = fields.get("status", "")
    start, end = _int(fields.get("startTime")), _int(fields.get("endTime"))
    ended = status in ENDED_STATES
    uptime = None
    if start is not None:
        uptime = max(0, (end if end is not None else now_ms) - start)
    return AgentInfo(
        agentId=agent_id,
        name=fields.get("name", ""),
        model=fields.get("model", ""),
        owner=owner,
        status=_STATES.get(status, "crashed"),
        pid=_int(fields.get("pid")),
        startTime=start,
        uptime=uptime,
        lastActivity=last_activity,
        runner=fields.get("runnerId", ""),
        workspace=fields.get("workspace"),
        limits=AgentLimits(
            memory=_float(fields.get("memoryMb")), cpu=_float(fields.get("cpuCores"))
        ),
        usage=None if ended else usage,
        endTime=end,
        exitCode=_int(fields.get("exitCode")),
        signal=fields.get("signal") or None,
        reason=fields.get("reason") or None,
    )
