"""Turning an agent's output bytes into text pieces, and pieces back into lines.

How it works
------------
:class:`OutputSplitter` takes raw chunks read from a pipe. A UTF-8 *incremental* decoder
(``errors="replace"``) keeps the bytes of an unfinished character until the next chunk, so a
character is never split; invalid bytes become U+FFFD. Text is cut after each ``\\n`` (the
newline stays in the piece). A line longer than ``max_chars`` is cut into ``max_chars``
pieces. Text without a newline yet (a prompt, a progress bar) is held back at most
``flush_delay_s`` from when it started: the reader asks :attr:`OutputSplitter.deadline` and
calls :meth:`OutputSplitter.flush` when it passes. No I/O here; time is passed in.

Drivers (:mod:`agent_runner.drivers`) read whole *logical* lines (pieces up to the one
that ends the line, :class:`LineJoiner`), independently of how they were cut for publishing.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass

#: Largest piece of text in one ``agent:output`` event (characters).
MAX_PIECE_CHARS = 16 * 1024
#: Longest a partial line is held back (seconds).
FLUSH_DELAY_S = 0.05


@dataclass(frozen=True, slots=True)
class Piece:
    """A piece of output text; ``line_end`` when it ends with the line's ``\\n``."""

    text: str
    line_end: bool


class _Bucket:
    """A token bucket: ``rate`` per second on average, bursts of up to one second's worth."""

    __slots__ = ("_at", "_tokens", "rate")

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._tokens = float(rate)
        self._at: float | None = None

    def take(self, amount: int, now: float) -> float:
        """Take ``amount`` at ``now``; seconds until the bucket is no longer in debt."""
        if self._at is not None:
            self._tokens = min(float(self.rate), self._tokens + (now - self._at) * self.rate)
        self._at = now
        self._tokens -= amount
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


class OutputPacer:
    """At most ``rate`` output events and ``byte_rate`` bytes per second per agent, on
    average, with bursts of up to one second's worth (token buckets; 0 = no limit of that
    kind; no I/O).

    Why: one agent printing as fast as it can produces events faster than gateways can
    deliver them; Redis would then drop the gateways' pub/sub connections (output buffer
    limit), or the gateways would close every subscriber whose send buffer overflowed
    (1013). Counting events alone is not enough: output without newlines comes as few,
    large events (16 KiB each), so bytes are paced too. Paced, the runner simply reads the
    agent's pipe later, so the agent blocks on its own writes and nothing is lost."""

    def __init__(self, rate: int, byte_rate: int = 0) -> None:
        self.rate = rate
        self.byte_rate = byte_rate
        self._events = _Bucket(rate) if rate > 0 else None
        self._bytes = _Bucket(byte_rate) if byte_rate > 0 else None

    def delay_after(self, events: int, now: float, nbytes: int = 0) -> float:
        """Count ``events`` emitted and ``nbytes`` read at ``now``; seconds to wait before
        reading more."""
        delay = 0.0
        if self._events is not None:
            delay = self._events.take(events, now)
        if self._bytes is not None:
            delay = max(delay, self._bytes.take(nbytes, now))
        return delay


class OutputSplitter:
    """Incremental UTF-8 decoding and line splitting of one stream (see module doc)."""

    __slots__ = ("_decoder", "_partial", "_since", "flush_delay_s", "max_chars")

    def __init__(self, *, max_chars: int = MAX_PIECE_CHARS, flush_delay_s: float = FLUSH_DELAY_S):
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial = ""
        self._since = 0.0
        self.max_chars = max_chars
        self.flush_delay_s = flush_delay_s

    @property
    def pending(self) -> bool:
        """True when text without a newline is held back."""
        return bool(self._partial)

    @property
    def deadline(self) -> float | None:
        """When the held-back text must be flushed (same clock as ``now``), or None."""
        return self._since + self.flush_delay_s if self._partial else None

    def feed(self, data: bytes, now: float) -> list[Piece]:
        """Pieces ready after ``data`` arrived at time ``now``."""
        text = self._decoder.decode(data)
        if not text:
            return []
        had_partial = bool(self._partial)
        buf = self._partial + text if had_partial else text
        lines = buf.split("\n")
        rest = lines.pop()
        out: list[Piece] = []
        limit = self.max_chars
        for line in lines:
            if len(line) < limit:
                out.append(Piece(line + "\n", True))
            else:
                self._cut(line + "\n", True, out)
        cut = len(rest) >= limit
        if cut:
            keep = len(rest) % limit
            self._cut(rest[: len(rest) - keep], False, out)
            rest = rest[len(rest) - keep :]
        if lines or cut or not had_partial:
            # What is held back now started arriving now; else the old deadline stands.
            self._since = now
        self._partial = rest
        return out

    def _cut(self, text: str, line_end: bool, out: list[Piece]) -> None:
        limit = self.max_chars
        for start in range(0, len(text), limit):
            chunk = text[start : start + limit]
            out.append(Piece(chunk, line_end and start + limit >= len(text)))

    def flush(self) -> list[Piece]:
        """Emit the held-back partial line (its deadline passed)."""
        if not self._partial:
            return []
        piece = Piece(self._partial, False)
        self._partial = ""
        return [piece]

    def finish(self) -> list[Piece]:
        """End of stream: everything left, an unfinished character as U+FFFD."""
        tail = self._decoder.decode(b"", final=True)
        text = self._partial + tail
        self._partial = ""
        if not text:
            return []
        out: list[Piece] = []
        self._cut(text, text.endswith("\n"), out)
        return out


# ---------------------------------------------------------------------------
# Whole lines, for drivers
# ---------------------------------------------------------------------------

#: Logical lines longer than this are read on their first part only.
MAX_LINE_CHARS = 1024 * 1024


class LineJoiner:
    """Joins pieces back into whole logical lines (a huge line: only its first
    ``MAX_LINE_CHARS``), for drivers that read lines whatever size they were cut to."""

    __slots__ = ("_parts", "_size")

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._size = 0

    @property
    def pending(self) -> str:
        """The start of a line not ended yet."""
        return "".join(self._parts)

    def add(self, piece: Piece) -> str | None:
        """Returns the whole line when ``piece`` ends it."""
        if self._size < MAX_LINE_CHARS:
            self._parts.append(piece.text)
            self._size += len(piece.text)
        if not piece.line_end:
            return None
        line = "".join(self._parts)
        self._parts.clear()
        self._size = 0
        return line
