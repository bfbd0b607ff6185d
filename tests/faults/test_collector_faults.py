"""The metrics collector SIGKILLed and restarted: subscribers of ``logs`` are told it went
silent (within ``TEAMDASH_COLLECTOR_SILENCE_S``) and that it is back — once each, even with
two gateways (one is elected announcer)."""

from __future__ import annotations

import time

from shared.client import DashboardClient, DashboardEvent, Subscription
from shared.protocol import MetricsUpdateMessage, SystemAlertMessage
from tests.faults.conftest import NOTICE_S, FaultStack
from tests.gateway.conftest import token
from tests.helpers import t, wait_for

SILENCE_S = 2.0


def _collector_alert(event: DashboardEvent, state: str) -> bool:
    return (
        isinstance(event, SystemAlertMessage)
        and event.payload.category == "performance"
        and (event.payload.details or {}).get("collector") == state
    )


async def _next_alert(
    sub: Subscription, state: str, seen: list[DashboardEvent] | None = None
) -> SystemAlertMessage:
    deadline = time.monotonic() + NOTICE_S
    while True:
        event = await sub.next(max(0.1, deadline - time.monotonic()))
        if seen is not None:
            seen.append(event)
        if _collector_alert(event, state):
            assert isinstance(event, SystemAlertMessage)
            return event


async def test_a_killed_collector_is_announced_and_so_is_its_return(fault_stack) -> None:
    stack: FaultStack = fault_stack(TEAMDASH_COLLECTOR_SILENCE_S=str(SILENCE_S))
    ports = [stack.gateway()[1], stack.gateway()[1]]
    collector_env = {"TEAMDASH_METRICS_INTERVAL_S": "0.5"}
    collector = stack.collector(**collector_env)
    for port in ports:
        await wait_for(lambda p=port: stack.ready(p), timeout=20, what="gateway ready")
    async with DashboardClient(stack.ws_url(ports[0]), token("alice")) as c:
        metrics = await c.subscribe_metrics()
        assert isinstance(await metrics.next(t(20)), MetricsUpdateMessage)
        logs = await c.subscribe_logs(["performance"])
        collector.kill()
        killed = time.monotonic()
        silent = await _next_alert(logs, "silent")
        noticed_s = time.monotonic() - killed
        assert silent.payload.level == "warning"
        assert silent.payload.message.startswith("metrics collector is silent since ")
        # Noticed after the configured silence (and not much later: two checks of 1 s).
        assert noticed_s < SILENCE_S + t(5)
        stack.collector(**collector_env)
        between: list[DashboardEvent] = []
        back = await _next_alert(logs, "back", between)
        assert back.payload.level == "info"
        # One "silent" alert although two gateways watch (one is the elected announcer):
        # the "back" alert is the marker after which a second one would have shown.
        assert not [e for e in between if _collector_alert(e, "silent")]
