"""Authorization, rule by rule, with real agents behind a real runner: viewers read, operators
manage (and see) their own agents, admins everything; operators may be allowed to see all."""

from __future__ import annotations

from shared.errors import ErrorCode
from shared.topics import LOGS_TOPIC
from tests.gateway.conftest import token, ws_url
from tests.gateway.test_fanout import alert, until_barrier
from tests.wsclient import WSClient

CREATE = {"name": "a", "model": "echo", "workspace": "ws"}
CONTROL = ("agent:command", "agent:pause", "agent:resume", "agent:terminate")


def control_payload(kind: str, agent_id: str) -> dict[str, object]:
    return (
        {"agentId": agent_id, "command": "hi"} if kind == "agent:command" else {"agentId": agent_id}
    )


async def create(client: WSClient) -> str:
    ack = await client.request("agent:create", CREATE, timeout=20)
    assert ack["success"], ack
    return ack["result"]["agentId"]  # type: ignore[no-any-return]


def of_agent(agent_id: str):
    return lambda m: m["type"].startswith("agent:") and m["payload"].get("agentId") == agent_id


async def test_roles_viewer_operator_admin(gateway, start_runner):
    await start_runner()
    url = ws_url(gateway)
    alice = await WSClient.authed(url, token("alice", roles=("operator",)))
    bob = await WSClient.authed(url, token("bob", roles=("operator",)))
    vera = await WSClient.authed(url, token("vera", roles=("viewer",)))
    root = await WSClient.authed(url, token("root", roles=("admin",)))
    no_roles = await WSClient.authed(url, token("nora", roles=()))  # no known role = viewer
    odd_roles = await WSClient.authed(url, token("otto", roles=("superuser", "Admin")))

    # Everyone may subscribe to the read-only topics.
    for client in (alice, vera, root, no_roles):
        await client.subscribe("metrics")
        await client.subscribe("logs")
        await client.subscribe("agent")  # lifecycle of the agents the user may see

    # Viewers (and tokens without a known role) can neither create nor control.
    alice_agent = await create(alice)
    bob_agent = await create(bob)
    for client in (vera, no_roles, odd_roles):
        ack = await client.request("agent:create", CREATE)
        assert ack["code"] == ErrorCode.INSUFFICIENT_PERMISSIONS, ack
        for kind in CONTROL:
            ack = await client.request(kind, control_payload(kind, alice_agent))
            assert ack["code"] == ErrorCode.INSUFFICIENT_PERMISSIONS, (kind, ack)
    # ...but a viewer sees every agent, output included.
    await vera.subscribe("agent", agentId=bob_agent)

    # Operators control their own agents only, and see only those.
    assert (await alice.request("agent:command", {"agentId": alice_agent, "command": "mine"}))[
        "success"
    ]
    for kind in CONTROL:
        ack = await alice.request(kind, control_payload(kind, bob_agent))
        assert ack["code"] == ErrorCode.INSUFFICIENT_PERMISSIONS, (kind, ack)
    ack = await alice.request("subscribe:agent", {"agentId": bob_agent})
    assert ack["code"] == ErrorCode.INSUFFICIENT_PERMISSIONS
    ack = await alice.request("subscribe:agent", {"agentId": bob_agent, "filters": ["status"]})
    assert ack["code"] == ErrorCode.INSUFFICIENT_PERMISSIONS

    # Admins control everyone's agents.
    await root.subscribe("agent", agentId=alice_agent)
    assert (await root.request("agent:command", {"agentId": alice_agent, "command": "from root"}))[
        "success"
    ]
    assert (await root.request("agent:pause", {"agentId": bob_agent}))["success"]
    assert (await root.request("agent:resume", {"agentId": bob_agent}))["success"]
    assert (await root.request("agent:terminate", {"agentId": bob_agent, "force": True}))["success"]

    # The lifecycle stream: bob's agent's events (created, running, stopped) reached the
    # viewer and the admin, and never alice.
    await vera.recv_where(
        lambda m: of_agent(bob_agent)(m) and m["payload"].get("status") == "stopped",
        10,
        "bob's agent stopped (viewer)",
    )
    await root.recv_where(
        lambda m: of_agent(bob_agent)(m) and m["payload"].get("status") == "stopped",
        10,
        "bob's agent stopped (admin)",
    )
    # The barrier: the end of alice's agent, on the same topic after all of bob's events.
    assert (await alice.request("agent:terminate", {"agentId": alice_agent}))["success"]
    await alice.recv_where(
        lambda m: of_agent(alice_agent)(m) and m["payload"].get("status") == "stopped",
        10,
        "alice's agent stopped",
    )
    leaked = [m for m in alice.drain() if of_agent(bob_agent)(m)]
    assert not leaked, leaked
    for client in (alice, bob, vera, root, no_roles, odd_roles):
        await client.close()


async def test_operators_see_all_agents_but_still_control_only_their_own(
    make_gateway, start_runner
):
    gw = await make_gateway(TEAMDASH_OPERATORS_SEE_ALL_AGENTS="true")
    await start_runner()
    url = ws_url(gw)
    alice = await WSClient.authed(url, token("alice"))
    bob = await WSClient.authed(url, token("bob"))
    await alice.subscribe("agent")
    bob_agent = await create(bob)
    await alice.subscribe("agent", agentId=bob_agent)
    await alice.recv_where(of_agent(bob_agent), 10, "bob's agent's events")
    for kind in CONTROL:
        ack = await alice.request(kind, control_payload(kind, bob_agent))
        assert ack["code"] == ErrorCode.INSUFFICIENT_PERMISSIONS, (kind, ack)
    await alice.close()
    await bob.close()


async def test_a_session_cannot_be_taken_over_by_another_user(gateway):
    alice = await WSClient.authed(ws_url(gateway), token("alice"))
    session_id = alice.status["sessionId"]  # type: ignore[index]
    await alice.close()
    mallory = await WSClient.open(ws_url(gateway))
    mid = await mallory.send(
        "auth",
        {"token": token("mallory", roles=("admin",)), "clientId": "c", "sessionId": session_id},
    )
    ack = await mallory.ack_for(mid)
    assert ack["code"] == ErrorCode.INSUFFICIENT_PERMISSIONS


async def test_operators_see_only_their_own_agents_in_metrics_and_alerts(
    gateway, bus, start_runner, start_service, service_env
):
    """The shared topics too: an operator's ``metrics:update.agents`` lists only their
    agents, and another user's agent crashing raises no alert on their ``logs``; viewers and
    admins see everything."""
    await start_runner()
    start_service("collector", {**service_env, "TEAMDASH_METRICS_INTERVAL_S": "0.2"})
    url = ws_url(gateway)
    alice = await WSClient.authed(url, token("alice", roles=("operator",)))
    bob = await WSClient.authed(url, token("bob", roles=("operator",)))
    vera = await WSClient.authed(url, token("vera", roles=("viewer",)))
    root = await WSClient.authed(url, token("root", roles=("admin",)))
    everyone = (alice, bob, vera, root)
    for client in everyone:
        await client.subscribe("metrics")
        await client.subscribe("logs", filters=["agent"])
    ack = await alice.request("agent:create", {**CREATE, "model": "crash"}, timeout=20)
    assert ack["success"], ack
    alice_agent = ack["result"]["agentId"]
    bob_agent = await create(bob)

    def agents_in(m: dict) -> set[str]:
        if m["type"] != "metrics:update":
            return set()
        return {a["agentId"] for a in m["payload"].get("agents") or []}

    both = {alice_agent, bob_agent}
    for client in (vera, root):
        update = await client.recv_where(lambda m: both <= agents_in(m), 15, "both agents")
        owners = {a["agentId"]: a["owner"] for a in update["payload"]["agents"]}
        assert owners[alice_agent] == "alice" and owners[bob_agent] == "bob"
    for client, mine, theirs in ((alice, alice_agent, bob_agent), (bob, bob_agent, alice_agent)):
        update = await client.recv_where(lambda m, a=mine: a in agents_in(m), 15, "own agent")
        assert update["payload"]["system"]["cpu"]  # the system section is not cut
        seen = [m for m in client.drain() + [update] if theirs in agents_in(m)]
        assert not seen, seen

    # alice's agent crashes: an `agent` alert for alice, the viewer and the admin; not bob.
    await alice.request("agent:command", {"agentId": alice_agent, "command": "crash"})

    def crash_alert(m: dict) -> bool:
        return m["type"] == "system:alert" and m["metadata"].get("agentId") == alice_agent

    for client in (alice, vera, root):
        await client.recv_where(crash_alert, 15, "alice's agent's crash alert")
    # The barrier: an alert for everyone, published after the crash alert.
    await bus.publish(LOGS_TOPIC, alert("info", "agent", "barrier"), ("info", "agent"))
    leaked = [m for m in await until_barrier(bob) if crash_alert(m)]
    assert not leaked, leaked
    for client in everyone:
        await client.close()
