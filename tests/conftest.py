"""Fixtures shared by every test: one real Redis for the session, isolated per test by a
key prefix; service processes started on free loopback ports and stopped after the test."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from shared.bus import EventBus
from shared.keys import Keys
from shared.redis_server import EmbeddedRedis
from tests.helpers import ServiceProcess

JWT_SECRET = "test-secret-with-enough-entropy-0123456789"


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    with EmbeddedRedis() as server:
        yield server.url


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def keys(prefix: str) -> Keys:
    return Keys(prefix)


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def bus(redis: aioredis.Redis, keys: Keys) -> EventBus:
    return EventBus(redis, keys)


@pytest.fixture
def service_env(redis_url: str, prefix: str, tmp_path: Path) -> dict[str, str]:
    """Environment for service processes of one test: its Redis, prefix and state folder."""
    return {
        "REDIS_URL": redis_url,
        "TEAMDASH_REDIS_PREFIX": prefix,
        "TEAMDASH_STATE_DIR": str(tmp_path / "state"),
        "TEAMDASH_JWT_SECRET": JWT_SECRET,
        "PYTHONUNBUFFERED": "1",
    }


@pytest.fixture
def start_service(tmp_path: Path) -> Iterator[object]:
    """``start_service(name, env, *args)`` → a running :class:`ServiceProcess`; all are
    stopped (and checked for leftovers) when the test ends."""
    started: list[ServiceProcess] = []

    def start(name: str, env: dict[str, str], *args: str) -> ServiceProcess:
        log = tmp_path / f"{name}-{len(started)}.log"
        proc = ServiceProcess([name, *args], env, log)
        started.append(proc)
        return proc

    yield start
    errors = []
    for proc in reversed(started):
        try:
            proc.stop()
        except AssertionError as e:
            errors.append(str(e))
    if errors:
        raise AssertionError("; ".join(errors))
