"""Bench agent: for each stdin line ``N SIZE``, prints N numbered lines as fast as it can,
each ``"{i} {t_ns} xxx…"`` (``SIZE`` characters with the newline, ``t_ns`` = wall-clock
nanoseconds when the line was made), then ``__DONE__`` (the completion marker)."""

import sys
import time

out = sys.stdout
for command in sys.stdin:
    try:
        n, size = (int(x) for x in command.split())
    except ValueError:
        print(f"usage: N SIZE, not {command.strip()!r}")
        print("__DONE__", flush=True)
        continue
    for i in range(n):
        head = f"{i} {time.time_ns()} "
        out.write(head + "x" * max(0, size - len(head) - 1) + "\n")
    out.write("__DONE__\n")
    out.flush()
