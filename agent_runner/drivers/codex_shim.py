"""The program a ``codex`` model runs: one ``codex exec`` per command (stdlib only).

Run as ``python codex_shim.py codex exec --json [options…]``. Each stdin line is a command
``{"prompt": …}``; the shim runs ``<argv> -`` (the first time) or ``<argv> resume
<thread_id> -`` (after Codex named its thread in ``thread.started``), writes the prompt to
its stdin and closes it — ``codex exec`` reads its prompt until end of input — and copies
its stdout lines to its own stdout. If that process ends without a ``turn.completed`` /
``turn.failed`` line, the shim prints ``{"type":"teamdash.exited","exitCode":…,"stderr":…}``
so the turn still ends. Codex's stderr goes to the shim's stderr as it comes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading

TURN_ENDS = ("turn.completed", "turn.failed")
STDERR_TAIL = 2000


def run_turn(argv: list[str], prompt: str, thread_id: str | None) -> str | None:
    """Run one ``codex exec``; returns the thread id Codex reported (or the old one)."""
    command = [*argv, "resume", thread_id, "-"] if thread_id else [*argv, "-"]
    try:
        child = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
    except OSError as e:
        print(json.dumps({"type": "teamdash.exited", "exitCode": None, "stderr": str(e)}))
        sys.stdout.flush()
        return thread_id
    tail: list[bytes] = []

    def copy_stderr() -> None:
        assert child.stderr is not None
        for chunk in child.stderr:
            sys.stderr.buffer.write(chunk)
            sys.stderr.flush()
            tail.append(chunk)

    copier = threading.Thread(target=copy_stderr, daemon=True)
    copier.start()
    assert child.stdin is not None and child.stdout is not None
    try:
        child.stdin.write(prompt.encode("utf-8"))
        child.stdin.close()
    except BrokenPipeError:
        pass
    ended = False
    for raw in child.stdout:
        sys.stdout.buffer.write(raw)
        sys.stdout.flush()
        try:
            doc = json.loads(raw)
        except ValueError:
            continue
        if isinstance(doc, dict):
            if doc.get("type") == "thread.started" and isinstance(doc.get("thread_id"), str):
                thread_id = doc["thread_id"]
            ended = ended or doc.get("type") in TURN_ENDS
    code = child.wait()
    copier.join(timeout=1)
    if not ended:
        stderr = b"".join(tail).decode("utf-8", "replace")[-STDERR_TAIL:]
        print(json.dumps({"type": "teamdash.exited", "exitCode": code, "stderr": stderr}))
        sys.stdout.flush()
    return thread_id


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: codex_shim.py codex exec --json [options…]", file=sys.stderr)
        return 2
    thread_id: str | None = None
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            prompt = str(json.loads(line)["prompt"])
        except (ValueError, KeyError, TypeError):
            prompt = line.rstrip("\n")
        thread_id = run_turn(argv, prompt, thread_id)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
