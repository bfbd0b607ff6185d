"""The embedded Redis (``shared/redis_server.py``) that ``teamdash up`` and the tests run."""

from __future__ import annotations

import subprocess
import sys

import psutil
import redis

from shared.redis_server import PUBSUB_BUFFER_LIMIT, EmbeddedRedis
from tests.helpers import ROOT, t


def test_embedded_redis_keeps_busy_subscribers_and_never_evicts() -> None:
    with EmbeddedRedis() as server:
        client = redis.Redis.from_url(server.url)
        try:
            limits = client.config_get("client-output-buffer-limit")["client-output-buffer-limit"]
            _, hard, soft, seconds = PUBSUB_BUFFER_LIMIT
            mib = 1024 * 1024
            expected = f"pubsub {int(hard[:-2]) * mib} {int(soft[:-2]) * mib} {seconds}"
            assert expected in limits, limits
            assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
        finally:
            client.close()


def test_embedded_redis_dies_with_the_process_that_started_it() -> None:
    """A killed `teamdash up` or test run leaves no redis-server behind."""
    starter = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; from shared.redis_server import EmbeddedRedis\n"
            "r = EmbeddedRedis(); r.start(); print(r.process.pid, flush=True); time.sleep(60)",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
    )
    try:
        assert starter.stdout is not None
        pid = int(starter.stdout.readline())
        server = psutil.Process(pid)
        assert server.name().startswith("redis-server")
    finally:
        starter.kill()  # SIGKILL: no cleanup code of its own runs
        starter.wait()
    try:
        server.wait(timeout=t(10))
    except psutil.TimeoutExpired:
        server.kill()  # no stray server, whatever the outcome
        raise AssertionError("redis-server outlived the process that started it") from None
