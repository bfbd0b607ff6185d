"""Helpers of the deployment tests: the deployment files, and the external tools they need.

``haproxy`` and ``docker-compose`` come from Debian packages: ``.ci/run`` installs them, and
a test that finds one missing installs it (as root with apt-get) or fails saying what to
install. Nothing is skipped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
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


@dataclass(frozen=True, slots=True)
class Stage:
    """One ``FROM … AS name`` stage of the Dockerfile: its base and its instructions
    (continuation lines joined, comments dropped)."""

    base: str
    instructions: list[str]

    def arg_default(self, name: str) -> str | None:
        for line in self.instructions:
            words = line.split()
            if words[0] == "ARG" and words[1].startswith(f"{name}="):
                return words[1].split("=", 1)[1].strip('"')
        return None

    def last(self, keyword: str) -> str | None:
        """The argument text of the stage's last ``keyword`` instruction."""
        found = [line.split(None, 1)[1] for line in self.instructions if line.split()[0] == keyword]
        return found[-1] if found else None


def dockerfile_stages() -> dict[str, Stage]:
    """The Dockerfile's stages by name (an unnamed one by its position)."""
    lines = [line for line in DOCKERFILE.read_text().splitlines() if not line.startswith("#")]
    instructions = "\n".join(lines).replace("\\\n", " ").splitlines()
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in instructions:
        words = line.split()
        if not words:
            continue
        if words[0] == "FROM":
            current = Stage(base=words[1], instructions=[])
            name = words[3] if len(words) > 3 and words[2].upper() == "AS" else str(len(stages))
            stages[name] = current
        elif current is not None:
            current.instructions.append(" ".join(words))
    return stages


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
