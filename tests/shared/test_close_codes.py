"""The close codes of docs/protocol.md, as a real gateway sends them: every code the server
sends is in the table, and the ones a client can provoke cheaply are provoked here."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from shared.tokens import mint_token
from tests.conftest import JWT_SECRET
from tests.helpers import ROOT, free_port, port_open, t, wait_for

DOC = ROOT / "docs" / "protocol.md"


def _close_code_rows() -> dict[int, str]:
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## Close codes", 1)[1].split("\n## ", 1)[0]
    return {int(m[1]): m[2] for m in re.finditer(r"^\| (\d{4}) \| (.+?) \|", section, re.M)}


def test_the_table_has_every_close_code_the_server_sends() -> None:
    rows = _close_code_rows()
    assert {1000, 1001, 1006, 1007, 1008, 1009, 1013} <= set(rows), sorted(rows)
    assert "UTF-8" in rows[1007]


@pytest.fixture
async def gateway_url(service_env: dict[str, str], start_service: Callable[..., Any]) -> str:
    port = free_port()
    start_service("gateway", {**service_env, "TEAMDASH_GATEWAY_PORT": str(port)})
    await wait_for(lambda: port_open(port), timeout=15, what="the gateway port")
    return f"ws://127.0.0.1:{port}/ws"


@pytest.mark.parametrize("authed", [False, True], ids=["before-auth", "after-auth"])
async def test_invalid_utf8_text_is_closed_with_1007(gateway_url: str, authed: bool) -> None:
    async with connect(gateway_url) as ws:
        if authed:
            token = mint_token(JWT_SECRET, "alice", roles=("viewer",))
            auth = {"type": "auth", "payload": {"token": token, "clientId": "utf8"}}
            await ws.send(json.dumps(auth))
            status = json.loads(await asyncio.wait_for(ws.recv(), t(10)))
            assert status["type"] == "connection:status", status
        # A text frame whose bytes are not UTF-8 (an invalid sequence inside a JSON string).
        await ws.send(b'{"type":"ping","id":"\xc3\x28"}', text=True)
        with pytest.raises(ConnectionClosed):
            while True:
                await asyncio.wait_for(ws.recv(decode=False), t(10))
        assert ws.close_code == 1007, (ws.close_code, ws.close_reason)
