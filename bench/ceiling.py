"""The ceiling: a bare websockets server that broadcasts timestamped frames, for comparison.

No Redis, no validation, no routing, no sessions: it answers ``auth`` with a canned
``connection:status`` and every other request with a successful ``ack`` (so the same load
generator works unchanged), and on command broadcasts ``agent:output`` frames of the same
shape and size as the gateway's to every client that subscribed, with websockets'
``broadcast`` — the best this Python + websockets + uvloop stack can do on this machine.
The fan-out figures of the real gateway are reported as ratios to these.

Run by the orchestrator as ``python -m bench.ceiling PORT``; commands on stdin as for
:mod:`bench.publisher` (``agent_id`` names the fake agent in the frames).
"""

from __future__ import annotations

import asyncio
import secrets
import sys
import uuid
from typing import Any

import orjson
from websockets.asyncio.server import Server, ServerConnection, broadcast, serve

from bench.source import command_loop, event_data, new_loop, paced
from shared.protocol import now_ms

subscribers: set[ServerConnection] = set()


def _frame(type_: str, payload: dict[str, Any], correlation: str | None = None) -> bytes:
    doc: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "type": type_,
        "timestamp": now_ms(),
        "payload": payload,
    }
    if correlation is not None:
        doc["metadata"] = {"correlationId": correlation}
    return orjson.dumps(doc)


async def handler(ws: ServerConnection) -> None:
    try:
        async for raw in ws:
            msg = orjson.loads(raw)
            kind, mid = msg.get("type"), str(msg.get("id"))
            if kind == "auth":
                await ws.send(
                    _frame("connection:status", {"status": "authenticated", "sessionId": mid}, mid),
                    text=True,
                )
            elif kind in ("ping", "pong"):
                continue
            else:
                if str(kind).startswith("subscribe:"):
                    subscribers.add(ws)
                ack = {"messageId": mid, "success": True, "result": {"subscriptionId": mid}}
                await ws.send(_frame("ack", ack, mid), text=True)
    finally:
        subscribers.discard(ws)


async def main(port: int) -> None:
    epoch = secrets.token_hex(5)
    offset = 0

    async def publish(cmd: dict[str, Any]) -> dict[str, Any]:
        agent_id, size = cmd["agent_id"], int(cmd["size"])
        topic = f"agent:{agent_id}"

        async def emit(step: int, first: int, n: int) -> None:
            nonlocal offset
            for seq in range(first, first + n):
                offset += 1
                ts = now_ms()
                doc = {
                    "id": str(uuid.uuid4()),
                    "type": "agent:output",
                    "timestamp": ts,
                    "payload": {
                        "agentId": agent_id,
                        "stream": "stdout",
                        "data": event_data(step, seq, size),
                        "timestamp": ts,
                        "sequence": seq,
                    },
                    "metadata": {
                        "agentId": agent_id,
                        "topic": topic,
                        "offset": offset,
                        "epoch": epoch,
                    },
                }
                broadcast(subscribers, orjson.dumps(doc), text=True)

        return await paced(
            emit,
            step=int(cmd["step"]),
            count=int(cmd["count"]),
            rate=float(cmd["rate"]),
            batch=int(cmd["batch"]),
        )

    async with await start(port):
        await command_loop({"publish": publish})


async def start(port: int) -> Server:
    """The ceiling's server, listening on ``port`` (0: any free port)."""
    return await serve(
        handler,
        "127.0.0.1",
        port,
        compression=None,
        max_size=1024 * 1024,
        ping_interval=30,
        ping_timeout=30,
        # The gateway's listen backlog (gateway.server.LISTEN_BACKLOG): with asyncio's
        # default of 100 a burst overflows the queue and waits for SYN retransmits, and the
        # "ceiling" would be slower than the gateway.
        backlog=4096,
    )


if __name__ == "__main__":
    with asyncio.Runner(loop_factory=new_loop) as runner:
        runner.run(main(int(sys.argv[1])))
