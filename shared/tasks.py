"""Helpers for background tasks that must stop when they are cancelled."""

from __future__ import annotations

import asyncio


def raise_if_cancelled() -> None:
    """Re-raise a cancellation that a Redis call swallowed.

    redis-py 8 sometimes *returns normally* from a command whose task was cancelled while it
    ran (measured: two of three cancellations landing mid-command). A loop that calls Redis
    must call this after each Redis call (and before sleeping), or a cancelled loop goes on
    forever and the owner's close waits for it forever."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
