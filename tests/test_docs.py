"""The documentation keeps up with the code: every Redis name is in docs/architecture.md,
and docs/client.md's quick start runs."""

from __future__ import annotations

import asyncio
import inspect
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shared.keys import Keys
from shared.tokens import mint_token
from tests.helpers import ROOT, free_port, port_open, t, wait_for

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
    "publisher": "{publisher}",
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


def _python_blocks(doc: str) -> list[str]:
    text = (ROOT / "docs" / doc).read_text(encoding="utf-8")
    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.MULTILINE | re.DOTALL)


async def test_the_sdk_quick_start_runs_to_its_end_with_the_demo_model(
    service_env: dict[str, str], start_service: Callable[..., Any], tmp_path: Path
) -> None:
    """docs/client.md's quick start, as a reader runs it: against a real gateway and runner
    with the default models (the shipped ``demo``), it prints the answer and exits."""
    quick_start = _python_blocks("client.md")[0]
    assert "asyncio.run(main())" in quick_start
    port = free_port()
    env = {
        **service_env,
        "TEAMDASH_GATEWAY_PORT": str(port),
        "TEAMDASH_MODELS_FILE": "",  # the default models: demo is one of them
        "TEAMDASH_WORKSPACE_ROOT": str(tmp_path / "workspaces"),
    }
    start_service("gateway", env)
    start_service("runner", env)
    await wait_for(lambda: port_open(port), timeout=15, what="the gateway port")
    script = tmp_path / "quick_start.py"
    script.write_text(quick_start, encoding="utf-8")
    token = mint_token(env["TEAMDASH_JWT_SECRET"], "alice", roles=("operator",))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        cwd=ROOT,
        env={
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "TEAMDASH_TOKEN": token,
            "TEAMDASH_URL": f"ws://127.0.0.1:{port}/ws",
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), t(60))
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    text = out.decode()
    assert "[demo] you said: list the files" in text
    assert text.rstrip().endswith("agent stopped"), text[-500:]


def test_the_model_examples_of_docs_agents_md_are_valid_configuration() -> None:
    """Each ```toml block of docs/agents.md parses as the runner parses its model file; the
    aider example ends a turn on aider's prompts and asks on its confirmations."""
    from agent_runner.drivers import LineTool
    from agent_runner.models import parse_models

    doc = ROOT / "docs" / "agents.md"
    blocks = re.findall(r"```toml\n(.*?)```", doc.read_text(encoding="utf-8"), flags=re.DOTALL)
    assert len(blocks) >= 3
    models = {}
    for block in blocks:
        models.update(parse_models(block, source=doc).models)
    aider = models["aider"]
    assert aider.pty
    for prompt in ("> ", "ask> ", "architect multi> "):
        tool = aider.make_driver()
        assert isinstance(tool, LineTool)
        assert tool.read_partial(prompt).turn_end is not None, prompt
    question = "Add file to the chat? (Y)es/(N)o/(D)on't ask again [Yes]: "
    tool = aider.make_driver()
    asked = tool.read_partial(question)
    assert asked.turn_end is None and tool.awaiting_reply
