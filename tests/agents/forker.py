"""Fixture agent: scatters processes that try to outlive it, then prints and echoes.

Starts N (first argument, default 40) ``sleep`` processes: half are children in a session
of their own (``setsid``: they left the agent's process group), half are grandchildren
double-forked away (their parent exits at once, so they are orphans, in a session of their
own too). Every one inherits the agent's environment, so a test finds them all by a marker
variable it passes in ``environment``. Prints ``ready <pids>`` when all are started, then
echoes each stdin line as ``echo: <line>`` (and keeps printing a tick every 0.1 s with
``--tick``)."""

import os
import subprocess
import sys
import threading
import time

n = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 40
pids: list[int] = []
for _ in range(n // 2):
    pids.append(subprocess.Popen(["sleep", "300"], start_new_session=True).pid)
for _ in range(n - n // 2):
    read_fd, write_fd = os.pipe()
    middle = os.fork()
    if middle == 0:
        os.setsid()
        grandchild = os.fork()
        if grandchild == 0:
            os.execvp("sleep", ["sleep", "300"])
        os.write(write_fd, f"{grandchild}\n".encode())
        os._exit(0)
    os.waitpid(middle, 0)
    os.close(write_fd)
    with os.fdopen(read_fd) as f:
        pids.append(int(f.read().strip()))
print("ready " + " ".join(map(str, pids)), flush=True)

if "--tick" in sys.argv:

    def tick() -> None:
        i = 0
        while True:
            i += 1
            print(f"tick {i}", flush=True)
            time.sleep(0.1)

    threading.Thread(target=tick, daemon=True).start()

for line in sys.stdin:
    print(f"echo: {line.strip()}", flush=True)
