"""Redis faults on real processes: Redis SIGKILLed and restarted, with and without its data,
while an SDK client follows a printing agent (see docs/reliability.md, "Gateway and Redis")."""

from __future__ import annotations

import asyncio
import re

from shared.client import DashboardClient
from shared.protocol import AgentOutputMessage
from tests.faults.conftest import NOTICE_S, FaultStack
from tests.gateway.conftest import token
from tests.helpers import t, wait_for

TICKS = 400


def _ticks(events: list[object]) -> list[int]:
    out: list[int] = []
    for e in events:
        if isinstance(e, AgentOutputMessage):
            out += [int(n) for n in re.findall(r"tick (\d+)", e.payload.data)]
    return out


async def _up(stack: FaultStack) -> int:
    _, port = stack.gateway()
    stack.runner("r1")
    await wait_for(lambda: stack.ready(port), timeout=20, what="gateway ready")
    await wait_for(
        lambda: "heartbeat" in stack.runners[-1].log_text() or _runner_up(stack),
        timeout=20,
        what="runner heartbeat",
    )
    return port


def _runner_up(stack: FaultStack) -> bool:
    import redis  # noqa: PLC0415

    client = redis.Redis.from_url(stack.redis.url)
    try:
        return bool(client.zcard("fault:runners"))
    finally:
        client.close()


async def test_repro_empty_restart(fault_stack) -> None:
    stack: FaultStack = fault_stack(persistent=False, DEBUG="ws:gateway,ws:bus")
    port = await _up(stack)
    async with DashboardClient(stack.ws_url(port), token("alice"), request_timeout=t(20)) as c:
        created = await c.create_agent("tick", "ticker-slow", "ws")
        sub = await c.subscribe_agent(created.agent_id, filters=["stdout"])
        got: list[object] = []
        while len(_ticks(got)) < 100:
            got.append(await sub.next(t(10)))
        stack.redis.kill()
        await asyncio.sleep(1.0)
        stack.redis.start()
        try:
            while not _ticks(got) or _ticks(got)[-1] < TICKS:
                got.append(await sub.next(t(NOTICE_S)))
        except TimeoutError:
            pass
        ticks = _ticks(got)
        print("reconnects", c.reconnects, "dropped", sub.dropped, [ (e.metadata.offset, e.type, getattr(e.payload, "data", e.payload)) for e in got[-3:]])
        missing = sorted(set(range(1, TICKS + 1)) - set(ticks))
        print("got", len(ticks), "missing", len(missing), missing[:5], missing[-5:])
        for proc, _ in stack.gateways:
            print(''.join(l for l in proc.log_text().splitlines(True) if 'resync' in l or 'ws.bus' in l or 'topic' in l)[-6000:])
        print(stack.runners[0].log_text()[-3000:])
        import redis as r  # noqa: PLC0415
        rc = r.Redis.from_url(stack.redis.url)
        print("meta", rc.hgetall(f"fault:meta:agent:{created.agent_id}"))
        ent = rc.xrange(f"fault:topic:agent:{created.agent_id}")
        print("stream", len(ent), [(e[0], e[1][b"d"][:80]) for e in ent[:3]])
        print(rc.keys("*"))
        assert not missing
