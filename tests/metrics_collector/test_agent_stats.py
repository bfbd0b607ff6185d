"""Merging the runners' per-agent stats (pure)."""

from __future__ import annotations

import orjson

from metrics_collector.agent_stats import merge_agent_stats
from shared.protocol import AgentMetrics

NOW = 1_700_000_000_000


def entry(ts: int, *agents: object) -> bytes:
    return orjson.dumps({"ts": ts, "agents": list(agents)})


def agent(
    agent_id: str, cpu: float = 1.5, memory: int = 1024, threads: int = 3
) -> dict[str, object]:
    return {"agentId": agent_id, "cpu": cpu, "memory": memory, "threads": threads}


def test_fresh_entries_are_merged_sorted_and_stale_ones_ignored() -> None:
    merged = merge_agent_stats(
        {
            b"r1": entry(NOW - 500, agent("b"), agent("a", cpu=150.0)),
            b"r2": entry(NOW + 200, {**agent("c"), "owner": "bob"}),  # a little skew is fine
            b"r3": entry(NOW - 10_000, agent("stale")),
            b"r4": entry(NOW - 120_000, agent("gone")),
        },
        now_ms=NOW,
        max_age_ms=3000,
        expire_after_ms=60_000,
    )
    assert [a.agentId for a in merged.agents] == ["a", "b", "c"]
    assert merged.agents[0] == AgentMetrics(agentId="a", cpu=150.0, memory=1024, threads=3)
    assert merged.agents[2].owner == "bob"
    assert merged.expired == ["r4"]
    assert merged.invalid == {}


def test_nothing_gives_an_empty_list() -> None:
    merged = merge_agent_stats({}, now_ms=NOW, max_age_ms=3000, expire_after_ms=60_000)
    assert merged.agents == []
    assert merged.expired == []


def test_the_freshest_report_of_an_agent_wins() -> None:
    merged = merge_agent_stats(
        {
            b"old-runner": entry(NOW - 2000, agent("a", threads=1)),
            b"new-runner": entry(NOW - 100, agent("a", threads=7)),
        },
        now_ms=NOW,
        max_age_ms=3000,
        expire_after_ms=60_000,
    )
    assert [(a.agentId, a.threads) for a in merged.agents] == [("a", 7)]


def test_bad_entries_are_reported_and_skipped() -> None:
    merged = merge_agent_stats(
        {
            b"not-json": b"{nope",
            b"no-ts": orjson.dumps({"agents": []}),
            b"list": b"[]",
            b"bad-agent": entry(NOW, agent("ok"), {"agentId": "x", "cpu": "lots"}, "str"),
            b"extra-fields": entry(NOW, {**agent("extra"), "name": "runner-specific"}),
        },
        now_ms=NOW,
        max_age_ms=3000,
        expire_after_ms=60_000,
    )
    assert [a.agentId for a in merged.agents] == ["extra", "ok"]
    assert set(merged.invalid) == {"not-json", "no-ts", "list", "bad-agent"}
