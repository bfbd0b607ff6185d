"""Fixture agent: prints N numbered lines to stdout (every 100th also to stderr) as fast as
it can, then exits 0. N is the first argument (default 5000)."""

import sys

n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
out = sys.stdout
for i in range(1, n + 1):
    out.write(f"line {i}\n")
    if i % 100 == 0:
        sys.stderr.write(f"err {i}\n")
out.flush()
sys.stderr.flush()
