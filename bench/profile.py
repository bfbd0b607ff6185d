"""Sampling the gateway with py-spy during a scenario step, and a summary of where it spent
its time (by leaf function = "self", and by every function on the stack = "inclusive").

py-spy runs ``--nonblocking`` (it does not pause the gateway to sample) and records only
non-idle samples, so a function's share of samples is its share of the gateway's busy
time; ``busy`` (samples / (rate × seconds)) approximates the main thread's CPU use.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def py_spy() -> str | None:
    """The py-spy binary: next to this interpreter (the venv), else on PATH."""
    candidate = Path(sys.executable).with_name("py-spy")
    if candidate.is_file():
        return str(candidate)
    return shutil.which("py-spy")


def _short(path: str) -> str:
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        i = path.find(marker)
        if i >= 0:
            return path[i + len(marker) :]
    return path


def _frame_key(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    return f"{m.group('func')} ({_short(m.group('file'))})"


class Profiler:
    """``await start()`` before the step, ``await finish()`` after it."""

    def __init__(self, pid: int, out_path: Path, *, rate: int = 250) -> None:
        self.pid = pid
        self.out_path = out_path
        self.rate = rate
        self.proc: asyncio.subprocess.Process | None = None
        self._t0 = 0.0
        self.error: str | None = None

    async def start(self) -> None:
        binary = py_spy()
        if binary is None:
            self.error = "py-spy not installed (pip install py-spy)"
            return
        self.out_path.parent.mkdir(parents=True, exist_ok=True)
        self.proc = await asyncio.create_subprocess_exec(
            binary,
            "record",
            "--pid",
            str(self.pid),
            "--rate",
            str(self.rate),
            "--format",
            "raw",
            "--nonblocking",
            "-o",
            str(self.out_path),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        self._t0 = time.monotonic()
        await asyncio.sleep(0.3)  # let it attach before the load starts

    async def finish(self, top: int = 25) -> dict[str, Any]:
        if self.proc is None:
            return {"error": self.error}
        seconds = time.monotonic() - self._t0
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            _, err = await asyncio.wait_for(self.proc.communicate(), 30)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            return {"error": "py-spy did not finish"}
        if not self.out_path.exists():
            return {"error": f"py-spy wrote nothing: {err.decode(errors='replace')[-500:]}"}
        summary = summarize(self.out_path.read_text(errors="replace"), top=top)
        summary["seconds"] = round(seconds, 2)
        summary["rate"] = self.rate
        summary["busy"] = (
            round(summary["samples"] / (self.rate * seconds), 3) if seconds > 0 else None
        )
        summary["file"] = str(self.out_path)
        return summary


def summarize(folded: str, *, top: int = 25) -> dict[str, Any]:
    """Self and inclusive shares of the functions in py-spy's collapsed-stack output."""
    self_counts: Counter[str] = Counter()
    incl_counts: Counter[str] = Counter()
    total = 0
    for line in folded.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        frames = [_frame_key(f) for f in stack.split(";") if f]
        # The first frame is the thread ("process 123:\"python\"" / thread name): skip it.
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        self_counts[frames[-1]] += count
        for f in set(frames):
            incl_counts[f] += count

    def table(c: Counter[str]) -> list[dict[str, Any]]:
        return [
            {"function": k, "samples": v, "share": round(v / total, 4)}
            for k, v in c.most_common(top)
        ]

    return {"samples": total, "self": table(self_counts), "inclusive": table(incl_counts)}
