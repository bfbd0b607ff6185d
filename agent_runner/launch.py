"""The per-agent *keeper* every agent is started through (stdlib only; run as a script).

The runner starts ``python -I -S launch.py --status-fd N [--mem-mb M] [--cpus 0,1]
[--parent-pid P] [--pty COLSxROWS] -- argv...`` in a new session (``start_new_session``),
with the agent's pipes, working directory and environment already in place. The keeper
stays between the runner and the agent for the agent's whole life, so that a runner killed
with SIGKILL takes *every* process of its agents with it — also children that left the
agent's process group (``setsid``) or were double-forked away from it. Cgroups would do
this too, but they are not delegated to the runner everywhere (cgroup v1 hosts); a child
subreaper works unprivileged.

In order, the keeper:

1. makes sure it leads its own session and process group;
2. sets ``PR_SET_CHILD_SUBREAPER`` (every orphaned descendant of the agent re-parents to the
   keeper, its nearest subreaper, instead of init) and ``PR_SET_PDEATHSIG = SIGTERM`` (a
   catchable signal, so it can clean up when the runner dies), and exits if the runner
   already died;
3. pins itself to the given CPUs (``sched_setaffinity``, inherited by the agent);
4. forks the agent into a session and process group of its own (pid = pgid; so the
   runner's SIGSTOP, SIGTERM and SIGKILL to the agent's group never reach the keeper; the
   runner learns the pid only after the exec, so the group exists by then). The child sets
   ``PR_SET_PDEATHSIG = SIGKILL`` (it dies with the keeper), ``RLIMIT_DATA`` (the memory
   limit; not ``RLIMIT_AS``, which breaks runtimes that reserve large address ranges, like
   Node), restores ``SIGPIPE`` and ``execvp``\\ s the agent. With ``--pty`` the keeper first
   opens a pseudo-terminal (that size, echo off) and the child makes it its controlling
   terminal and its stdin and stdout (stderr stays the runner's pipe);
5. writes ``"ok\\t<agent pid>"`` to the status fd once the exec succeeded (the child's
   close-on-exec error pipe reached EOF with no data) and closes it; points its own
   stdin/stdout/stderr at ``/dev/null`` so the agent's pipes end when the agent's do (with
   ``--pty``: stderr only, and it relays — the runner's stdin to the terminal, the terminal
   to the runner's stdout, never blocking on either side — until the leader exits, then
   copies what is left in the terminal and closes them);
6. reaps every child (its own and adopted orphans) until the agent leader exits, or until
   the runner dies (SIGTERM by ``PDEATHSIG``; SIGHUP/SIGINT likewise);
7. then kills the agent's group and every process still below it (SIGKILL, repeated until it
   has no child left), reaps them, and exits with the leader's status: the same exit code,
   or the same signal re-raised (with core dumps off), so the runner still sees "killed by
   SIGKILL" (an OOM kill) or a non-zero exit.

If a step before the exec fails, it writes ``"<errno>\\t<message>"`` to the status fd and
exits 127. The runner does all this without ``preexec_fn`` (unsafe with threads and asyncio).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import resource
import select
import signal
import struct
import sys
import termios
import time

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
EXIT_LAUNCH_FAILED = 127
#: What the keeper writes on the status fd when the agent is running: ``ok\t<pid>``.
STARTED = "ok"
#: Signals on which the keeper ends the agent and exits (SIGTERM is its PDEATHSIG).
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
#: Rounds of "SIGKILL everything below us, reap" before giving up on a fork bomb.
_MAX_KILL_ROUNDS = 2000
#: Bytes moved between a pipe and the terminal at once.
_CHUNK = 65536
#: Reads of what is left in the terminal once the agent exited (an orphan may go on).
_MAX_DRAIN_READS = 256
#: Input held for an agent that reads none; beyond it the runner's writes block, and its
#: stdin timeout tells the client, as for an agent on pipes.
_MAX_HELD_INPUT = 1024 * 1024


class _Stop(Exception):
    """Raised by the signal handler: interrupts the keeper's blocking ``waitpid``."""


def _fail(status_fd: int, errno: int, message: str) -> None:
    try:
        os.write(status_fd, f"{errno}\t{message}".encode("utf-8", "replace"))
    finally:
        os._exit(EXIT_LAUNCH_FAILED)


def _prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _parent_map() -> dict[int, list[int]]:
    """ppid → child pids, from ``/proc/*/stat`` (field 4, after the ``)`` of the name)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 1:
            children.setdefault(int(fields[1]), []).append(int(name))
    return children


def _below(root: int) -> list[int]:
    """Every process below ``root`` (children, grandchildren, …)."""
    tree = _parent_map()
    out: list[int] = []
    todo = list(tree.get(root, ()))
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(tree.get(pid, ()))
    return out


def _open_terminal(size: str) -> tuple[int, int]:
    """A pseudo-terminal of ``size`` (``COLSxROWS``) with echo off (the commands typed are
    not the tool's output; a raw-mode TUI draws its input itself): (master, slave)."""
    cols, _, rows = size.partition("x")
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", int(rows), int(cols), 0, 0))
    attrs = termios.tcgetattr(slave)
    attrs[3] &= ~termios.ECHO
    termios.tcsetattr(slave, termios.TCSANOW, attrs)
    return master, slave


def _child(
    command: list[str], err_w: int, mem_mb: str | None, keeper: int, terminal: int | None
) -> None:
    """In the forked child: become the agent (never returns)."""
    step = "setsid"
    try:
        os.setsid()  # its own session and group (pid = pgid = sid), as without a keeper
        step = "prctl(PR_SET_PDEATHSIG)"
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != keeper:
            raise OSError(3, "the keeper exited before the agent started")
        if terminal is not None:
            step = "ioctl(TIOCSCTTY)"  # the session's controlling terminal, its group in front
            fcntl.ioctl(terminal, termios.TIOCSCTTY, 0)
            os.dup2(terminal, 0)
            os.dup2(terminal, 1)
            os.close(terminal)
        for sig in _STOP_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        # Python ignores SIGPIPE; an exec'd program expects the default (die on EPIPE).
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        if mem_mb:
            step = "setrlimit(RLIMIT_DATA)"
            limit = int(mem_mb) * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
        step = "exec"
        os.execvp(command[0], command)
    except OSError as e:
        where = f"cannot run {command[0]!r}" if step == "exec" else f"{step} failed"
        message = f"{e.errno or 0}\t{where}: {e.strerror or e}"
    except ValueError as e:
        message = f"22\t{step} failed: {e}"
    with contextlib.suppress(OSError):
        os.write(err_w, message.encode("utf-8", "replace"))
    os._exit(EXIT_LAUNCH_FAILED)


def _read_all(fd: int) -> bytes:
    chunks: list[bytes] = []
    while True:
        chunk = os.read(fd, 4096)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _end_everything(leader: int, status: int | None) -> int | None:
    """SIGKILL the agent's group and everything below the keeper until nothing is left;
    reap all of it. Returns the leader's wait status (if it was reaped here or before)."""
    me = os.getpid()
    for _ in range(_MAX_KILL_ROUNDS):
        with contextlib.suppress(OSError):
            os.killpg(leader, signal.SIGKILL)
        for pid in _below(me):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        while True:
            try:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return status
            if pid == 0:
                break
            if pid == leader:
                status = wait_status
        time.sleep(0.005)
    return status


def _exit_like(status: int | None) -> None:
    """Exit with the leader's wait status: its code, or by the same signal."""
    if status is None:
        os._exit(EXIT_LAUNCH_FAILED)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        with contextlib.suppress(OSError, ValueError):
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        with contextlib.suppress(OSError, ValueError):  # SIGKILL has no handler to reset
            signal.signal(sig, signal.SIG_DFL)
        with contextlib.suppress(OSError, ValueError):
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {sig})
        os.kill(os.getpid(), sig)
        os._exit(128 + sig)
    os._exit(os.waitstatus_to_exitcode(status))


def _stop(signum: int, frame: object) -> None:
    raise _Stop


def _reap(leader: int) -> int | None:
    """Reap every child that exited; the leader's wait status if it was one of them."""
    status = None
    while True:
        try:
            pid, wait_status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            if status is None:
                raise  # the leader cannot have gone unnoticed: give up, clean up
            return status
        if pid == 0:
            return status
        if pid == leader:
            status = wait_status


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _relay(master: int, leader: int) -> int:
    """With ``--pty``: copy the runner's stdin (fd 0) to the terminal and the terminal to
    the runner's stdout (fd 1), reaping children, until the agent leader exits; then copy
    what is left in the terminal. Returns the leader's wait status.

    Input waits in a buffer (up to ``_MAX_HELD_INPUT``) while the terminal is full (the
    agent reads nothing), so output keeps flowing meanwhile; output is written to the
    runner as it comes (the runner always reads; while it paces the agent, the agent blocks
    on its terminal). End of input is the terminal's end-of-file key (``^D``), as a person
    would type it."""
    wake_r, wake_w = os.pipe()
    for fd in (wake_r, wake_w, master):
        os.set_blocking(fd, False)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    signal.set_wakeup_fd(wake_w)  # a SIGCHLD ends the select below
    to_agent = bytearray()
    reading_input = terminal_open = output_open = True
    eof = termios.tcgetattr(master)[6][termios.VEOF]

    def copy_out() -> bool:
        """One read of the terminal copied to the runner; False when nothing was there."""
        nonlocal terminal_open, output_open
        try:
            data = os.read(master, _CHUNK)
        except BlockingIOError:
            return False
        except OSError as e:  # EIO: no process has the terminal open any more
            if e.errno != errno.EIO:
                raise
            data = b""
        if not data:
            terminal_open = False
            return False
        if output_open:
            try:
                _write_all(1, data)
            except OSError:  # the runner closed its end: it is going away
                output_open = False
        return True

    while True:
        status = _reap(leader)
        if status is not None:
            break
        taking_input = reading_input and len(to_agent) < _MAX_HELD_INPUT
        readable = [wake_r] + [master] * terminal_open + [0] * taking_input
        writable = [master] if to_agent and terminal_open else []
        ready, _, _ = select.select(readable, writable, [])
        if wake_r in ready:
            with contextlib.suppress(BlockingIOError):
                os.read(wake_r, _CHUNK)
        if master in ready:
            copy_out()
        if 0 in ready:
            data = os.read(0, _CHUNK)
            if not data:
                reading_input = False
                data = eof if isinstance(eof, bytes) else bytes([eof])
            to_agent += data
        if to_agent and terminal_open:
            with contextlib.suppress(BlockingIOError):
                del to_agent[: os.write(master, to_agent)]
    for _ in range(_MAX_DRAIN_READS):
        if not terminal_open or not copy_out():
            break
    signal.set_wakeup_fd(-1)
    return status


def main(argv: list[str]) -> None:
    if "--" not in argv:
        sys.stderr.write("usage: launch.py --status-fd N [options] -- program [args...]\n")
        os._exit(2)
    split = argv.index("--")
    opts, command = argv[:split], argv[split + 1 :]
    values: dict[str, str] = {}
    for i in range(0, len(opts) - 1, 2):
        values[opts[i]] = opts[i + 1]
    status_fd = int(values["--status-fd"])
    step = "start"
    try:
        if not command:
            raise OSError(22, "no program to run")
        step = "setsid"
        if os.getsid(0) != os.getpid():
            os.setsid()
        os.set_inheritable(status_fd, False)
        step = "prctl(PR_SET_CHILD_SUBREAPER)"
        _prctl(PR_SET_CHILD_SUBREAPER, 1)
        for sig in _STOP_SIGNALS:
            signal.signal(sig, _stop)
        step = "prctl(PR_SET_PDEATHSIG)"
        _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        parent = values.get("--parent-pid")
        if parent is not None and os.getppid() != int(parent):
            raise OSError(3, "the runner exited before the agent started")
        cpus = values.get("--cpus")
        if cpus:
            step = "sched_setaffinity"
            os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})
        terminal: tuple[int, int] | None = None
        if "--pty" in values:
            step = "openpty"
            terminal = _open_terminal(values["--pty"])
        step = "fork"
        err_r, err_w = os.pipe()  # both close-on-exec: EOF on err_r = the exec succeeded
        keeper = os.getpid()
        leader = os.fork()
        if leader == 0:
            os.close(err_r)
            if terminal is not None:
                os.close(terminal[0])
            _child(
                command,
                err_w,
                values.get("--mem-mb"),
                keeper,
                terminal[1] if terminal is not None else None,
            )
        os.close(err_w)
        if terminal is not None:
            os.close(terminal[1])  # the agent holds it: the terminal hangs up when it is gone
    except _Stop:
        _fail(status_fd, 4, f"{step} interrupted: the runner is stopping")
        return
    except OSError as e:
        _fail(status_fd, e.errno or 0, f"{step} failed: {e.strerror or e}")
        return
    except (ValueError, KeyError) as e:
        _fail(status_fd, 22, f"{step} failed: {e}")
        return
    status: int | None = None
    try:
        failure = _read_all(err_r)
        os.close(err_r)
        if failure:
            _, status = os.waitpid(leader, 0)
            with contextlib.suppress(OSError):
                os.write(status_fd, failure)
            os._exit(EXIT_LAUNCH_FAILED)
        os.write(status_fd, f"{STARTED}\t{leader}".encode())
        os.close(status_fd)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2) if terminal is None else (2,):
            os.dup2(devnull, fd)
        if terminal is not None:
            status = _relay(terminal[0], leader)
            os.close(terminal[0])
            for fd in (0, 1):  # the runner's pipes end now (the agent never had them)
                os.dup2(devnull, fd)
        os.close(devnull)
        while status is None:
            pid, wait_status = os.waitpid(-1, 0)  # adopted orphans are reaped here too
            if pid == leader:
                status = wait_status
    except (_Stop, ChildProcessError, OSError):
        pass
    while True:  # cleaning up already: nothing more to interrupt
        try:
            for sig in _STOP_SIGNALS:
                signal.signal(sig, signal.SIG_IGN)
            break
        except _Stop:
            continue
    _exit_like(_end_everything(leader, status))


if __name__ == "__main__":
    main(sys.argv[1:])
