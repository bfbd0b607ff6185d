"""The Claude Code CLI in stream-json pipe mode (``claude -p --input-format stream-json
--output-format stream-json --verbose``): one long-lived process, its own session.

Its contract, as the real CLI shows it (lines in ``tests/agents/claude_code.py``, taken
from version :data:`CLAUDE_CODE_VERSION`):

* in: one JSON line per user turn ``{"type":"user","message":{"role":"user","content":
  [{"type":"text","text":…}]}}``; answers to its prompts are ``{"type":"control_response",
  …}`` lines;
* out: ``system``/``init`` (session id, model, permission mode), ``assistant`` lines (one
  content block each: ``text``, ``tool_use``, ``thinking``), ``user`` lines carrying
  ``tool_result`` blocks, ``system``/``api_retry`` per failed API attempt (``attempt``,
  ``max_retries``, ``retry_delay_ms``, ``error_status``, ``error``), and one ``result`` line
  per turn (``is_error``, ``duration_ms``, ``total_cost_usd``, ``usage``);
* failures: "Not logged in · Please run /login" is an ``assistant`` line with ``"error":
  "authentication_failed"`` and ``"is_api_error_message": true``, then a ``result`` with
  ``"is_error": true``; a bad key or no network are ``api_retry`` lines (``error``
  ``authentication_failed`` / ``rate_limit`` / ``unknown``) for minutes;
* permissions: with ``--permission-prompt-tool stdio`` a tool that needs a decision is a
  ``{"type":"control_request","request_id":…,"request":{"subtype":"can_use_tool",
  "tool_name":…,"input":…}}`` line, and the turn waits for the matching
  ``control_response`` (``behavior`` ``allow`` with ``updatedInput``, or ``deny`` with a
  ``message``). Without it, such a tool is denied (``system``/``permission_denied``).
"""

from __future__ import annotations

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
    PermissionRequestEvent,
    PermissionResolvedEvent,
    RetryEvent,
    SessionEvent,
    TextEvent,
    ToolCallEvent,
    ToolResultEvent,
    TurnEndEvent,
    TurnUsage,
)

#: The Claude Code CLI version the image installs and the CI test runs (one place).
CLAUDE_CODE_VERSION = "2.1.332"

#: Where to get credentials, said in every "not logged in" error.
LOGIN_HINT = (
    "An operator must give the runner credentials for it: ANTHROPIC_API_KEY or "
    'CLAUDE_CODE_OAUTH_TOKEN (a compose secret; see docs/agents.md, "Credentials")'
)

#: Input fields that say best what a tool call is about, in order of preference.
_SUMMARY_KEYS = (
    "file_path",
    "notebook_path",
    "path",
    "command",
    "pattern",
    "url",
    "query",
    "description",
    "prompt",
)


def summarize_input(tool_input: object) -> str:
    """A short summary of a tool's input: the path, command or pattern it is about."""
    if not isinstance(tool_input, Mapping):
        return ""
    for key in _SUMMARY_KEYS:
        value = tool_input.get(key)
        if isinstance(value, str) and value:
            return clip(value)
    for value in tool_input.values():
        if isinstance(value, str) and value:
            return clip(value)
    return clip(orjson.dumps(tool_input).decode())


def _result_text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(part.get("text", "")) for part in content if isinstance(part, Mapping))
    return ""


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _classify(error: object, status: object) -> str:
    """The stable code of an API failure the CLI named (``error``) or its HTTP status."""
    if error == "authentication_failed" or status in (401, 403):
        return AUTH_REQUIRED
    if error == "rate_limit" or status == 429:
        return RATE_LIMITED
    if error == "unknown" and status is None:
        return API_UNREACHABLE
    return API_ERROR


class ClaudeCode:
    """Driver core for the Claude Code CLI (see the module docstring)."""

    passthrough = False
    multiline = True
    detects_turns = True
    awaiting_reply = False

    def __init__(self) -> None:
        #: Open permission requests: request id → (tool name, the input to allow).
        self._prompts: dict[str, tuple[str, object]] = {}
        #: Codes already reported in this turn (each once per turn).
        self._reported: list[str] = []

    @staticmethod
    def launch_args(mode: str | None, tools: Sequence[str], prompts: bool) -> list[str]:
        """Command-line options for a permission mode, allowed tools and whether
        permission prompts come to the dashboard."""
        args: list[str] = []
        if mode:
            args += ["--permission-mode", mode]
        if tools:
            args += ["--allowedTools", ",".join(tools)]
        if prompts:
            args += ["--permission-prompt-tool", "stdio"]
        return args

    def frame(self, command: str) -> bytes:
        turn = {
            "type": "user",
            "message": {"role": "user", "content": [{"type": "text", "text": command}]},
        }
        return orjson.dumps(turn) + b"\n"

    def answer(self, request_id: str, *, allow: bool, message: str | None) -> tuple[bytes, str]:
        prompt = self._prompts.pop(request_id, None)
        if prompt is None:
            raise DriverError(f"no permission request {request_id!r} is waiting")
        tool, tool_input = prompt
        if allow:
            decision: dict[str, Any] = {"behavior": "allow", "updatedInput": tool_input}
        else:
            decision = {"behavior": "deny", "message": message or "denied from the dashboard"}
        response = {
            "type": "control_response",
            "response": {"subtype": "success", "request_id": request_id, "response": decision},
        }
        return orjson.dumps(response) + b"\n", tool

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
        if kind == "assistant":
            self._assistant(doc, reading)
        elif kind == "user":
            self._tool_results(doc, reading)
        elif kind == "result":
            self._result(doc, reading)
        elif kind == "system":
            self._system(doc, reading)
        elif kind == "control_request":
            self._control_request(doc, reading)
        elif kind == "control_cancel_request":
            request_id = str(doc.get("request_id", ""))
            if self._prompts.pop(request_id, None) is not None:
                event = PermissionResolvedEvent(
                    kind="permission_resolved", requestId=request_id, decision="cancelled"
                )
                reading.show("[permission] request withdrawn by the agent", event)
        if not reading.shown:
            # Known noise (partial-message stream events, hooks…) or an unknown type: the
            # line stays available in ``raw``, with nothing to show.
            reading.show("", NoticeEvent(kind="notice"))
        return reading

    def _assistant(self, doc: Mapping[str, Any], reading: Reading) -> None:
        message = doc.get("message")
        content = message.get("content") if isinstance(message, Mapping) else None
        blocks = [b for b in content if isinstance(b, Mapping)] if isinstance(content, list) else []
        error = doc.get("error")
        if error is not None or doc.get("is_api_error_message"):
            said = " ".join(str(b.get("text", "")) for b in blocks).strip() or str(error)
            code = _classify(error, None)
            if code == AUTH_REQUIRED:
                text = f"Claude Code is not logged in ({said}). {LOGIN_HINT}."
            else:
                text = f"Claude Code reported an API error: {said}"
            self._fail(reading, code, text)
            reading.show(f"[error] {said}", NoticeEvent(kind="notice"))
            return
        for block in blocks:
            btype = block.get("type")
            if btype == "text":
                text = str(block.get("text", ""))
                reading.show(text, TextEvent(kind="text", text=text))
            elif btype == "tool_use":
                name = str(block.get("name", "?"))
                summary = summarize_input(block.get("input"))
                event = ToolCallEvent(
                    kind="tool_call",
                    toolUseId=str(block.get("id")) if block.get("id") else None,
                    name=name,
                    summary=summary,
                )
                reading.show(f"[tool] {name} {summary}".rstrip(), event)

    def _tool_results(self, doc: Mapping[str, Any], reading: Reading) -> None:
        message = doc.get("message")
        content = message.get("content") if isinstance(message, Mapping) else None
        if not isinstance(content, list):
            return
        for block in content:
            if not isinstance(block, Mapping) or block.get("type") != "tool_result":
                continue
            ok = not block.get("is_error")
            summary = first_line(_result_text(block.get("content")))
            event = ToolResultEvent(
                kind="tool_result",
                toolUseId=str(block.get("tool_use_id")) if block.get("tool_use_id") else None,
                success=ok,
                summary=summary,
            )
            reading.show(f"[tool {'ok' if ok else 'failed'}] {summary}".rstrip(), event)

    def _system(self, doc: Mapping[str, Any], reading: Reading) -> None:
        subtype = doc.get("subtype")
        if subtype == "init":
            event = SessionEvent(
                kind="session",
                sessionId=doc.get("session_id"),
                model=doc.get("model"),
                permissionMode=doc.get("permissionMode"),
            )
            reading.show(
                f"[session] model {event.model}, permission mode {event.permissionMode}", event
            )
        elif subtype == "api_retry":
            attempt = _int(doc.get("attempt")) or 0
            status = _int(doc.get("error_status"))
            error = doc.get("error")
            retry = RetryEvent(
                kind="retry",
                attempt=attempt,
                maxRetries=_int(doc.get("max_retries")),
                delayMs=_int(doc.get("retry_delay_ms")),
                status=status,
                error=str(error) if error is not None else None,
            )
            of = f"/{retry.maxRetries}" if retry.maxRetries else ""
            delay = f" in {retry.delayMs / 1000:.1f} s" if retry.delayMs is not None else ""
            why = " ".join(str(x) for x in (status, error) if x is not None)
            reading.show(f"[retry] API call failed ({why}): attempt {attempt}{of}{delay}", retry)
            code = _classify(error, status)
            if code == AUTH_REQUIRED:
                self._fail(
                    reading,
                    code,
                    f"Claude Code's credentials were refused by the API (HTTP {status}); "
                    f"it keeps retrying. {LOGIN_HINT}.",
                )
            elif code == RATE_LIMITED:
                self._fail(
                    reading,
                    code,
                    "Claude Code is rate-limited by the API (HTTP 429); it retries "
                    f"(attempt {attempt}{of}).",
                )
            elif attempt >= RETRY_STORM_ATTEMPTS:
                self._fail(
                    reading,
                    API_UNREACHABLE if code == API_UNREACHABLE else API_ERROR,
                    f"Claude Code cannot reach its API ({why or 'no reply'}): "
                    f"{attempt} attempts so far{of and f' of {retry.maxRetries}'}; "
                    "check the runner's network, proxy or ANTHROPIC_BASE_URL.",
                )
        elif subtype == "permission_denied":
            text = str(doc.get("message") or f"{doc.get('tool_name')} was denied")
            reading.show(f"[denied] {text}", NoticeEvent(kind="notice"))

    def _result(self, doc: Mapping[str, Any], reading: Reading) -> None:
        failed = bool(doc.get("is_error"))
        usage = doc.get("usage")
        turn_usage = (
            TurnUsage(
                inputTokens=_int(usage.get("input_tokens")),
                outputTokens=_int(usage.get("output_tokens")),
                cachedInputTokens=_int(usage.get("cache_read_input_tokens")),
            )
            if isinstance(usage, Mapping)
            else None
        )
        cost = doc.get("total_cost_usd")
        error_code: str | None = None
        error: str | None = None
        if failed:
            error = clip(str(doc.get("result") or doc.get("subtype") or "the turn failed"))
            if self._reported:
                error_code = self._reported[0]
            else:
                error_code = TURN_FAILED
                self._fail(reading, TURN_FAILED, f"Claude Code's turn failed: {error}")
        end = TurnEndEvent(
            kind="turn_end",
            success=not failed,
            durationMs=_int(doc.get("duration_ms")),
            costUsd=float(cost) if isinstance(cost, int | float) else None,
            usage=turn_usage,
            errorCode=error_code,
            error=error,
        )
        self._reported = []
        reading.turn_end = end
        reading.show(_turn_text(end), end)

    def _control_request(self, doc: Mapping[str, Any], reading: Reading) -> None:
        request_id = str(doc.get("request_id", ""))
        request = doc.get("request")
        if isinstance(request, Mapping) and request.get("subtype") == "can_use_tool":
            tool = str(request.get("tool_name", "?"))
            tool_input = request.get("input", {})
            self._prompts[request_id] = (tool, tool_input)
            summary = summarize_input(tool_input)
            event = PermissionRequestEvent(
                kind="permission_request", requestId=request_id, tool=tool, summary=summary
            )
            reading.show(f"[permission] {tool} {summary}: allow or deny?", event)
            return
        # A request teamdash does not serve (hooks, MCP): say so at once, or the CLI waits.
        subtype = request.get("subtype") if isinstance(request, Mapping) else None
        refusal = {
            "type": "control_response",
            "response": {
                "subtype": "error",
                "request_id": request_id,
                "error": f"teamdash does not serve {subtype!r} requests",
            },
        }
        reading.reply = orjson.dumps(refusal) + b"\n"


def _turn_text(end: TurnEndEvent) -> str:
    if not end.success:
        return f"[failed] {end.error}"
    bits = []
    if end.durationMs is not None:
        bits.append(f"{end.durationMs / 1000:.1f} s")
    if end.costUsd is not None:
        bits.append(f"${end.costUsd:.4f}")
    if end.usage is not None and end.usage.outputTokens is not None:
        bits.append(f"{end.usage.inputTokens or 0} in / {end.usage.outputTokens} out tokens")
    return "[done] " + ", ".join(bits) if bits else "[done]"
