"""Fixture agent: prints ``tick N`` for N = 1..COUNT, one every INTERVAL seconds, then exits 0.
Arguments: COUNT (default 3000) and INTERVAL (default 0.002). A steady stream to cut a
gateway off in the middle of."""

import sys
import time

count = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
interval = float(sys.argv[2]) if len(sys.argv) > 2 else 0.002
start = time.monotonic()
for i in range(1, count + 1):
    print(f"tick {i}", flush=True)
    # Paced against the start, so the rate holds whatever a write costs.
    delay = start + i * interval - time.monotonic()
    if delay > 0:
        time.sleep(delay)
