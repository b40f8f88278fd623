"""Waiting for whichever comes first, and leaving nothing behind; and a cheap flag to wait for."""

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


class Flag:
    """`asyncio.Event`'s `set`, `is_set` and `wait`, without the deque an Event makes as it is
    created (over 600 bytes): each running generation has two, and thousands may be running."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = False
        self._waiters: list[asyncio.Future[None]] = []

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        if self._set:
            return
        self._set = True
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait(self) -> None:
        if self._set:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if waiter in self._waiters:  # cancelled before the flag was set
                self._waiters.remove(waiter)
