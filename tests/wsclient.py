"""A small WebSocket test client speaking the protocol (raw JSON, so tests see the wire)."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from tests.helpers import t


class WSClient:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        #: Messages received but not yet taken by a recv_* call, in order.
        self.inbox: list[dict[str, Any]] = []
        self.status: dict[str, Any] | None = None

    @classmethod
    async def open(cls, url: str, **kwargs: Any) -> WSClient:
        ws = await connect(url, open_timeout=t(5), max_size=None, **kwargs)
        return cls(ws)

    @classmethod
    async def authed(
        cls, url: str, token: str, *, client_id: str = "test", **kwargs: Any
    ) -> WSClient:
        client = await cls.open(url, **kwargs)
        mid = await client.send("auth", {"token": token, "clientId": client_id})
        msg = await client.recv_type("connection:status", "ack")
        if msg["type"] == "ack":
            raise AssertionError(f"auth failed: {msg}")
        assert msg["metadata"]["correlationId"] == mid
        client.status = msg["payload"]
        return client

    async def close(self) -> None:
        await self.ws.close()

    async def send_raw(self, data: str | bytes) -> None:
        await self.ws.send(data)

    async def send(self, type: str, payload: Any = None, *, id: str | None = None) -> str:
        mid = id or str(uuid.uuid4())
        msg: dict[str, Any] = {"id": mid, "type": type}
        if payload is not None:
            msg["payload"] = payload
        await self.ws.send(json.dumps(msg))
        return mid

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        if self.inbox:
            return self.inbox.pop(0)
        raw = await asyncio.wait_for(self.ws.recv(), t(timeout))
        return json.loads(raw)  # type: ignore[no-any-return]

    async def _recv_wire(self, timeout: float) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        return json.loads(raw)  # type: ignore[no-any-return]

    async def recv_where(
        self, pred: Any, timeout: float = 5.0, what: str = "message"
    ) -> dict[str, Any]:
        """The first message (buffered or new) matching ``pred``; others stay buffered."""
        for i, msg in enumerate(self.inbox):
            if pred(msg):
                return self.inbox.pop(i)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + t(timeout)
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"no {what} within {t(timeout):.1f}s; got {self.inbox[-5:]}")
            try:
                msg = await self._recv_wire(remaining)
            except TimeoutError:
                continue
            if pred(msg):
                return msg
            self.inbox.append(msg)

    async def recv_type(self, *types: str, timeout: float = 5.0) -> dict[str, Any]:
        return await self.recv_where(
            lambda m: m.get("type") in types, timeout, f"message of type {types}"
        )

    async def ack_for(self, message_id: str, timeout: float = 5.0) -> dict[str, Any]:
        msg = await self.recv_where(
            lambda m: m.get("type") == "ack" and m["payload"]["messageId"] == message_id,
            timeout,
            f"ack for {message_id}",
        )
        return msg["payload"]  # type: ignore[no-any-return]

    async def request(
        self, type: str, payload: Any = None, timeout: float = 10.0
    ) -> dict[str, Any]:
        """Send a request and return its ack payload."""
        mid = await self.send(type, payload)
        return await self.ack_for(mid, timeout)

    async def subscribe(self, kind: str, timeout: float = 5.0, **payload: Any) -> str:
        ack = await self.request(f"subscribe:{kind}", payload, timeout)
        assert ack["success"], ack
        return ack["result"]["subscriptionId"]  # type: ignore[no-any-return]

    def drain(self) -> list[dict[str, Any]]:
        out, self.inbox = self.inbox, []
        return out

    async def collect(self, seconds: float) -> list[dict[str, Any]]:
        """Everything that arrives within ``seconds`` (plus what is buffered)."""
        out = self.drain()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while (remaining := deadline - loop.time()) > 0:
            try:
                out.append(await self._recv_wire(remaining))
            except TimeoutError:
                break
        return out
