"""The routing core without sockets or Redis: filters, payload variants, gap detection,
duplicates, resync and catch-up (``gateway/router.py``)."""

from __future__ import annotations

import orjson
import pytest

from gateway.router import (
    Filter,
    Subscription,
    TopicRoute,
    catch_up,
    metrics_variant,
    parse_filters,
    variant_of,
)
from shared.bus import LOW_PRIORITY_TAG, Event, Position
from shared.errors import ErrorCode, ProtocolError

EPOCH = "e1"


def event(offset: int, *tags: str, data: bytes | None = None, epoch: str = EPOCH) -> Event:
    body = data if data is not None else orjson.dumps({"type": "agent:output", "n": offset})
    return Event("agent:a", offset, epoch, tuple(tags), body)


def sub(conn: str, topic: str = "agent:a", filt: Filter | None = None) -> Subscription[str]:
    return Subscription(f"s-{conn}", conn, "agent", topic, filt or Filter())


def started(*subs: Subscription[str], at: int = 0, topic: str = "agent:a") -> TopicRoute[str]:
    route: TopicRoute[str] = TopicRoute(topic)
    for s in subs:
        route.subscriptions[s.id] = s
    assert route.start_at(Position(at, EPOCH)) == []
    return route


def recipients(deliveries: list[tuple[list[str], bytes, bool]] | None) -> list[list[str]]:
    assert deliveries is not None
    return [sorted(conns) for conns, _, _ in deliveries]


# -- filters ------------------------------------------------------------------------------
def test_filters_and_across_dimensions_or_within():
    f = parse_filters("logs", ["warning", "error", "agent"])
    assert f.accepts(("warning", "agent"))
    assert f.accepts(("error", "agent", "user:bob"))
    assert not f.accepts(("warning", "resource"))
    assert not f.accepts(("info", "agent"))
    assert parse_filters("logs", None).accepts(("info", "security"))


def test_unknown_filters_are_invalid_messages():
    with pytest.raises(ProtocolError) as e:
        parse_filters("metrics", ["system", "disks"])
    assert e.value.code == ErrorCode.INVALID_MESSAGE
    assert "disks" in str(e.value)


def test_an_owner_sees_untagged_events_and_only_their_own_agents():
    mine = Filter().restricted_to("alice")
    assert mine.accepts(("stdout", "user:alice"))
    assert not mine.accepts(("stdout", "user:bob"))
    assert mine.accepts(("warning", "security"))  # not about an agent
    assert Filter().restricted_to(None).accepts(("stdout", "user:bob"))
    # restricting keeps the rest of the filter
    levels = parse_filters("logs", ["error"]).restricted_to("alice")
    assert not levels.accepts(("warning", "user:alice"))
    assert levels.accepts(("error", "agent", "user:alice"))


def test_metrics_variants_keep_sections_and_one_owner_s_agents():
    data = orjson.dumps(
        {
            "type": "metrics:update",
            "payload": {
                "system": {"cpu": 1},
                "agents": [
                    {"agentId": "a1", "owner": "alice"},
                    {"agentId": "b1", "owner": "bob"},
                    {"agentId": "x1"},
                ],
            },
        }
    )
    agents_only = parse_filters("metrics", ["agents"])
    assert variant_of("logs", agents_only.restricted_to("alice")) is None
    assert variant_of("metrics", parse_filters("metrics", None)) is None
    payload = orjson.loads(metrics_variant(data, variant_of("metrics", agents_only)))["payload"]
    assert set(payload) == {"agents"} and len(payload["agents"]) == 3
    alice = variant_of("metrics", parse_filters("metrics", None).restricted_to("alice"))
    payload = orjson.loads(metrics_variant(data, alice))["payload"]
    assert payload["system"] == {"cpu": 1}
    assert [a["agentId"] for a in payload["agents"]] == ["a1"]
    assert metrics_variant(data, None) is data


def test_a_metrics_event_goes_out_once_per_variant():
    data = orjson.dumps(
        {"type": "metrics:update", "payload": {"system": {}, "agents": [{"agentId": "a"}]}}
    )
    everything = sub("all", "metrics")
    also_everything = sub("all2", "metrics")
    agents = sub("agents", "metrics", parse_filters("metrics", ["agents"]))
    alice = sub("alice", "metrics", Filter().restricted_to("alice"))
    route = started(everything, also_everything, agents, alice, topic="metrics")
    out = route.on_event(event(1, "system", "agents", LOW_PRIORITY_TAG, data=data))
    assert recipients(out) == [["all", "all2"], ["agents"], ["alice"]]
    assert out is not None
    assert out[0][1] is data and all(low for _, _, low in out)
    assert orjson.loads(out[2][1])["payload"]["agents"] == []


# -- live path ------------------------------------------------------------------------------
def test_events_in_order_reach_matching_subscriptions_once_per_connection():
    a_out = sub("a", filt=parse_filters("agent", ["stdout"]))
    a_all = Subscription("s-a2", "a", "agent", "agent:a", Filter())
    b_err = sub("b", filt=parse_filters("agent", ["stderr"]))
    route = started(a_out, a_all, b_err)
    assert recipients(route.on_event(event(1, "stdout"))) == [["a"]]
    assert recipients(route.on_event(event(2, "stderr"))) == [["a", "b"]]
    assert route.position == Position(2, EPOCH)


def test_duplicates_are_dropped_and_gaps_hold_until_resynced():
    route = started(sub("a"))
    route.on_event(event(1))
    assert route.on_event(event(1)) == []
    assert route.on_event(event(3)) is None  # 2 is missing
    assert route.needs_resync and route.held
    assert route.on_event(event(4)) is None  # held behind the gap
    out = route.resynced([event(1), event(2), event(3)], Position(3, EPOCH))
    assert [orjson.loads(d)["n"] for _, d, _ in out] == [2, 3, 4]
    assert not route.held and not route.needs_resync
    assert route.position == Position(4, EPOCH)


def test_an_epoch_change_is_a_gap_too():
    route = started(sub("a"), at=5)
    assert route.on_event(event(1, epoch="e2")) is None
    assert route.needs_resync
    out = route.resynced([event(1, epoch="e2")], Position(1, "e2"))
    assert len(out) == 1 and route.position == Position(1, "e2")


def test_events_before_the_start_position_are_history():
    route: TopicRoute[str] = TopicRoute("agent:a")
    route.subscriptions["s"] = sub("a")
    assert route.on_event(event(4)) is None  # held until the route knows where it starts
    assert route.on_event(event(5)) is None
    out = route.start_at(Position(4, EPOCH))
    assert [orjson.loads(d)["n"] for _, d, _ in out] == [5]


# -- catching up ---------------------------------------------------------------------------
def test_catch_up_replays_then_drains_the_queue_without_duplicates():
    catching = sub("a")
    catching.catching_up = True
    catching.cursor = Position(1, EPOCH)
    route = started(catching, at=3)
    assert route.on_event(event(4)) == []  # queued on the subscription
    assert route.on_event(event(5)) == []
    # Two replays read for the group (overlapping) and the live queue: merged, each once.
    datas = catch_up([catching], [[event(1), event(2), event(3)], [event(3), event(4)]])
    assert [orjson.loads(d)["n"] for d in datas] == [2, 3, 4, 5]
    assert not catching.catching_up and catching.cursor == Position(5, EPOCH)
    assert recipients(route.on_event(event(6))) == [["a"]]
