"""The state scenarios: what a dashboard reads when it opens (``agent:list``,
``agent:history``, ``subscribe:agent`` from the start) and what keeping transcripts costs.

=================  ========================================================================
part               measures
=================  ========================================================================
publish cost       the same ``agent:output`` events published in batches of 500 (as the
                   runner's outbox does) to agent topics with and without a transcript,
                   alternately in rounds: publisher wall time and Redis CPU per event
agent list         A agents in the registry (records written as the runner writes them);
                   one client, ``agent:list`` of all of them in one page, in a closed loop:
                   ack latency p50/p99
history            a transcript of L lines; one client reads it with ``agent:history``
                   pages of 1000 (events/s) and with ``subscribe:agent`` since offset 0
                   (events/s until the last one; lost/duplicated checked by offset)
=================  ========================================================================

The client is this process (one raw websockets connection, JSON parsed with orjson), on a
stack of one gateway and no runner: history and the registry are Redis's.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson
import redis.asyncio as aioredis
from websockets.asyncio.client import ClientConnection, connect

from bench.scenarios import Context
from bench.stack import Stack
from bench.stats import CpuMeter, exact_summary_ms
from shared.agent_record import AgentRecord
from shared.bus import EncodedEvent, EventBus, TranscriptLimits, event_prefix
from shared.keys import Keys, agent_topic
from shared.protocol import AgentOutputMessage, AgentOutputPayload, now_ms
from shared.tokens import mint_token

OWNER = "bench-owner"
BATCH = 500


def _line(agent_id: str, topic: str, size: int) -> EncodedEvent:
    message = AgentOutputMessage(
        type="agent:output",
        payload=AgentOutputPayload(
            agentId=agent_id,
            stream="stdout",
            data="x" * (size - 1) + "\n",
            timestamp=now_ms(),
            sequence=1,
        ),
    )
    return event_prefix(message, topic)


async def _publish(bus: EventBus, agent_id: str, n: int, size: int) -> None:
    topic = agent_topic(agent_id)
    event = _line(agent_id, topic, size)
    tags = ("stdout", f"user:{OWNER}")
    items = [(topic, event, tags)] * BATCH
    for done in range(0, n, BATCH):
        await bus.publish_many(items[: min(BATCH, n - done)])


async def _redis_cpu_s(redis: aioredis.Redis) -> float:
    info = await redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def publish_cost(
    redis: aioredis.Redis, keys: Keys, events: int, rounds: int
) -> dict[str, Any]:
    """Per event, with and without a transcript, measured side by side."""
    limits = TranscriptLimits(events * 2, 1 << 34, 3600)
    buses = {"without": EventBus(redis, keys), "with": EventBus(redis, keys, transcript=limits)}
    totals = {name: {"wall_s": 0.0, "redis_cpu_s": 0.0, "events": 0} for name in buses}
    for r in range(rounds):
        order = ["without", "with"] if r % 2 == 0 else ["with", "without"]
        for name in order:
            agent_id = f"pub-{name}-{r}-{uuid.uuid4().hex[:6]}"
            cpu0, t0 = await _redis_cpu_s(redis), time.perf_counter()
            await _publish(buses[name], agent_id, events, 100)
            t1, cpu1 = time.perf_counter(), await _redis_cpu_s(redis)
            totals[name]["wall_s"] += t1 - t0
            totals[name]["redis_cpu_s"] += cpu1 - cpu0
            totals[name]["events"] += events
            topic = agent_topic(agent_id)
            await redis.delete(keys.topic_stream(topic), keys.transcript(topic))
    out: dict[str, Any] = {"events_per_round": events, "rounds": rounds}
    for name, t in totals.items():
        n = t["events"]
        out[name] = {
            "publisher_us_per_event": round(t["wall_s"] / n * 1e6, 2),
            "redis_cpu_us_per_event": round(t["redis_cpu_s"] / n * 1e6, 2),
        }
    for key in ("publisher_us_per_event", "redis_cpu_us_per_event"):
        base = out["without"][key]
        out[f"{key}_ratio"] = round(out["with"][key] / base, 2) if base else None
    return out


async def _request(ws: ClientConnection, type_: str, payload: dict[str, Any]) -> dict[str, Any]:
    mid = uuid.uuid4().hex
    await ws.send(orjson.dumps({"id": mid, "type": type_, "payload": payload}).decode())
    while True:
        message = await _recv(ws)
        if message["type"] == "ack" and message["payload"]["messageId"] == mid:
            if not message["payload"]["success"]:
                raise RuntimeError(f"{type_}: {message['payload']}")
            return message["payload"]["result"]  # type: ignore[no-any-return]


async def _recv(ws: ClientConnection) -> dict[str, Any]:
    """The next message; the gateway's heartbeat ``ping`` is answered on the way."""
    while True:
        message: dict[str, Any] = orjson.loads(await ws.recv())
        if message["type"] != "ping":
            return message
        await ws.send(b'{"type":"pong"}', text=True)


async def _client(url: str, secret: str) -> ClientConnection:
    ws = await connect(url, max_size=None)
    token = mint_token(secret, "bench-viewer", roles=("viewer",))
    await ws.send(orjson.dumps({"type": "auth", "payload": {"token": token, "clientId": "b"}}))
    status = orjson.loads(await ws.recv())
    if status["type"] != "connection:status":
        raise RuntimeError(f"auth refused: {status}")
    return ws


def _record(agent_id: str, i: int, start: int) -> dict[str, str]:
    """A live agent's registry hash, as a runner writes it."""
    return AgentRecord(
        agent_id=agent_id,
        owner=f"user-{i % 20}",
        runner_id="bench-runner",
        status="running",
        name=f"agent {i}",
        model="claude-code",
        workspace=f"ws-{i}",
        workspace_path=f"/tmp/ws-{i}",
        host="bench",
        pid=10_000 + i,
        start_time=start + i,
        proc_create_time=(start + i) / 1000,
        memory_mb=2048,
        cpu_cores=1.0,
        request_id=uuid.uuid4().hex,
    ).to_fields()


async def _seed_agents(redis: aioredis.Redis, keys: Keys, ids: list[str]) -> None:
    """Live agents in the registry."""
    start = now_ms() - 60_000
    async with redis.pipeline(transaction=False) as pipe:
        for i, agent_id in enumerate(ids):
            pipe.hset(keys.agent(agent_id), mapping=_record(agent_id, i, start))  # type: ignore[arg-type]
            pipe.zadd(keys.agent_index, {agent_id: start + i})
            pipe.sadd(keys.agents, agent_id)
        await pipe.execute()


async def agent_list(
    url: str, secret: str, redis: aioredis.Redis, keys: Keys, n: int, requests: int
) -> dict[str, Any]:
    await _seed_agents(redis, keys, [f"bench-agent-{i:05d}" for i in range(n)])
    ws = await _client(url, secret)
    try:
        times: list[float] = []
        for _ in range(requests):
            t0 = time.perf_counter()
            result = await _request(ws, "agent:list", {"limit": 1000})
            times.append((time.perf_counter() - t0) * 1000)
            if result["total"] != n:
                raise RuntimeError(f"agent:list: {result['total']} agents, not {n}")
    finally:
        await ws.close()
    return {"agents": n, "requests": requests, "ack_ms": exact_summary_ms(times)}


async def history(
    url: str, secret: str, redis: aioredis.Redis, keys: Keys, lines: int, pids: dict[str, list[int]]
) -> dict[str, Any]:
    agent_id = f"bench-history-{uuid.uuid4().hex[:6]}"
    await _seed_agents(redis, keys, [agent_id])
    limits = TranscriptLimits(lines * 2, 1 << 34, 3600)
    used0 = int((await redis.info("memory"))["used_memory"])
    t0 = time.perf_counter()
    await _publish(EventBus(redis, keys, transcript=limits), agent_id, lines, 100)
    written_s = time.perf_counter() - t0
    # Not MEMORY USAGE: sampling every node of a 1M-entry stream blocks Redis for seconds.
    memory = int((await redis.info("memory"))["used_memory"]) - used0
    entry_bytes = int(await redis.hget(keys.topic_meta(agent_topic(agent_id)), "tbytes") or 0)
    ws = await _client(url, secret)
    out: dict[str, Any] = {
        "lines": lines,
        "line_chars": 100,
        "written_per_s": round(lines / written_s, 1),
        "redis_memory_bytes": memory,
        "entry_bytes": entry_bytes,
    }
    try:
        meter = CpuMeter(pids)
        meter.start()
        t0 = time.perf_counter()
        got, after, pages = 0, None, 0
        while True:
            payload: dict[str, Any] = {"agentId": agent_id, "limit": 1000}
            if after is not None:
                payload["after"] = after
            result = await _request(ws, "agent:history", payload)
            got += len(result["events"])
            pages += 1
            after = result.get("next")
            if after is None:
                break
        seconds = time.perf_counter() - t0
        out["pages"] = {
            "events": got,
            "pages": pages,
            "seconds": round(seconds, 2),
            "events_per_s": round(got / seconds, 1),
            "cpu_pct": meter.stop(),
        }
        if got != lines:
            raise RuntimeError(f"agent:history gave {got} events, not {lines}")

        meter = CpuMeter(pids)
        meter.start()
        t0 = time.perf_counter()
        await _request(ws, "subscribe:agent", {"agentId": agent_id, "since": {"offset": 0}})
        seen, last, duplicated, gaps = 0, 0, 0, 0
        while last < lines:
            message = await _recv(ws)
            if message["type"] == "subscription:gap":
                raise RuntimeError(f"subscribe since the start: {message['payload']}")
            if message["type"] != "agent:output":
                continue
            offset = message["metadata"]["offset"]
            if offset <= last:
                duplicated += 1
                continue
            gaps += offset != last + 1
            seen, last = seen + 1, offset
        seconds = time.perf_counter() - t0
        out["subscribe_since_start"] = {
            "events": seen,
            "seconds": round(seconds, 2),
            "events_per_s": round(seen / seconds, 1),
            "duplicated": duplicated,
            "gaps": gaps,
            "cpu_pct": meter.stop(),
        }
    finally:
        await ws.close()
    return out


async def state(ctx: Context) -> dict[str, Any]:
    cfg = ctx.cfg
    stack = Stack("state", redis_url=ctx.redis_url, secret=ctx.secret, run_dir=ctx.run_dir)
    await stack.start()
    redis = aioredis.Redis.from_url(ctx.redis_url)
    pids = {"gateway": stack.gateway_pids, "redis": [ctx.redis_pid]}
    try:
        out = {
            "publish_cost": await publish_cost(redis, stack.keys, cfg.publish_events, 4),
            "agent_list": await agent_list(
                stack.urls[0], ctx.secret, redis, stack.keys, cfg.list_agents, cfg.list_requests
            ),
            "history": await history(
                stack.urls[0], ctx.secret, redis, stack.keys, cfg.history_lines, pids
            ),
        }
        sub = out["history"].get("subscribe_since_start", {})
        if sub.get("duplicated") or sub.get("gaps"):
            ctx.errors.append(f"state: subscribe since the start: {sub}")
        return out
    finally:
        await redis.aclose()
        await stack.stop()
