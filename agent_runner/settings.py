"""Settings of the agent runner, read once from the environment.

| variable | default | meaning |
|---|---|---|
| `TEAMDASH_RUNNER_ID` | `<hostname>-<pid>-<random>` | Id of this runner (heartbeat, command stream, registry `runnerId`). Set a stable id to have a restarted runner reconcile the agents its previous run left behind. |
| `TEAMDASH_RUNNER_MAX_AGENTS` | `8` | Agents this runner runs at once; it takes `agent:create` requests only while it has a free slot. |
| `TEAMDASH_MAX_AGENTS_PER_USER` | `4` | Live agents one user may have across all runners (checked atomically in Redis). |
| `TEAMDASH_WORKSPACE_ROOT` | `<state dir>/workspaces` | Folder inside which every agent workspace is resolved (created if missing). |
| `TEAMDASH_MODELS_FILE` | packaged `agent_runner/models.toml` | Model configuration (TOML): model name → program, driver, env, credentials, permissions. |
| `TEAMDASH_AGENT_HOME_ROOT` | `<state dir>/agent-homes` | Each agent's `HOME` (and so its CLI's configuration, e.g. `~/.claude`) is a fresh folder `<root>/<agentId>` here, outside its workspace, removed when the agent ends. |
| `TEAMDASH_SECRETS_DIR` | `/run/secrets` | A `pass_env` variable the runner's environment lacks is read from the file `<dir>/<name in lower case>` (a compose secret, e.g. `anthropic_api_key`). |
| `TEAMDASH_RUNNER_HEARTBEAT_S` | `2` | Seconds between heartbeats (and dead-runner checks). |
| `TEAMDASH_RUNNER_TTL_S` | `6` | Seconds after the last heartbeat at which a runner counts as dead and its agents are marked `crashed` (`runner-lost`). |
| `TEAMDASH_TERMINATE_GRACE_S` | `5` | Seconds between SIGTERM and SIGKILL when an agent is terminated without `force`. |
| `TEAMDASH_AGENT_DEFAULT_MEMORY_MB` | none | Memory limit (MB) for agents created without `resourceLimits`; none = unlimited. |
| `TEAMDASH_STATS_INTERVAL_S` | `1` | Seconds between per-agent resource samples (`{prefix}:agent-stats`). |
| `TEAMDASH_AGENT_OUTPUT_EVENTS_PER_SECOND` | `20000` | Output events (lines, or 16 KiB pieces of a line) one agent may produce per second on average, bursts of one second's worth; over it the runner reads the agent's pipe later (the agent blocks, nothing is dropped). `0` = unlimited. |
| `TEAMDASH_AGENT_OUTPUT_BYTES_PER_SECOND` | `1048576` | Output bytes one agent may produce per second on average (bursts of one second's worth), paced the same way: kept well under a subscriber's send buffer (`TEAMDASH_SEND_BUFFER_BYTES`, 4 MiB), so one agent printing without newlines cannot get subscribers closed with 1013. `0` = unlimited. |
| `TEAMDASH_RUNNER_METRICS_PORT` | not served | Port of the runner's Prometheus `/metrics` (on `TEAMDASH_METRICS_HOST`). |

Besides these, the runner reads the common settings (`REDIS_URL`, `TEAMDASH_REDIS_PREFIX`,
`TEAMDASH_STATE_DIR`, …, see :mod:`shared.settings`), and captures once, for the agents'
environment: `PATH`, `LANG` and the variables the model configuration lists in `pass_env`
(from the environment, else from a secret file). Clients never supply credentials.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from agent_runner.models import ModelConfigError, ModelRegistry, load_models
from shared.settings import CommonSettings, ConfigError, Env

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: 1 MiB/s: a second's burst is a quarter of a subscriber's default send buffer (4 MiB).
DEFAULT_OUTPUT_BYTES_PER_SECOND = 1024 * 1024


def default_runner_id() -> str:
    host = socket.gethostname().split(".")[0] or "runner"
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"


@dataclass(frozen=True, slots=True)
class RunnerSettings:
    common: CommonSettings
    runner_id: str
    max_agents: int
    max_agents_per_user: int
    workspace_root: Path
    #: Where each agent's own ``HOME`` is made (``<root>/<agentId>``).
    agent_home_root: Path
    models: ModelRegistry
    heartbeat_s: float
    ttl_s: float
    terminate_grace_s: float
    default_memory_mb: int | None
    stats_interval_s: float
    #: Port of the runner's Prometheus ``/metrics`` (None = not served).
    metrics_port: int | None
    #: Output events per second one agent may produce on average (0 = unlimited).
    output_events_per_second: int = 20_000
    #: Output bytes per second one agent may produce on average (0 = unlimited).
    output_bytes_per_second: int = DEFAULT_OUTPUT_BYTES_PER_SECOND
    #: ``PATH`` and ``LANG`` given to agents.
    agent_path: str = DEFAULT_PATH
    agent_lang: str = "C.UTF-8"
    #: Values of the models' ``pass_env`` variables, captured at start-up.
    passthrough_env: Mapping[str, str] = field(default_factory=dict)
    host: str = field(default_factory=socket.gethostname)

    @property
    def ttl_ms(self) -> int:
        return int(self.ttl_s * 1000)

    @classmethod
    def from_env(cls, env: Env) -> RunnerSettings:
        common = CommonSettings.from_env(env)
        runner_id = env.str("TEAMDASH_RUNNER_ID", "") or default_runner_id()
        if not all(c.isalnum() or c in "-_." for c in runner_id):
            raise ConfigError(
                f"TEAMDASH_RUNNER_ID may hold letters, digits, '-', '_' and '.', not {runner_id!r}"
            )
        root_text = env.opt_str("TEAMDASH_WORKSPACE_ROOT")
        root = Path(root_text).expanduser() if root_text else common.state_dir / "workspaces"
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"TEAMDASH_WORKSPACE_ROOT {root} cannot be created: {e}") from e
        home_text = env.opt_str("TEAMDASH_AGENT_HOME_ROOT")
        home_root = Path(home_text).expanduser() if home_text else common.state_dir / "agent-homes"
        try:
            home_root.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as e:
            raise ConfigError(f"TEAMDASH_AGENT_HOME_ROOT {home_root} cannot be created: {e}") from e
        secrets_dir = Path(env.str("TEAMDASH_SECRETS_DIR", "/run/secrets")).expanduser()
        models_file = env.opt_str("TEAMDASH_MODELS_FILE")
        try:
            models = load_models(Path(models_file).expanduser() if models_file else None)
        except ModelConfigError as e:
            raise ConfigError(f"TEAMDASH_MODELS_FILE: {e}") from e
        memory = env.opt_str("TEAMDASH_AGENT_DEFAULT_MEMORY_MB")
        heartbeat_s = env.float("TEAMDASH_RUNNER_HEARTBEAT_S", 2.0, min=0.05)
        ttl_s = env.float("TEAMDASH_RUNNER_TTL_S", 6.0, min=0.1)
        if ttl_s <= heartbeat_s:
            raise ConfigError(
                "TEAMDASH_RUNNER_TTL_S must be longer than TEAMDASH_RUNNER_HEARTBEAT_S"
            )
        passthrough: dict[str, str] = {}
        for name in sorted(models.pass_env_names):
            value = env.opt_str(name)
            if value is None:
                value = _secret(secrets_dir, name)
            if value is not None:
                passthrough[name] = value
        return cls(
            common=common,
            runner_id=runner_id,
            max_agents=env.int("TEAMDASH_RUNNER_MAX_AGENTS", 8, min=1),
            max_agents_per_user=env.int("TEAMDASH_MAX_AGENTS_PER_USER", 4, min=1),
            workspace_root=root.resolve(),
            agent_home_root=home_root.resolve(),
            models=models,
            heartbeat_s=heartbeat_s,
            ttl_s=ttl_s,
            terminate_grace_s=env.float("TEAMDASH_TERMINATE_GRACE_S", 5.0, min=0.0),
            default_memory_mb=(
                env.int("TEAMDASH_AGENT_DEFAULT_MEMORY_MB", 0, min=1) if memory else None
            ),
            stats_interval_s=env.float("TEAMDASH_STATS_INTERVAL_S", 1.0, min=0.05),
            metrics_port=(
                env.int("TEAMDASH_RUNNER_METRICS_PORT", 0, min=0)
                if env.raw("TEAMDASH_RUNNER_METRICS_PORT") is not None
                else None
            ),
            output_events_per_second=env.int(
                "TEAMDASH_AGENT_OUTPUT_EVENTS_PER_SECOND", 20_000, min=0
            ),
            output_bytes_per_second=env.int(
                "TEAMDASH_AGENT_OUTPUT_BYTES_PER_SECOND", DEFAULT_OUTPUT_BYTES_PER_SECOND, min=0
            ),
            agent_path=env.str("PATH", DEFAULT_PATH),
            agent_lang=env.str("LANG", "C.UTF-8"),
            passthrough_env=passthrough,
        )


def _secret(folder: Path, name: str) -> str | None:
    """The content of the secret file for variable ``name`` (trailing newline removed)."""
    path = folder / name.lower()
    try:
        return path.read_text("utf-8").rstrip("\r\n") or None
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ConfigError(f"secret {path} cannot be read: {e}") from e
