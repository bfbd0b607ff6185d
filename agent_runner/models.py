"""The model configuration: which program runs a model, and how to talk to it.

The file is TOML (``TEAMDASH_MODELS_FILE``; default: ``agent_runner/models.toml`` shipped in
the package). Each model is a table under ``[models."<name>"]``; the name is what clients
send as ``agent:create`` ``payload.model``::

    [models."claude-3-opus"]
    description = "Claude Code CLI in pipe mode"      # optional, for humans
    argv = ["claude", "-p", "--verbose", "--input-format", "stream-json",
            "--output-format", "stream-json", "--model", "opus"]
    env = { CLAUDE_CODE_ENTRYPOINT = "teamdash" }     # optional: extra environment
    pass_env = ["ANTHROPIC_API_KEY"]                  # optional: copied from the runner's env
    framing = "stream-json"                           # how a command is written to stdin
    completion = "stream-json-result"                 # how the end of a command is detected
    # completion_regex = "^DONE$"                     # only with completion = "line-regex"
    # multiline = true                                # keep newlines inside a command

``argv`` (required, non-empty list of strings) is executed directly, never through a shell;
``argv[0]`` is looked up on the agent's ``PATH``. These placeholders are replaced in ``argv``
and ``env`` values: ``{python}`` (the runner's Python interpreter), ``{package_dir}`` (the
``agent_runner`` package directory) and ``{config_dir}`` (the directory of this file).

``framing``:

* ``stream-json`` — each command is one JSON line
  ``{"type":"user","message":{"role":"user","content":[{"type":"text","text":COMMAND}]}}``,
  as the Claude Code CLI's ``--input-format stream-json`` expects;
* ``line`` (default) — the sanitized command followed by ``\\n``.

``completion``:

* ``stream-json-result`` — a stdout line that is a JSON object with ``"type": "result"``;
* ``line-regex`` — a stdout line matching ``completion_regex`` (Python ``re.search``);
* ``none`` (default) — completion is not detectable: a command's ``timeout`` is not
  enforced (the reply to the command says ``"timeoutEnforced": false``).

Completions are matched to commands in order (the oldest pending command completes first).

``multiline`` (default: true for ``stream-json``, false for ``line``): whether newlines in a
command are kept; when false they become spaces so one command is always one line.
``env`` keys and ``pass_env`` names are reserved: a client's ``environment`` may not
override them. ``pass_env`` values are read once, when the runner starts.
"""

from __future__ import annotations

import re
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Literal, get_args

import orjson

from agent_runner.errors import SpawnFailed

Framing = Literal["stream-json", "line"]
Completion = Literal["stream-json-result", "line-regex", "none"]

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_MODELS_FILE = PACKAGE_DIR / "models.toml"

_KNOWN_KEYS = frozenset(
    {
        "description",
        "argv",
        "env",
        "pass_env",
        "framing",
        "completion",
        "completion_regex",
        "multiline",
    }
)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ModelConfigError(ValueError):
    """The model configuration file is invalid (raised at start-up, never to a client)."""


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """How to run one model."""

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    pass_env: tuple[str, ...] = ()
    framing: Framing = "line"
    completion: Completion = "none"
    completion_regex: re.Pattern[str] | None = None
    multiline: bool = False
    description: str = ""

    @property
    def program(self) -> str:
        return self.argv[0]

    @property
    def reserved_env(self) -> frozenset[str]:
        """Environment names a client may not set for this model."""
        return frozenset(self.env) | frozenset(self.pass_env)

    def frame(self, command: str) -> bytes:
        """The bytes written to the agent's stdin for one (already sanitized) command."""
        if self.framing == "stream-json":
            turn = {
                "type": "user",
                "message": {"role": "user", "content": [{"type": "text", "text": command}]},
            }
            return orjson.dumps(turn) + b"\n"
        return command.encode("utf-8") + b"\n"


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
        framing = raw.get("framing", "line")
        if framing not in get_args(Framing):
            raise ModelConfigError(
                f"model {name!r}: framing must be one of {get_args(Framing)}, not {framing!r}"
            )
        completion = raw.get("completion", "none")
        if completion not in get_args(Completion):
            raise ModelConfigError(
                f"model {name!r}: completion must be one of {get_args(Completion)}, "
                f"not {completion!r}"
            )
        regex: re.Pattern[str] | None = None
        if completion == "line-regex":
            pattern = raw.get("completion_regex")
            if not isinstance(pattern, str) or not pattern:
                raise ModelConfigError(f"model {name!r}: line-regex needs completion_regex")
            try:
                regex = re.compile(pattern)
            except re.error as e:
                raise ModelConfigError(f"model {name!r}: bad completion_regex: {e}") from e
        elif "completion_regex" in raw:
            raise ModelConfigError(f"model {name!r}: completion_regex needs line-regex")
        multiline = raw.get("multiline", framing == "stream-json")
        if not isinstance(multiline, bool):
            raise ModelConfigError(f"model {name!r}: multiline must be true or false")
        description = raw.get("description", "")
        if not isinstance(description, str):
            raise ModelConfigError(f"model {name!r}: description must be text")
        models[name] = ModelSpec(
            name=name,
            argv=tuple(_substitute(a, placeholders) for a in argv),
            env={k: _substitute(v, placeholders) for k, v in env_raw.items()},
            pass_env=pass_env,
            framing=framing,
            completion=completion,
            completion_regex=regex,
            multiline=multiline,
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
