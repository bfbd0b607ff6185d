"""The layering rules, checked by scanning every import of the packages (docs/architecture.md):

* ``shared/`` imports no service package, except ``shared/cli.py`` (the composition root of
  the ``teamdash`` command);
* the services do not import each other (one known exception, listed below);
* no import cycle inside a package, imports under ``TYPE_CHECKING`` included;
* the gateway's client core (``gateway/client_session.py``) does no I/O: no asyncio,
  websockets or redis;
* only ``gateway/sessions.py`` names the session hash (``Keys.session``);
* only ``shared/agent_record.py`` spells the agent registry's own field names, and only the
  registry's two adapters name its hash (``Keys.agent``).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ("gateway", "agent_runner", "metrics_collector")
PACKAGES = ("shared", *SERVICES)

#: (importing module, imported module) pairs allowed across services, and why.
ALLOWED_ACROSS = {
    # The gateway reaps dead runners' agents with the runners' own reaper when no runner is
    # left alive (the one place that knows how to mark an agent lost).
    ("gateway.server", "agent_runner.reaper"),
}


def modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, anywhere in the file (functions and TYPE_CHECKING too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def internal(mods: dict[str, Path], name: str) -> str | None:
    """The project module ``name`` refers to (``pkg.mod.attr`` → ``pkg.mod``), or None."""
    while name:
        if name in mods:
            return name
        name = name.rpartition(".")[0]
    return None


MODULES = modules()
GRAPH = {
    name: {m for i in imports(path) if (m := internal(MODULES, i)) and m != name}
    for name, path in MODULES.items()
}


def test_shared_imports_no_service_but_the_cli():
    bad = {
        (name, dep)
        for name, deps in GRAPH.items()
        if name.startswith("shared") and name != "shared.cli"
        for dep in deps
        if dep.split(".")[0] in SERVICES
    }
    assert bad == set()


def test_services_do_not_import_each_other():
    bad = {
        (name, dep)
        for name, deps in GRAPH.items()
        for dep in deps
        if name.split(".")[0] in SERVICES
        and dep.split(".")[0] in SERVICES
        and dep.split(".")[0] != name.split(".")[0]
    }
    assert bad == ALLOWED_ACROSS


def test_no_import_cycle_inside_a_package():
    def cycle_from(start: str) -> list[str] | None:
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for dep in GRAPH[node]:
                if dep == start:
                    return [*path, dep]
                if dep not in path and dep.split(".")[0] == start.split(".")[0]:
                    stack.append((dep, [*path, dep]))
        return None

    cycles = [c for name in GRAPH if (c := cycle_from(name)) is not None]
    assert cycles == []


def test_the_client_core_does_no_io():
    forbidden = ("asyncio", "websockets", "redis", "anyio")
    core = imports(ROOT / "gateway" / "client_session.py")
    assert {i for i in core if i.split(".")[0] in forbidden} == set()


def test_only_the_session_store_names_the_session_hash():
    users = {
        name
        for name, path in MODULES.items()
        if name.startswith("gateway") and ".session(" in path.read_text()
    }
    assert users == {"gateway.sessions"}


#: Field names of the agent hash that mean nothing anywhere else (``status``, ``pid`` and
#: the like are protocol words too: the check would catch every event).
REGISTRY_ONLY_FIELDS = {
    "workspacePath",
    "procCreateTime",
    "keeperPid",
    "keeperCreateTime",
    "memoryMb",
    "cpuCores",
}


def test_only_the_agent_record_spells_the_registry_fields():
    users = {
        name
        for name, path in MODULES.items()
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.Constant) and node.value in REGISTRY_ONLY_FIELDS
    }
    assert users == {"shared.agent_record"}


def test_only_the_registry_adapters_name_the_agent_hash():
    users = {name for name, path in MODULES.items() if "keys.agent(" in path.read_text()}
    assert users == {"agent_runner.registry", "gateway.runners"}
