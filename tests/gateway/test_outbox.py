"""``gateway/fanout.py`` on its own: frames that websockets itself parses back, one write per
connection per batch, and the slow-consumer rules. The connections here are stand-ins with
the three attributes the outbox reads; ``tests/gateway/test_fanout.py`` runs the same code
through real sockets."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.streams import StreamReader

from gateway.fanout import Outbox, text_frame


def parse(data: bytes) -> list[Frame]:
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    frames = []
    while reader.buffer:
        gen = Frame.parse(reader.read_exact, mask=False, max_size=None)
        try:
            while True:
                next(gen)
        except StopIteration as done:
            frames.append(done.value)
    return frames


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 1 << 20])
def test_text_frames_parse_back_with_websockets(size):
    payload = b"x" * size
    (frame,) = parse(text_frame(payload))
    assert frame.opcode == Opcode.TEXT and frame.fin and frame.data == payload


@dataclass
class Transport:
    buffered: int = 0
    writes: list[bytes] = field(default_factory=list)

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def get_write_buffer_size(self) -> int:
        return self.buffered


@dataclass
class WebSocketProtocol:
    state: State = State.OPEN


@dataclass(eq=False)
class Conn:
    transport: Transport = field(default_factory=Transport)
    protocol: WebSocketProtocol = field(default_factory=WebSocketProtocol)
    send_in_progress: Any = None

    def received(self) -> list[bytes]:
        return [f.data for w in self.transport.writes for f in parse(w)]


def test_one_write_per_connection_per_batch_in_order():
    slow: list[Any] = []
    outbox = Outbox(cap=1000, on_slow=lambda ws, size: slow.append(ws))
    a, b = Conn(), Conn()
    for n in range(100):
        assert outbox.add([a, b] if n % 2 else [a], b"%d" % n) == (2 if n % 2 else 1)
    assert a.transport.writes == [] and b.transport.writes == []  # nothing before flush
    outbox.flush()
    assert len(a.transport.writes) == 1 and len(b.transport.writes) == 1
    assert a.received() == [b"%d" % n for n in range(100)]
    assert b.received() == [b"%d" % n for n in range(1, 100, 2)]
    outbox.flush()  # nothing queued: nothing written
    assert len(a.transport.writes) == 1
    assert slow == []


def test_closed_fragmenting_and_slow_connections_get_nothing():
    slow: list[tuple[Any, int]] = []
    outbox = Outbox(cap=1000, on_slow=lambda ws, size: slow.append((ws, size)))
    closing = Conn(protocol=WebSocketProtocol(State.CLOSING))
    fragmenting = Conn(send_in_progress=object())
    too_slow = Conn(Transport(buffered=1001))
    congested = Conn(Transport(buffered=251))  # over cap/4
    fine = Conn()
    conns = [closing, fragmenting, too_slow, congested, fine]
    assert outbox.add(conns, b"metrics", low=True) == 1
    assert outbox.add(conns, b"output") == 2
    outbox.flush()
    assert fine.received() == [b"metrics", b"output"]
    assert congested.received() == [b"output"]  # low priority skipped under pressure
    assert outbox.skipped == 1
    assert slow == [(too_slow, 1001)]  # reported once per batch
    for conn in (closing, fragmenting, too_slow):
        assert conn.transport.writes == []


def test_a_connection_closed_before_the_flush_is_not_written():
    outbox = Outbox(cap=1000, on_slow=lambda ws, size: None)
    conn = Conn()
    outbox.add([conn], b"late")
    conn.protocol.state = State.CLOSING
    outbox.flush()
    assert conn.transport.writes == []


def test_a_reply_is_written_at_once_or_behind_the_batch_in_progress():
    slow: list[tuple[Any, int]] = []
    outbox = Outbox(cap=1000, on_slow=lambda ws, size: slow.append((ws, size)))
    conn, other = Conn(), Conn()
    assert outbox.write_now(conn, [b"ack", b"event"])
    assert len(conn.transport.writes) == 1 and conn.received() == [b"ack", b"event"]
    # A batch holds frames for `conn`: the reply goes behind them, in the batch's write.
    outbox.add([conn, other], b"live")
    assert outbox.write_now(conn, [b"ack-2"])
    assert len(conn.transport.writes) == 1
    outbox.flush()
    assert conn.received() == [b"ack", b"event", b"live", b"ack-2"]
    assert other.received() == [b"live"]
    # Under the same rules as a batch: closed, fragmenting and slow connections get nothing.
    closing = Conn(protocol=WebSocketProtocol(State.CLOSING))
    fragmenting = Conn(send_in_progress=object())
    too_slow = Conn(Transport(buffered=1001))
    for c in (closing, fragmenting, too_slow):
        assert not outbox.write_now(c, [b"ack"]) and c.transport.writes == []
    assert slow == [(too_slow, 1001)]
