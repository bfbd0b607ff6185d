"""Audit: security events are logged on ``ws.audit`` with user, IP and connection, counted in
``teamdash_gateway_security_events_total{kind}``, and a burst raises one ``system:alert``
(category security) for ``logs`` subscribers — on every gateway, with hysteresis and a
cooldown."""

from __future__ import annotations

import asyncio
import logging

import jwt
from websockets.exceptions import InvalidStatus

from gateway.audit import BurstDetector
from tests.gateway.conftest import token, ws_url
from tests.helpers import http_get
from tests.security.conftest import auth_outcome, closed
from tests.wsclient import WSClient


def security_events(gw) -> dict[str, float]:
    text = http_get(f"http://127.0.0.1:{gw.port}/metrics")[1]
    out = {}
    for line in text.splitlines():
        if line.startswith("teamdash_gateway_security_events_total{"):
            kind = line.split('kind="', 1)[1].split('"', 1)[0]
            out[kind] = float(line.rsplit(" ", 1)[1])
    return out


async def bad_auth(url: str) -> None:
    _, client = await auth_outcome(
        url, jwt.encode({"sub": "mallory", "exp": 9999999999}, "z" * 40, "HS256")
    )
    await closed(client)


async def test_events_are_logged_with_who_and_counted(make_gateway, caplog):
    gw = await make_gateway(
        TEAMDASH_ALLOWED_ORIGINS="https://dash.example.com", TEAMDASH_MESSAGES_PER_SECOND="3"
    )
    url = ws_url(gw)
    before = await asyncio.to_thread(security_events, gw)
    assert set(before) >= {
        "auth_failed",
        "permission_denied",
        "rate_limited",
        "origin_refused",
        "token_expired",
    }
    with caplog.at_level(logging.INFO, logger="ws.audit"):
        await bad_auth(url)
        vera = await WSClient.authed(url, token("vera", roles=("viewer",)))
        ack = await vera.request("agent:create", {"name": "a", "model": "echo", "workspace": "w"})
        assert not ack["success"]
        sent = [await vera.send("unsubscribe", {"subscriptionId": "x"}) for _ in range(6)]
        for mid in sent:  # every one answered: the trip was recorded
            await vera.ack_for(mid)
        try:
            await WSClient.open(url, additional_headers=[("Origin", "https://evil.example")])
        except InvalidStatus as e:
            assert e.response.status_code == 403
        await vera.close()
    records = {r.getMessage().split(":", 1)[0]: r for r in caplog.records if r.name == "ws.audit"}
    assert {"auth_failed", "permission_denied", "rate_limited", "origin_refused"} <= set(records), (
        caplog.text
    )
    for kind, record in records.items():
        assert record.ip == "127.0.0.1", kind  # type: ignore[attr-defined]
    assert records["permission_denied"].user_id == "vera"  # type: ignore[attr-defined]
    assert records["rate_limited"].user_id == "vera"  # type: ignore[attr-defined]
    assert records["permission_denied"].connection_id  # type: ignore[attr-defined]
    assert records["auth_failed"].user_id is None  # type: ignore[attr-defined]
    assert "Signature verification failed" in records["auth_failed"].getMessage()
    after = await asyncio.to_thread(security_events, gw)
    for kind in ("auth_failed", "permission_denied", "rate_limited", "origin_refused"):
        assert after[kind] >= before[kind] + 1, kind
    # One rate-limit trip is one event, not one per refused message.
    assert after["rate_limited"] - before["rate_limited"] == 1


async def test_a_burst_raises_one_security_alert_on_every_gateway(make_gateway):
    env = {
        "TEAMDASH_SECURITY_ALERT_THRESHOLD": "5",
        "TEAMDASH_SECURITY_ALERT_WINDOW_S": "1",
        "TEAMDASH_SECURITY_ALERT_COOLDOWN_S": "60",
    }
    attacked, other = await make_gateway(**env), await make_gateway(**env)
    admin = await WSClient.authed(ws_url(other), token("root", roles=("admin",)))
    await admin.subscribe("logs", filters=["security"])
    for _ in range(8):
        await bad_auth(ws_url(attacked))
    alert = await admin.recv_type("system:alert", timeout=5)
    p = alert["payload"]
    assert p["category"] == "security" and p["level"] == "warning"
    assert p["details"]["gatewayId"] == attacked.id
    assert p["details"]["kinds"]["auth_failed"] >= 5
    assert p["details"]["addresses"] == 1
    assert "127.0.0.1" not in str(p), "addresses stay in the audit log"
    assert alert["metadata"]["priority"] == "high"
    # Calm again (under half the threshold over the window): cleared once, as info.
    cleared = await admin.recv_type("system:alert", timeout=5)
    assert cleared["payload"]["level"] == "info" and cleared["payload"]["category"] == "security"
    # A second burst within the cooldown raises nothing.
    for _ in range(8):
        await bad_auth(ws_url(attacked))
    later = [m for m in await admin.collect(2.5) if m["type"] == "system:alert"]
    assert [m["payload"]["level"] for m in later] == [], later
    await admin.close()


def test_burst_detector_hysteresis_and_cooldown() -> None:
    d = BurstDetector(threshold=4, window_s=10, cooldown_s=100)
    assert [d.add("x", t) for t in (0, 1, 2)] == [False] * 3
    assert d.add("x", 3) is True  # the 4th within 10 s raises
    assert not any(d.add("x", 4 + i) for i in range(20))  # once, however long it lasts
    assert d.check_clear(20) is False  # still busy
    assert d.check_clear(40) is True  # under half the threshold: cleared, once
    assert d.check_clear(41) is False
    assert not any(d.add("y", 50 + i) for i in range(10))  # a new burst within the cooldown
    assert d.check_clear(70) is False  # nothing raised, nothing to clear
    assert [d.add("z", 110 + i) for i in range(4)] == [False, False, False, True]
    assert d.kinds() == {"z": 4}
