"""DEMO agent shipped with teamdash — not a model, no AI behind it.

It speaks the same stdin/stdout protocol as the Claude Code CLI in stream-json pipe mode
(one JSON user turn per stdin line in; JSON events out, a ``{"type":"result"}`` line per
turn), so the whole dashboard flow can be shown without an external CLI: each command is
answered with a few fake "thinking" lines and an echo of the command. Stdlib only.
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
    _emit(
        {
            "type": "system",
            "subtype": "init",
            "demo": True,
            "note": "teamdash demo agent: echoes commands, no AI",
        }
    )
    turns = 0
    for line in sys.stdin:
        if not line.strip():
            continue
        turns += 1
        text = _text_of(line)
        started = time.monotonic()
        for step in ("reading the command", "pretending to think", "writing the answer"):
            _emit(
                {
                    "type": "assistant",
                    "demo": True,
                    "message": {
                        "role": "assistant",
                        "content": [{"type": "thinking", "thinking": f"[demo] {step}…"}],
                    },
                }
            )
            time.sleep(0.1)
        answer = f"[demo] you said: {text}"
        _emit(
            {
                "type": "assistant",
                "demo": True,
                "message": {"role": "assistant", "content": [{"type": "text", "text": answer}]},
            }
        )
        _emit(
            {
                "type": "result",
                "subtype": "success",
                "demo": True,
                "is_error": False,
                "num_turns": turns,
                "duration_ms": int((time.monotonic() - started) * 1000),
                "result": answer,
            }
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
