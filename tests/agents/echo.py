"""Fixture agent: echoes each stdin line, then a completion marker.

Plain mode (framing "line"): prints ``echo: <line>`` then ``__DONE__``.
``--json`` (framing "stream-json"): reads Claude-style user turns, prints an assistant
event and a ``{"type":"result"}`` line, like the Claude Code CLI in pipe mode.
"""

import json
import sys

JSON = "--json" in sys.argv

for line in sys.stdin:
    text = line.rstrip("\n")
    if JSON:
        turn = json.loads(text)
        said = "".join(p["text"] for p in turn["message"]["content"])
        print(
            json.dumps(
                {"type": "assistant", "message": {"content": [{"type": "text", "text": said}]}}
            )
        )
        print(json.dumps({"type": "result", "subtype": "success", "result": said}))
    else:
        print(f"echo: {text}")
        print("__DONE__")
    sys.stdout.flush()
