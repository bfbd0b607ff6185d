"""Reading configuration from the environment, once, into typed settings objects.

Each service has one frozen settings dataclass (``gateway.settings.GatewaySettings``,
``agent_runner.settings.RunnerSettings``, ``metrics_collector.settings.CollectorSettings``)
built by ``from_env()`` at start-up and passed in; nothing deeper reads ``os.environ``.
This module holds the typed readers they share and the settings common to all services.
Every variable is listed in the README's configuration table.
"""

from __future__ import annotations

import builtins
import difflib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from shared.bus import EventBus, TranscriptLimits

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from shared.keys import Keys


class ConfigError(ValueError):
    """A configuration variable has a value that cannot be used."""


class Env:
    """Typed, validated access to environment variables."""

    def __init__(self, environ: Mapping[builtins.str, builtins.str] | None = None) -> None:
        self._env = os.environ if environ is None else environ
        #: Every name asked for, set or not: after a settings object's ``from_env``, the
        #: variables it knows (what :func:`unknown_variables` compares against).
        self.asked: set[builtins.str] = set()

    def raw(self, name: builtins.str) -> builtins.str | None:
        self.asked.add(name)
        value = self._env.get(name)
        return value if value not in (None, "") else None

    def str(self, name: builtins.str, default: builtins.str) -> builtins.str:
        return self.raw(name) or default

    def opt_str(self, name: builtins.str) -> builtins.str | None:
        return self.raw(name)

    def int(
        self, name: builtins.str, default: builtins.int, *, min: builtins.int | None = None
    ) -> builtins.int:
        text = self.raw(name)
        if text is None:
            return default
        try:
            value = int(text)
        except ValueError:
            raise ConfigError(f"{name} must be an integer, not {text!r}") from None
        if min is not None and value < min:
            raise ConfigError(f"{name} must be at least {min}, not {value}")
        return value

    def float(
        self, name: builtins.str, default: builtins.float, *, min: builtins.float | None = None
    ) -> builtins.float:
        text = self.raw(name)
        if text is None:
            return default
        try:
            value = float(text)
        except ValueError:
            raise ConfigError(f"{name} must be a number, not {text!r}") from None
        if min is not None and value < min:
            raise ConfigError(f"{name} must be at least {min}, not {value}")
        return value

    def bool(self, name: builtins.str, default: builtins.bool) -> builtins.bool:
        text = self.raw(name)
        if text is None:
            return default
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name} must be true or false, not {text!r}")

    def list(
        self, name: builtins.str, default: tuple[builtins.str, ...] = ()
    ) -> tuple[builtins.str, ...]:
        text = self.raw(name)
        if text is None:
            return default
        return tuple(part.strip() for part in text.split(",") if part.strip())


def default_state_dir(env: Env) -> Path:
    """Where local state lives (the generated dev JWT secret, the embedded Redis files)."""
    explicit = env.opt_str("TEAMDASH_STATE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = env.opt_str("XDG_STATE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "state"
    return base / "teamdash"


def _transcript_limits(env: Env) -> TranscriptLimits | None:
    max_events = env.int("TEAMDASH_TRANSCRIPT_MAX_EVENTS", 200_000, min=0)
    if max_events == 0:
        return None
    return TranscriptLimits(
        max_events=max_events,
        max_bytes=env.int("TEAMDASH_TRANSCRIPT_MAX_BYTES", 64 * 1024 * 1024, min=1024),
        retention_s=env.int("TEAMDASH_TRANSCRIPT_RETENTION_S", 7 * 24 * 3600, min=1),
    )


@dataclass(frozen=True, slots=True)
class CommonSettings:
    """Settings every service shares."""

    redis_url: str
    redis_prefix: str
    #: Seconds a topic's replay buffer and offset survive without a new event.
    history_ttl_s: int
    #: Events kept per topic stream (the replay buffer; at least 1000 for the spec).
    history_size: int
    #: Each agent's transcript (``agent:history``); None when transcripts are off.
    transcript: TranscriptLimits | None
    #: ``DEBUG`` namespaces, e.g. ``ws:*`` or ``ws:auth,ws:conn``.
    debug: str | None
    #: ``text`` (default) or ``json``.
    log_format: str
    state_dir: Path
    #: Interface of the runner's and collector's ``/metrics`` endpoints.
    metrics_host: str

    @classmethod
    def from_env(cls, env: Env) -> CommonSettings:
        log_format = env.str("TEAMDASH_LOG_FORMAT", "text")
        if log_format not in ("text", "json"):
            raise ConfigError(f"TEAMDASH_LOG_FORMAT must be text or json, not {log_format!r}")
        return cls(
            redis_url=env.str("REDIS_URL", "redis://127.0.0.1:6379/0"),
            redis_prefix=env.str("TEAMDASH_REDIS_PREFIX", "td"),
            history_ttl_s=env.int("TEAMDASH_HISTORY_TTL_S", 24 * 3600, min=1),
            history_size=env.int("TEAMDASH_HISTORY_SIZE", 1000, min=1),
            transcript=_transcript_limits(env),
            debug=env.opt_str("DEBUG"),
            log_format=log_format,
            state_dir=default_state_dir(env),
            metrics_host=env.str("TEAMDASH_METRICS_HOST", "127.0.0.1"),
        )

    def event_bus(self, redis: aioredis.Redis, keys: Keys) -> EventBus:
        """The event bus every service publishes with: these replay-buffer and transcript
        limits (a transcript written by one service is trimmed by the same rules by all)."""
        return EventBus(
            redis,
            keys,
            maxlen=self.history_size,
            ttl_s=self.history_ttl_s,
            transcript=self.transcript,
        )


#: The prefix of the project's variables: one of these that nothing reads is a mistake.
PREFIX = "TEAMDASH_"
#: Prefixes of variables that are not a service's: the test suite's and HAProxy's
#: (``deploy/haproxy.cfg`` reads ``TEAMDASH_LB_*`` itself).
FOREIGN_PREFIXES = ("TEAMDASH_TEST_", "TEAMDASH_LB_")


def unknown_variables(
    environ: Mapping[str, str], known: Iterable[str]
) -> list[tuple[str, str | None]]:
    """``(name, closest known name or None)`` for every ``TEAMDASH_*`` variable in
    ``environ`` that is not in ``known``, sorted by name. A misspelt variable is otherwise
    silently ignored and its default used (``TEAMDASH_SEND_BUFER_BYTES``)."""
    known = sorted(set(known))
    out = []
    for name in sorted(environ):
        if not name.startswith(PREFIX) or name in known or name.startswith(FOREIGN_PREFIXES):
            continue
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        out.append((name, close[0] if close else None))
    return out
