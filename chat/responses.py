"""The `text/event-stream` response.

Starlette's StreamingResponse stops listening for `http.disconnect` once the
server speaks ASGI 2.4 and then only notices a gone client when a write fails,
which on a quiet stream is up to one heartbeat later. We always listen, so a
closed tab releases its subscription (and, with `on_disconnect=cancel`, the upstream
call) at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable
from contextlib import AbstractAsyncContextManager

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from .sse import retry_field

RETRY = retry_field(3000)

# What a response streams: entered when the response starts, left when it ends.
Events = AbstractAsyncContextManager[AsyncIterable[bytes]]


class EventStreamResponse(Response):
    media_type = "text/event-stream; charset=utf-8"

    def __init__(self, events: Events, headers: dict[str, str] | None = None) -> None:
        self.events = events
        self.status_code = 200
        self.background = None
        self.init_headers(
            {"cache-control": "no-cache, no-transform", "x-accel-buffering": "no", **(headers or {})}
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with self.events as chunks:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            stream = asyncio.ensure_future(_stream(chunks, send))
            watch = asyncio.ensure_future(_wait_for_disconnect(receive))
            try:
                await asyncio.wait((stream, watch), return_when=asyncio.FIRST_COMPLETED)
            finally:
                watch.cancel()
                stream.cancel()
                await asyncio.gather(stream, watch, return_exceptions=True)
        if stream.done() and not stream.cancelled() and (error := stream.exception()) is not None:
            raise error


async def _stream(chunks: AsyncIterable[bytes], send: Send) -> None:
    await send({"type": "http.response.body", "body": RETRY, "more_body": True})
    async for chunk in chunks:
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
