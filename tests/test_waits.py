"""Waiting for whichever comes first."""

from __future__ import annotations

import asyncio
import gc

import pytest

from chat.waits import Flag, first_of

pytestmark = pytest.mark.anyio


async def test_the_first_done_ends_the_wait_and_the_rest_are_cancelled() -> None:
    never, soon = asyncio.Event(), asyncio.Event()
    cancelled: list[str] = []

    async def wait(event: asyncio.Event, name: str) -> None:
        try:
            await event.wait()
        except asyncio.CancelledError:
            cancelled.append(name)
            raise

    soon.set()
    await first_of(wait(never, "never"), wait(soon, "soon"))
    assert cancelled == ["never"]


async def test_a_timeout_ends_the_wait_and_leaves_no_task() -> None:
    before = len(asyncio.all_tasks())
    await first_of(asyncio.Event().wait(), asyncio.Event().wait(), timeout=0.01)
    assert len(asyncio.all_tasks()) == before


async def test_a_failure_in_the_loser_is_retrieved_not_reported() -> None:
    async def fails_when_cancelled() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise RuntimeError("cleanup went wrong") from None

    async def quick() -> None:
        return None

    loop = asyncio.get_running_loop()
    reported: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _, context: reported.append(context))
    try:
        await first_of(fails_when_cancelled(), quick())
        gc.collect()  # an unretrieved exception is reported when its task is collected
    finally:
        loop.set_exception_handler(None)
    assert reported == []


async def waiting_on(flag: Flag) -> asyncio.Future[None]:
    """A task waiting on `flag`, returned once its wait has begun."""
    began = asyncio.Event()

    async def wait() -> None:
        began.set()
        await flag.wait()  # runs on at once, up to its waiter, before `began` is heard

    waiter = asyncio.ensure_future(wait())
    await began.wait()
    return waiter


async def test_a_flag_wakes_every_waiter_once_set_and_stays_set() -> None:
    flag = Flag()
    waiters = [await waiting_on(flag) for _ in range(3)]
    assert not flag.is_set() and not any(w.done() for w in waiters)

    flag.set()
    await asyncio.wait_for(asyncio.gather(*waiters), 5)
    assert flag.is_set()
    await asyncio.wait_for(flag.wait(), 5)  # set already: no wait at all


async def test_a_cancelled_wait_on_a_flag_leaves_nothing_behind() -> None:
    flag = Flag()
    waiter = await waiting_on(flag)
    assert len(flag._waiters) == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert flag._waiters == []
    flag.set()
    assert flag.is_set()
