from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from gateway.server import Gateway
from gateway.settings import GatewaySettings
from shared.settings import Env
from shared.tokens import mint_token
from tests.conftest import JWT_SECRET


@pytest.fixture
async def make_gateway(service_env: dict[str, str]) -> AsyncIterator[Callable[..., Any]]:
    """``await make_gateway(**env_overrides)`` → a started in-process Gateway on a free port."""
    started: list[Gateway] = []

    async def make(**overrides: str) -> Gateway:
        env = {**service_env, "TEAMDASH_GATEWAY_PORT": "0", **overrides}
        gw = Gateway(GatewaySettings.from_env(Env(env)))
        await gw.start()
        started.append(gw)
        return gw

    yield make
    for gw in started:
        await gw.close()


@pytest.fixture
async def gateway(make_gateway: Callable[..., Any]) -> Gateway:
    return await make_gateway()  # type: ignore[no-any-return]


def ws_url(gw: Gateway) -> str:
    return f"ws://127.0.0.1:{gw.port}{gw.settings.path}"


def token(user: str = "alice", roles: tuple[str, ...] = ("operator",), **kwargs: Any) -> str:
    return mint_token(JWT_SECRET, user, roles=roles, **kwargs)
