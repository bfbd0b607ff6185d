"""The benchmark client's own frame parser (``bench/wsclient.py``): whatever the chunking of
the socket, every data frame comes out whole and in order, pings are answered, and the first
frame it does not handle (a close) goes back to websockets' parser with everything after it."""

from __future__ import annotations

from websockets.client import ClientProtocol
from websockets.frames import Close, Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri
from websockets.utils import accept_key

from bench.wsclient import Session, _Transport


class Wire:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.sent.append(data)

    def is_closing(self) -> bool:
        return False

    def can_write_eof(self) -> bool:
        return False


def server_frame(opcode: Opcode, data: bytes) -> bytes:
    return Frame(opcode, data).serialize(mask=False, extensions=[])


def handshaken(session: Session, wire: Wire) -> tuple[_Transport, ClientProtocol]:
    """A client transport after a real handshake (its parser now waits for frames)."""
    protocol = ClientProtocol(parse_uri("ws://127.0.0.1:1/ws"))
    transport = _Transport(session, protocol)
    transport.connection_made(wire)  # type: ignore[arg-type]
    key = protocol.connect().headers["Sec-WebSocket-Key"]
    transport.data_received(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept_key(key).encode() + b"\r\n\r\n"
    )
    assert protocol.state is State.OPEN and transport._fast
    wire.sent.clear()
    return transport, protocol


async def test_frames_survive_any_chunking_and_a_close_goes_back_to_websockets():
    got: list[bytes] = []
    session = Session("ws://127.0.0.1:1/ws", on_message=lambda s, raw: got.append(raw))
    payloads = [b"a", b"x" * 125, b"y" * 126, b"z" * 70_000, b"", b"end"]
    stream = b"".join(server_frame(Opcode.TEXT, p) for p in payloads[:3])
    stream += server_frame(Opcode.PING, b"hi")
    stream += b"".join(server_frame(Opcode.TEXT, p) for p in payloads[3:])
    stream += server_frame(Opcode.CLOSE, Close(1000, "bye").serialize())
    for size in (1, 7, 4096, len(stream)):
        got.clear()
        wire = Wire()
        transport, protocol = handshaken(session, wire)
        for i in range(0, len(stream), size):
            transport.data_received(stream[i : i + size])
        assert got == payloads, size
        assert not transport._fast  # the close handed parsing back to websockets
        assert protocol.state is State.CLOSING and protocol.close_rcvd is not None
        opcodes = [data[0] & 0x0F for data in wire.sent]  # a pong, then the close reply
        assert opcodes == [Opcode.PONG.value, Opcode.CLOSE.value], opcodes
