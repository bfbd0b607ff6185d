"""Fixture agent: starts grandchildren that sleep (in its process group), prints their pids,
then waits for commands. ``--ignore-term``: it (and its children) ignore SIGTERM, so only
the SIGKILL after the grace period ends them."""

import signal
import subprocess
import sys

IGNORE = "--ignore-term" in sys.argv
if IGNORE:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
code = "import signal, time\n"
if IGNORE:
    code += "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
code += "time.sleep(300)\n"
children = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(3)]
# A grandchild of a grandchild, too.
children.append(subprocess.Popen(["sh", "-c", "sleep 300 & wait"]))
print("children " + " ".join(str(c.pid) for c in children), flush=True)
for line in sys.stdin:
    print(f"got {line.strip()}", flush=True)
