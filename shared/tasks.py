"""Helpers for background tasks that must stop when they are cancelled."""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Coroutine
from typing import Any


def raise_if_cancelled() -> None:
    """Re-raise a cancellation that a Redis call swallowed.

    redis-py 8 sometimes *returns normally* from a command whose task was cancelled while it
    ran (measured: two of three cancellations landing mid-command). A loop that calls Redis
    must call this after each Redis call (and before sleeping), or a cancelled loop goes on
    forever and the owner's close waits for it forever."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class OwnedTasks:
    """The background tasks of one owner (a gateway, a connection, an agent): started with
    :meth:`spawn`, logged if one fails, and all cancelled and awaited by :meth:`close` — no
    fire-and-forget task outlives its owner."""

    def __init__(self, log: logging.Logger, owner: str) -> None:
        self._log = log
        self._owner = owner
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(
        self,
        coro: Coroutine[Any, Any, None],
        name: str,
        *,
        context: contextvars.Context | None = None,
    ) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name, context=context)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def running(self, name: str) -> bool:
        """Whether a task of that name is still running."""
        return any(t.get_name() == name for t in self._tasks)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._log.error(
                "%s: task %s failed", self._owner, task.get_name(), exc_info=task.exception()
            )

    async def close(self) -> None:
        """Cancel every task and wait until all have ended."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
