"""Fixture agent: writes ``TORRENT_MIB`` MiB (its environment; default 32) to stdout with no
newline at all, as fast as it can, once it reads a first line on stdin (so a test can
subscribe first), then exits 0. The bytes are the 64-character cycle of
:data:`ALPHABET` (so a reader can check every byte, in order)."""

import os
import sys

ALPHABET = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-_"
size = int(float(os.environ.get("TORRENT_MIB", "32")) * 1024 * 1024)
block = ALPHABET * 1024  # 64 KiB, a whole number of cycles
out = sys.stdout.buffer
sys.stdin.readline()
written = 0
while written < size:
    chunk = block[: size - written]
    out.write(chunk)
    written += len(chunk)
out.flush()
