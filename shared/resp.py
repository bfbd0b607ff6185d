"""Redis spoken directly: RESP on an :class:`asyncio.Protocol`, replies parsed by hiredis.

For the two hot paths where redis-py's asyncio client costs more than the work itself:

- :class:`PubSubHub` (:mod:`shared.bus`) reads pub/sub messages on its own connection;
- :class:`RespClient` sends pipelines of commands and returns their replies, for the
  gateway's session writer (:mod:`gateway.sessions`). A redis-py pipeline costs ~200 µs of
  Python per round trip (pool checkout, a retry wrapper, a command stack, a parse per
  reply); in a burst of a thousand connect+auths, with a couple of ``hold`` scripts per
  round trip, that was a quarter of the gateway's CPU per connection. Here a round trip is
  one ``write`` of commands packed by hiredis and one parse per reply, matched to its
  caller in order.

Both connect from the same URL as every redis-py client of the service
(:class:`Endpoint`: ``redis://``, ``rediss://``, ``unix://``, credentials, the database and
``?client_name=``), and both fail with redis-py's own exceptions, so callers and
:func:`shared.redis_conn.is_connection_error` treat them alike.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import hiredis
from redis._parsers.base import BaseParser
from redis.connection import SSLConnection, parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

#: Seconds to connect and authenticate before giving up, unless the URL says otherwise
#: (``?socket_connect_timeout=``).
CONNECT_TIMEOUT_S = 10.0


def command(*args: str | bytes | int) -> bytes:
    """One command as RESP (a bulk-string array), packed by hiredis."""
    return cast(bytes, hiredis.pack_command(args))  # type: ignore[arg-type]  # its stub says 1-tuple


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and how to connect, from a ``redis://``, ``rediss://`` or ``unix://`` URL."""

    host: str
    port: int
    path: str | None
    tls: ssl.SSLContext | None
    username: str | None
    password: str | None
    db: int
    client_name: str | None
    connect_timeout_s: float

    @classmethod
    def from_url(cls, url: str) -> Endpoint:
        kw: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
        context = None
        if kw.get("connection_class") is SSLConnection:
            context = ssl.create_default_context(cafile=kw.get("ssl_ca_certs"))
            reqs = str(kw.get("ssl_cert_reqs", "required")).lower()
            if reqs == "none":
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            elif reqs == "optional":
                context.check_hostname = False
                context.verify_mode = ssl.CERT_OPTIONAL
            if kw.get("ssl_check_hostname") is False:
                context.check_hostname = False
            if kw.get("ssl_certfile"):
                context.load_cert_chain(kw["ssl_certfile"], kw.get("ssl_keyfile"))
        return cls(
            host=kw.get("host", "localhost"),
            port=int(kw.get("port", 6379)),
            path=kw.get("path"),
            tls=context,
            username=kw.get("username"),
            password=kw.get("password"),
            db=int(kw.get("db") or 0),
            client_name=kw.get("client_name"),
            connect_timeout_s=float(kw.get("socket_connect_timeout") or CONNECT_TIMEOUT_S),
        )

    def handshake(self, *, select_db: bool) -> list[bytes]:
        """The commands that come first on a new connection: ``AUTH``, ``CLIENT SETNAME``
        and (with ``select_db``; pub/sub ignores databases) ``SELECT``."""
        out = []
        if self.password is not None:
            auth = (self.username, self.password) if self.username else (self.password,)
            out.append(command(b"AUTH", *auth))
        if self.client_name:
            out.append(command(b"CLIENT", b"SETNAME", self.client_name))
        if select_db and self.db:
            out.append(command(b"SELECT", self.db))
        return out


P = TypeVar("P", bound=asyncio.Protocol)


async def open_connection(endpoint: Endpoint, factory: Callable[[], P]) -> P:
    """A connection to ``endpoint`` with a keepalive on TCP (nothing else would notice a
    peer that vanished without closing); raises after ``connect_timeout_s``."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(endpoint.connect_timeout_s):
        if endpoint.path is not None:
            transport, protocol = await loop.create_unix_connection(factory, endpoint.path)
        else:
            transport, protocol = await loop.create_connection(
                factory,
                endpoint.host,
                endpoint.port,
                ssl=endpoint.tls,
                server_hostname=endpoint.host if endpoint.tls is not None else None,
            )
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    return protocol


def reply_error(message: str) -> ResponseError:
    """An error reply as redis-py's exception for it (``NoScriptError`` for NOSCRIPT, …)."""
    return cast(ResponseError, BaseParser.parse_error(message))  # type: ignore[no-untyped-call]


def _reader() -> hiredis.Reader:
    # Error replies come back as values (one failed command in a pipeline is that
    # command's result, as with redis-py's raise_on_error=False), converted on arrival.
    return hiredis.Reader(replyError=ResponseError)


@dataclass(slots=True)
class _Round:
    """One ``execute``: how many replies it waits for, and those received so far."""

    expected: int
    replies: list[Any]
    done: asyncio.Future[list[Any]]


class _PipelineProtocol(asyncio.Protocol):
    """One connection of :class:`RespClient`: rounds of commands written in order, their
    replies matched back in the same order."""

    def __init__(self) -> None:
        self._reader = _reader()
        self._rounds: deque[_Round] = deque()
        self.transport: asyncio.Transport | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def send(self, commands: Sequence[bytes]) -> asyncio.Future[list[Any]]:
        done: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        if self.lost or self.transport is None or self.transport.is_closing():
            done.set_exception(RedisConnectionError("Connection closed by server."))
            return done
        self._rounds.append(_Round(len(commands), [], done))
        self.transport.write(b"".join(commands))
        return done

    def data_received(self, data: bytes) -> None:
        reader, rounds = self._reader, self._rounds
        try:
            reader.feed(data)
            reply = reader.gets()
            while reply is not False:
                if not rounds:
                    raise RedisConnectionError(f"unexpected reply {reply!r}")
                head = rounds[0]
                if isinstance(reply, ResponseError):
                    reply = reply_error(str(reply))
                head.replies.append(reply)
                if len(head.replies) == head.expected:
                    rounds.popleft()
                    if not head.done.done():
                        head.done.set_result(head.replies)
                reply = reader.gets()
        except Exception as e:  # noqa: BLE001 - a stream we cannot follow: drop it
            self._fail(RedisConnectionError(f"Redis protocol error: {e!r}"))

    def eof_received(self) -> bool | None:
        return None  # close: Redis does not half-close

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(
            RedisConnectionError(f"Connection lost: {exc}")
            if exc is not None
            else RedisConnectionError("Connection closed by server.")
        )

    def _fail(self, error: Exception) -> None:
        self.lost = True
        rounds, self._rounds = self._rounds, deque()
        for r in rounds:
            if not r.done.done():
                r.done.set_exception(error)
                r.done.exception()  # retrieved: its caller may have given up waiting
        if self.transport is not None:
            self.transport.abort()


class RespClient:
    """Pipelines of commands on one Redis connection of its own (see the module's text).

    :meth:`execute` sends a list of packed commands (:func:`command`) in one write and
    returns their replies in order, an error reply as its redis-py exception in its place
    (a NOSCRIPT reply is a ``NoScriptError``). Concurrent calls share the connection,
    each waiting for its own replies. The connection is made on first use and again after
    it is lost; a call that fails on a connection error is sent once more on a new
    connection (as redis-py's retry does), so use it only for commands safe to repeat.
    A second failure raises ``redis.exceptions.ConnectionError``. Like redis-py's client
    without a ``socket_timeout`` (every service's), it waits for as long as Redis takes.
    """

    def __init__(self, url: str) -> None:
        self._endpoint = Endpoint.from_url(url)
        self._closed = False
        self._protocol: _PipelineProtocol | None = None
        self._connecting: asyncio.Lock | None = None

    async def execute(self, commands: Sequence[bytes]) -> list[Any]:
        if not commands:
            return []
        for attempt in range(2):
            if self._closed:
                raise RedisConnectionError("the client is closed")
            protocol = self._protocol
            if protocol is None or protocol.lost:
                protocol = await self._connect()
            try:
                return await protocol.send(commands)
            except RedisConnectionError:
                if attempt:
                    raise
        raise AssertionError("unreachable")

    async def _connect(self) -> _PipelineProtocol:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            protocol = self._protocol
            if protocol is not None and not protocol.lost:
                return protocol  # another caller connected meanwhile
            if self._closed:
                raise RedisConnectionError("the client is closed")
            ep = self._endpoint
            try:
                protocol = await open_connection(ep, _PipelineProtocol)
            except OSError as e:
                where = ep.path or f"{ep.host}:{ep.port}"
                raise RedisConnectionError(f"Error connecting to {where}. {e}") from e
            try:
                hello = ep.handshake(select_db=True)
                for reply in await protocol.send(hello) if hello else ():
                    if isinstance(reply, Exception):
                        raise RedisConnectionError(f"Redis refused: {reply}")
                if self._closed:  # closed while this connected
                    raise RedisConnectionError("the client is closed")
            except BaseException as e:
                protocol._fail(e if isinstance(e, Exception) else RedisConnectionError("cancelled"))
                raise
            self._protocol = protocol
            return protocol

    def close(self) -> None:
        """Close the connection (calls in flight fail) and refuse every later call."""
        self._closed = True
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.transport is not None:
            protocol.transport.close()
