"""Helpers of the deployment tests: the deployment files, and the external tools they need.

``haproxy`` and ``docker-compose`` come from Debian packages: ``.ci/run`` installs them, and
a test that finds one missing installs it (as root with apt-get) or fails saying what to
install. Nothing is skipped.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from tests.helpers import ROOT, ensure_tool

COMPOSE_FILE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
DEPLOY = ROOT / "deploy"
HAPROXY_CFG = DEPLOY / "haproxy.cfg"
HAPROXY_COMPOSE_CFG = DEPLOY / "haproxy-compose.cfg"
#: The services built from our image, and the ``teamdash`` command each runs.
TEAMDASH_SERVICES = {
    "gateway": "gateway",
    "agent-runner": "runner",
    "metrics-collector": "collector",
}


def require(binary: str, package: str) -> str:
    """Path of ``binary``, installed from Debian's ``package`` if needed."""
    return ensure_tool(binary, package)


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())  # type: ignore[no-any-return]


def service_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def documented_variables(sources: list[Path] | None = None) -> set[str]:
    """Every variable named in the first column of a Markdown table of the README, of
    deploy/README.md, or of a service's settings module (the runner documents its own);
    or of ``sources`` only."""
    if sources is None:
        sources = [
            ROOT / "README.md",
            DEPLOY / "README.md",
            ROOT / "agent_runner" / "settings.py",
            ROOT / "metrics_collector" / "settings.py",
        ]
    found: set[str] = set()
    for path in sources:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            if not line.startswith("| `"):
                continue
            first = line.split("|")[1]
            names = re.findall(r"`([A-Z_][A-Z0-9_]*)`", first)
            if not names:
                continue
            found.add(names[0])
            # "`TEAMDASH_ALERT_CPU_WARNING` / `_CRITICAL`": the suffix replaces the last part.
            for suffix in names[1:]:
                if suffix.startswith("_"):
                    found.add(names[0].rsplit("_", 1)[0] + suffix)
                else:
                    found.add(suffix)
    return found


def haproxy_variables(path: Path) -> set[str]:
    """Environment variables a HAProxy configuration file reads."""
    text = path.read_text()
    used = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", text))
    used |= set(re.findall(r"defined\(([A-Z_][A-Z0-9_]*)\)", text))
    return used
