"""Plain line tools: the command and a newline in, text out as it is.

The end of a turn is a stdout line matching ``completion_regex`` (none: not detectable);
a line, or text left without a newline (a prompt), matching ``prompt_regex`` means the tool
waits for a reply: an ``input_request`` event, answered by the next ``agent:command``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from agent_runner.drivers.base import DriverError, Reading, clip
from shared.protocol import InputRequestEvent, TurnEndEvent


class LineTool:
    """Driver core for line-oriented tools (see the module docstring)."""

    passthrough = True

    def __init__(
        self,
        *,
        completion: re.Pattern[str] | None = None,
        prompt: re.Pattern[str] | None = None,
        multiline: bool = False,
    ) -> None:
        self._completion = completion
        self._prompt = prompt
        self.multiline = multiline
        self.detects_turns = completion is not None

    @staticmethod
    def launch_args(mode: str | None, tools: Sequence[str], prompts: bool) -> list[str]:
        return []

    def frame(self, command: str) -> bytes:
        return command.encode("utf-8") + b"\n"

    def answer(self, request_id: str, *, allow: bool, message: str | None) -> tuple[bytes, str]:
        raise DriverError("this model's tool has no permission prompts")

    def read(self, line: str) -> Reading:
        reading = Reading()
        text = line.rstrip("\r\n")
        if self._completion is not None and self._completion.search(text):
            reading.turn_end = TurnEndEvent(kind="turn_end", success=True)
            reading.show("", reading.turn_end)
        elif self._prompt is not None and self._prompt.search(text):
            self._ask(text, reading)
        return reading

    def read_partial(self, text: str) -> Reading:
        reading = Reading()
        if self._prompt is not None and self._prompt.search(text):
            self._ask(text, reading)
        return reading

    @staticmethod
    def _ask(text: str, reading: Reading) -> None:
        reading.show("", InputRequestEvent(kind="input_request", prompt=clip(text)))
