"""Fixture agent: prints a line, then exits with code 3 on the first command."""

import sys

print("ready", flush=True)
sys.stdin.readline()
print("crashing now", flush=True)
print("fatal: something went wrong", file=sys.stderr, flush=True)
sys.exit(3)
