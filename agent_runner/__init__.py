"""The agent runner: owns agent OS processes, streams their output and reports their status.

Map of the package (cores without I/O first):

* :mod:`agent_runner.state`    — the agent status state machine (one transition table);
* :mod:`agent_runner.policy`   — workspace resolution, environment validation, command
  sanitizing and CPU selection (pure functions);
* :mod:`agent_runner.output`   — UTF-8-safe line splitting with flush deadlines, pacing,
  pieces joined back into lines;
* :mod:`agent_runner.drivers`  — one per CLI contract (Claude Code, Codex, line and
  terminal tools): how commands are written, output read (readable events, failures,
  prompts; a terminal's escape codes rendered away), turns end;
* :mod:`agent_runner.models`   — the model configuration file (TOML): program, driver,
  permissions;
* :mod:`agent_runner.launch`   — the per-agent keeper: applies limits, ``execvp``\\ s the
  agent (on a pseudo-terminal it relays, for ``pty`` models), kills all of it at the end;
* :mod:`agent_runner.process`  — the subprocess adapter (spawn, signal the group, verify);
* :mod:`agent_runner.agent`    — one live agent: its process, pumps, commands and events;
* :mod:`agent_runner.registry` — the agent registry in Redis (hash, sets, per-user limit);
* :mod:`agent_runner.outbox`   — batched, ordered publishing of events;
* :mod:`agent_runner.runner`   — request intake, heartbeat, stats, reconciliation;
* :mod:`agent_runner.reaper`   — marks agents of dead runners ``crashed``;
* :mod:`agent_runner.service`  — ``main(settings, stop)``.
"""
