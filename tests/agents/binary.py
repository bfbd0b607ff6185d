"""Fixture agent: writes invalid UTF-8 and multi-byte characters split across writes."""

import os
import sys
import time

out = sys.stdout.buffer


def write(data: bytes) -> None:
    out.write(data)
    out.flush()
    time.sleep(0.12)  # longer than the runner's flush delay: each write is read alone


write(b"caf\xc3")  # e-acute split after its first byte
write(b"\xa9 ok\n")
write(b"bad \xff\xfe bytes\n")
write("snow \u2603 ".encode()[:-2])  # the snowman cut in its middle
write("snow \u2603 ".encode()[-2:] + b"\n")
emoji = "\U0001f600".encode()
write(b"smile " + emoji[:1])
write(emoji[1:3])
write(emoji[3:] + b" end\n")
write(b"__DONE__\n")
sys.stdin.read()
os._exit(0)
