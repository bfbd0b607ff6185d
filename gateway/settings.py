"""Gateway settings, read once from the environment (see the README's table)."""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path

from shared.settings import CommonSettings, ConfigError, Env
from shared.tokens import load_or_create_dev_secret


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    common: CommonSettings
    host: str
    port: int
    #: Let several gateway processes listen on one port (SO_REUSEPORT).
    reuse_port: bool
    path: str
    gateway_id: str
    jwt_key: str
    jwt_algorithms: tuple[str, ...]
    auth_timeout_s: float
    heartbeat_interval_s: float
    max_message_bytes: int
    #: Seconds the gateway waits for a runner's answer before SERVICE_UNAVAILABLE.
    runner_reply_timeout_s: float
    #: A runner whose heartbeat is older than this is considered gone.
    runner_ttl_s: float
    #: Operators see (and subscribe to) only their own agents unless this is true.
    operators_see_all_agents: bool
    messages_per_second: int
    max_subscriptions: int
    agent_commands_per_second: int
    #: Idle seconds after which a session can no longer be resumed.
    session_ttl_s: int
    #: Bytes waiting to be sent to one connection before it is closed with 1013.
    send_buffer_bytes: int
    #: Seconds between two batched writes of the delivered cursors.
    cursor_flush_interval_s: float

    @classmethod
    def from_env(cls, env: Env | None = None) -> GatewaySettings:
        env = env or Env()
        common = CommonSettings.from_env(env)
        path = env.str("TEAMDASH_GATEWAY_PATH", "/ws")
        if not path.startswith("/"):
            raise ConfigError(f"TEAMDASH_GATEWAY_PATH must start with '/', not {path!r}")
        return cls(
            common=common,
            host=env.str("TEAMDASH_GATEWAY_HOST", "127.0.0.1"),
            port=env.int("TEAMDASH_GATEWAY_PORT", 3001, min=0),
            reuse_port=env.bool("TEAMDASH_GATEWAY_REUSE_PORT", False),
            path=path,
            gateway_id=env.str(
                "TEAMDASH_GATEWAY_ID", f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"
            ),
            jwt_key=jwt_secret(env, common.state_dir),
            jwt_algorithms=("HS256",),
            auth_timeout_s=env.float("TEAMDASH_AUTH_TIMEOUT_S", 5.0, min=0.1),
            heartbeat_interval_s=env.float("TEAMDASH_HEARTBEAT_INTERVAL_S", 30.0, min=0.1),
            max_message_bytes=env.int("TEAMDASH_MAX_MESSAGE_BYTES", 1024 * 1024, min=1024),
            runner_reply_timeout_s=env.float("TEAMDASH_RUNNER_REPLY_TIMEOUT_S", 15.0, min=0.1),
            runner_ttl_s=env.float("TEAMDASH_RUNNER_TTL_S", 6.0, min=0.1),
            operators_see_all_agents=env.bool("TEAMDASH_OPERATORS_SEE_ALL_AGENTS", False),
            messages_per_second=env.int("TEAMDASH_MESSAGES_PER_SECOND", 100, min=1),
            max_subscriptions=env.int("TEAMDASH_MAX_SUBSCRIPTIONS", 100, min=1),
            agent_commands_per_second=env.int("TEAMDASH_AGENT_COMMANDS_PER_SECOND", 10, min=1),
            session_ttl_s=env.int("TEAMDASH_SESSION_TTL_S", 3600, min=1),
            send_buffer_bytes=env.int("TEAMDASH_SEND_BUFFER_BYTES", 4 * 1024 * 1024, min=64 * 1024),
            cursor_flush_interval_s=env.float("TEAMDASH_CURSOR_FLUSH_INTERVAL_S", 1.0, min=0.05),
        )


def jwt_secret(env: Env, state_dir: Path) -> str:
    """``TEAMDASH_JWT_SECRET``, or the content of the file ``TEAMDASH_JWT_SECRET_FILE`` names
    (a compose/Kubernetes secret), or the dev secret kept in the state folder (created once)."""
    secret = env.opt_str("TEAMDASH_JWT_SECRET")
    secret_file = env.opt_str("TEAMDASH_JWT_SECRET_FILE")
    if secret is not None and secret_file is not None:
        raise ConfigError("set TEAMDASH_JWT_SECRET or TEAMDASH_JWT_SECRET_FILE, not both")
    if secret_file is not None:
        try:
            secret = Path(secret_file).read_text().strip()
        except OSError as e:
            raise ConfigError(f"TEAMDASH_JWT_SECRET_FILE {secret_file!r} cannot be read: {e}") from e
        if len(secret) < 32:
            raise ConfigError("the secret in TEAMDASH_JWT_SECRET_FILE must be at least 32 characters")
        return secret
    if secret is not None:
        if len(secret) < 32:
            raise ConfigError("TEAMDASH_JWT_SECRET must be at least 32 characters")
        return secret
    return load_or_create_dev_secret(state_dir)
