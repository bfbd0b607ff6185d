"""Subscription routing: which local connections get which topic event (no I/O).

How it works
------------
Every subscription names one topic (``metrics``, ``logs``, ``agents`` or ``agent:{id}``)
and an optional :class:`Filter`. The gateway keeps one :class:`TopicRoute` per topic that at
least one local connection follows, holding the position of the last event delivered live
(offset, epoch). An incoming event is checked against that position:

* next offset, same epoch → delivered: the *same bytes* go to every matching connection
  (``deliver`` returns them grouped by payload variant; the caller broadcasts each group);
* an offset already seen → dropped (a duplicate, e.g. after a resync);
* an offset jump or an epoch change → a gap: the route is marked for resync and the event
  is held; the owner reads the stream from the last position and feeds the events back
  through :meth:`TopicRoute.resynced`.

A subscription that starts from an older position (a resume, or an agent the session just
created) is *catching up*: live events are queued on it until its replay from the stream
has been delivered, then the queue is drained without duplicates.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

import orjson

from shared.bus import Event, Position
from shared.errors import ErrorCode, ProtocolError
from shared.protocol import (
    Metadata,
    StreamPosition,
    SubscriptionGapMessage,
    SubscriptionGapPayload,
)
from shared.topics import (
    AGENT_EVENT_KINDS,
    ALERT_CATEGORIES,
    ALERT_LEVELS,
    LOW_PRIORITY_TAG,
    METRICS_SECTIONS,
    METRICS_TOPIC,
    USER_TAG_PREFIX,
    SubscriptionKind,
    user_tag,
)


@dataclass(frozen=True, slots=True)
class Filter:
    """Which events of a topic a subscription wants.

    ``dimensions``: every non-empty set must share a tag with the event (AND across
    dimensions, OR within one). ``owner``: only that user's agents — an event about an
    agent (tagged ``user:…``) must carry ``user:{owner}``, and on the ``metrics`` topic
    ``payload.agents`` keeps only that user's entries. ``sections``: for
    ``metrics:update``, the payload sections to keep (None = all)."""

    dimensions: tuple[frozenset[str], ...] = ()
    owner: str | None = None
    sections: frozenset[str] | None = None

    def accepts(self, tags: tuple[str, ...]) -> bool:
        for wanted in self.dimensions:
            if wanted.isdisjoint(tags):
                return False
        if self.owner is not None and user_tag(self.owner) not in tags:
            return not any(tag.startswith(USER_TAG_PREFIX) for tag in tags)
        return True

    def restricted_to(self, owner: str | None) -> Filter:
        """The same filter for a user who sees only ``owner``'s agents (None: all)."""
        return Filter(self.dimensions, owner, self.sections)


def parse_filters(kind: SubscriptionKind, filters: Iterable[str] | None) -> Filter:
    """The :class:`Filter` for a subscribe request's ``filters`` (INVALID_MESSAGE if unknown)."""
    values = frozenset(filters or ())
    if kind == "agent":
        _check(values, AGENT_EVENT_KINDS, kind)
        return Filter((values,) if values else ())
    if kind == "metrics":
        _check(values, METRICS_SECTIONS, kind)
        return Filter(sections=values if values and values != METRICS_SECTIONS else None)
    _check(values, ALERT_LEVELS | ALERT_CATEGORIES, kind)
    levels, categories = values & ALERT_LEVELS, values & ALERT_CATEGORIES
    return Filter(tuple(d for d in (levels, categories) if d))


def _check(values: frozenset[str], allowed: frozenset[str], kind: str) -> None:
    unknown = values - allowed
    if unknown:
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE,
            f"unknown filter(s) {sorted(unknown)} for {kind} subscriptions; "
            f"allowed: {sorted(allowed)}",
        )


C = TypeVar("C")


@dataclass(eq=False, slots=True)
class Subscription(Generic[C]):
    """One subscription of one connection (``conn`` is opaque to the router)."""

    id: str
    conn: C
    kind: SubscriptionKind
    topic: str
    filter: Filter
    #: The ``filters`` the client asked for (kept to restore the session elsewhere).
    requested_filters: tuple[str, ...] = ()
    #: Hidden subscriptions (agent associations) are not listed to the client.
    hidden: bool = False
    catching_up: bool = False
    queued: list[Event] = field(default_factory=list)
    #: Position of the last event known to be handed to the connection (see
    #: ``Gateway.flush_sessions``); a catching-up subscription starts after it.
    cursor: Position | None = None


#: Which bytes a subscription gets: the event's own (None), or a rewritten
#: ``metrics:update`` with only some payload sections and/or one owner's agents.
Variant = tuple[frozenset[str] | None, str | None] | None


def variant_of(topic: str, filt: Filter) -> Variant:
    """The payload variant ``filt`` needs on ``topic`` (None: the event's own bytes)."""
    if topic != METRICS_TOPIC or (filt.sections is None and filt.owner is None):
        return None
    return (filt.sections, filt.owner)


def metrics_variant(data: bytes, variant: Variant) -> bytes:
    """``metrics:update`` bytes rewritten for ``variant``: only the payload sections kept,
    and only the agents of one owner."""
    if variant is None:
        return data
    sections, owner = variant
    doc = orjson.loads(data)
    payload = doc.get("payload", {})
    if sections is not None:
        for section in METRICS_SECTIONS - sections:
            payload.pop(section, None)
    if owner is not None and isinstance(payload.get("agents"), list):
        payload["agents"] = [a for a in payload["agents"] if a.get("owner") == owner]
    return orjson.dumps(doc)


@dataclass(eq=False, slots=True)
class TopicRoute(Generic[C]):
    topic: str
    subscriptions: dict[str, Subscription[C]] = field(default_factory=dict)
    position: Position = field(default_factory=lambda: Position(0, None))
    #: True until the route's starting position is known, and during a resync.
    held: bool = True
    held_events: list[Event] = field(default_factory=list)
    needs_resync: bool = False

    # -- live path ------------------------------------------------------------
    def on_event(self, event: Event) -> list[tuple[list[C], bytes, bool]] | None:
        """Route one live event. Returns the deliveries, or None when the event is held
        (route not started, resync in progress, or a gap that needs a resync)."""
        if self.held:
            self.held_events.append(event)
            return None
        pos = self.position
        if pos.epoch == event.epoch or pos.epoch is None:
            if event.offset <= pos.offset and pos.epoch is not None:
                return []  # duplicate
            if event.offset == pos.offset + 1:
                self.position = event.position
                return self.deliver(event)
        # Offset jump or epoch change: never silent.
        self.held = True
        self.needs_resync = True
        self.held_events.append(event)
        return None

    def deliver(self, event: Event) -> list[tuple[list[C], bytes, bool]]:
        plain: dict[int, C] = {}
        variants: dict[Variant, dict[int, C]] = {}
        for sub in self.subscriptions.values():
            if sub.catching_up:
                sub.queued.append(event)
                continue
            if not sub.filter.accepts(event.tags):
                continue
            variant = variant_of(self.topic, sub.filter)
            target = plain if variant is None else variants.setdefault(variant, {})
            target.setdefault(id(sub.conn), sub.conn)
        low = LOW_PRIORITY_TAG in event.tags
        out: list[tuple[list[C], bytes, bool]] = []
        if plain:
            out.append((list(plain.values()), event.data, low))
        for variant, conns in variants.items():
            out.append((list(conns.values()), metrics_variant(event.data, variant), low))
        return out

    # -- starting and resyncing ------------------------------------------------
    def start_at(self, head: Position) -> list[tuple[list[C], bytes, bool]]:
        """The route is now subscribed and ``head`` was read after that: release held events
        newer than ``head`` (older ones are history a fresh route does not deliver)."""
        self.position = head
        return self._release()

    def resynced(
        self, events: Iterable[Event], head: Position | None
    ) -> list[tuple[list[C], bytes, bool]]:
        """Deliver the events read from the stream after a gap, then the held ones."""
        out: list[tuple[list[C], bytes, bool]] = []
        self.needs_resync = False
        for event in events:
            if event.epoch == self.position.epoch and event.offset <= self.position.offset:
                continue
            self.position = event.position
            out.extend(self.deliver(event))
        if head is not None and (
            self.position.epoch != head.epoch or self.position.offset < head.offset
        ):
            # The stream lost events we never saw: continue from its head.
            self.position = head
        out.extend(self._release())
        return out

    def _release(self) -> list[tuple[list[C], bytes, bool]]:
        self.held = False
        held, self.held_events = self.held_events, []
        out: list[tuple[list[C], bytes, bool]] = []
        for event in held:
            delivered = self.on_event(event)
            if delivered is None:
                # A gap inside the held events: hold the rest too and resync again.
                idx = held.index(event)
                self.held_events.extend(held[idx + 1 :])
                break
            out.extend(delivered)
        return out


@dataclass(frozen=True, slots=True)
class Gap:
    """Events a route could not deliver: the stream lost them (``events-lost``, ``missed``
    of them) or the topic's history was reset (``epoch-changed``: how many is unknown).
    Delivery goes on after ``position``."""

    reason: Literal["events-lost", "epoch-changed"]
    missed: int | None
    since: Position
    position: Position


def find_gap(
    since: Position, events: list[Event], head: Position | None, missed: int
) -> Gap | None:
    """The gap a resync from ``since`` found, given what the stream returned (``events``,
    its ``head`` and the count of ``missed`` events it no longer holds); None when nothing
    was lost. A route that never saw an event (no epoch) has nothing to lose."""
    if head is None or head.epoch is None:
        return None
    resume = Position(events[0].offset - 1 if events else head.offset, head.epoch)
    if since.epoch is not None and since.epoch != head.epoch:
        return Gap("epoch-changed", None, since, resume)
    if missed > 0:
        return Gap("events-lost", missed, since, resume)
    return None


def gap_notice(topic: str, subscription_ids: list[str], gap: Gap) -> SubscriptionGapMessage:
    """The ``subscription:gap`` that tells one connection about ``gap`` on ``topic``."""
    return SubscriptionGapMessage(
        type="subscription:gap",
        payload=SubscriptionGapPayload(
            topic=topic,
            subscriptionIds=subscription_ids,
            reason=gap.reason,
            missed=gap.missed,
            since=StreamPosition(offset=gap.since.offset, epoch=gap.since.epoch),
            position=StreamPosition(offset=gap.position.offset, epoch=gap.position.epoch),
        ),
        metadata=Metadata(priority="high"),
    )


def gap_recipients(subscriptions: Iterable[Subscription[C]]) -> list[tuple[C, list[str]]]:
    """Each connection following the topic once, with its visible subscription ids."""
    by_conn: dict[int, tuple[C, list[str]]] = {}
    for sub in subscriptions:
        _, ids = by_conn.setdefault(id(sub.conn), (sub.conn, []))
        if not sub.hidden:
            ids.append(sub.id)
    return list(by_conn.values())


def catch_up(
    group: list[Subscription[C]], replays: Iterable[Iterable[Event]], *, more: bool = False
) -> list[bytes]:
    """The catch-up of catching-up subscriptions of ONE connection on ONE topic: the events
    of every replay read for them, merged with what was queued live meanwhile, each event
    once and in order (by offset), if one subscription of the group wants it and it lies
    after that subscription's cursor. Afterwards the subscriptions are live and their
    cursors at the last event seen.

    ``more``: the replays are one page of a transcript and more pages follow. Only their
    events are given; the subscriptions go on catching up from the last of them (their
    queues keep only what is newer).

    The caller must write the returned frames to the connection before it awaits anything
    (live events go straight to it from now on)."""
    merged: dict[tuple[str | None, int], Event] = {}
    for replay in replays:
        for event in replay:
            merged.setdefault((event.epoch, event.offset), event)
    if not more:
        for sub in group:
            for event in sub.queued:
                merged.setdefault((event.epoch, event.offset), event)
    out: list[bytes] = []
    last: Position | None = None
    for key in sorted(merged, key=_order):
        event = merged[key]
        last = event.position
        for sub in group:
            cur = sub.cursor
            if cur is not None and cur.epoch == event.epoch and event.offset <= cur.offset:
                continue
            if sub.filter.accepts(event.tags):
                out.append(metrics_variant(event.data, variant_of(sub.topic, sub.filter)))
                break
    for sub in group:
        if more:
            if last is not None and not _after(sub.cursor, last):
                sub.cursor = last
                sub.queued = [e for e in sub.queued if _after(e.position, last)]
            continue
        sub.queued = []
        sub.catching_up = False
        if last is not None:
            sub.cursor = last
    return out


def drop_queued(group: list[Subscription[C]]) -> None:
    """Forget what the group queued while catching up from a transcript, which holds it
    too: only safe before the next page is read (that read reaches past all of it)."""
    for sub in group:
        sub.queued = []


def _after(position: Position | None, than: Position) -> bool:
    """``position`` lies after ``than`` (another epoch counts as after; a position with no
    epoch is the start of any)."""
    if position is None or position.epoch is None:
        return False
    return position.epoch != than.epoch or position.offset > than.offset


def _order(key: tuple[str | None, int]) -> tuple[str, int]:
    return (key[0] or "", key[1])
