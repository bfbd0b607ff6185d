"""The embedded Redis (``shared/redis_server.py``) that ``teamdash up`` and the tests run."""

from __future__ import annotations

import redis

from shared.redis_server import PUBSUB_BUFFER_LIMIT, EmbeddedRedis


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
