"""A Prometheus ``/metrics`` endpoint for services without an HTTP server of their own
(the agent runner and the metrics collector), served by ``prometheus_client`` from a
thread. The gateway serves its metrics on its WebSocket port instead."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server

log = logging.getLogger("metrics")


@contextlib.contextmanager
def serve_metrics(registry: CollectorRegistry, host: str, port: int | None) -> Iterator[int | None]:
    """Serve ``registry`` at ``http://host:port/metrics`` while the block runs (nothing when
    ``port`` is None). Yields the bound port (useful with port 0)."""
    if port is None:
        yield None
        return
    server: WSGIServer
    thread: threading.Thread
    server, thread = start_http_server(port, addr=host, registry=registry)
    bound = int(server.server_address[1])
    log.info("metrics on http://%s:%d/metrics", host, bound)
    try:
        yield bound
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
