"""Drivers: how each kind of CLI is talked to (see :mod:`agent_runner.drivers.base`).

=============  ======================================================================
driver         contract
=============  ======================================================================
``claude-code`` Claude Code in stream-json pipe mode: one long-lived process
``codex``      ``codex exec --json``: one process per command, the CLI's session resumed
               (through :mod:`agent_runner.drivers.codex_shim`)
``line``       any line tool: command + newline in, text out; completion and prompts by
               regex; with ``pty``, a terminal tool (:mod:`.terminal` renders its lines)
=============  ======================================================================

A model names its driver in the model configuration (``driver = "…"``); adding a CLI with
the contract of one of these is configuration only. A new contract is a new module here
with a class that satisfies :class:`~agent_runner.drivers.base.Driver`, and its name in
:data:`DRIVER_NAMES` (docs/agents.md, "Adding a driver").
"""

from __future__ import annotations

from typing import Literal

from agent_runner.drivers.base import Driver, DriverError, Failure, Reading, Shown
from agent_runner.drivers.claude import ClaudeCode
from agent_runner.drivers.codex import Codex
from agent_runner.drivers.line import LineTool

DriverName = Literal["claude-code", "codex", "line"]
DRIVER_NAMES: tuple[DriverName, ...] = ("claude-code", "codex", "line")

__all__ = [
    "DRIVER_NAMES",
    "ClaudeCode",
    "Codex",
    "Driver",
    "DriverError",
    "DriverName",
    "Failure",
    "LineTool",
    "Reading",
    "Shown",
]
