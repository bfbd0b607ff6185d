"""The subprocess adapter: start an agent through the exec wrapper, signal its process group,
kill it and make sure nothing of it is left.

Each agent runs in its own session and process group (``start_new_session``), led by the
agent process itself (pid = pgid), so one ``killpg`` reaches every child that did not leave
the group on purpose. Children that did (their own ``setsid``) are remembered from the
latest process-tree snapshot and killed one by one. Zombies do not count as "left": the
runner makes itself a child subreaper and reaps the group's orphans after the leader.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from agent_runner.errors import SpawnFailed

log = logging.getLogger("runner.process")

LAUNCH_PATH = str(Path(__file__).resolve().parent / "launch.py")
PR_SET_CHILD_SUBREAPER = 36
#: How long the wrapper may take to exec the agent.
LAUNCH_TIMEOUT_S = 15.0


def become_subreaper() -> bool:
    """Make this process adopt orphaned descendants (so it can reap the agents' zombies)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def live_group_members(pgid: int) -> list[int]:
    """Pids of the processes in group ``pgid`` that are not zombies."""
    members = []
    for pid in psutil.pids():
        try:
            if os.getpgid(pid) != pgid:
                continue
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                members.append(pid)
        except (ProcessLookupError, psutil.NoSuchProcess, PermissionError):
            continue
    return members


def reap_group(pgid: int) -> int:
    """Reap zombie children of ours that belong to group ``pgid`` (only call this once the
    group leader has been waited for). Returns how many were reaped."""
    reaped = 0
    while True:
        try:
            result = os.waitid(os.P_PGID, pgid, os.WEXITED | os.WNOHANG)
        except ChildProcessError:
            return reaped
        if result is None:
            return reaped
        reaped += 1


def kill_processes(procs: Iterable[psutil.Process]) -> None:
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            p.kill()


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"SIG{signum}"


@dataclass(frozen=True, slots=True)
class LaunchSpec:
    argv: Sequence[str]
    env: Mapping[str, str]
    cwd: Path
    memory_mb: int | None = None
    cpus: Sequence[int] | None = None


def wrapper_argv(spec: LaunchSpec, status_fd: int) -> list[str]:
    args = [sys.executable, "-I", "-S", LAUNCH_PATH, "--status-fd", str(status_fd)]
    args += ["--parent-pid", str(os.getpid())]
    if spec.memory_mb is not None:
        args += ["--mem-mb", str(spec.memory_mb)]
    if spec.cpus:
        args += ["--cpus", ",".join(str(c) for c in spec.cpus)]
    return [*args, "--", *spec.argv]


async def _read_to_eof(fd: int) -> bytes:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    pipe = os.fdopen(fd, "rb", buffering=0)
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
    try:
        return await reader.read()
    finally:
        transport.close()


class AgentProcess:
    """One started agent: its asyncio process (pipes), pid = pgid, and create time."""

    def __init__(self, proc: asyncio.subprocess.Process, create_time: float) -> None:
        self.proc = proc
        self.pid: int = proc.pid
        self.pgid: int = proc.pid
        self.create_time = create_time
        #: Descendants seen in the latest snapshot (kept to kill those that left the group).
        self.descendants: list[psutil.Process] = []

    @classmethod
    async def start(cls, spec: LaunchSpec, *, timeout_s: float = LAUNCH_TIMEOUT_S) -> AgentProcess:
        """Start the agent; returns once it really exec'd. Raises :class:`SpawnFailed`."""
        read_fd, write_fd = os.pipe()
        try:
            proc = await asyncio.create_subprocess_exec(
                *wrapper_argv(spec, write_fd),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=str(spec.cwd),
                env=dict(spec.env),
                start_new_session=True,
                pass_fds=(write_fd,),
            )
        except OSError as e:
            os.close(read_fd)
            raise SpawnFailed(f"cannot start the agent in {spec.cwd}: {e.strerror or e}") from e
        finally:
            os.close(write_fd)
        try:
            create_time = psutil.Process(proc.pid).create_time()
        except psutil.NoSuchProcess:
            create_time = 0.0
        try:
            status = await asyncio.wait_for(_read_to_eof(read_fd), timeout_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            raise SpawnFailed(f"the agent did not start within {timeout_s:g}s") from None
        if status:
            await proc.wait()
            code, _, message = status.decode("utf-8", "replace").partition("\t")
            log.info("agent exec failed (errno %s): %s", code, message)
            raise SpawnFailed(message or f"cannot run {spec.argv[0]!r}")
        return cls(proc, create_time)

    # -- pipes --------------------------------------------------------------------
    @property
    def stdin(self) -> asyncio.StreamWriter:
        assert self.proc.stdin is not None
        return self.proc.stdin

    @property
    def stdout(self) -> asyncio.StreamReader:
        assert self.proc.stdout is not None
        return self.proc.stdout

    @property
    def stderr(self) -> asyncio.StreamReader:
        assert self.proc.stderr is not None
        return self.proc.stderr

    # -- state and signals ------------------------------------------------------
    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    async def wait(self) -> int:
        return await self.proc.wait()

    def signal_group(self, sig: int) -> bool:
        """Send ``sig`` to the whole process group; False when the group is gone."""
        try:
            os.killpg(self.pgid, sig)
            return True
        except ProcessLookupError:
            return False
        except PermissionError as e:  # pgid reused by someone else's group: never ours
            log.warning("cannot signal process group %d: %s", self.pgid, e)
            return False

    def snapshot(self) -> list[psutil.Process]:
        """Refresh and return the descendants of the agent process."""
        try:
            leader = psutil.Process(self.pid)
            if abs(leader.create_time() - self.create_time) > 0.01:
                return self.descendants
            self.descendants = leader.children(recursive=True)
        except psutil.NoSuchProcess:
            pass
        return self.descendants

    async def kill_everything(self, *, timeout_s: float = 5.0) -> list[int]:
        """SIGKILL the group and every known descendant, reap what is ours, and wait until
        no live process is left. Returns the pids still alive after ``timeout_s`` (none,
        unless something resists SIGKILL)."""
        self.signal_group(signal.SIGKILL)
        escaped = [p for p in self.descendants if _outside_group(p, self.pgid)]
        kill_processes(escaped)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            if self.returncode is not None:
                reap_group(self.pgid)
            left = live_group_members(self.pgid) + [p.pid for p in escaped if _alive(p)]
            if not left or loop.time() > deadline:
                return left
            await asyncio.sleep(0.02)


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _outside_group(p: psutil.Process, pgid: int) -> bool:
    try:
        return os.getpgid(p.pid) != pgid and p.is_running()
    except (ProcessLookupError, psutil.NoSuchProcess):
        return False


def process_matches(pid: int, create_time: float) -> bool:
    """True when process ``pid`` is alive (not a zombie) and was created at ``create_time``."""
    try:
        proc = psutil.Process(pid)
        return (
            abs(proc.create_time() - create_time) < 0.01 and proc.status() != psutil.STATUS_ZOMBIE
        )
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return False


def kill_orphaned(pid: int, create_time: float) -> bool:
    """Kill what is left of an agent started by a previous runner: its process tree (if
    ``pid`` with that create time is still alive) and its process group (pgid = pid). A pid
    is not reused while a group with that id has members, so when ``pid`` is free, or is
    still our (zombie) leader, every member of group ``pid`` is ours; when ``pid`` now
    belongs to another process, nothing is touched. Returns True if anything was killed."""
    try:
        proc: psutil.Process | None = psutil.Process(pid)
        assert proc is not None
        if abs(proc.create_time() - create_time) >= 0.01:
            return False  # the pid was reused: not ours
    except psutil.NoSuchProcess:
        proc = None
    except psutil.AccessDenied:
        return False
    tree: list[psutil.Process] = []
    if proc is not None:
        with contextlib.suppress(psutil.NoSuchProcess):
            if proc.status() != psutil.STATUS_ZOMBIE:
                tree = [proc, *proc.children(recursive=True)]
    members = live_group_members(pid)
    if not tree and not members:
        return False
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    kill_processes(tree)
    return True


__all__ = [
    "AgentProcess",
    "LaunchSpec",
    "become_subreaper",
    "kill_orphaned",
    "live_group_members",
    "process_matches",
    "reap_group",
    "signal_name",
]
