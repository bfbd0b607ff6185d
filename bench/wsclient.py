"""A lean WebSocket client for load generation: websockets' sans-I/O ``ClientProtocol`` under
a plain ``asyncio.Protocol``.

Why not ``websockets.asyncio.client.connect``: a generator holds hundreds to thousands of
connections per process on a 2-core machine that also runs the gateway, and every received
message of the asyncio client goes through a reader task, a frame assembler and a future
per ``recv()``. Here bytes from the socket are fed straight into the protocol and each
complete text message is handed to a callback in the same call (~4 µs per message including
the JSON parse), so the generator stays far below the server it measures. The framing,
handshake, masking, control frames (ping → pong) and the closing handshake are still
websockets' own code.

:class:`Session` adds what the Team Dashboard protocol needs on top: ``auth`` with a JWT,
requests that wait for their ``ack``, and answers to the server's application ``ping``.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from typing import Any

import orjson
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

#: Callback for every complete text/binary message: ``(session, raw_bytes)``.
MessageHandler = Callable[["Session", bytes], None]

_ids = itertools.count(1)


class ClientError(Exception):
    """A connection, handshake or protocol failure of one generator client."""


def _retrieve(fut: asyncio.Future[Any]) -> None:
    """Mark a future's exception as seen (the waiter may be gone: a timed-out connect)."""
    if not fut.cancelled():
        fut.exception()


class _Transport(asyncio.Protocol):
    """Bytes in → ``ClientProtocol`` → events out; events' bytes → socket.

    Once the handshake is done, complete unfragmented data frames and pings are parsed here
    directly (a server's frames are unmasked: a header and the payload), which costs a
    fraction of websockets' general parser; the first frame of any other kind (close,
    pong, a fragment, reserved bits) and everything after it go back to websockets."""

    def __init__(self, session: Session, protocol: ClientProtocol) -> None:
        self.session = session
        self.ws = protocol
        self.transport: asyncio.Transport | None = None
        self._fragments: list[bytes] | None = None
        #: Frame parsing is ours (True after the handshake, until an unusual frame).
        self._fast = False
        #: The start of an incomplete frame, in fast mode.
        self._partial = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport
        self.ws.send_request(self.ws.connect())
        self.flush()

    def data_received(self, data: bytes) -> None:
        if self._fast:
            self._receive_frames(self._partial + data if self._partial else data)
            return
        self.ws.receive_data(data)
        self._process_events()
        ws = self.ws
        if ws.state is State.OPEN and not ws.reader.buffer and self._fragments is None:
            self._fast = True  # websockets' parser waits for a frame header: take over

    def _receive_frames(self, data: bytes) -> None:
        pos, size = 0, len(data)
        session = self.session
        on_message = session.on_message
        while size - pos >= 2:
            b0, b1 = data[pos], data[pos + 1]
            length, head = b1, 2
            if length == 126:
                if size - pos < 4:
                    break
                length, head = int.from_bytes(data[pos + 2 : pos + 4]), 4
            elif length == 127:
                if size - pos < 10:
                    break
                length, head = int.from_bytes(data[pos + 2 : pos + 10]), 10
            elif length > 127:  # a masked frame from a server: websockets reports it
                self._give_back(data[pos:])
                return
            end = pos + head + length
            if end > size:
                break
            if b0 == 0x81 or b0 == 0x82:  # FIN + text / binary
                on_message(session, data[pos + head : end])
            elif b0 == 0x89:  # FIN + ping
                self.ws.send_pong(data[pos + head : end])
                self.flush()
            else:
                self._give_back(data[pos:])
                return
            pos = end
        self._partial = data[pos:] if pos < size else b""

    def _give_back(self, data: bytes) -> None:
        """Hand frame parsing back to websockets from a frame boundary on."""
        self._fast, self._partial = False, b""
        self.ws.receive_data(data)
        self._process_events()

    def _process_events(self) -> None:
        ws = self.ws
        session = self.session
        for event in ws.events_received():
            if isinstance(event, Frame):
                op = event.opcode
                if op is Opcode.TEXT or op is Opcode.BINARY:
                    if event.fin:
                        session.on_message(session, bytes(event.data))
                    else:
                        self._fragments = [bytes(event.data)]
                elif op is Opcode.CONT and self._fragments is not None:
                    self._fragments.append(bytes(event.data))
                    if event.fin:
                        data_, self._fragments = b"".join(self._fragments), None
                        session.on_message(session, data_)
                elif op is Opcode.CLOSE:
                    session._closing(ws.close_code, ws.close_reason)
            elif isinstance(event, Response):
                session._handshake_done(ws.handshake_exc)
        self.flush()

    def eof_received(self) -> bool | None:
        if self._fast:
            self._give_back(self._partial)
        self.ws.receive_eof()
        self.flush()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.session._lost(exc)

    def flush(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        for data in self.ws.data_to_send():
            if data:
                transport.write(data)
            elif transport.can_write_eof():
                transport.write_eof()
        if self.ws.close_expected():
            # The server should close the TCP connection now; don't wait for it forever.
            asyncio.get_running_loop().call_later(2.0, self._abort)

    def _abort(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()


class Session:
    """One client connection speaking the Team Dashboard protocol.

    ``on_message(session, raw)`` sees every server message; :meth:`dispatch` is the default
    one: it resolves ``connection:status`` and ``ack`` waiters and answers ``ping``. Load
    generators install their own handler that does their counting first and then calls
    :meth:`dispatch` for everything else. ``state`` is free for the generator's use.
    """

    def __init__(self, url: str, on_message: MessageHandler | None = None) -> None:
        self.url = url
        self.on_message: MessageHandler = on_message or Session.dispatch
        self._proto: _Transport | None = None
        loop = asyncio.get_running_loop()
        self._opened: asyncio.Future[None] = loop.create_future()
        self._opened.add_done_callback(_retrieve)
        self._status: asyncio.Future[dict[str, Any]] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.close_code: int | None = None
        self.close_reason: str = ""
        self._acks: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.status: dict[str, Any] | None = None
        self.state: Any = None

    # -- connecting ---------------------------------------------------------------
    async def connect(self, timeout_s: float = 30.0) -> None:
        """TCP connect and WebSocket handshake."""
        uri = parse_uri(self.url)
        protocol = ClientProtocol(uri, max_size=None)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout_s):
                _, proto = await loop.create_connection(
                    lambda: _Transport(self, protocol), uri.host, uri.port
                )
                self._proto = proto
                await self._opened
        except TimeoutError as e:
            self.abort()
            raise ClientError(f"handshake timed out after {timeout_s:g}s") from e
        except OSError as e:
            raise ClientError(f"connect failed: {e}") from e

    async def authenticate(
        self, token: str, client_id: str, timeout_s: float = 30.0
    ) -> dict[str, Any]:
        """Send ``auth`` and wait for ``connection:status`` (ClientError on a refusal)."""
        mid = f"auth-{next(_ids)}"
        ack = self._ack_waiter(mid)
        self.send({"id": mid, "type": "auth", "payload": {"token": token, "clientId": client_id}})
        try:
            async with asyncio.timeout(timeout_s):
                done, _ = await asyncio.wait(
                    (self._status, ack, self.closed), return_when=asyncio.FIRST_COMPLETED
                )
        except TimeoutError as e:
            raise ClientError(f"no connection:status within {timeout_s:g}s") from e
        finally:
            self._acks.pop(mid, None)
        if self._status in done:
            self.status = self._status.result()
            return self.status
        if ack in done and ack.exception() is None:
            raise ClientError(f"auth refused: {ack.result().get('error')}")
        raise ClientError(f"closed during auth: {self.close_code} {self.close_reason}".rstrip())

    # -- requests -----------------------------------------------------------------
    def _ack_waiter(self, mid: str) -> asyncio.Future[dict[str, Any]]:
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(_retrieve)
        self._acks[mid] = fut
        return fut

    def send_request(
        self, type_: str, payload: dict[str, Any]
    ) -> tuple[str, asyncio.Future[dict[str, Any]]]:
        """Send a request now; returns its id and a future of its ack payload."""
        mid = f"r{next(_ids)}"
        fut = self._ack_waiter(mid)
        self.send({"id": mid, "type": type_, "payload": payload})
        return mid, fut

    async def request(
        self, type_: str, payload: dict[str, Any], timeout_s: float = 30.0
    ) -> dict[str, Any]:
        """Send a request and return its successful ack's ``result`` (ClientError otherwise)."""
        mid, fut = self.send_request(type_, payload)
        try:
            async with asyncio.timeout(timeout_s):
                done, _ = await asyncio.wait(
                    (fut, self.closed), return_when=asyncio.FIRST_COMPLETED
                )
        except TimeoutError as e:
            raise ClientError(f"no ack for {type_} within {timeout_s:g}s") from e
        finally:
            self._acks.pop(mid, None)
        if fut not in done:
            raise ClientError(f"closed while waiting for the ack of {type_}: {self.close_code}")
        ack = fut.result()  # ClientError if the connection was lost first
        if not ack.get("success"):
            raise ClientError(f"{type_} failed: {ack.get('error')} ({ack.get('code')})")
        return dict(ack.get("result") or {})

    def send(self, message: dict[str, Any]) -> None:
        self.send_raw(orjson.dumps(message))

    def send_raw(self, data: bytes) -> None:
        proto = self._proto
        if proto is None or proto.ws.state is not State.OPEN:
            return
        proto.ws.send_text(data)
        proto.flush()

    # -- receiving ----------------------------------------------------------------
    def dispatch(self, raw: bytes) -> None:
        """Default handling of a server message (see the class doc)."""
        msg = orjson.loads(raw)
        self.dispatch_parsed(msg)

    def dispatch_parsed(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind == "ack":
            payload = msg.get("payload") or {}
            fut = self._acks.pop(str(payload.get("messageId")), None)
            if fut is not None and not fut.done():
                fut.set_result(payload)
        elif kind == "ping":
            self.send(
                {
                    "id": f"p{next(_ids)}",
                    "type": "pong",
                    "payload": {"timestamp": time.time_ns() // 1_000_000},
                }
            )
        elif kind == "connection:status":
            if not self._status.done():
                self._status.set_result(msg.get("payload") or {})

    # -- closing ------------------------------------------------------------------
    async def close(self, timeout_s: float = 5.0) -> None:
        """The closing handshake (code 1000), then wait for the TCP connection to end."""
        proto = self._proto
        if proto is None:
            return
        if proto.ws.state is State.OPEN:
            proto.ws.send_close(1000)
            proto.flush()
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.shield(self.closed)
        except TimeoutError:
            self.abort()

    def abort(self) -> None:
        proto = self._proto
        if proto is not None and proto.transport is not None:
            proto.transport.abort()

    @property
    def open(self) -> bool:
        return self._proto is not None and self._proto.ws.state is State.OPEN

    # -- called by the transport --------------------------------------------------
    def _handshake_done(self, exc: Exception | None) -> None:
        if self._opened.done():
            return
        if exc is None:
            self._opened.set_result(None)
        else:
            self._opened.set_exception(ClientError(f"handshake failed: {exc}"))

    def _closing(self, code: int | None, reason: str | None) -> None:
        self.close_code = code
        self.close_reason = reason or ""

    def _lost(self, exc: Exception | None) -> None:
        if not self._opened.done():
            self._opened.set_exception(ClientError(f"connection lost during handshake: {exc}"))
        if self.close_code is None and self._proto is not None:
            self.close_code = self._proto.ws.close_code
        if not self.closed.done():
            self.closed.set_result(None)
        for fut in self._acks.values():
            if not fut.done():
                fut.set_exception(
                    ClientError(f"connection closed ({self.close_code}) before the ack")
                )
        self._acks.clear()
