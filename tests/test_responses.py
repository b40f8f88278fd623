"""`EventStreamResponse` alone, called as uvicorn calls it, with a `receive` and a `send` we
control: how it ends when its client goes, and that it costs its server one task more."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from chat.responses import RETRY, EventStreamResponse

pytestmark = pytest.mark.anyio

SCOPE = {"type": "http", "method": "GET", "path": "/api/messages/1/stream", "client": ("127.0.0.1", 5)}


class Client:
    """The server's side of one client: what was sent to it, and its disconnect on demand."""

    def __init__(self) -> None:
        self.bodies: list[tuple[bytes, bool]] = []
        self.began = asyncio.Event()  # the first body went out: the response is streaming
        self.gone = asyncio.Event()
        self.released = asyncio.Event()  # the response left its events

    async def receive(self) -> dict[str, Any]:
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            self.bodies.append((message["body"], message["more_body"]))
            self.began.set()

    @contextlib.asynccontextmanager
    async def events(self) -> AsyncIterator[AsyncIterator[bytes]]:
        try:
            yield quiet()
        finally:
            self.released.set()


async def quiet() -> AsyncIterator[bytes]:
    """A reply that has nothing more to say for now."""
    await asyncio.Event().wait()
    yield b"never"


async def test_a_client_that_disconnects_ends_a_quiet_response_unfinished() -> None:
    client = Client()
    serving = asyncio.create_task(EventStreamResponse(client.events())(SCOPE, client.receive, client.send))
    await asyncio.wait_for(client.began.wait(), 5)

    client.gone.set()
    await asyncio.wait_for(serving, 5)  # ended, not cancelled: the server's task goes on

    assert client.released.is_set()
    assert client.bodies == [(RETRY, True)]  # no end of the body: nobody is there to read it


async def test_a_streaming_response_holds_one_task_besides_the_servers() -> None:
    client = Client()
    before = len(asyncio.all_tasks())
    serving = asyncio.create_task(EventStreamResponse(client.events())(SCOPE, client.receive, client.send))
    await asyncio.wait_for(client.began.wait(), 5)

    assert len(asyncio.all_tasks()) == before + 2  # the server's task, and the watch of `receive`
    client.gone.set()
    await asyncio.wait_for(serving, 5)


async def test_a_cancellation_from_outside_is_not_mistaken_for_the_client_leaving() -> None:
    client = Client()
    serving = asyncio.create_task(EventStreamResponse(client.events())(SCOPE, client.receive, client.send))
    await asyncio.wait_for(client.began.wait(), 5)

    serving.cancel()  # the server shutting down, say
    with pytest.raises(asyncio.CancelledError):
        await serving

    assert client.released.is_set()


def test_a_response_sends_the_event_stream_headers_and_its_own() -> None:
    sent = EventStreamResponse(contextlib.nullcontext(quiet()), {"X-Message-ID": "7"}).raw_headers
    assert sent == [
        (b"cache-control", b"no-cache, no-transform"),
        (b"x-accel-buffering", b"no"),
        (b"content-type", b"text/event-stream; charset=utf-8"),
        (b"x-message-id", b"7"),
    ]


def test_a_header_of_its_own_replaces_the_event_streams() -> None:
    sent = EventStreamResponse(contextlib.nullcontext(quiet()), {"Cache-Control": "no-store"}).raw_headers
    assert sorted(sent) == [
        (b"cache-control", b"no-store"),
        (b"content-type", b"text/event-stream; charset=utf-8"),
        (b"x-accel-buffering", b"no"),
    ]
