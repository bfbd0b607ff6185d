"""Test helpers: scaled timeouts, waiting for conditions, and real service processes."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
AGENTS_DIR = Path(__file__).resolve().parent / "agents"

#: Multiply every test timeout by this on slow machines (``TEAMDASH_TEST_TIMEOUT_SCALE=3``).
TIMEOUT_SCALE = float(os.environ.get("TEAMDASH_TEST_TIMEOUT_SCALE", "1"))


def t(seconds: float) -> float:
    """A timeout, scaled for the machine."""
    return seconds * TIMEOUT_SCALE


async def wait_for(
    condition: Callable[[], Awaitable[object]] | Callable[[], object],
    *,
    timeout: float = 10.0,
    interval: float = 0.05,
    what: str = "condition",
) -> object:
    """Poll ``condition`` until it returns a truthy value; fail after ``timeout`` (scaled)."""
    deadline = time.monotonic() + t(timeout)
    while True:
        value = condition()
        if asyncio.iscoroutine(value) or isinstance(value, Awaitable):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {t(timeout):.1f}s waiting for {what}")
        await asyncio.sleep(interval)


def ensure_tool(binary: str, package: str) -> str:
    """Path of a Debian tool a test needs, installed with apt-get when it is missing (as
    root, where apt-get exists); otherwise the test fails saying what to install."""
    found = shutil.which(binary)
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=False, capture_output=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", package],
            env=env,
            check=False,
            capture_output=True,
        )
        found = shutil.which(binary)
    if found is None:
        raise AssertionError(
            f"`{binary}` is not installed and could not be: apt-get install {package}"
        )
    return found


def http_get(url: str) -> tuple[int, str]:
    """``GET url`` → (status, body), for health and metrics endpoints (error statuses too)."""
    try:
        with urllib.request.urlopen(url, timeout=t(5)) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class ServiceProcess:
    """One ``teamdash <service>`` process with its own environment, stopped on ``stop()``.

    Its output goes to a log file (shown when a test fails via ``log_text()``), and
    ``stop()`` checks that it left no descendant process behind."""

    def __init__(self, args: list[str], env: Mapping[str, str], log_path: Path) -> None:
        self.args = args
        self.log_path = log_path
        full_env = {**os.environ, **env}
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shared.cli", *args],
            env=full_env,
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.pid = self.proc.pid

    def log_text(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def kill(self) -> None:
        """SIGKILL the service itself (its children are left as a crash would leave them)."""
        if self.alive():
            self.proc.kill()
            self.proc.wait(10)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, wait, then SIGKILL whatever is left of its process group."""
        children = self.descendants()
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(t(timeout))
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        leftovers = [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        for p in leftovers:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._log.close()
        if leftovers:
            raise AssertionError(f"{self.args[0]} left processes behind: {leftovers}")
        return self.proc.returncode
