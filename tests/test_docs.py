"""The documentation keeps up with the code: every Redis name is in docs/architecture.md."""

from __future__ import annotations

import inspect

from shared.keys import Keys
from tests.helpers import ROOT

PLACEHOLDERS = {
    "topic": "{topic}",
    "runner_id": "{rid}",
    "agent_id": "{aid}",
    "user_id": "{uid}",
    "gateway_id": "{gid}",
    "session_id": "{sid}",
    "collector_id": "{id}",
    "second": "{second}",
    "window": "{window}",
    "ip_key": "{ip}",
}


def documented_names() -> list[str]:
    keys = Keys("{p}")
    names = []
    for name, member in inspect.getmembers(Keys):
        if name.startswith("_"):
            continue
        if isinstance(member, property):
            names.append(getattr(keys, name))
        elif inspect.isfunction(member):
            params = list(inspect.signature(member).parameters)[1:]
            names.append(getattr(keys, name)(*(PLACEHOLDERS[p] for p in params)))
    return names


def test_every_redis_name_is_documented() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    missing = [n for n in documented_names() if f"`{n}`" not in text and n != "{p}:ch:"]
    assert not missing, f"add these Redis names to docs/architecture.md: {missing}"
