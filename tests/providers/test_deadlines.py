"""Each wait for a provider is bounded: the first chunk by `first_token`, later ones by `idle`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing

import pytest

from chat.providers.base import ProviderError
from chat.providers.deadlines import Deadline, Timeouts, read_within


async def read_with_deadlines(
    chunks: AsyncIterator[bytes], timeouts: Timeouts, *, started: float | None = None
) -> AsyncIterator[bytes]:
    """`read_within` with a deadline of its own, `first_token` after `started` (or now)."""
    loop = asyncio.get_running_loop()
    with Deadline((loop.time() if started is None else started) + timeouts.first_token) as deadline:
        async with aclosing(read_within(chunks, deadline, timeouts, "p")) as inner:
            async for chunk in inner:
                yield chunk


class Source:
    def __init__(self, delays: list[float]) -> None:
        self.delays = delays
        self.closed = False

    async def gen(self) -> AsyncIterator[bytes]:
        try:
            for i, delay in enumerate(self.delays):
                await asyncio.sleep(delay)
                yield str(i).encode()
        finally:
            self.closed = True


@pytest.mark.anyio
async def test_deadlines_pass_a_steady_stream() -> None:
    source = Source([0.0, 0.01, 0.01])
    got = [c async for c in read_with_deadlines(source.gen(), Timeouts(first_token=1, idle=1))]
    assert got == [b"0", b"1", b"2"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("delays", "waiting_for"), [([5.0], "its first token"), ([0, 5.0], "more of its stream")]
)
async def test_deadlines_raise_timeout(delays: list[float], waiting_for: str) -> None:
    source = Source(delays)
    async with asyncio.timeout(2):
        with pytest.raises(ProviderError) as info:
            async for _ in read_with_deadlines(source.gen(), Timeouts(first_token=0.05, idle=0.05)):
                pass
    assert info.value.type == "timeout"
    assert waiting_for in info.value.message
    assert source.closed


@pytest.mark.anyio
async def test_slow_consumer_is_not_a_stall() -> None:
    source = Source([0, 0, 0])
    got = []
    async for chunk in read_with_deadlines(source.gen(), Timeouts(first_token=0.05, idle=0.05)):
        got.append(chunk)
        await asyncio.sleep(0.1)  # longer than idle, but upstream is not to blame
    assert got == [b"0", b"1", b"2"]


@pytest.mark.anyio
async def test_first_token_deadline_counts_from_started() -> None:
    # Counted from `started`, the deadline is 0.1s away; counted from now, 0.4s.
    loop = asyncio.get_running_loop()
    source = Source([0.25])
    timeouts = Timeouts(first_token=0.4, idle=1)
    with pytest.raises(ProviderError) as info:
        async for _ in read_with_deadlines(source.gen(), timeouts, started=loop.time() - 0.3):
            pass
    assert info.value.type == "timeout"


@pytest.mark.anyio
async def test_closing_early_closes_the_source() -> None:
    source = Source([0, 0, 0])
    chunks = read_with_deadlines(source.gen(), Timeouts())
    assert await anext(chunks) == b"0"
    await chunks.aclose()  # type: ignore[attr-defined]
    assert source.closed
