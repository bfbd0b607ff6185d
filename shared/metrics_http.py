"""A Prometheus ``/metrics`` endpoint for services without an HTTP server of their own
(the agent runner and the metrics collector), served by ``prometheus_client`` from a
thread. The gateway serves its metrics on its WebSocket port instead."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Gauge, start_http_server

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


def watch_tasks(registry: CollectorRegistry, loop: asyncio.AbstractEventLoop) -> None:
    """Add ``teamdash_asyncio_tasks`` to ``registry``: the tasks alive on ``loop``, counted
    when scraped (a leak of tasks shows as a climbing line; ``python -m bench.soak`` reads
    it). Safe from the scrape thread: ``asyncio.all_tasks`` copies the set, retrying if the
    loop changes it meanwhile."""
    gauge = Gauge(
        "teamdash_asyncio_tasks", "asyncio tasks alive in this process", registry=registry
    )
    gauge.set_function(lambda: len(asyncio.all_tasks(loop)))
