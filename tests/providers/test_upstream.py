from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
import respx

from chat.providers.base import ProviderError, Timeouts
from chat.providers.upstream import open_stream, read_with_deadlines

from .fakes import FakeBody

# --- read_with_deadlines ---------------------------------------------------


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
    ("delays", "waiting_for"), [([5.0], "first token"), ([0, 5.0], "more of the stream")]
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


# --- open_stream -----------------------------------------------------------

URL = "https://llm.example/v1/stream"


async def read_all(client: httpx.AsyncClient, json_ok: bool = False) -> bytes:
    async with open_stream(
        client, URL, body={}, headers={}, timeouts=Timeouts(), provider="p", json_ok=json_ok
    ) as chunks:
        return b"".join([c async for c in chunks])


@pytest.mark.anyio
async def test_open_stream_json_200_with_error_raises_it(
    client: httpx.AsyncClient, router: respx.MockRouter
) -> None:
    router.post(URL).mock(
        return_value=httpx.Response(200, json={"error": {"message": "model is loading", "code": 503}})
    )
    with pytest.raises(ProviderError) as info:
        await read_all(client)
    assert (info.value.type, info.value.message) == ("overloaded", "p: model is loading")


@pytest.mark.anyio
async def test_open_stream_json_200_without_error_is_protocol(
    client: httpx.AsyncClient, router: respx.MockRouter
) -> None:
    router.post(URL).mock(return_value=httpx.Response(200, json={"id": "x", "choices": []}))
    with pytest.raises(ProviderError) as info:
        await read_all(client)
    assert info.value.type == "protocol"


@pytest.mark.anyio
async def test_open_stream_json_ok_passes_the_body(
    client: httpx.AsyncClient, router: respx.MockRouter
) -> None:
    router.post(URL).mock(return_value=httpx.Response(200, json={"done": True}))
    assert await read_all(client, json_ok=True) == b'{"done":true}'


@pytest.mark.anyio
async def test_connection_dropped_mid_body_is_translated(
    client: httpx.AsyncClient, router: respx.MockRouter
) -> None:
    class Dropping(FakeBody):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield b"data: {}\n\n"
            raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")

    body = Dropping([])
    router.post(URL).mock(return_value=httpx.Response(200, stream=body))
    with pytest.raises(ProviderError) as info:
        await read_all(client)
    assert (info.value.type, info.value.retryable) == ("upstream_error", True)
    assert "peer closed" in info.value.message
    assert body.closed


@pytest.mark.anyio
async def test_error_body_that_stalls_still_reports_the_status(
    client: httpx.AsyncClient, router: respx.MockRouter
) -> None:
    body = FakeBody([b'{"error": {"message": "ov', b'erloaded"}}'], stall_before=1)
    router.post(URL).mock(return_value=httpx.Response(503, stream=body))
    async with asyncio.timeout(2):
        with pytest.raises(ProviderError) as info:
            async with open_stream(
                client,
                URL,
                body={},
                headers={},
                timeouts=Timeouts(first_token=0.05, idle=0.05),
                provider="p",
            ):
                raise AssertionError("unreachable")
    assert (info.value.type, info.value.status) == ("overloaded", 503)
    assert body.closed
