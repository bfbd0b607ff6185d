"""Fixture agent: each command is a number of seconds to "work" before completing."""

import sys
import time

for line in sys.stdin:
    try:
        seconds = float(line.strip() or "0")
    except ValueError:
        seconds = 0.0
    print(f"working for {seconds}s", flush=True)
    time.sleep(seconds)
    print("__DONE__", flush=True)
