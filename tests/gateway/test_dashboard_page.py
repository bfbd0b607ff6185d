"""The dashboard page on the gateway's own port: its files with strict security headers,
``/`` redirecting to it, and nothing else from the disk whatever the path says."""

from __future__ import annotations

import asyncio
import http.client

from gateway.static_files import PREFIX, STATIC_DIR, load_static
from tests.helpers import t


def _get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    # http.client sends the path exactly as given (no normalisation of "..", "%2e").
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=t(5))
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


async def get(gw, path: str) -> tuple[int, dict[str, str], bytes]:
    return await asyncio.to_thread(_get, gw.port, path)


def test_every_file_of_the_page_is_listed_and_only_those() -> None:
    files = load_static()
    assert files[PREFIX].body == (STATIC_DIR / "index.html").read_bytes()
    assert files[PREFIX + "js/dashboard/app.js"].content_type.startswith("text/javascript")
    assert files[PREFIX + "style.css"].content_type.startswith("text/css")
    assert all(url.startswith(PREFIX) and ".." not in url for url in files)


async def test_page_is_served_with_security_headers(gateway) -> None:
    status, headers, body = await get(gateway, "/dashboard/")
    assert status == 200
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert b'<script type="module" src="js/dashboard/app.js">' in body
    csp = headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "'unsafe-inline'" not in csp and "default-src 'none'" in csp
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"
    status, headers, body = await get(gateway, "/dashboard/js/src/client.js")
    assert status == 200 and b"class DashboardWebSocket" in body
    assert headers["content-type"] == "text/javascript; charset=utf-8"


async def test_root_redirects_to_the_page(gateway) -> None:
    for path in ("/", "/dashboard"):
        status, headers, _ = await get(gateway, path)
        assert status == 302 and headers["location"] == "/dashboard/"


async def test_no_path_reaches_other_files(gateway) -> None:
    for path in (
        "/dashboard/../pyproject.toml",
        "/dashboard/%2e%2e/server.py",
        "/dashboard/js/../../server.py",
        "/dashboard//etc/passwd",
        "/dashboard/js/",
        "/dashboard/index.html/",
        "/static/index.html",
    ):
        status, headers, body = await get(gateway, path)
        assert status == 404, path
        assert b"the WebSocket endpoint is /ws" in body
