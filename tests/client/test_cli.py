"""The operator commands of ``teamdash`` (``metrics watch``, ``logs watch``, ``agents watch``,
``agent …``) as real processes against a gateway (a process, or in-process where the test
must know when the gateway follows a topic): output, progress on stderr, reconnection
notices, exit codes (0 ok, 1 error with the spec code name, 2 usage). The agent commands
with a real runner are in ``test_agents.py``."""

from __future__ import annotations

import asyncio

import pytest

from gateway.server import Gateway
from shared.bus import EventBus
from shared.keys import AGENTS_TOPIC, METRICS_TOPIC
from shared.protocol import AgentStatusDetails, AgentStatusMessage, AgentStatusPayload
from tests.client.conftest import Stack
from tests.client.helpers import CliProcess, publish_alerts, run_cli
from tests.gateway.conftest import ws_url
from tests.gateway.test_fanout import metrics
from tests.helpers import free_port, wait_for


async def _publish_metrics_until_exit(bus: EventBus, cli: CliProcess) -> None:
    usage = 0.0
    while cli.running:
        usage += 1
        await bus.publish(METRICS_TOPIC, metrics(usage), ("system", "agents"))
        await asyncio.sleep(0.05)


async def test_metrics_watch_count(stack: Stack, bus: EventBus) -> None:
    cli = await CliProcess.start(stack.cli_env, "metrics", "watch", "--count", "2")
    try:
        await cli.wait_stderr("watching metrics")
        publisher = asyncio.create_task(_publish_metrics_until_exit(bus, cli))
        rc = await cli.wait()
        await publisher
    finally:
        await cli.kill()
    assert rc == 0, cli.stderr
    lines = cli.stdout.splitlines()
    assert len(lines) == 2
    for line in lines:
        for part in ("CPU", "% of 2 cores", "MEM", "DISK", "NET", "AGENTS 1"):
            assert part in line, line
    assert "connecting to" in cli.stderr and "connected to gateway" in cli.stderr


async def test_metrics_watch_once(stack: Stack, bus: EventBus) -> None:
    cli = await CliProcess.start(stack.cli_env, "metrics", "watch", "--once", "--quiet")
    try:
        publisher = asyncio.create_task(_publish_metrics_until_exit(bus, cli))
        rc = await cli.wait()
        await publisher
    finally:
        await cli.kill()
    assert rc == 0
    assert len(cli.stdout.splitlines()) == 1 and "CPU" in cli.stdout
    assert cli.stderr == ""


async def test_logs_watch_filters_by_minimum_level_and_resumes_after_a_gateway_restart(
    make_gateway, service_env: dict[str, str], bus: EventBus
) -> None:
    # An in-process gateway, to know when its route is live (the subscribe ack comes
    # before that, see tests.client.helpers.live) and so publish exactly once.
    first = await make_gateway()
    port = first.port
    env = {**service_env, "TEAMDASH_URL": ws_url(first), "TEAMDASH_TOKEN": ""}
    cli = await CliProcess.start(env, "logs", "watch", "--level", "warning", "--count", "2")

    def following(gw: Gateway) -> bool:
        route = gw.routes.get("logs")
        return route is not None and not route.held and bool(route.subscriptions)

    try:
        await cli.wait_stderr("watching alerts")
        await wait_for(lambda: following(first), what="the CLI's subscription")
        await publish_alerts(bus, [1], level="info")
        await publish_alerts(bus, [2], level="warning")
        await wait_for(lambda: "WARNING" in cli.stdout, what="the first alert")
        await first.close()
        await cli.wait_stderr("connection lost (1001")
        await cli.wait_stderr("reconnecting in")
        await publish_alerts(bus, [3], level="critical", category="security")  # during the outage
        await make_gateway(TEAMDASH_GATEWAY_PORT=str(port))
        await cli.wait_stderr("reconnected to gateway")
        rc = await cli.wait()
    finally:
        await cli.kill()
    assert rc == 0, cli.stderr
    lines = cli.stdout.splitlines()
    assert len(lines) == 2
    assert "WARNING" in lines[0] and lines[0].endswith(" 2")
    assert "CRITICAL" in lines[1] and "security" in lines[1] and lines[1].endswith(" 3")
    assert "session resumed, 1 missed events replayed" in cli.stderr


async def test_agents_watch_shows_lifecycle_events(stack: Stack, bus: EventBus) -> None:
    status = AgentStatusMessage(
        type="agent:status",
        payload=AgentStatusPayload(
            agentId="ag-123", status="running", details=AgentStatusDetails(pid=4242)
        ),
    )
    cli = await CliProcess.start(stack.cli_env, "agents", "watch", "--count", "1")
    try:
        await cli.wait_stderr("watching agent lifecycle events")
        while cli.running:  # until the gateway follows the topic, events are not delivered
            await bus.publish(AGENTS_TOPIC, status, ("status", "user:someone"))
            await asyncio.sleep(0.05)
        rc = await cli.wait()
    finally:
        await cli.kill()
    assert rc == 0, cli.stderr
    assert len(cli.stdout.splitlines()) == 1
    assert "ag-123" in cli.stdout and "running" in cli.stdout and "pid=4242" in cli.stdout


@pytest.mark.parametrize(
    "args, code_name",
    [
        (("agent", "command", "no-such-agent", "hello"), "AGENT_NOT_FOUND (2001)"),
        (("agent", "terminate", "no-such-agent", "--force"), "AGENT_NOT_FOUND (2001)"),
        (
            ("agent", "create", "a1", "--model", "echo", "--workspace", "w"),
            "SERVICE_UNAVAILABLE (3002)",
        ),
        (("agents", "watch", "--token", "not-a-token"), "AUTH_FAILED (1001)"),
    ],
)
async def test_errors_exit_1_with_the_spec_code(
    stack: Stack, args: tuple[str, ...], code_name: str
) -> None:
    rc, out, err = await run_cli(stack.cli_env, *args)
    assert rc == 1, (out, err)
    assert code_name in err
    assert out == ""


async def test_an_unreachable_gateway_exits_1(stack: Stack) -> None:
    url = f"ws://127.0.0.1:{free_port()}/ws"
    rc, _, err = await run_cli(stack.cli_env, "metrics", "watch", "--once", "--url", url)
    assert rc == 1 and "SERVICE_UNAVAILABLE" in err and "cannot connect" in err


@pytest.mark.parametrize(
    "args",
    [
        ("agent", "create", "a1"),  # --model and --workspace are required
        ("agent", "create", "a1", "--model", "echo", "--workspace", "w", "--memory", "100"),
        ("agent", "create", "a1", "--model", "echo", "--workspace", "w", "--env", "NOEQUALS"),
        ("agent", "frobnicate", "x"),
        ("metrics", "watch", "--count", "many"),
        ("logs", "watch", "--level", "loud"),
    ],
)
async def test_usage_errors_exit_2(stack: Stack, args: tuple[str, ...]) -> None:
    rc, _, err = await run_cli(stack.cli_env, *args)
    assert rc == 2, err


async def test_a_command_gives_up_when_the_stack_stays_gone(stack: Stack) -> None:
    """The client reconnects forever; a command in a terminal or a script says the stack is
    gone and exits 1 once the outage outlasts ``--give-up-after``."""
    cli = await CliProcess.start(stack.cli_env, "metrics", "watch", "--give-up-after", "1")
    try:
        await cli.wait_stderr("watching metrics")
        assert stack.gateway is not None
        stack.gateway.stop()
        await cli.wait_stderr("connection lost")
        rc = await cli.wait()
    finally:
        await cli.kill()
    assert rc == 1, cli.stderr
    last = cli.stderr.strip().splitlines()[-1]
    assert last == (
        f"teamdash: error: SERVICE_UNAVAILABLE (3002): no gateway at {stack.url} answered "
        "for 1s; giving up (is the stack running?)"
    )
    assert "reconnecting in" in cli.stderr
