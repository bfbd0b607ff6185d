"""Fixture agent: the Claude Code CLI's stream-json pipe-mode contract (lines captured from
the real CLI, version 2.1.332, trimmed of fields teamdash does not read).

Options read as the CLI does: ``--permission-mode``, ``--allowedTools``,
``--permission-prompt-tool stdio``. Not logged in (no ``ANTHROPIC_API_KEY`` nor
``CLAUDE_CODE_OAUTH_TOKEN``) every turn answers as the real CLI does. Logged in, the
command's text picks the scenario:

* ``write <file>``: text, a ``Write`` tool call; allowed (``acceptEdits`` or ``Write`` in
  ``--allowedTools``): the file is written and the result says so; with the stdio prompt
  tool: a ``can_use_tool`` control request, then the answer read on stdin decides; else:
  ``permission_denied``;
* ``retry <n>``: ``n`` ``api_retry`` lines (no network), then the turn fails;
* ``rate-limit``: ``api_retry`` lines with HTTP 429, then success;
* anything else: the text back, and a successful ``result``.
"""

import json
import os
import sys
import uuid

args = sys.argv[1:]


def option(name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


SESSION = str(uuid.uuid4())
MODE = option("--permission-mode") or "default"
ALLOWED = (option("--allowedTools") or "").replace(",", " ").split()
PROMPTS = option("--permission-prompt-tool") == "stdio"
LOGGED_IN = bool(os.environ.get("ANTHROPIC_API_KEY") or os.environ.get("CLAUDE_CODE_OAUTH_TOKEN"))
USAGE = {"input_tokens": 12, "cache_read_input_tokens": 0, "output_tokens": 5}


def emit(doc: dict) -> None:
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()


def assistant(block: dict, **extra: object) -> None:
    emit(
        {
            "type": "assistant",
            "message": {
                "id": "msg_0",
                "type": "message",
                "role": "assistant",
                "model": "claude-sonnet-5-5",
                "content": [block],
                "stop_reason": None,
            },
            "parent_tool_use_id": None,
            "session_id": SESSION,
            **extra,
        }
    )


def tool_result(content: str, *, error: bool) -> None:
    block = {"type": "tool_result", "content": content, "tool_use_id": "toolu_01"}
    if error:
        block["is_error"] = True
    emit(
        {
            "type": "user",
            "message": {"role": "user", "content": [block]},
            "parent_tool_use_id": None,
            "session_id": SESSION,
        }
    )


def result(text: str, *, error: bool = False, cost: float = 0.000398) -> None:
    emit(
        {
            "duration_api_ms": 165,
            "stop_reason": "end_turn",
            "session_id": SESSION,
            "total_cost_usd": 0 if error else cost,
            "usage": USAGE,
            "permission_denials": [],
            "terminal_reason": "api_error" if error else "completed",
            "is_error": error,
            "num_turns": 1,
            "subtype": "success",
            "result": text,
            "type": "result",
            "duration_ms": 976,
        }
    )


def retry(attempt: int, status: int | None, error: str) -> None:
    emit(
        {
            "type": "system",
            "subtype": "api_retry",
            "attempt": attempt,
            "max_retries": 10,
            "retry_delay_ms": 586 * attempt,
            "error_status": status,
            "error": error,
            "session_id": SESSION,
            "uuid": str(uuid.uuid4()),
        }
    )


def write(path: str) -> None:
    assistant({"type": "text", "text": "I'll create the file."})
    tool_input = {"file_path": os.path.abspath(path), "content": "hi\n"}
    assistant({"type": "tool_use", "id": "toolu_01", "name": "Write", "input": tool_input})
    allowed = MODE in ("acceptEdits", "bypassPermissions") or "Write" in ALLOWED
    if not allowed and PROMPTS:
        request_id = str(uuid.uuid4())
        emit(
            {
                "type": "control_request",
                "request_id": request_id,
                "request": {
                    "subtype": "can_use_tool",
                    "tool_name": "Write",
                    "display_name": "Write",
                    "input": tool_input,
                    "description": os.path.basename(path),
                    "permission_suggestions": [
                        {"type": "setMode", "mode": "acceptEdits", "destination": "session"}
                    ],
                    "tool_use_id": "toolu_01",
                },
            }
        )
        answer = json.loads(sys.stdin.readline())
        assert answer["type"] == "control_response", answer
        response = answer["response"]
        assert response["request_id"] == request_id, answer
        decision = response["response"]
        if decision["behavior"] == "allow":
            tool_input = decision["updatedInput"]
            allowed = True
        else:
            tool_result(decision["message"], error=True)
    elif not allowed:
        message = (
            f"Claude requested permissions to write to {tool_input['file_path']}, "
            "but you haven't granted it yet."
        )
        emit(
            {
                "type": "system",
                "subtype": "permission_denied",
                "tool_name": "Write",
                "tool_use_id": "toolu_01",
                "message": message,
                "session_id": SESSION,
            }
        )
        tool_result(message, error=True)
    if allowed:
        with open(tool_input["file_path"], "w") as f:
            f.write(tool_input["content"])
        tool_result(f"File created successfully at: {tool_input['file_path']}", error=False)
    assistant({"type": "text", "text": "Done."})
    result("Done.")


emit(
    {
        "type": "system",
        "subtype": "init",
        "cwd": os.getcwd(),
        "session_id": SESSION,
        "tools": ["Bash", "Edit", "Read", "Write"],
        "mcp_servers": [],
        "model": "claude-sonnet-5-5",
        "permissionMode": MODE,
        "apiKeySource": "ANTHROPIC_API_KEY" if LOGGED_IN else "none",
        "claude_code_version": "2.1.332",
    }
)
for line in sys.stdin:
    turn = json.loads(line)
    if turn.get("type") != "user":
        continue
    text = "".join(p["text"] for p in turn["message"]["content"])
    if not LOGGED_IN:
        said = "Not logged in · Please run /login"
        emit(
            {
                "type": "assistant",
                "message": {
                    "id": str(uuid.uuid4()),
                    "model": "<synthetic>",
                    "role": "assistant",
                    "stop_reason": "stop_sequence",
                    "type": "message",
                    "content": [{"type": "text", "text": said}],
                },
                "parent_tool_use_id": None,
                "session_id": SESSION,
                "error": "authentication_failed",
                "is_api_error_message": True,
            }
        )
        result(said, error=True)
    elif text.startswith("write "):
        write(text.split(" ", 1)[1])
    elif text.startswith("retry "):
        for attempt in range(1, int(text.split()[1]) + 1):
            retry(attempt, None, "unknown")
        result("API Error: Connection error.", error=True)
    elif text == "rate-limit":
        retry(1, 429, "rate_limit")
        retry(2, 429, "rate_limit")
        assistant({"type": "text", "text": "Finally."})
        result("Finally.")
    else:
        assistant({"type": "text", "text": f"you said: {text}"})
        result(f"you said: {text}")
