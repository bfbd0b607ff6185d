"""The Codex CLI (``codex exec --json``): one process per command, its session resumed.

``codex exec`` reads its prompt until end of input and exits after one turn, so the agent's
program is :mod:`agent_runner.drivers.codex_shim` (stdlib only), which runs one ``codex
exec … -`` per command (``codex exec … resume <thread_id> -`` after the first), with the
prompt on its stdin. Commands reach the shim as one JSON line ``{"prompt": …}`` each.

Codex's JSONL (documented in its ``docs/exec.md``; lines in ``tests/agents/codex.py``):
``thread.started`` (``thread_id``), ``turn.started``, ``item.started`` / ``item.completed``
with an ``item`` of type ``agent_message`` (``text``), ``reasoning``, ``command_execution``
(``command``, ``aggregated_output``, ``exit_code``), ``file_change`` (``changes``),
``mcp_tool_call``, ``web_search``, ``todo_list``, ``error``; ``turn.completed`` (``usage``),
``turn.failed`` (``error.message``) and ``error`` (``message``, e.g. ``Reconnecting... 2/5
(…)`` while the API is unreachable). The shim adds ``teamdash.exited`` when a ``codex``
process ended without ending its turn.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from agent_runner.drivers.base import (
    API_ERROR,
    API_UNREACHABLE,
    AUTH_REQUIRED,
    RATE_LIMITED,
    RETRY_STORM_ATTEMPTS,
    TURN_FAILED,
    DriverError,
    Failure,
    Reading,
    clip,
    first_line,
    json_line,
)
from shared.protocol import (
    NoticeEvent,
    RetryEvent,
    SessionEvent,
    TextEvent,
    ToolCallEvent,
    ToolResultEvent,
    TurnEndEvent,
    TurnUsage,
)

_RECONNECTING = re.compile(r"Reconnecting\.\.\. (\d+)/(\d+)")
_AUTH = re.compile(r"\b401\b|unauthori[sz]ed|not logged in|log ?in|api key", re.IGNORECASE)
_RATE = re.compile(r"\b429\b|rate limit|too many requests|quota", re.IGNORECASE)
LOGIN_HINT = (
    "An operator must give the runner credentials for it: OPENAI_API_KEY or CODEX_API_KEY "
    '(a compose secret; see docs/agents.md, "Credentials")'
)


def _classify(message: str) -> str:
    if _AUTH.search(message):
        return AUTH_REQUIRED
    if _RATE.search(message):
        return RATE_LIMITED
    return API_ERROR


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class Codex:
    """Driver core for ``codex exec --json`` behind the shim (see the module docstring)."""

    passthrough = False
    multiline = True
    detects_turns = True
    awaiting_reply = False

    def __init__(self) -> None:
        self._reported: list[str] = []

    @staticmethod
    def launch_args(mode: str | None, tools: Sequence[str], prompts: bool) -> list[str]:
        """``mode`` is Codex's sandbox (``read-only``, ``workspace-write``,
        ``danger-full-access``); ``codex exec`` never asks, so there are no prompts."""
        if tools:
            raise DriverError("codex has no per-tool allow-list: use a sandbox mode")
        return ["--sandbox", mode] if mode else []

    def frame(self, command: str) -> bytes:
        return orjson.dumps({"prompt": command}) + b"\n"

    def answer(self, request_id: str, *, allow: bool, message: str | None) -> tuple[bytes, str]:
        raise DriverError("codex exec never waits for a permission decision")

    def read_partial(self, text: str) -> Reading:
        return Reading()

    def _fail(self, reading: Reading, code: str, message: str) -> None:
        if code not in self._reported:
            self._reported.append(code)
            reading.failures.append(Failure(code, message))

    def read(self, line: str) -> Reading:
        reading = Reading()
        doc = json_line(line, reading)
        if doc is None:
            return reading
        kind = doc.get("type")
        if kind == "thread.started":
            event = SessionEvent(kind="session", sessionId=doc.get("thread_id"))
            reading.show(f"[session] codex thread {event.sessionId}", event)
        elif kind in ("item.started", "item.completed"):
            item = doc.get("item")
            if isinstance(item, Mapping):
                self._item(item, kind == "item.completed", reading)
        elif kind == "error":
            self._error(str(doc.get("message", "")), reading)
        elif kind == "turn.completed":
            usage = doc.get("usage")
            self._end(reading, None, usage if isinstance(usage, Mapping) else None)
        elif kind == "turn.failed":
            error = doc.get("error")
            message = error.get("message") if isinstance(error, Mapping) else None
            self._end(reading, str(message or "the turn failed"), None)
        elif kind == "teamdash.exited":
            stderr = str(doc.get("stderr") or "")
            said = first_line(stderr) or f"exit code {doc.get('exitCode')}"
            self._end(reading, f"codex exited before ending its turn: {said}", None)
        if not reading.shown:
            reading.show("", NoticeEvent(kind="notice"))
        return reading

    def _item(self, item: Mapping[str, Any], completed: bool, reading: Reading) -> None:
        itype = item.get("type")
        item_id = str(item.get("id")) if item.get("id") else None
        if itype == "agent_message" and completed:
            text = str(item.get("text", ""))
            reading.show(text, TextEvent(kind="text", text=text))
        elif itype == "command_execution":
            command = clip(str(item.get("command", "")))
            if not completed:
                event = ToolCallEvent(
                    kind="tool_call", toolUseId=item_id, name="shell", summary=command
                )
                reading.show(f"[tool] shell {command}", event)
            else:
                ok = _int(item.get("exit_code")) == 0
                summary = first_line(str(item.get("aggregated_output", ""))) or command
                result = ToolResultEvent(
                    kind="tool_result", toolUseId=item_id, success=ok, summary=summary
                )
                reading.show(f"[tool {'ok' if ok else 'failed'}] {summary}", result)
        elif itype == "file_change" and completed:
            changes = item.get("changes")
            paths = [
                f"{c.get('kind', 'update')} {c.get('path')}"
                for c in (changes if isinstance(changes, list) else [])
                if isinstance(c, Mapping)
            ]
            summary = clip(", ".join(paths))
            ok = item.get("status") != "failed"
            reading.show(
                f"[tool] edit {summary}",
                ToolCallEvent(kind="tool_call", toolUseId=item_id, name="edit", summary=summary),
            )
            reading.show(
                f"[tool {'ok' if ok else 'failed'}] {summary}",
                ToolResultEvent(kind="tool_result", toolUseId=item_id, success=ok, summary=summary),
            )
        elif itype == "mcp_tool_call" and not completed:
            name = f"{item.get('server')}.{item.get('tool')}"
            event = ToolCallEvent(kind="tool_call", toolUseId=item_id, name=name, summary="")
            reading.show(f"[tool] {name}", event)
        elif itype == "web_search" and not completed:
            query = clip(str(item.get("query", "")))
            event = ToolCallEvent(
                kind="tool_call", toolUseId=item_id, name="web_search", summary=query
            )
            reading.show(f"[tool] web_search {query}", event)
        elif itype == "error" and completed:
            reading.show(f"[notice] {item.get('message', '')}", NoticeEvent(kind="notice"))

    def _error(self, message: str, reading: Reading) -> None:
        retrying = _RECONNECTING.search(message)
        if retrying is not None or message.startswith("Reconnecting"):
            attempt = int(retrying.group(1)) if retrying else 0
            total = int(retrying.group(2)) if retrying else None
            event = RetryEvent(kind="retry", attempt=attempt, maxRetries=total, error=message)
            reading.show(f"[retry] {message}", event)
            code = _classify(message)
            if code == AUTH_REQUIRED:
                self._fail(reading, code, f"Codex's credentials were refused. {LOGIN_HINT}.")
            elif code == RATE_LIMITED:
                self._fail(reading, code, f"Codex is rate-limited by the API: {clip(message)}")
            elif attempt >= RETRY_STORM_ATTEMPTS:
                self._fail(
                    reading,
                    API_UNREACHABLE,
                    f"Codex cannot reach its API ({clip(message)}); check the runner's "
                    "network, proxy or OPENAI_BASE_URL.",
                )
            return
        reading.show(f"[error] {message}", NoticeEvent(kind="notice"))
        code = _classify(message)
        hint = f" {LOGIN_HINT}." if code == AUTH_REQUIRED else ""
        self._fail(reading, code, f"Codex reported an error: {clip(message)}.{hint}")

    def _end(self, reading: Reading, error: str | None, usage: Mapping[str, Any] | None) -> None:
        code: str | None = None
        if error is not None:
            code = self._reported[0] if self._reported else _classify(error)
            if code == API_ERROR and not self._reported:
                code = TURN_FAILED
            hint = f" {LOGIN_HINT}." if code == AUTH_REQUIRED else ""
            self._fail(reading, code, f"Codex's turn failed: {clip(error)}.{hint}")
        end = TurnEndEvent(
            kind="turn_end",
            success=error is None,
            usage=TurnUsage(
                inputTokens=_int(usage.get("input_tokens")),
                outputTokens=_int(usage.get("output_tokens")),
                cachedInputTokens=_int(usage.get("cached_input_tokens")),
            )
            if usage is not None
            else None,
            errorCode=code,
            error=clip(error) if error is not None else None,
        )
        self._reported = []
        reading.turn_end = end
        if error is not None:
            reading.show(f"[failed] {end.error}", end)
        elif end.usage is not None:
            u = end.usage
            reading.show(f"[done] {u.inputTokens or 0} in / {u.outputTokens or 0} out tokens", end)
        else:
            reading.show("[done]", end)
