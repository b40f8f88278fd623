"""Opening a provider's stream, and the loop every HTTP adapter shares."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
import respx

from chat.providers.base import ProviderError
from chat.providers.deadlines import Timeouts
from chat.providers.http import open_stream

from .fakes import FakeBody

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


@pytest.mark.anyio
async def test_headers_held_back_past_the_first_token_deadline_time_out() -> None:
    released = asyncio.Event()

    async def hold(request: httpx.Request) -> httpx.Response:
        await released.wait()  # a proxy that sends nothing until the first token
        return httpx.Response(200)

    async with httpx.AsyncClient(transport=httpx.MockTransport(hold)) as client:
        async with asyncio.timeout(2):
            with pytest.raises(ProviderError) as info:
                async with open_stream(
                    client, URL, body={}, headers={}, timeouts=Timeouts(first_token=0.05), provider="p"
                ):
                    raise AssertionError("unreachable")
    assert (info.value.type, info.value.retryable) == ("timeout", True)
    assert info.value.message == "p sent no response for 0.05s"


@pytest.mark.anyio
async def test_a_cancellation_that_is_not_the_deadline_goes_through() -> None:
    waiting = asyncio.Event()

    async def hold(request: httpx.Request) -> httpx.Response:
        waiting.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async with httpx.AsyncClient(transport=httpx.MockTransport(hold)) as client:

        async def open_it() -> None:
            async with open_stream(client, URL, body={}, headers={}, timeouts=Timeouts(), provider="p"):
                pass

        task = asyncio.create_task(open_it())
        await waiting.wait()  # it is waiting for the response now
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


@pytest.mark.anyio
async def test_a_compressed_stream_is_refused_not_inflated(
    client: httpx.AsyncClient, router: respx.MockRouter
) -> None:
    import gzip

    bomb = gzip.compress(b"data: " + b"x" * 10_000_000 + b"\n\n")  # ~10 KB that inflate to 10 MB
    router.post(URL).mock(
        return_value=httpx.Response(
            200, headers={"content-type": "text/event-stream", "content-encoding": "gzip"}, content=bomb
        )
    )
    with pytest.raises(ProviderError) as info:
        await read_all(client)
    assert info.value.type == "protocol" and "gzip-compressed" in info.value.message


@pytest.mark.anyio
async def test_a_compressed_error_keeps_its_status(
    client: httpx.AsyncClient, router: respx.MockRouter
) -> None:
    import gzip

    router.post(URL).mock(
        return_value=httpx.Response(
            401, headers={"content-encoding": "gzip"}, content=gzip.compress(b'{"error": "bad key"}')
        )
    )
    with pytest.raises(ProviderError) as info:
        await read_all(client)
    assert (info.value.type, info.value.status) == ("auth", 401)
