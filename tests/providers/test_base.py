from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from chat.providers.base import ProviderError, close_stream


def test_error_as_dict_leaves_out_what_is_unknown() -> None:
    error = ProviderError("rate_limited", "slow down", status=429, retry_after=2.5, retryable=True)
    assert error.as_dict() == {
        "type": "rate_limited",
        "message": "slow down",
        "status": 429,
        "retry_after": 2.5,
    }


@pytest.mark.anyio
async def test_close_stream_runs_the_generators_cleanup() -> None:
    closed = []

    async def stream() -> AsyncIterator[str]:
        try:
            yield "a"
            yield "b"
        finally:
            closed.append(True)

    items = stream()
    assert await anext(items) == "a"
    await close_stream(items)
    assert closed == [True]


@pytest.mark.anyio
async def test_close_stream_accepts_a_plain_iterator() -> None:
    class Plain:
        def __aiter__(self) -> Plain:
            return self

        async def __anext__(self) -> str:
            raise StopAsyncIteration

    await close_stream(Plain())
