"""Child processes that die with the process that started them.

``teamdash up`` (and :class:`shared.topology.LocalTopology`) start every service in a session
of its own, so a terminal's Ctrl-C reaches only the supervisor, which then stops them in
order. The flip side: when the supervisor itself dies without stopping them (SIGKILL, or an
exception while stopping), nothing else would ever stop them, and they would live on under
init, still holding their ports. :func:`die_with_parent` closes that hole: the child is
started through a tiny exec wrapper that arms ``PR_SET_PDEATHSIG`` (Linux) before it becomes
the real program, so the kernel sends it a signal when its parent dies, however it dies.

The signal is SIGTERM, which every service handles as a clean stop (the runner stops its
agents and publishes their final status), not SIGKILL. No ``preexec_fn``: that is unsafe in
a process with threads.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence

#: Run with ``python -I -S -c`` before the real program: arm the parent-death signal, make
#: sure the parent did not die before it was armed, then exec the program (same pid).
DIE_WITH_PARENT = """
import os, sys
parent, sig, argv = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
if sys.platform.startswith("linux"):
    import ctypes
    ctypes.CDLL(None).prctl(1, sig, 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(3)  # the parent died before the signal was armed
os.execv(argv[0], argv)
"""


def die_with_parent(argv: Sequence[str], sig: signal.Signals = signal.SIGTERM) -> list[str]:
    """``argv`` (``argv[0]`` an absolute path: no PATH lookup) wrapped so that the program
    gets ``sig`` when the calling process dies. Start it from the main thread: the kernel
    ties the signal to the thread that forked the child."""
    if not os.path.isabs(argv[0]):
        raise ValueError(f"die_with_parent needs an absolute program path, not {argv[0]!r}")
    return [
        sys.executable,
        "-I",
        "-S",
        "-c",
        DIE_WITH_PARENT,
        str(os.getpid()),
        str(int(sig)),
        *argv,
    ]
