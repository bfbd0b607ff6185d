"""The cores of the gateway's fault handling (no I/O): Redis health transitions, the
collector's silence, gap detection after a resync, and the SDK's duplicate window after a
gap notice."""

from __future__ import annotations

from gateway.health import CollectorWatch, RedisHealth, degraded_alert, recovered_alert
from gateway.router import Filter, Subscription, find_gap, gap_recipients
from shared.bus import Event, Position
from shared.client import SeenWindow


def _event(offset: int, epoch: str) -> Event:
    return Event("agent:a", offset, epoch, ("stdout",), b"{}")


def test_one_transition_per_outage_and_stability_after_it() -> None:
    h = RedisHealth()
    assert h.stable_for(0.0) == float("inf")
    assert h.failed(10.0, "Connection refused") is True
    assert h.failed(10.5, "Connection refused") is False  # same outage: no second alert
    assert h.outages == 1 and not h.up and h.stable_for(11.0) == 0.0
    assert h.recovered(13.0) == 3.0
    assert h.recovered(13.5) is None
    assert h.stable_for(14.0) == 3.5  # since the last failure, not since the recovery
    assert h.failed(20.0, "Timeout") is True and h.outages == 2


def test_alerts_say_what_happened() -> None:
    down = degraded_alert("gw-1", "Connection refused").payload
    assert (down.level, down.category) == ("error", "performance")
    assert "Connection refused" in down.message and down.details == {
        "gatewayId": "gw-1",
        "reason": "Connection refused",
        "redis": "down",
    }
    up = recovered_alert("gw-1", 2.5).payload
    assert (up.level, up.details and up.details["downMs"]) == ("info", 2500)


def test_collector_silence_once_then_back_once() -> None:
    w = CollectorWatch(silence_s=5.0)
    assert w.observe(0.0, 0, None) is None  # no collector ever: nothing to announce
    assert w.observe(100.0, 0, None) is None
    assert w.observe(101.0, 7, "e1") is None  # seen
    assert w.observe(105.0, 7, "e1") is None
    assert w.observe(106.0, 7, "e1") == "silent"
    assert w.observe(200.0, 7, "e1") is None  # once
    assert w.observe(201.0, 8, "e1") == "back"
    assert w.observe(202.0, 9, "e1") is None
    w.pause(300.0)  # a Redis outage is not the collector's silence
    assert w.observe(304.0, 9, "e1") is None
    assert w.observe(305.0, 9, "e1") == "silent"


def test_find_gap_epoch_change_and_lost_events() -> None:
    since = Position(155, "e1")
    changed = find_gap(since, [_event(1, "e2"), _event(2, "e2")], Position(2, "e2"), 0)
    assert changed is not None
    assert (changed.reason, changed.missed, changed.position) == (
        "epoch-changed",
        None,
        Position(0, "e2"),
    )
    lost = find_gap(since, [_event(170, "e1")], Position(170, "e1"), 14)
    assert lost is not None
    assert (lost.reason, lost.missed, lost.position) == ("events-lost", 14, Position(169, "e1"))
    assert find_gap(since, [_event(156, "e1")], Position(156, "e1"), 0) is None
    assert find_gap(Position(0, None), [_event(1, "e2")], Position(1, "e2"), 0) is None
    assert find_gap(since, [], None, 0) is None  # nothing published yet: nothing to say


def test_gap_recipients_one_per_connection_with_visible_ids() -> None:
    subs = [
        Subscription("s1", "conn-a", "agent", "agent:a", Filter()),
        Subscription("s2", "conn-a", "agent", "agent:a", Filter()),
        Subscription("h1", "conn-b", "agent", "agent:a", Filter(), hidden=True),
    ]
    assert gap_recipients(subs) == [("conn-a", ["s1", "s2"]), ("conn-b", [])]


def test_seen_window_continues_in_the_new_epoch_after_a_gap() -> None:
    w = SeenWindow()
    assert w.add("e1", 155)
    w.reset("e2", 0)
    assert w.position is None  # nothing of the new epoch yet
    assert w.add("e2", 1) and not w.add("e2", 1)
    assert not w.add("e1", 156), "the old epoch is over"
    assert w.position is not None and (w.position.epoch, w.position.offset) == ("e2", 1)
    w.reset("e2", 40)  # events-lost in the same epoch: go on after 40
    assert w.add("e2", 41) and w.last == 41
