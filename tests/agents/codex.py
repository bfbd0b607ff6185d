"""Fixture agent: the ``codex exec --json`` contract (lines as the real CLI 0.171.0 prints
them offline, and as its docs/exec.md documents the others).

``codex.py exec --json [options] [resume <thread_id>] -``: reads the prompt until end of
input, prints one turn as JSONL and exits. The thread's turns are counted in
``$HOME/.codex-fixture/<thread_id>`` so a resumed thread shows it continues. Prompts:
``run <command>`` (a command_execution item), ``offline`` (reconnecting errors, then
``turn.failed``), anything else (an agent_message).
"""

import json
import os
import sys
import uuid

args = sys.argv[1:]
assert args[:2] == ["exec", "--json"], args
assert args[-1] == "-", args
thread = args[args.index("resume") + 1] if "resume" in args else str(uuid.uuid4())
prompt = sys.stdin.read()
state = os.path.join(os.environ["HOME"], ".codex-fixture")
os.makedirs(state, exist_ok=True)
path = os.path.join(state, thread)
turn = (int(open(path).read()) if os.path.exists(path) else 0) + 1
with open(path, "w") as f:
    f.write(str(turn))


def emit(doc: dict) -> None:
    print(json.dumps(doc), flush=True)


emit({"type": "thread.started", "thread_id": thread})
emit({"type": "turn.started"})
if prompt == "offline":
    for n in range(2, 6):
        emit(
            {
                "type": "error",
                "message": f"Reconnecting... {n}/5 (stream disconnected before "
                "completion: failed to lookup address information: Name does not resolve)",
            }
        )
    emit({"type": "turn.failed", "error": {"message": "stream disconnected before completion"}})
    sys.exit(1)
if prompt.startswith("run "):
    command = prompt[4:]
    item = {
        "id": "item_1",
        "type": "command_execution",
        "command": f"bash -lc '{command}'",
        "aggregated_output": "",
        "exit_code": None,
        "status": "in_progress",
    }
    emit({"type": "item.started", "item": item})
    emit(
        {
            "type": "item.completed",
            "item": {**item, "aggregated_output": "ok\n", "exit_code": 0, "status": "completed"},
        }
    )
emit(
    {
        "type": "item.completed",
        "item": {"id": "item_2", "type": "agent_message", "text": f"turn {turn}: {prompt}"},
    }
)
emit(
    {
        "type": "turn.completed",
        "usage": {"input_tokens": 1200, "cached_input_tokens": 200, "output_tokens": 34},
    }
)
