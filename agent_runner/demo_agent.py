"""DEMO agent shipped with teamdash — not a model, no AI behind it.

It speaks the same stdin/stdout protocol as the Claude Code CLI in stream-json pipe mode
(one JSON user turn per stdin line in; JSON events out, a ``{"type":"result"}`` line per
turn), so the whole dashboard flow can be shown without an external CLI: each command is
answered with a fake tool call (it "reads" the workspace), its result, an echo of the
command and the end of the turn — the shapes the runner turns into readable events. Stdlib
only.
"""

from __future__ import annotations

import json
import sys
import time


def _emit(event: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def _text_of(line: str) -> str:
    try:
        turn = json.loads(line)
        parts = turn["message"]["content"]
        return "".join(p.get("text", "") for p in parts if isinstance(p, dict))
    except (ValueError, KeyError, TypeError):
        return line.rstrip("\n")


def main() -> int:
    session = "demo-session"
    _emit(
        {
            "type": "system",
            "subtype": "init",
            "session_id": session,
            "model": "demo (echoes commands, no AI)",
            "permissionMode": "default",
        }
    )
    turns = 0
    for line in sys.stdin:
        if not line.strip():
            continue
        turns += 1
        text = _text_of(line)
        started = time.monotonic()
        tool_id = f"demo_tool_{turns}"
        _emit(_assistant(session, {"type": "text", "text": "[demo] Looking at the workspace…"}))
        time.sleep(0.1)
        tool_use: dict[str, object] = {
            "type": "tool_use",
            "id": tool_id,
            "name": "LS",
            "input": {"path": "."},
        }
        _emit(_assistant(session, tool_use))
        time.sleep(0.1)
        result = {"type": "tool_result", "tool_use_id": tool_id, "content": "(demo: not listed)"}
        _emit(
            {
                "type": "user",
                "message": {"role": "user", "content": [result]},
                "session_id": session,
            }
        )
        answer = f"[demo] you said: {text}"
        _emit(_assistant(session, {"type": "text", "text": answer}))
        _emit(
            {
                "type": "result",
                "subtype": "success",
                "is_error": False,
                "num_turns": turns,
                "duration_ms": int((time.monotonic() - started) * 1000),
                "total_cost_usd": 0,
                "result": answer,
                "session_id": session,
            }
        )
    return 0


def _assistant(session: str, block: dict[str, object]) -> dict[str, object]:
    return {
        "type": "assistant",
        "message": {"role": "assistant", "content": [block]},
        "session_id": session,
    }


if __name__ == "__main__":
    sys.exit(main())
