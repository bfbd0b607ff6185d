"""Gateway settings, read once from the environment (see the README's table)."""

from __future__ import annotations

import ipaddress
import os
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path

from gateway.guard import normalize_origin
from shared.settings import CommonSettings, ConfigError, Env
from shared.tokens import (
    ALGORITHMS,
    ASYMMETRIC_ALGORITHMS,
    KeyConfigError,
    jwt_secret,
    load_public_key,
)

__all__ = ["GatewaySettings", "jwt_key", "jwt_secret"]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    common: CommonSettings
    host: str
    port: int
    #: Let several gateway processes listen on one port (SO_REUSEPORT).
    reuse_port: bool
    path: str
    gateway_id: str
    #: The HS256 secret, or for RS256/ES256 the PEM public key.
    jwt_key: str
    jwt_algorithms: tuple[str, ...]
    #: Required ``iss`` / ``aud`` claims (None = not checked).
    jwt_issuer: str | None
    jwt_audience: str | None
    #: Seconds before a live connection's token expires at which it is warned.
    token_expiry_warning_s: float
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
    #: Messages per second per user and per client IP, counted across all gateways.
    user_messages_per_second: int
    ip_messages_per_second: int
    #: New WebSocket connections per minute per client IP, across all gateways (0 = off).
    ip_connections_per_minute: int
    #: Seconds between two syncs of the local message counters with Redis.
    rate_limit_sync_interval_s: float
    #: Peers whose X-Forwarded-For is believed (load balancers); empty = none.
    trusted_proxies: tuple[IPNetwork, ...]
    #: Browser origins allowed to open a WebSocket; None = any (``*`` or unset).
    allowed_origins: frozenset[str] | None
    #: Serve wss:// with this certificate chain and key (TLS 1.3 minimum); None = plain ws://.
    tls_cert_file: Path | None
    tls_key_file: Path | None
    #: A ``system:alert`` (category security) when this many security events happen
    #: within ``security_alert_window_s`` on one gateway; at most one per cooldown.
    security_alert_threshold: int
    security_alert_window_s: float
    security_alert_cooldown_s: float
    #: Seconds between runner heartbeats (the runners' setting, read here too): a runner's
    #: heartbeat may be this late on top of its TTL.
    runner_heartbeat_s: float = 2.0
    #: Seconds without a ``metrics:update`` after which the collector is announced silent.
    collector_silence_s: float = 5.0

    @property
    def scheme(self) -> str:
        return "wss" if self.tls_cert_file is not None else "ws"

    @classmethod
    def from_env(cls, env: Env | None = None) -> GatewaySettings:
        env = env or Env()
        common = CommonSettings.from_env(env)
        path = env.str("TEAMDASH_GATEWAY_PATH", "/ws")
        if not path.startswith("/"):
            raise ConfigError(f"TEAMDASH_GATEWAY_PATH must start with '/', not {path!r}")
        algorithm = env.str("TEAMDASH_JWT_ALGORITHM", "HS256").upper()
        if algorithm not in ALGORITHMS:
            raise ConfigError(
                f"TEAMDASH_JWT_ALGORITHM must be one of {', '.join(ALGORITHMS)}, not {algorithm!r}"
            )
        tls_cert = env.opt_str("TEAMDASH_TLS_CERT_FILE")
        tls_key = env.opt_str("TEAMDASH_TLS_KEY_FILE")
        if (tls_cert is None) != (tls_key is None):
            raise ConfigError(
                "set both TEAMDASH_TLS_CERT_FILE and TEAMDASH_TLS_KEY_FILE, or neither"
            )
        for name, value in (
            ("TEAMDASH_TLS_CERT_FILE", tls_cert),
            ("TEAMDASH_TLS_KEY_FILE", tls_key),
        ):
            if value is not None and not os.access(value, os.R_OK):
                raise ConfigError(f"{name} {value!r} cannot be read")
        return cls(
            common=common,
            host=env.str("TEAMDASH_GATEWAY_HOST", "127.0.0.1"),
            port=env.int("TEAMDASH_GATEWAY_PORT", 3001, min=0),
            reuse_port=env.bool("TEAMDASH_GATEWAY_REUSE_PORT", False),
            path=path,
            gateway_id=env.str(
                "TEAMDASH_GATEWAY_ID",
                f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}",
            ),
            jwt_key=jwt_key(env, common.state_dir, algorithm),
            jwt_algorithms=(algorithm,),
            jwt_issuer=env.opt_str("TEAMDASH_JWT_ISSUER"),
            jwt_audience=env.opt_str("TEAMDASH_JWT_AUDIENCE"),
            token_expiry_warning_s=env.float("TEAMDASH_TOKEN_EXPIRY_WARNING_S", 60.0, min=0.0),
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
            user_messages_per_second=env.int("TEAMDASH_USER_MESSAGES_PER_SECOND", 300, min=1),
            ip_messages_per_second=env.int("TEAMDASH_IP_MESSAGES_PER_SECOND", 500, min=1),
            ip_connections_per_minute=env.int("TEAMDASH_IP_CONNECTIONS_PER_MINUTE", 120, min=0),
            rate_limit_sync_interval_s=env.float(
                "TEAMDASH_RATE_LIMIT_SYNC_INTERVAL_S", 0.1, min=0.01
            ),
            trusted_proxies=trusted_proxies(env),
            allowed_origins=allowed_origins(env),
            tls_cert_file=Path(tls_cert) if tls_cert is not None else None,
            tls_key_file=Path(tls_key) if tls_key is not None else None,
            security_alert_threshold=env.int("TEAMDASH_SECURITY_ALERT_THRESHOLD", 20, min=1),
            security_alert_window_s=env.float("TEAMDASH_SECURITY_ALERT_WINDOW_S", 10.0, min=0.1),
            security_alert_cooldown_s=env.float(
                "TEAMDASH_SECURITY_ALERT_COOLDOWN_S", 60.0, min=0.0
            ),
            runner_heartbeat_s=env.float("TEAMDASH_RUNNER_HEARTBEAT_S", 2.0, min=0.05),
            collector_silence_s=env.float("TEAMDASH_COLLECTOR_SILENCE_S", 5.0, min=0.5),
        )


def jwt_key(env: Env, state_dir: Path, algorithm: str) -> str:
    """The verification key for ``algorithm``: the HS256 secret (:func:`jwt_secret`), or the
    PEM public key in ``TEAMDASH_JWT_PUBLIC_KEY_FILE`` for RS256/ES256 (checked now, so a
    wrong key stops the gateway at start-up instead of refusing every token)."""
    key_file = env.opt_str("TEAMDASH_JWT_PUBLIC_KEY_FILE")
    if algorithm not in ASYMMETRIC_ALGORITHMS:
        if key_file is not None:
            raise ConfigError(
                "TEAMDASH_JWT_PUBLIC_KEY_FILE is for TEAMDASH_JWT_ALGORITHM=RS256 or ES256, "
                f"not {algorithm}"
            )
        return jwt_secret(env, state_dir)
    if key_file is None:
        raise ConfigError(f"TEAMDASH_JWT_ALGORITHM={algorithm} needs TEAMDASH_JWT_PUBLIC_KEY_FILE")
    try:
        pem = Path(key_file).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"TEAMDASH_JWT_PUBLIC_KEY_FILE {key_file!r} cannot be read: {e}") from e
    try:
        load_public_key(pem, algorithm)
    except KeyConfigError as e:
        raise ConfigError(f"TEAMDASH_JWT_PUBLIC_KEY_FILE {key_file!r}: {e}") from e
    return pem


def trusted_proxies(env: Env) -> tuple[IPNetwork, ...]:
    """``TEAMDASH_TRUSTED_PROXIES``: comma-separated addresses or CIDR networks."""
    out = []
    for part in env.list("TEAMDASH_TRUSTED_PROXIES"):
        try:
            out.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ConfigError(
                f"TEAMDASH_TRUSTED_PROXIES: {part!r} is not an IP address or CIDR network"
            ) from None
    return tuple(out)


def allowed_origins(env: Env) -> frozenset[str] | None:
    """``TEAMDASH_ALLOWED_ORIGINS``: comma-separated origins (``https://dash.example.com``);
    unset or ``*`` = any origin."""
    values = env.list("TEAMDASH_ALLOWED_ORIGINS")
    if not values or "*" in values:
        if len(values) > 1:
            raise ConfigError("TEAMDASH_ALLOWED_ORIGINS: '*' cannot be combined with other origins")
        return None
    out = set()
    for value in values:
        origin = normalize_origin(value)
        if origin is None:
            raise ConfigError(
                f"TEAMDASH_ALLOWED_ORIGINS: {value!r} is not an origin like https://dash.example.com"
            )
        out.add(origin)
    return frozenset(out)
