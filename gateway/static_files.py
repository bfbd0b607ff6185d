"""The dashboard page (``gateway/static/``), served over HTTP on the gateway's own port.

The files are listed once, at import: a request names one of them or gets a 404, so no
path from the network ever reaches the file system (no traversal, no symlink, no
directory listing). The page's JavaScript is built from ``clients/typescript/dashboard``
and committed (the package needs no npm at run time).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

STATIC_DIR = Path(__file__).resolve().parent / "static"
#: Where the page lives; ``/`` redirects there.
PREFIX = "/dashboard/"

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}

#: Every response of the page carries these. The CSP allows no inline script or style and
#: nothing from another origin (the page works offline); ``connect-src 'self'`` covers the
#: page's own WebSocket (same host and port), which the gateway's origin rules
#: (TEAMDASH_ALLOWED_ORIGINS) still check at the handshake.
SECURITY_HEADERS = (
    (
        "Content-Security-Policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-cache"),
)


@dataclass(frozen=True)
class StaticFile:
    body: bytes
    content_type: str


def load_static(root: Path = STATIC_DIR) -> dict[str, StaticFile]:
    """Every servable file under ``root`` by its URL path (``/dashboard/js/app.js``);
    ``/dashboard/`` is ``index.html``."""
    files: dict[str, StaticFile] = {}
    for path in sorted(root.rglob("*")):
        content_type = _TYPES.get(path.suffix)
        if content_type is None or not path.is_file():
            continue
        url = PREFIX + path.relative_to(root).as_posix()
        files[url] = StaticFile(path.read_bytes(), content_type)
    if PREFIX + "index.html" in files:
        files[PREFIX] = files[PREFIX + "index.html"]
    return files
