"""Redis faults on real processes: Redis SIGKILLed and restarted, with and without its data,
while an SDK client follows a printing agent (see docs/reliability.md, "Gateway and Redis").

The agent's lines are published by the test through :class:`shared.bus.EventBus`, the way
a runner's outbox does (a failed batch is retried until Redis is back), so what the client
receives can be compared with what was really published — and in which epoch. A runner is
not needed for that; the runner side of an outage is tested with the runner's own suite.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from websockets.exceptions import ConnectionClosed

from agent_runner.events import output
from shared.bus import EventBus, Position
from shared.client import ClientError, DashboardClient, DashboardEvent, EventStream
from shared.errors import ErrorCode
from shared.keys import Keys
from shared.protocol import (
    AgentOutputMessage,
    SubscriptionGapMessage,
    SystemAlertMessage,
    now_ms,
)
from shared.redis_conn import is_connection_error, redis_client
from tests.faults.conftest import NOTICE_S, FaultStack
from tests.gateway.conftest import token
from tests.helpers import http_get, t, wait_for
from tests.wsclient import WSClient

PREFIX = "fault"
#: Lines printed before Redis is killed, and after it is back. A longer variant (more
#: traffic around the outage): ``TEAMDASH_FAULT_LINES=2000`` (and a larger timeout scale).
BEFORE = AFTER = int(os.environ.get("TEAMDASH_FAULT_LINES", "100"))


@dataclass
class Printer:
    """A printing agent: ``tick N`` lines published like a runner's outbox publishes them
    (retried with backoff while Redis is away). ``positions[n]`` is where tick n landed."""

    url: str
    agent_id: str
    owner: str = "alice"
    interval_s: float = 0.01
    positions: dict[int, Position] = field(default_factory=dict)
    failures: int = 0
    limit: int = 10**9

    async def run(self) -> None:
        redis = redis_client(self.url)
        bus = EventBus(redis, Keys(PREFIX))
        n = 0
        try:
            while n < self.limit:
                n += 1
                item = output(self.agent_id, self.owner, "stdout", f"tick {n}\n", n, now_ms())
                while True:
                    try:
                        self.positions[n] = await bus.publish(*item)
                        break
                    except Exception as e:  # noqa: BLE001 - like the outbox: retry
                        if not is_connection_error(e):
                            raise
                        self.failures += 1
                        await asyncio.sleep(0.05)
                await asyncio.sleep(self.interval_s)
        finally:
            await redis.aclose()

    @property
    def printed(self) -> int:
        return max(self.positions, default=0)


async def _register_agent(url: str, agent_id: str, owner: str = "alice") -> None:
    """The registry entry a runner writes, so that the gateway lets the owner subscribe."""
    redis = redis_client(url)
    try:
        await redis.hset(
            Keys(PREFIX).agent(agent_id),
            mapping={"owner": owner, "runnerId": "r-test", "status": "running", "name": "tick"},
        )
    finally:
        await redis.aclose()


def _ticks(events: list[DashboardEvent]) -> list[int]:
    out: list[int] = []
    for e in events:
        if isinstance(e, AgentOutputMessage):
            out += [int(n) for n in re.findall(r"tick (\d+)", e.payload.data)]
    return out


@contextlib.asynccontextmanager
async def _printing(printer: Printer) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(printer.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _until(
    source: EventStream | object, done: object, got: list[DashboardEvent], what: str
) -> None:
    """Read events into ``got`` until ``done(got)`` is true."""
    deadline = time.monotonic() + NOTICE_S
    while not done(got):  # type: ignore[operator]
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out waiting for {what}")
        try:
            got.append(await source.next(left))  # type: ignore[attr-defined]
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}") from None


def _alert(events: list[DashboardEvent], level: str) -> SystemAlertMessage | None:
    for e in events:
        if (
            isinstance(e, SystemAlertMessage)
            and e.payload.level == level
            and e.payload.category == "performance"
            and (e.payload.details or {}).get("redis") is not None
        ):
            return e
    return None


async def _readyz(port: int) -> tuple[int, str]:
    return await asyncio.to_thread(http_get, f"http://127.0.0.1:{port}/readyz")


async def _outage_checks(stack: FaultStack, port: int, client: DashboardClient, agent: str) -> None:
    """While Redis is down: /readyz says why, a request gets 3002 at once (not after the
    reply timeout), an auth gets a 3002 ack and then close 1013."""

    async def unready() -> str | None:
        status, body = await _readyz(port)
        return body if status == 503 and body.startswith("redis unreachable: ") else None

    await wait_for(unready, timeout=NOTICE_S, what="/readyz 503 'redis unreachable: …'")
    with pytest.raises(ClientError) as refused:
        await client.send_command(agent, "echo hi")
    assert refused.value.code == ErrorCode.SERVICE_UNAVAILABLE
    assert "cannot reach Redis" in refused.value.message
    raw = await WSClient.open(stack.ws_url(port))
    mid = await raw.send("auth", {"token": token("bob"), "clientId": "during-outage"})
    ack = await raw.recv_type("ack")
    assert ack["payload"]["messageId"] == mid
    assert ack["payload"]["success"] is False
    assert ack["payload"]["code"] == int(ErrorCode.SERVICE_UNAVAILABLE)
    with pytest.raises(ConnectionClosed):
        await raw.recv(timeout=5)
    assert raw.ws.close_code == 1013
    assert (raw.ws.close_reason or "").startswith("SERVICE_UNAVAILABLE")


async def _follow_through_restart(stack: FaultStack, *, persistent: bool) -> dict[str, object]:
    _, port = stack.gateway(TEAMDASH_RUNNER_REPLY_TIMEOUT_S="30")
    await wait_for(lambda: stack.ready(port), timeout=20, what="gateway ready")
    agent = str(uuid.uuid4())
    await _register_agent(stack.redis.url, agent)
    printer = Printer(stack.redis.url, agent)
    async with (
        DashboardClient(stack.ws_url(port), token("alice"), request_timeout=t(20)) as client,
        client.events() as stream,
    ):
        sub = await client.subscribe_agent(agent, filters=["stdout"])
        got: list[DashboardEvent] = []
        seen: list[DashboardEvent] = []
        async with _printing(printer):
            await _until(sub, lambda g: len(_ticks(g)) >= BEFORE, got, f"{BEFORE} ticks")
            stack.redis.kill()
            last_before_kill = printer.printed
            await _until(stream, lambda s: _alert(s, "error"), seen, "the degraded alert")
            await _outage_checks(stack, port, client, agent)
            stack.redis.start()
            if not persistent:
                await _register_agent(stack.redis.url, agent)  # the runner would re-register
            await _until(stream, lambda s: _alert(s, "info"), seen, "the recovered alert")
            target = printer.printed + AFTER
            await _until(
                sub, lambda g: bool(_ticks(g)) and _ticks(g)[-1] >= target, got, "ticks after"
            )
        assert client.reconnects == 0, "the client stayed connected through the outage"
        return {
            "ticks": _ticks(got),
            "gaps": [e for e in got if isinstance(e, SubscriptionGapMessage)],
            "sub": sub.id,
            "printer": printer,
            "killed_after": last_before_kill,
            "alerts": [_alert(seen, "error"), _alert(seen, "info")],
        }


async def test_redis_restarted_with_its_data_loses_and_duplicates_nothing(fault_stack) -> None:
    stack: FaultStack = fault_stack(persistent=True)
    result = await _follow_through_restart(stack, persistent=True)
    ticks = result["ticks"]
    assert isinstance(ticks, list)
    assert ticks == list(range(1, ticks[-1] + 1)), "every line exactly once, in order"
    assert result["gaps"] == [], "nothing was lost: no gap notice"
    printer = result["printer"]
    assert isinstance(printer, Printer)
    assert printer.failures > 0, "the publisher really saw the outage"
    epochs = {p.epoch for p in printer.positions.values()}
    assert len(epochs) == 1, "the data survived: one epoch"


async def test_redis_restarted_empty_tells_the_client_what_it_missed(fault_stack) -> None:
    stack: FaultStack = fault_stack(persistent=False)
    result = await _follow_through_restart(stack, persistent=False)
    ticks = result["ticks"]
    printer = result["printer"]
    assert isinstance(ticks, list) and isinstance(printer, Printer)
    assert len(ticks) == len(set(ticks)), "no line twice"
    epochs = sorted({p.epoch for p in printer.positions.values() if p.epoch})
    old_epoch = printer.positions[1].epoch
    new_epoch = printer.positions[printer.printed].epoch
    assert len(epochs) == 2 and old_epoch != new_epoch
    # Every line of the new epoch arrived; lines of the old epoch the gateway never got are
    # exactly what the notice announces.
    in_new = [n for n, p in printer.positions.items() if p.epoch == new_epoch and n <= ticks[-1]]
    assert set(in_new) <= set(ticks)
    gaps = result["gaps"]
    assert isinstance(gaps, list) and len(gaps) == 1, gaps
    gap = gaps[0].payload
    assert gap.reason == "epoch-changed"
    assert gap.topic == f"agent:{printer.agent_id}"
    assert gap.subscriptionIds == [result["sub"]]
    assert gap.since is not None and gap.since.epoch == old_epoch
    assert gap.position.epoch == new_epoch and gap.position.offset == 0
    assert gap.missed is None, "how many old-epoch lines were lost is unknown"
    # The notice comes before the first line of the new epoch.
    alerts = result["alerts"]
    assert isinstance(alerts, list) and all(a is not None for a in alerts)


async def test_services_started_before_redis_wait_for_it(fault_stack) -> None:
    stack: FaultStack = fault_stack(persistent=False)
    stack.redis.kill()
    _, port = stack.gateway()
    runner = stack.runner("r-wait")
    collector = stack.collector(TEAMDASH_METRICS_INTERVAL_S="0.5")
    procs = [stack.gateways[0][0], runner, collector]
    for proc in procs:
        await wait_for(
            lambda p=proc: "waiting for Redis at redis://" in p.log_text(),
            timeout=20,
            what=f"{proc.args[0]}: waiting for Redis",
        )
        assert proc.alive()
    stack.redis.start()
    await wait_for(lambda: stack.ready(port), timeout=NOTICE_S, what="gateway ready")
    redis = redis_client(stack.redis.url)
    keys = Keys(PREFIX)
    try:
        await wait_for(
            lambda: redis.zscore(keys.runners, "r-wait"), timeout=NOTICE_S, what="runner up"
        )
        await wait_for(
            lambda: redis.exists(keys.topic_meta("metrics")), timeout=NOTICE_S, what="metrics"
        )
    finally:
        await redis.aclose()
    for proc in procs:
        text = proc.log_text()
        assert "Traceback" not in text, text
        assert "Connection refused; retrying" in text, text
