"""Writing events to many WebSockets cheaply: frame once, write each connection once per batch.

How it works
------------
Server-to-client WebSocket frames are neither masked nor (here) compressed, so an event's
frame is the same bytes for every recipient: :func:`text_frame` builds it once. The gateway
hands a whole batch of deliveries (every event of one pub/sub read, or one replay) to
:meth:`Outbox.add`, which appends the frame to a per-connection list, and then calls
:meth:`Outbox.flush`, which writes each connection's frames with ONE ``transport.write``.
A burst of 100 events to 1,000 subscribers is then 1,000 system calls, not 100,000.

Nothing is held across an ``await``: the caller adds and flushes in the same synchronous
step, so these writes stay in order with everything else written to the connection (acks
and pongs that websockets writes itself).

Frames go straight to the transport, as ``websockets.broadcast`` does, under the same
conditions: the connection is OPEN (no data after a close frame) and no fragmented message
is being sent. Slow consumers: a connection whose transport buffer is over ``cap`` bytes is
handed to ``on_slow`` (the gateway closes it with 1013; the client resumes from its
session) and gets nothing more; over ``cap // 4``, ``low`` priority events (superseded
metrics) are skipped for it.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Iterable

from websockets.asyncio.server import ServerConnection
from websockets.protocol import State

log = logging.getLogger("ws.gateway")

_OPEN = State.OPEN
_HEADER_16 = struct.Struct("!BBH")
_HEADER_64 = struct.Struct("!BBQ")
_FIN_TEXT = 0x81


def text_frame(data: bytes) -> bytes:
    """An unmasked, final text frame carrying ``data`` (RFC 6455, section 5.2)."""
    size = len(data)
    if size < 126:
        return bytes((_FIN_TEXT, size)) + data
    if size < 65536:
        return _HEADER_16.pack(_FIN_TEXT, 126, size) + data
    return _HEADER_64.pack(_FIN_TEXT, 127, size) + data


class Outbox:
    """Frames waiting to be written, per connection, until :meth:`flush`."""

    def __init__(self, *, cap: int, on_slow: Callable[[ServerConnection, int], None]) -> None:
        self.cap = cap
        self.soft = cap // 4
        self._on_slow = on_slow
        #: Frames per connection; None = nothing more for it in this batch (closed, slow).
        self._pending: dict[ServerConnection, list[bytes] | None] = {}
        #: Connections over the soft cap in this batch (they skip low-priority events).
        self._congested: set[ServerConnection] = set()
        #: Low-priority deliveries skipped since the last :meth:`take_skipped`.
        self.skipped = 0

    def add(self, conns: Iterable[ServerConnection], data: bytes, low: bool = False) -> int:
        """Queue ``data`` (a complete JSON message) for ``conns``; returns how many will get
        it. Call :meth:`flush` before the next ``await``."""
        frame = text_frame(data)
        pending = self._pending
        congested = self._congested
        queued = 0
        for ws in conns:
            if ws in pending:
                frames = pending[ws]
            else:
                frames = pending[ws] = self._admit(ws)
            if frames is None:
                continue
            if low and congested and ws in congested:
                self.skipped += 1
                continue
            frames.append(frame)
            queued += 1
        return queued

    def _admit(self, ws: ServerConnection) -> list[bytes] | None:
        """A connection's first frame of the batch: may it get anything at all?"""
        size = self._buffered(ws)
        if size is None:
            return None
        if size > self.soft:
            self._congested.add(ws)
        return []

    def _buffered(self, ws: ServerConnection) -> int | None:
        """What ``ws``'s send buffer holds; None when it may get nothing (not open, a
        fragmented message being sent, or a slow consumer, which is reported)."""
        if ws.protocol.state is not _OPEN or ws.send_in_progress is not None:
            return None
        size: int = ws.transport.get_write_buffer_size()
        if size > self.cap:
            self._on_slow(ws, size)
            return None
        return size

    def write_now(self, ws: ServerConnection, datas: list[bytes]) -> bool:
        """Write ``datas`` to one connection now, in one write, behind whatever this batch
        already holds for it (a reply: no batch to build); False if it gets nothing."""
        pending = self._pending
        if ws in pending:
            frames = pending[ws]
            if frames is None:
                return False
            frames.extend(map(text_frame, datas))
            return True
        if self._buffered(ws) is None:
            return False
        try:
            ws.transport.write(b"".join(map(text_frame, datas)))
        except Exception as e:  # noqa: BLE001 - as in flush
            log.warning("could not write to a connection: %r", e)
        return True

    def flush(self) -> None:
        """Write every connection's queued frames, one write each."""
        pending, self._pending = self._pending, {}
        self._congested.clear()
        for ws, frames in pending.items():
            if not frames:
                continue
            # Still open: nothing awaited since _admit, but a handler run in between may
            # have closed it.
            if ws.protocol.state is not _OPEN:
                continue
            try:
                ws.transport.write(frames[0] if len(frames) == 1 else b"".join(frames))
            except Exception as e:  # noqa: BLE001 - one broken transport must not stop the others
                log.warning("could not write to a connection: %r", e)
