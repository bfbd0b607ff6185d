"""Helpers of the client tests: publishing numbered alerts, reading subscriptions, running
the CLI."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

from gateway.server import Gateway
from shared.bus import EventBus
from shared.client import DashboardEvent, Subscription
from shared.keys import LOGS_TOPIC
from shared.protocol import SystemAlertMessage, SystemAlertPayload
from tests.helpers import ROOT, t, wait_for


def numbered_alert(n: int, level: str = "info", category: str = "resource") -> SystemAlertMessage:
    return SystemAlertMessage(
        type="system:alert",
        payload=SystemAlertPayload(level=level, category=category, message=str(n)),  # type: ignore[arg-type]
    )


async def publish_alerts(
    bus: EventBus, numbers: range | list[int], level: str = "info", category: str = "resource"
) -> None:
    items: list[Any] = [
        (LOGS_TOPIC, numbered_alert(n, level, category), (level, category)) for n in numbers
    ]
    for i in range(0, len(items), 200):
        await bus.publish_many(items[i : i + 200])


async def live(gateway: Gateway, *subs: Subscription) -> None:
    """Wait until an in-process gateway delivers live events to these subscriptions.

    The gateway acks a subscribe *before* it has started following the topic (Redis channel
    subscribed, head read), and what is published in between is never delivered to the new
    subscription; tests that publish right after subscribing wait for this first."""

    def ready() -> bool:
        for sub in subs:
            route = gateway.routes.get(sub.topic)
            if route is None or route.held:
                return False
            attached = route.subscriptions.get(sub.id)
            if attached is None or attached.catching_up:
                return False
        return True

    await wait_for(ready, what="the subscriptions to be live on the gateway")


async def warm_up(
    bus: EventBus, sub: Subscription, level: str = "info", category: str = "resource"
) -> None:
    """:func:`live` for a gateway process: publish sentinel alerts (negative numbers) until
    the newest one arrives; everything published afterwards is delivered."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + t(15)
    published = 0
    while True:
        published += 1
        await publish_alerts(bus, [-published], level, category)
        try:
            while numbers([await sub.next(0.2)]) != [-published]:
                pass
            return
        except TimeoutError:
            if loop.time() > deadline:
                raise AssertionError("the subscription never became live") from None


async def take(sub: Subscription, n: int, timeout: float = 5.0) -> list[DashboardEvent]:
    return [await sub.next(t(timeout)) for _ in range(n)]


def numbers(events: list[DashboardEvent]) -> list[int]:
    return [int(e.payload.message) for e in events if isinstance(e, SystemAlertMessage)]


# ---------------------------------------------------------------------------
# Running the ``teamdash`` CLI as a real process
# ---------------------------------------------------------------------------


class CliProcess:
    """``python -m shared.cli ARGS`` with the test's environment; stdout and stderr are
    collected as they come, so a test can wait for a progress line while it runs."""

    def __init__(self, proc: Any) -> None:
        self.proc = proc
        self.stdout = ""
        self.stderr = ""
        self._readers = [
            asyncio.create_task(self._pump(proc.stdout, "stdout")),
            asyncio.create_task(self._pump(proc.stderr, "stderr")),
        ]

    @classmethod
    async def start(cls, env: dict[str, str], *args: str) -> CliProcess:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "shared.cli",
            *args,
            env={**os.environ, **env},
            cwd=ROOT,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(proc)

    async def _pump(self, stream: Any, name: str) -> None:
        while chunk := await stream.read(4096):
            setattr(self, name, getattr(self, name) + chunk.decode(errors="replace"))

    @property
    def running(self) -> bool:
        return self.proc.returncode is None

    async def wait_stderr(self, text: str, timeout: float = 15.0) -> None:
        async def seen() -> bool:
            if text in self.stderr:
                return True
            if self.proc.returncode is not None:
                await asyncio.gather(*self._readers)
                if text in self.stderr:
                    return True
                raise AssertionError(
                    f"the CLI exited ({self.proc.returncode}) before printing {text!r}:\n"
                    f"{self.stdout}\n{self.stderr}"
                )
            return False

        try:
            await wait_for(seen, timeout=timeout, what=f"{text!r} on stderr")
        except AssertionError as e:
            raise AssertionError(f"{e}\nstdout: {self.stdout}\nstderr: {self.stderr}") from None

    async def wait(self, timeout: float = 20.0) -> int:
        try:
            rc = await asyncio.wait_for(self.proc.wait(), t(timeout))
        except TimeoutError:
            await self.kill()
            raise AssertionError(
                f"the CLI did not exit in time\nstdout: {self.stdout}\nstderr: {self.stderr}"
            ) from None
        await asyncio.gather(*self._readers)
        return int(rc)

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        await asyncio.gather(*self._readers, return_exceptions=True)


async def run_cli(env: dict[str, str], *args: str, timeout: float = 30.0) -> tuple[int, str, str]:
    """Run the CLI to its end: (exit code, stdout, stderr)."""
    cli = await CliProcess.start(env, *args)
    rc = await cli.wait(timeout)
    return rc, cli.stdout, cli.stderr
