"""The processes the benchmark starts, and the command channel to its own helper processes.

Every child runs in its own session (process group) with its output in a log file of the
run's folder; :meth:`Child.stop` sends SIGTERM, waits, then SIGKILLs the whole group, so a
run leaves nothing behind even when a scenario fails half-way.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import orjson
import psutil

ROOT = Path(__file__).resolve().parent.parent


class BenchError(RuntimeError):
    """A benchmark step could not be carried out (a process died, a helper refused)."""


class Child:
    """One child process (``argv`` run with ``sys.executable``) in its own session."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        env: Mapping[str, str],
        log_dir: Path,
        *,
        rpc: bool = False,
    ) -> None:
        self.name = name
        self.argv = [sys.executable, *argv]
        # The benchmark decides every setting: nothing leaks in from the caller's shell.
        inherited = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("TEAMDASH_") and k not in ("REDIS_URL", "DEBUG")
        }
        self.env = {**inherited, **env}
        self.log_path = log_dir / f"{name}.log"
        self.rpc = rpc
        self.proc: asyncio.subprocess.Process | None = None
        self._log: IO[bytes] | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> Child:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: ASYNC230, SIM115 - a local file, closed in stop()
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            env=self.env,
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE if self.rpc else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE if self.rpc else self._log,
            stderr=self._log,
            start_new_session=True,
            limit=64 * 1024 * 1024,
        )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def rss(self) -> int:
        try:
            return int(psutil.Process(self.pid).memory_info().rss)
        except psutil.Error:
            return 0

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    async def call(self, op: str, timeout_s: float = 600.0, **fields: Any) -> dict[str, Any]:
        """Send one command to an RPC child and return its answer (BenchError if refused)."""
        assert self.rpc and self.proc is not None and self.proc.stdin and self.proc.stdout
        async with self._lock:
            if not self.alive():
                raise BenchError(f"{self.name} is not running:\n{self.log_tail()}")
            self.proc.stdin.write(orjson.dumps({"op": op, **fields}) + b"\n")
            await self.proc.stdin.drain()
            try:
                line = await asyncio.wait_for(self.proc.stdout.readline(), timeout_s)
            except TimeoutError as e:
                raise BenchError(f"{self.name}: no answer to {op} within {timeout_s:g}s") from e
        if not line:
            raise BenchError(f"{self.name} exited during {op}:\n{self.log_tail()}")
        answer: dict[str, Any] = orjson.loads(line)
        if not answer.pop("ok", False):
            raise BenchError(f"{self.name}: {op} failed: {answer.get('error')}")
        return answer

    async def stop(self, timeout_s: float = 10.0) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.returncode is None:
            if self.rpc and proc.stdin is not None and not proc.stdin.is_closing():
                proc.stdin.close()  # helpers exit at the end of their input
            else:
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout_s)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # anything left in its session
        except (ProcessLookupError, PermissionError):
            pass
        if self._log is not None:
            self._log.close()
            self._log = None


class Pool:
    """The load-generator processes: the same command to all of them, answers in order."""

    def __init__(self, workers: list[Child]) -> None:
        self.workers = workers

    @property
    def pids(self) -> list[int]:
        return [w.pid for w in self.workers]

    def __len__(self) -> int:
        return len(self.workers)

    async def all(self, op: str, timeout_s: float = 600.0, **fields: Any) -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(w.call(op, timeout_s, **fields) for w in self.workers)))

    async def each(
        self, op: str, per_worker: list[dict[str, Any]], timeout_s: float = 600.0
    ) -> list[dict[str, Any]]:
        """``op`` with its own fields to each of the first ``len(per_worker)`` workers."""
        calls = [w.call(op, timeout_s, **f) for w, f in zip(self.workers, per_worker, strict=False)]
        return list(await asyncio.gather(*calls))

    async def stop(self) -> None:
        await asyncio.gather(*(w.stop() for w in self.workers))
