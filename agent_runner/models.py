"""The model configuration: which program runs a model, and which driver talks to it.

The file is TOML (``TEAMDASH_MODELS_FILE``; default: ``agent_runner/models.toml`` shipped in
the package). Each model is a table under ``[models."<name>"]``; the name is what clients
send as ``agent:create`` ``payload.model``::

    [models."claude-3-opus"]
    description = "Claude Code CLI (opus)"            # optional, for humans
    driver = "claude-code"                            # claude-code | codex | line
    argv = ["claude", "-p", "--verbose", "--input-format", "stream-json",
            "--output-format", "stream-json", "--model", "opus"]
    env = { DISABLE_AUTOUPDATER = "1" }               # optional: extra environment
    pass_env = ["ANTHROPIC_API_KEY"]                  # optional: from the runner (or a secret)
    requires = ["claude"]                             # optional: programs that must exist
    # permissions (claude-code and codex):
    permission_mode = "acceptEdits"                   # given to the CLI by default
    allowed_tools = ["Read", "Edit", "Write"]         # allowed without asking, by default
    allowed_permission_modes = ["acceptEdits", "default", "plan"]  # a client may pick one
    allowable_tools = ["Read", "Edit", "Write", "Bash(git diff:*)"] # a client may pick these
    permission_prompts = true                         # other tools: ask the dashboard
    # line driver only:
    # completion_regex = "^DONE$"                     # a stdout line that ends a turn
    # prompt_regex = "\\? \\[y/N\\] $"                  # the tool waits for a reply
    # multiline = false                               # keep newlines inside a command
    # pty = false                                     # run it under a pseudo-terminal

``driver`` (see :mod:`agent_runner.drivers`) decides how a command is written, how output is
read and how the end of a turn is detected: ``claude-code`` (stream-json in and out, one
process), ``codex`` (``argv`` runs :mod:`agent_runner.drivers.codex_shim`, one ``codex
exec`` per command), ``line`` (default; without ``completion_regex`` the end of a turn is not
detectable and a command's ``timeout`` is not enforced: its reply says
``"timeoutEnforced": false``). ``pty = true`` (line only) runs a terminal tool (one that
refuses to run without a terminal, a TUI) under a pseudo-terminal: stdin and stdout are the
terminal, output is published as what a terminal shows (see
:mod:`agent_runner.drivers.line`).

``argv`` (required, non-empty list of strings) is executed directly, never through a shell;
``argv[0]`` and every ``requires`` entry are looked up on the agent's ``PATH``. These
placeholders are replaced in ``argv`` and ``env`` values: ``{python}`` (the runner's Python
interpreter), ``{package_dir}`` (the ``agent_runner`` package directory) and
``{config_dir}`` (the directory of this file).

Permissions: the CLI gets ``permission_mode`` and ``allowed_tools`` unless the client's
``agent:create`` ``payload.permissions`` names others, which must be within
``allowed_permission_modes`` (default: just ``permission_mode``) and ``allowable_tools``
(default: just ``allowed_tools``) — the operator's allow-list. The driver turns them into the
CLI's options (``--permission-mode``/``--allowedTools`` for Claude Code, ``--sandbox`` for
Codex) appended to ``argv``. ``permission_prompts`` (claude-code, default true) routes the
CLI's permission prompts to the dashboard (``--permission-prompt-tool stdio``); off, a tool
that is not allowed is denied without asking.

``env`` keys and ``pass_env`` names are reserved: a client's ``environment`` may not
override them. ``pass_env`` values are read once, when the runner starts (see
:mod:`agent_runner.settings`).
"""

from __future__ import annotations

import re
import sys
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import get_args

from agent_runner.drivers import ClaudeCode, Codex, Driver, DriverError, DriverName, LineTool
from agent_runner.errors import SpawnFailed
from shared.protocol import AgentPermissions

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_MODELS_FILE = PACKAGE_DIR / "models.toml"

_KNOWN_KEYS = frozenset(
    {
        "description",
        "driver",
        "argv",
        "env",
        "pass_env",
        "requires",
        "permission_mode",
        "allowed_tools",
        "allowed_permission_modes",
        "allowable_tools",
        "permission_prompts",
        "completion_regex",
        "prompt_regex",
        "multiline",
        "pty",
    }
)
_LINE_ONLY = frozenset({"completion_regex", "prompt_regex", "multiline", "pty"})
_PERMISSION_KEYS = frozenset(
    {
        "permission_mode",
        "allowed_tools",
        "allowed_permission_modes",
        "allowable_tools",
        "permission_prompts",
    }
)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: Each driver's command-line options for (permission mode, allowed tools, prompts).
_LAUNCH_ARGS: dict[str, Callable[[str | None, Sequence[str], bool], list[str]]] = {
    "claude-code": ClaudeCode.launch_args,
    "codex": Codex.launch_args,
    "line": LineTool.launch_args,
}


class ModelConfigError(ValueError):
    """The model configuration file is invalid (raised at start-up, never to a client)."""


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """How to run one model."""

    name: str
    argv: tuple[str, ...]
    driver: DriverName = "line"
    env: Mapping[str, str] = field(default_factory=dict)
    pass_env: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    permission_mode: str | None = None
    allowed_tools: tuple[str, ...] = ()
    allowed_permission_modes: tuple[str, ...] = ()
    allowable_tools: tuple[str, ...] = ()
    permission_prompts: bool = False
    completion_regex: re.Pattern[str] | None = None
    prompt_regex: re.Pattern[str] | None = None
    multiline: bool = False
    #: Run under a pseudo-terminal (line driver only).
    pty: bool = False
    description: str = ""

    @property
    def program(self) -> str:
        return self.argv[0]

    @property
    def reserved_env(self) -> frozenset[str]:
        """Environment names a client may not set for this model."""
        return frozenset(self.env) | frozenset(self.pass_env)

    def make_driver(self) -> Driver:
        """A fresh driver core for one agent of this model."""
        if self.driver == "claude-code":
            return ClaudeCode()
        if self.driver == "codex":
            return Codex()
        return LineTool(
            completion=self.completion_regex,
            prompt=self.prompt_regex,
            multiline=self.multiline,
            terminal=self.pty,
        )

    def launch_argv(self, permissions: AgentPermissions | None) -> tuple[str, ...]:
        """``argv`` with the driver's permission options: the model's defaults, or what the
        client asked for within the operator's allow-list (else :class:`SpawnFailed`)."""
        mode = self.permission_mode
        tools: tuple[str, ...] = self.allowed_tools
        if permissions is not None:
            if permissions.mode is not None:
                if permissions.mode not in self.allowed_permission_modes:
                    allowed = ", ".join(self.allowed_permission_modes) or "none"
                    raise SpawnFailed(
                        f"model {self.name!r} does not allow permission mode "
                        f"{permissions.mode!r} (allowed: {allowed})"
                    )
                mode = permissions.mode
            if permissions.allowedTools is not None:
                refused = [t for t in permissions.allowedTools if t not in self.allowable_tools]
                if refused:
                    allowed = ", ".join(self.allowable_tools) or "none"
                    raise SpawnFailed(
                        f"model {self.name!r} does not allow the tools {refused} "
                        f"(allowed: {allowed})"
                    )
                tools = tuple(permissions.allowedTools)
        try:
            extra = _LAUNCH_ARGS[self.driver](mode, tools, self.permission_prompts)
        except DriverError as e:
            raise SpawnFailed(f"model {self.name!r}: {e}") from e
        return (*self.argv, *extra)


@dataclass(frozen=True, slots=True)
class ModelRegistry:
    """Every configured model, by name."""

    models: Mapping[str, ModelSpec]
    source: Path

    def get(self, name: str) -> ModelSpec:
        """The model called ``name``, or :class:`SpawnFailed` listing the known ones."""
        spec = self.models.get(name)
        if spec is None:
            known = ", ".join(sorted(self.models)) or "none"
            raise SpawnFailed(f"unknown model {name!r}; this runner knows: {known}")
        return spec

    @property
    def pass_env_names(self) -> frozenset[str]:
        names: set[str] = set()
        for spec in self.models.values():
            names.update(spec.pass_env)
        return frozenset(names)


def _substitute(text: str, placeholders: Mapping[str, str]) -> str:
    for key, value in placeholders.items():
        text = text.replace(key, value)
    return text


def _str_list(name: str, key: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ModelConfigError(f"model {name!r}: {key} must be a list of strings")
    return tuple(value)


def _regex(name: str, key: str, value: object) -> re.Pattern[str] | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ModelConfigError(f"model {name!r}: {key} must be a non-empty regex")
    try:
        return re.compile(value)
    except re.error as e:
        raise ModelConfigError(f"model {name!r}: bad {key}: {e}") from e


def parse_models(text: str, *, source: Path, python: str = sys.executable) -> ModelRegistry:
    """Parse a model configuration (TOML text). Raises :class:`ModelConfigError`."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ModelConfigError(f"{source}: not valid TOML: {e}") from e
    unknown_top = set(doc) - {"models"}
    if unknown_top:
        raise ModelConfigError(f"{source}: unknown top-level keys {sorted(unknown_top)}")
    table = doc.get("models", {})
    if not isinstance(table, dict) or not table:
        raise ModelConfigError(f"{source}: no [models.<name>] tables")
    placeholders = {
        "{python}": python,
        "{package_dir}": str(PACKAGE_DIR),
        "{config_dir}": str(source.resolve().parent),
    }
    models: dict[str, ModelSpec] = {}
    for name, raw in table.items():
        if not isinstance(raw, dict):
            raise ModelConfigError(f"{source}: models.{name} must be a table")
        unknown = set(raw) - _KNOWN_KEYS
        if unknown:
            raise ModelConfigError(f"model {name!r}: unknown keys {sorted(unknown)}")
        argv = _str_list(name, "argv", raw.get("argv"))
        if not argv or not argv[0]:
            raise ModelConfigError(f"model {name!r}: argv must not be empty")
        env_raw = raw.get("env", {})
        if not isinstance(env_raw, dict) or not all(
            isinstance(k, str) and _ENV_NAME.match(k) and isinstance(v, str)
            for k, v in env_raw.items()
        ):
            raise ModelConfigError(f'model {name!r}: env must map NAME = "text"')
        pass_env = _str_list(name, "pass_env", raw.get("pass_env", []))
        for var in pass_env:
            if not _ENV_NAME.match(var):
                raise ModelConfigError(f"model {name!r}: pass_env name {var!r} is not valid")
        driver = raw.get("driver", "line")
        if driver not in get_args(DriverName):
            raise ModelConfigError(
                f"model {name!r}: driver must be one of {get_args(DriverName)}, not {driver!r}"
            )
        if driver != "line" and _LINE_ONLY & set(raw):
            raise ModelConfigError(
                f"model {name!r}: {sorted(_LINE_ONLY & set(raw))} only apply to driver 'line'"
            )
        if driver == "line" and _PERMISSION_KEYS & set(raw):
            raise ModelConfigError(
                f"model {name!r}: {sorted(_PERMISSION_KEYS & set(raw))} need a driver with "
                "permissions (claude-code, codex)"
            )
        requires = _str_list(name, "requires", raw.get("requires", []))
        mode = raw.get("permission_mode")
        if mode is not None and (not isinstance(mode, str) or not mode):
            raise ModelConfigError(f"model {name!r}: permission_mode must be text")
        tools = _str_list(name, "allowed_tools", raw.get("allowed_tools", []))
        modes = _str_list(
            name,
            "allowed_permission_modes",
            raw.get("allowed_permission_modes", [mode] if mode else []),
        )
        if mode is not None and mode not in modes:
            raise ModelConfigError(
                f"model {name!r}: permission_mode {mode!r} is not in allowed_permission_modes"
            )
        allowable = _str_list(name, "allowable_tools", raw.get("allowable_tools", list(tools)))
        if set(tools) - set(allowable):
            raise ModelConfigError(
                f"model {name!r}: allowed_tools {sorted(set(tools) - set(allowable))} "
                "are not in allowable_tools"
            )
        prompts = raw.get("permission_prompts", driver == "claude-code")
        if not isinstance(prompts, bool):
            raise ModelConfigError(f"model {name!r}: permission_prompts must be true or false")
        if prompts and driver != "claude-code":
            raise ModelConfigError(f"model {name!r}: permission_prompts needs claude-code")
        completion = _regex(name, "completion_regex", raw.get("completion_regex"))
        prompt = _regex(name, "prompt_regex", raw.get("prompt_regex"))
        multiline = raw.get("multiline", False)
        if not isinstance(multiline, bool):
            raise ModelConfigError(f"model {name!r}: multiline must be true or false")
        pty = raw.get("pty", False)
        if not isinstance(pty, bool):
            raise ModelConfigError(f"model {name!r}: pty must be true or false")
        description = raw.get("description", "")
        if not isinstance(description, str):
            raise ModelConfigError(f"model {name!r}: description must be text")
        models[name] = ModelSpec(
            name=name,
            argv=tuple(_substitute(a, placeholders) for a in argv),
            driver=driver,
            env={k: _substitute(v, placeholders) for k, v in env_raw.items()},
            pass_env=pass_env,
            requires=requires,
            permission_mode=mode,
            allowed_tools=tools,
            allowed_permission_modes=modes,
            allowable_tools=allowable,
            permission_prompts=prompts,
            completion_regex=completion,
            prompt_regex=prompt,
            multiline=multiline,
            pty=pty,
            description=description,
        )
    return ModelRegistry(models=models, source=source)


def load_models(path: Path | None = None) -> ModelRegistry:
    """Read the model configuration from ``path`` (default: the packaged ``models.toml``)."""
    if path is None:
        text = resources.files("agent_runner").joinpath("models.toml").read_text("utf-8")
        return parse_models(text, source=DEFAULT_MODELS_FILE)
    try:
        text = path.read_text("utf-8")
    except OSError as e:
        raise ModelConfigError(f"cannot read the model configuration {path}: {e}") from e
    return parse_models(text, source=path)
