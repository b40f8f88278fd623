"""Waiting for whichever comes first, and leaving nothing behind."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable


async def first_of(*waits: Awaitable[object], timeout: float | None = None) -> None:
    """Until one of `waits` is done, or `timeout` seconds pass; the others are cancelled, and
    awaited, so no task outlives the call and no exception goes unretrieved."""
    tasks = [asyncio.ensure_future(wait) for wait in waits]
    try:
        await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
