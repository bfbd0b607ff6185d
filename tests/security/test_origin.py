"""Cross-site WebSocket hijacking: with TEAMDASH_ALLOWED_ORIGINS set, a browser page from
another origin cannot even open the WebSocket (403 at the handshake); clients that send no
Origin (not browsers) are allowed; unset or ``*`` allows any origin (dev mode)."""

from __future__ import annotations

import asyncio

import pytest
from websockets.exceptions import InvalidStatus

from gateway.guard import normalize_origin
from gateway.settings import allowed_origins
from shared.settings import ConfigError, Env
from tests.gateway.conftest import token, ws_url
from tests.helpers import http_get
from tests.wsclient import WSClient

DASHBOARD = "https://dash.example.com"


async def opens(url: str, *origins: str) -> int:
    """101 when the handshake succeeds (and auth works), else the HTTP status."""
    headers = [("Origin", o) for o in origins]
    try:
        client = await WSClient.authed(url, token(), additional_headers=headers)
    except InvalidStatus as e:
        return e.response.status_code
    await client.close()
    return 101


async def test_only_allowed_origins_may_open_a_websocket(make_gateway):
    gw = await make_gateway(TEAMDASH_ALLOWED_ORIGINS=f"{DASHBOARD}, http://localhost:5173")
    url = ws_url(gw)
    assert await opens(url, DASHBOARD) == 101
    assert await opens(url, "HTTPS://Dash.Example.com:443") == 101  # same origin, other spelling
    assert await opens(url, "http://localhost:5173") == 101
    assert await opens(url) == 101  # no Origin: not a browser (SDK, CLI, server)
    for evil in (
        "https://evil.example",
        "https://dash.example.com.evil.example",
        "https://evil-dash.example.com",
        "http://dash.example.com",  # scheme matters
        "https://dash.example.com:8443",  # port matters
        "http://localhost:5174",
        "null",  # sandboxed iframes, file:// pages
        "https://dash.example.com/path",
        "*",
        "",
    ):
        assert await opens(url, evil) == 403, evil
    assert await opens(url, DASHBOARD, "https://evil.example") == 403  # two Origin headers
    metrics = (await asyncio.to_thread(http_get, f"http://127.0.0.1:{gw.port}/metrics"))[1]
    line = next(
        x
        for x in metrics.splitlines()
        if x.startswith('teamdash_gateway_security_events_total{kind="origin_refused"}')
    )
    assert float(line.split()[-1]) >= 11


@pytest.mark.parametrize("setting", [None, "*"])
async def test_any_origin_when_not_configured(make_gateway, setting):
    gw = await (make_gateway(TEAMDASH_ALLOWED_ORIGINS=setting) if setting else make_gateway())
    assert await opens(ws_url(gw), "https://anything.example") == 101
    assert await opens(ws_url(gw)) == 101


def test_origin_setting() -> None:
    assert allowed_origins(Env({})) is None
    assert allowed_origins(Env({"TEAMDASH_ALLOWED_ORIGINS": "*"})) is None
    assert allowed_origins(Env({"TEAMDASH_ALLOWED_ORIGINS": "https://A.example:443/"})) == {
        "https://a.example"
    }
    for bad in (
        "dash.example.com",
        "https://a.example/app",
        "*,https://a.example",
        "https://user@a.example",
    ):
        with pytest.raises(ConfigError):
            allowed_origins(Env({"TEAMDASH_ALLOWED_ORIGINS": bad}))
    assert normalize_origin("http://[::1]:80") == "http://[::1]"
