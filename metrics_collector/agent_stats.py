"""Merging the per-agent stats that agent runners write to Redis. No I/O.

Each runner keeps one field of the hash ``Keys.agent_stats`` (field = runner id), rewritten
every time it measures its agents::

    {"ts": <unix ms>, "agents": [{"agentId": str, "cpu": float, "memory": int,
                                  "threads": int}, ...]}

The collector reads the whole hash each tick and :func:`merge_agent_stats` turns it into the
``agents`` list of ``metrics:update``. An entry older than ``max_age_ms`` is left out (its
runner stopped reporting: its agents are not running there any more, or nobody measures
them); one older than ``expire_after_ms`` is also returned in ``expired`` so the caller can
delete it and the hash does not collect runners that are long gone. When two entries name the
same agent, the freshest wins (a runner that took over an agent's id). Unknown extra fields
are ignored, so runners can add some without breaking the collector.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import ValidationError

from shared.protocol import AgentMetrics


@dataclass(frozen=True, slots=True)
class MergedStats:
    #: The agents of every fresh entry, sorted by id.
    agents: list[AgentMetrics]
    #: Hash fields (runner ids) old enough to delete.
    expired: list[str] = field(default_factory=list)
    #: Hash fields whose value could not be understood, with the reason.
    invalid: dict[str, str] = field(default_factory=dict)


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


_AGENT_FIELDS = tuple(AgentMetrics.model_fields)


def _agent(item: Any) -> AgentMetrics:
    if not isinstance(item, dict):
        raise TypeError("an agent entry must be an object")
    # Only the fields of the protocol: a runner may add its own without breaking us.
    return AgentMetrics.model_validate({k: item[k] for k in _AGENT_FIELDS if k in item})


def merge_agent_stats(
    entries: Mapping[bytes, bytes] | Mapping[str, str],
    *,
    now_ms: int,
    max_age_ms: int,
    expire_after_ms: int,
) -> MergedStats:
    """Merge the hash's entries (as returned by HGETALL) as of ``now_ms``."""
    newest: dict[str, tuple[int, AgentMetrics]] = {}
    expired: list[str] = []
    invalid: dict[str, str] = {}
    for raw_field, raw_value in entries.items():
        runner = _text(raw_field)
        try:
            doc = orjson.loads(raw_value)
            ts = doc["ts"]
            items = doc["agents"]
            if not isinstance(ts, int | float) or isinstance(ts, bool):
                raise TypeError("'ts' must be a number of milliseconds")
            if not isinstance(items, list):
                raise TypeError("'agents' must be a list")
        except (orjson.JSONDecodeError, KeyError, TypeError) as e:
            invalid[runner] = f"{type(e).__name__}: {e}"
            continue
        age_ms = now_ms - int(ts)
        if age_ms > expire_after_ms:
            expired.append(runner)
        if age_ms > max_age_ms:
            continue
        for index, item in enumerate(items):
            try:
                agent = _agent(item)
            except (ValidationError, TypeError) as e:
                invalid[runner] = f"agents[{index}]: {e}".splitlines()[0]
                continue
            previous = newest.get(agent.agentId)
            if previous is None or previous[0] < ts:
                newest[agent.agentId] = (int(ts), agent)
    agents = [agent for _, agent in (newest[k] for k in sorted(newest))]
    return MergedStats(agents=agents, expired=sorted(expired), invalid=invalid)
