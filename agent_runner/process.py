"""The subprocess adapter: start an agent through its keeper, signal its process group,
kill it and make sure nothing of it is left.

Each agent is started through a per-agent *keeper* (:mod:`agent_runner.launch`): the
runner's direct child, in a session of its own, a child subreaper with ``PDEATHSIG``. The
keeper forks the agent into its own process group (agent pid = pgid, the pid reported to
clients), so one ``killpg`` reaches every child that did not leave the group on purpose,
and SIGSTOP/SIGTERM to the agent never stop the keeper. Children that did leave (their own
``setsid``, double forks) re-parent to the keeper once orphaned; the keeper kills all of
them when the agent leader exits or when the runner dies (even by SIGKILL), and only then
exits, with the leader's status. So ``wait()`` returning means the whole tree is gone; the
runner still kills the group and the descendants of the latest snapshot itself and checks
that nothing is left, in case the keeper was killed too.
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

import anyio
import psutil

from agent_runner.errors import SpawnFailed

log = logging.getLogger("runner.process")

LAUNCH_PATH = str(Path(__file__).resolve().parent / "launch.py")
#: The status line of a started agent (see :mod:`agent_runner.launch`).
STARTED = b"ok"
PR_SET_CHILD_SUBREAPER = 36
#: How long the wrapper may take to exec the agent.
LAUNCH_TIMEOUT_S = 15.0
#: The pseudo-terminal of a ``pty`` agent: wide, so that a tool's lines rarely wrap.
PTY_COLUMNS = 200
PTY_ROWS = 50


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
    #: Run the agent with a pseudo-terminal as its stdin and stdout (the keeper relays it).
    pty: bool = False


def wrapper_argv(spec: LaunchSpec, status_fd: int) -> list[str]:
    args = [sys.executable, "-I", "-S", LAUNCH_PATH, "--status-fd", str(status_fd)]
    args += ["--parent-pid", str(os.getpid())]
    if spec.memory_mb is not None:
        args += ["--mem-mb", str(spec.memory_mb)]
    if spec.cpus:
        args += ["--cpus", ",".join(str(c) for c in spec.cpus)]
    if spec.pty:
        args += ["--pty", f"{PTY_COLUMNS}x{PTY_ROWS}"]
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
    """One started agent: the keeper's asyncio process (pipes, exit status), the agent's
    own pid (= its pgid) and create time, and the keeper's pid and create time."""

    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        pid: int,
        create_time: float,
        keeper_create_time: float = 0.0,
    ) -> None:
        self.proc = proc
        self.pid: int = pid
        self.pgid: int = pid
        self.create_time = create_time
        self.keeper_pid: int = proc.pid
        self.keeper_create_time = keeper_create_time
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
            keeper_create_time = psutil.Process(proc.pid).create_time()
        except psutil.NoSuchProcess:
            keeper_create_time = 0.0
        try:
            # Not wait_for, which on 3.11 returns the status when the runner's cancellation
            # lands with it, and the stopping runner would go on registering the agent.
            with anyio.fail_after(timeout_s):
                status = await _read_to_eof(read_fd)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)  # the keeper kills what it started
            await proc.wait()
            raise SpawnFailed(f"the agent did not start within {timeout_s:g}s") from None
        except BaseException:
            # Cancelled mid-spawn (the runner stopping): nothing it started may outlive it.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            raise
        head, _, rest = status.partition(b"\t")
        if head == STARTED and rest.isdigit():
            pid = int(rest)
            try:
                create_time = psutil.Process(pid).create_time()
            except psutil.NoSuchProcess:
                create_time = 0.0  # already gone: the keeper reports its exit
            return cls(proc, pid, create_time, keeper_create_time)
        await proc.wait()
        code, _, message = status.decode("utf-8", "replace").partition("\t")
        log.info("agent exec failed (errno %s): %s", code, message)
        raise SpawnFailed(message or f"cannot run {spec.argv[0]!r}")

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
        """The agent leader's exit status (the keeper exits with it), once all is gone."""
        return self.proc.returncode

    async def wait(self) -> int:
        return await self.proc.wait()

    def signal_group(self, sig: int) -> bool:
        """Send ``sig`` to the agent's process group; False when the group is gone."""
        try:
            os.killpg(self.pgid, sig)
            return True
        except ProcessLookupError:
            return False
        except PermissionError as e:  # pgid reused by someone else's group: never ours
            log.warning("cannot signal process group %d: %s", self.pgid, e)
            return False

    def _keeper(self) -> psutil.Process | None:
        if self.returncode is not None:
            return None
        try:
            keeper = psutil.Process(self.keeper_pid)
            if abs(keeper.create_time() - self.keeper_create_time) > 0.01:
                return None
            return keeper
        except psutil.NoSuchProcess:
            return None

    def snapshot(self) -> list[psutil.Process]:
        """Refresh and return every process of the agent but its leader: the leader's
        descendants and the orphans the keeper adopted."""
        keeper = self._keeper()
        if keeper is None:
            return self.descendants
        with contextlib.suppress(psutil.NoSuchProcess):
            self.descendants = [p for p in keeper.children(recursive=True) if p.pid != self.pid]
        return self.descendants

    async def kill_everything(self, *, timeout_s: float = 5.0) -> list[int]:
        """SIGKILL the group and every known descendant, wait for the keeper to reap them
        and exit, and check that no live process is left. Returns the pids still alive after
        ``timeout_s`` (none, unless something resists SIGKILL)."""
        self.signal_group(signal.SIGKILL)
        escaped = [p for p in self.descendants if _outside_group(p, self.pgid)]
        kill_processes(escaped)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        keeper_killed = False
        while True:
            if self.returncode is not None:
                reap_group(self.pgid)
            elif not keeper_killed and loop.time() > deadline - timeout_s / 2:
                # The keeper should have exited long ago: kill it and its whole tree.
                keeper = self._keeper()
                if keeper is not None:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        tree = keeper.children(recursive=True)
                        kill_processes([*tree, keeper])
                        escaped += tree
                keeper_killed = True
            left = live_group_members(self.pgid) + [p.pid for p in escaped if _alive(p)]
            if self.returncode is None and self._keeper() is not None:
                left.append(self.keeper_pid)
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


def kill_orphaned(
    pid: int,
    create_time: float,
    *,
    keeper_pid: int | None = None,
    keeper_create_time: float = 0.0,
) -> bool:
    """Kill what is left of an agent started by a previous runner: its keeper and all
    below it (if ``keeper_pid`` with that create time is still alive), its process tree (if
    ``pid`` with that create time is still alive) and its process group (pgid = pid). A pid
    is not reused while a group with that id has members, so when ``pid`` is free, or is
    still our (zombie) leader, every member of group ``pid`` is ours; when ``pid`` now
    belongs to another process, nothing is touched. Returns True if anything was killed."""
    killed = False
    if keeper_pid is not None and process_matches(keeper_pid, keeper_create_time):
        with contextlib.suppress(psutil.NoSuchProcess):
            keeper = psutil.Process(keeper_pid)
            kill_processes(keeper.children(recursive=True))
            keeper.terminate()  # the keeper reaps (and kills again) whatever is below it
            killed = True
    try:
        proc: psutil.Process | None = psutil.Process(pid)
        assert proc is not None
        if abs(proc.create_time() - create_time) >= 0.01:
            return killed  # the pid was reused: not ours
    except psutil.NoSuchProcess:
        proc = None
    except psutil.AccessDenied:
        return killed
    tree: list[psutil.Process] = []
    if proc is not None:
        with contextlib.suppress(psutil.NoSuchProcess):
            if proc.status() != psutil.STATUS_ZOMBIE:
                tree = [proc, *proc.children(recursive=True)]
    members = live_group_members(pid)
    if not tree and not members:
        return killed
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
