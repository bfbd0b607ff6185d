"""The exec wrapper every agent is started through (stdlib only; run as a script).

The runner starts ``python -I -S launch.py --status-fd N [--mem-mb M] [--cpus 0,1]
[--parent-pid P] -- argv...`` in a new session (``start_new_session``), with the agent's
pipes, working directory and environment already in place. This wrapper then, in order:

1. makes sure it leads its own session and process group (so signals reach every child);
2. sets ``PR_SET_PDEATHSIG = SIGKILL`` (via ``prctl``) so the agent dies with the runner,
   and exits if the runner already died;
3. pins itself to the given CPUs (``sched_setaffinity``) — the CPU limit;
4. marks the status fd close-on-exec and sets ``RLIMIT_DATA`` (the memory limit; not
   ``RLIMIT_AS``, which breaks runtimes that reserve large address ranges, like Node);
5. ``execvp``\\ s the agent, which keeps the pid, pipes and limits.

If any step fails, it writes ``"<errno>\\t<message>"`` to the status fd and exits 127.
The runner reads the status pipe until EOF: EOF with no data = the exec succeeded (the fd
was closed by exec), so the runner only reports success for an agent that really started.
The runner does all this without ``preexec_fn`` (unsafe with threads and asyncio).
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import sys

PR_SET_PDEATHSIG = 1
EXIT_LAUNCH_FAILED = 127


def _fail(status_fd: int, errno: int, message: str) -> None:
    try:
        os.write(status_fd, f"{errno}\t{message}".encode("utf-8", "replace"))
    finally:
        os._exit(EXIT_LAUNCH_FAILED)


def _set_pdeathsig() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


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
        step = "prctl(PR_SET_PDEATHSIG)"
        _set_pdeathsig()
        parent = values.get("--parent-pid")
        if parent is not None and os.getppid() != int(parent):
            raise OSError(3, "the runner exited before the agent started")
        cpus = values.get("--cpus")
        if cpus:
            step = "sched_setaffinity"
            os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})
        step = "close-on-exec"
        os.set_inheritable(status_fd, False)
        mem_mb = values.get("--mem-mb")
        if mem_mb:
            step = "setrlimit(RLIMIT_DATA)"
            limit = int(mem_mb) * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
        step = "exec"
        os.execvp(command[0], command)
    except OSError as e:
        where = f"cannot run {command[0]!r}" if step == "exec" else f"{step} failed"
        _fail(status_fd, e.errno or 0, f"{where}: {e.strerror or e}")
    except (ValueError, KeyError) as e:
        _fail(status_fd, 22, f"{step} failed: {e}")


if __name__ == "__main__":
    main(sys.argv[1:])
