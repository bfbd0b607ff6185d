"""Rate limits (no I/O): a token bucket per connection, and windowed counters for limits
that all gateways share (per user, per client IP), synced with Redis by
:mod:`gateway.redis_limits`. Commands per agent are counted in Redis directly by
:mod:`gateway.runners` (one round trip per command is fine at 10 per second)."""

from __future__ import annotations

import time
from dataclasses import dataclass


class TokenBucket:
    """``rate`` events per second with bursts up to ``burst``."""

    __slots__ = ("rate", "burst", "_tokens", "_last")

    def __init__(
        self, rate: float, burst: float | None = None, *, now: float | None = None
    ) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else rate
        self._tokens = self.burst
        self._last = time.monotonic() if now is None else now

    def take(self, now: float | None = None) -> bool:
        """Spend one token; False when the bucket is empty (over the limit)."""
        now = time.monotonic() if now is None else now
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


@dataclass(frozen=True, slots=True)
class SyncItem:
    """A key's events counted locally in one window, to add to the shared counter."""

    key: str
    window: int
    delta: int


@dataclass(slots=True)
class _Entry:
    window: int
    #: The shared count of ``window`` as the last sync saw it (our synced events included).
    synced: int = 0
    #: Counted here and not yet handed to a sync.
    local: int = 0
    #: Handed to a sync whose answer has not come back yet.
    in_flight: int = 0
    #: The shared count of the window before ``window``.
    previous: int = 0
    last_used: float = 0.0

    def used(self, frac: float) -> float:
        """Events in the sliding window that is ``frac`` into ``window``, as known here."""
        return self.previous * (1.0 - frac) + self.synced + self.in_flight + self.local


class WindowLimiter:
    """``limit`` events per ``window_s`` per key, counted by many processes together.

    The decision is local and immediate; the shared count is learnt by syncing (see
    :mod:`gateway.redis_limits`): :meth:`pending` hands out what was counted here since the
    last sync, the caller adds it to the shared per-window counter and hands the totals back
    to :meth:`apply`. Between two syncs the other processes' events are not seen, so the
    limit can be overshot by what they accept in one sync interval; never by more.

    The estimate is a sliding window over two fixed windows (the previous one weighted by
    the part of it still inside the sliding window), so a client cannot get twice the limit
    by straddling a window boundary.
    """

    __slots__ = ("limit", "window_s", "_entries", "_carry", "_touched", "_watched", "_swept")

    def __init__(self, limit: int, window_s: float = 1.0) -> None:
        self.limit = limit
        self.window_s = window_s
        self._entries: dict[str, _Entry] = {}
        #: Local counts of windows that ended before they were synced.
        self._carry: list[SyncItem] = []
        #: Keys counted (or checked) since the last :meth:`pending`, and the keys the last
        #: one handed out: the only keys the next one needs to look at (an entry left alone
        #: gets no new local counts, and its estimate only goes down as time passes).
        self._touched: set[str] = set()
        self._watched: set[str] = set()
        #: When :meth:`pending` last looked for keys to forget.
        self._swept = float("-inf")

    def _entry(self, key: str, now: float) -> tuple[_Entry, float]:
        position = now / self.window_s
        window = int(position)
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry(window)
        elif entry.window != window:
            if entry.local:
                self._carry.append(SyncItem(key, entry.window, entry.local))
            ended = entry.synced + entry.in_flight + entry.local
            entry.previous = ended if window == entry.window + 1 else 0
            entry.window = window
            entry.synced = entry.local = entry.in_flight = 0
        return entry, position - window

    def estimate(self, key: str, now: float) -> float:
        """Events of ``key`` in the sliding window ending ``now``, as far as known here."""
        entry, frac = self._entry(key, now)
        return entry.used(frac)

    def allows(self, key: str, now: float) -> bool:
        """Whether one more event of ``key`` fits (nothing is counted)."""
        return self.estimate(key, now) + 1 <= self.limit

    def count(self, key: str, now: float) -> None:
        entry, _ = self._entry(key, now)
        entry.local += 1
        entry.last_used = now
        self._touched.add(key)

    def reserve(self, key: str, now: float) -> _Entry | None:
        """The key's entry when one more event fits, else None; count it with
        :meth:`commit` (one lookup for the check and the count: this is per message)."""
        entry, frac = self._entry(key, now)
        self._touched.add(key)
        return entry if entry.used(frac) + 1 <= self.limit else None

    @staticmethod
    def commit(entry: _Entry, now: float) -> None:
        entry.local += 1
        entry.last_used = now

    def pending(self, now: float) -> list[SyncItem]:
        """What to add to the shared counters now: every key counted since the last sync,
        and the keys near their limit (with delta 0, to learn the others' counts).
        Keys unused for two windows are forgotten (looked for once per window).

        Only the keys touched since the last call and those it handed out are looked at:
        an idle limiter costs nothing here, and returns nothing (no sync needed)."""
        items, self._carry = self._carry, []
        stale = 2 * self.window_s
        if now - self._swept >= self.window_s:
            self._swept = now
            forget = [
                key
                for key, entry in self._entries.items()
                if not entry.local and now - entry.last_used > stale
            ]
            for key in forget:
                del self._entries[key]
        candidates = self._touched | self._watched if self._watched else self._touched
        self._touched = set()
        watched = self._watched = set()
        for key in candidates:
            if key not in self._entries:
                continue
            entry, frac = self._entry(key, now)
            if entry.local:
                items.append(SyncItem(key, entry.window, entry.local))
                entry.in_flight += entry.local
                entry.local = 0
                watched.add(key)
            elif now - entry.last_used > stale:
                del self._entries[key]
            elif entry.used(frac) * 2 >= self.limit:  # (nothing local in this branch)
                items.append(SyncItem(key, entry.window, 0))
                watched.add(key)
        return items

    def apply(self, item: SyncItem, total: int, previous_total: int | None) -> None:
        """The shared counter of ``item.window`` is ``total`` after adding ``item.delta``;
        the window before it ended at ``previous_total``."""
        entry = self._entries.get(item.key)
        if entry is None:
            return
        if item.window == entry.window:
            entry.in_flight = max(0, entry.in_flight - item.delta)
            entry.synced = max(entry.synced, total)
            if previous_total is not None:
                entry.previous = max(entry.previous, previous_total)
        elif item.window == entry.window - 1:
            entry.previous = max(entry.previous, total)

    def failed(self, items: list[SyncItem]) -> None:
        """A sync did not reach the shared counters: its events of the current window are
        counted locally again (to be synced next time); those of ended windows are dropped."""
        for item in items:
            entry = self._entries.get(item.key)
            if entry is not None and item.window == entry.window and item.delta:
                entry.in_flight = max(0, entry.in_flight - item.delta)
                entry.local += item.delta
                self._touched.add(item.key)

    def __len__(self) -> int:
        return len(self._entries)
