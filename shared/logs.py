"""Logging set-up shared by the services.

Loggers are named by namespace with dots (``ws.auth``, ``ws.conn``, ``runner.agent``) and
``DEBUG`` selects namespaces the way the spec writes them, with colons and ``*``:
``DEBUG=ws:*`` turns on every ``ws`` logger, ``DEBUG=ws:auth,runner:*`` just those,
``DEBUG=*`` everything. With ``TEAMDASH_LOG_FORMAT=json`` each record is one JSON object.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import orjson

#: Record attributes copied into JSON logs when a call passes them in ``extra``.
CONTEXT_FIELDS = (
    "connection_id",
    "session_id",
    "user_id",
    "agent_id",
    "gateway_id",
    "runner_id",
    "ip",
)


_NO_IDS: Mapping[str, str] = MappingProxyType({})
_context: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar(
    "log_context", default=_NO_IDS
)


def bind(**fields: str | None) -> None:
    """Attach ids (``connection_id``, ``user_id``, ``agent_id``…) to every log record of the
    current task and of the tasks it starts from now on (they copy the context)."""
    current = dict(_context.get())
    current.update({k: v for k, v in fields.items() if v is not None})
    _context.set(current)


def context_with(**fields: str | None) -> contextvars.Context:
    """A copy of the current context with these ids bound, for ``create_task(context=…)``."""
    ctx = contextvars.copy_context()
    ctx.run(bind, **fields)
    return ctx


def context_of(record: logging.LogRecord) -> dict[str, str]:
    """The ids of a record: those bound to its task, overridden by its ``extra``."""
    out = dict(_context.get())
    for key in CONTEXT_FIELDS:
        value = getattr(record, key, None)
        if value is not None:
            out[key] = str(value)
    return out


class TextFormatter(logging.Formatter):
    """Readable lines; the bound ids, if any, at the end in brackets."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = context_of(record)
        if ids:
            line += " [" + " ".join(f"{k.removesuffix('_id')}={v}" for k, v in ids.items()) + "]"
        return line


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        doc.update(context_of(record))
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


def debug_loggers(spec: str | None) -> list[str]:
    """Logger names that ``DEBUG=spec`` turns to debug level ('' = the root logger)."""
    names = []
    for part in (spec or "").split(","):
        part = part.strip()
        if not part or part.startswith("-"):
            continue
        if part == "*":
            names.append("")
            continue
        names.append(part.removesuffix(":*").removesuffix("*").rstrip(":").replace(":", "."))
    return names


def configure_logging(service: str, *, debug: str | None, log_format: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter(service))
    else:
        handler.setFormatter(
            TextFormatter(f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    for name in debug_loggers(debug):
        logging.getLogger(name).setLevel(logging.DEBUG)
    # Library chatter stays at INFO unless asked for by name.
    for noisy in ("websockets", "asyncio"):
        if noisy not in debug_loggers(debug):
            logging.getLogger(noisy).setLevel(logging.WARNING)
