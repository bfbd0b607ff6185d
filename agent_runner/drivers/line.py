"""Plain line tools and terminal (PTY) tools: the command and a newline in, text out.

The end of a turn is a stdout line matching ``completion_regex`` (none: not detectable);
a line, or text left without a newline (a prompt), matching ``prompt_regex`` means the tool
waits for a reply: an ``input_request`` event, answered by the next ``agent:command`` (a
reply within the current turn, not a turn of its own).

With ``terminal`` (the model's ``pty = true``) the tool runs under a pseudo-terminal (the
keeper, :mod:`agent_runner.launch`, relays it): a command is typed (its text and Enter,
``\\r``), and each output line is published as what a terminal shows of it
(:func:`~agent_runner.drivers.terminal.render_line`: no escape sequences, ``\\r`` redraws
resolved), the line as the tool wrote it in ``raw``. Such tools leave their prompt without
a newline, so ``completion_regex`` also matches text left without one: the prompt coming
back is the end of the turn. A prompt already acted on is not acted on again when its line
goes on (the reply typed after it).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from agent_runner.drivers.base import DriverError, Reading, clip
from agent_runner.drivers.terminal import render_line
from shared.protocol import InputRequestEvent, TurnEndEvent


class LineTool:
    """Driver core for line-oriented and terminal tools (see the module docstring)."""

    def __init__(
        self,
        *,
        completion: re.Pattern[str] | None = None,
        prompt: re.Pattern[str] | None = None,
        multiline: bool = False,
        terminal: bool = False,
    ) -> None:
        self._completion = completion
        self._prompt = prompt
        self.multiline = multiline
        self.detects_turns = completion is not None
        self.awaiting_reply = False
        self.terminal = terminal
        #: Terminal output is replaced by its rendering; plain output is published as is.
        self.passthrough = not terminal
        #: The rendered start of the current line, once a match on it was acted on, and
        #: whether its text was shown then.
        self._acted: str | None = None
        self._acted_shown = False

    @staticmethod
    def launch_args(mode: str | None, tools: Sequence[str], prompts: bool) -> list[str]:
        return []

    def frame(self, command: str) -> bytes:
        self.awaiting_reply = False
        # A terminal's Enter key is a carriage return (raw-mode TUIs wait for "\r"; a
        # canonical-mode reader gets "\n" through the tty's ICRNL).
        return command.encode("utf-8") + (b"\r" if self.terminal else b"\n")

    def answer(self, request_id: str, *, allow: bool, message: str | None) -> tuple[bytes, str]:
        raise DriverError("this model's tool has no permission prompts")

    def read(self, line: str) -> Reading:
        reading = Reading()
        if not self.terminal:
            self._match(line.rstrip("\r\n"), reading, shown=False)
            return reading
        text = render_line(line)
        acted, self._acted = self._acted, None
        if acted is not None and text.startswith(acted):
            # The rest of a prompt's line (the reply typed after it): shown, not matched.
            rest = text[len(acted) :] if self._acted_shown else text
            reading.show(rest + "\n" if rest.strip() else "", None)
            return reading
        if not self._match(text, reading, shown=True):
            reading.show(text + "\n", None)
        return reading

    def read_partial(self, text: str) -> Reading:
        reading = Reading()
        if not self.terminal:
            if self._prompt is not None and self._prompt.search(text):
                self._ask(text, reading, shown=False)
            return reading
        rendered = render_line(text)
        if rendered != self._acted and self._match(rendered, reading, shown=True):
            self._acted = rendered
            self._acted_shown = reading.turn_end is None
        return reading

    def _match(self, text: str, reading: Reading, *, shown: bool) -> bool:
        """Act on a turn's end or a prompt in ``text``; False when it is neither.
        ``shown``: the text is published with the event (it is not otherwise)."""
        if self._completion is not None and self._completion.search(text):
            reading.turn_end = TurnEndEvent(kind="turn_end", success=True)
            reading.show("", reading.turn_end)
            self.awaiting_reply = False
            return True
        if self._prompt is not None and self._prompt.search(text):
            self._ask(text, reading, shown=shown)
            return True
        return False

    def _ask(self, text: str, reading: Reading, *, shown: bool) -> None:
        event = InputRequestEvent(kind="input_request", prompt=clip(text))
        reading.show(text if shown else "", event)
        self.awaiting_reply = True
