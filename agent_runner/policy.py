"""What an agent may be given: its workspace, its environment, its commands and its CPUs.

Pure functions (the workspace one touches the filesystem to resolve and create the folder,
nothing else). Refusals are :class:`~agent_runner.errors.SpawnFailed` (create-time input:
workspace, environment) or :class:`~agent_runner.errors.InvalidRequest` (a command).
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path, PurePosixPath

from agent_runner.errors import InvalidRequest, SpawnFailed

# ---------------------------------------------------------------------------
# Workspaces
# ---------------------------------------------------------------------------


def _within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def resolve_workspace(root: Path, requested: str) -> Path:
    """The directory for workspace ``requested``, created if missing, always inside ``root``.

    ``requested`` is relative to ``root`` (an absolute path is accepted only when it is
    inside ``root``). Refused: ``..`` components, absolute paths outside the root, and any
    path that leaves the root through a symlink (checked after resolving, and again after
    creating the folder).
    """
    root = root.resolve()
    if "\x00" in requested or not requested.strip():
        raise SpawnFailed(f"workspace {requested!r} is not a valid path")
    pure = PurePosixPath(requested)
    if ".." in pure.parts:
        raise SpawnFailed(
            f"workspace {requested!r} escapes the workspace root ('..' is not allowed)"
        )
    if pure.is_absolute():
        candidate = Path(os.path.normpath(requested))
        if not _within(candidate, root):
            raise SpawnFailed(
                f"workspace {requested!r} escapes the workspace root (absolute paths must be "
                f"inside {root})"
            )
    else:
        candidate = root / pure
    if not _within(candidate.resolve(), root):
        raise SpawnFailed(f"workspace {requested!r} escapes the workspace root (through a symlink)")
    try:
        candidate.mkdir(parents=True, exist_ok=True)
        final = candidate.resolve(strict=True)
    except FileExistsError:
        raise SpawnFailed(f"workspace {requested!r} exists and is not a directory") from None
    except OSError as e:
        raise SpawnFailed(f"workspace {requested!r} cannot be created: {e.strerror}") from e
    # Checked again: a symlink may have appeared between the check and the mkdir.
    if not _within(final, root):
        raise SpawnFailed(f"workspace {requested!r} escapes the workspace root (through a symlink)")
    if not final.is_dir():
        raise SpawnFailed(f"workspace {requested!r} is not a directory")
    return final


# ---------------------------------------------------------------------------
# Environment
# ---------------------------------------------------------------------------

ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

#: Prefixes a client's environment may not use (dynamic loaders, our own settings).
FORBIDDEN_ENV_PREFIXES: tuple[str, ...] = ("LD_", "DYLD_", "TEAMDASH_", "MALLOC_")

#: Names a client's environment may not set: they change which code a program loads or
#: runs, or are set by the runner itself.
FORBIDDEN_ENV_NAMES: frozenset[str] = frozenset(
    {
        "PATH",
        "HOME",
        "SHELL",
        "IFS",
        "ENV",
        "BASH_ENV",
        "CDPATH",
        "GLIBC_TUNABLES",
        "GCONV_PATH",
        "LOCPATH",
        "NLSPATH",
        "HOSTALIASES",
        "RES_OPTIONS",
        "PYTHONPATH",
        "PYTHONHOME",
        "PYTHONSTARTUP",
        "PYTHONUSERBASE",
        "PYTHONEXECUTABLE",
        "PYTHONPLATLIBDIR",
        "PYTHONINSPECT",
        "PYTHONSAFEPATH",
        "NODE_OPTIONS",
        "NODE_PATH",
        "NODE_EXTRA_CA_CERTS",
        "PERL5LIB",
        "PERL5OPT",
        "PERLLIB",
        "RUBYLIB",
        "RUBYOPT",
        "JAVA_TOOL_OPTIONS",
        "_JAVA_OPTIONS",
        "CLASSPATH",
        "REDIS_URL",
        "DEBUG",
    }
)


def validate_environment(
    environment: Mapping[str, str] | None, *, reserved: Collection[str] = ()
) -> dict[str, str]:
    """A client's ``environment``, checked: valid names, no loader or runner variables, none
    of the model's own (``reserved``), no NUL in values. Raises :class:`SpawnFailed`."""
    if not environment:
        return {}
    out: dict[str, str] = {}
    for key, value in environment.items():
        if not ENV_KEY.match(key):
            raise SpawnFailed(
                f"environment variable name {key!r} is not valid (letters, digits and _, "
                "not starting with a digit)"
            )
        upper = key.upper()
        if upper.startswith(FORBIDDEN_ENV_PREFIXES) or upper in FORBIDDEN_ENV_NAMES:
            raise SpawnFailed(f"environment variable {key!r} may not be set by clients")
        if key in reserved:
            raise SpawnFailed(f"environment variable {key!r} is set by the model configuration")
        if "\x00" in value:
            raise SpawnFailed(f"environment variable {key!r} contains a NUL character")
        out[key] = value
    return out


def agent_environment(
    *,
    workspace: Path,
    home: Path,
    path: str,
    lang: str,
    model_env: Mapping[str, str],
    passthrough: Mapping[str, str],
    user_env: Mapping[str, str],
) -> dict[str, str]:
    """The complete, explicit environment of an agent (never the runner's own)."""
    env = {
        "PATH": path,
        "HOME": str(home),
        "PWD": str(workspace),
        "LANG": lang,
        "TERM": "dumb",
        "NO_COLOR": "1",
    }
    env.update(passthrough)
    env.update(model_env)
    env.update(user_env)
    return env


# ---------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------

# C0 controls except \t and \n, DEL, and C1 controls.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def sanitize_command(text: str, *, max_chars: int, multiline: bool) -> str:
    """``text`` made safe to write to an agent: CRLF/CR become LF, NUL and other control
    characters are removed (tab and newline are kept; newlines become spaces unless
    ``multiline``), lone surrogates become ``?``. Longer than ``max_chars`` after that:
    :class:`InvalidRequest` (never silently truncated)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    if not multiline:
        text = text.replace("\n", " ")
    text = text.encode("utf-8", "replace").decode("utf-8")
    if len(text) > max_chars:
        raise InvalidRequest(f"command is too long: {len(text)} characters, at most {max_chars}")
    return text


# ---------------------------------------------------------------------------
# CPU and memory
# ---------------------------------------------------------------------------


def pick_cpus(available: Sequence[int], cores: float, in_use: Counter[int]) -> list[int] | None:
    """The CPUs to pin an agent to for a limit of ``cores`` (``ceil(cores)`` of them, the
    least used first), or None when the limit covers every available CPU."""
    wanted = max(1, math.ceil(cores))
    if wanted >= len(available):
        return None
    ranked = sorted(available, key=lambda cpu: (in_use[cpu], cpu))
    return sorted(ranked[:wanted])


def memory_limit_mb(requested: float | None, default: int | None) -> int | None:
    """The memory limit (whole MB) for an agent: the request, else the runner's default."""
    if requested is not None:
        return max(1, math.ceil(requested))
    return default
