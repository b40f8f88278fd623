"""The `text/event-stream` response.

Starlette's StreamingResponse stops listening for `http.disconnect` once the
server speaks ASGI 2.4 and then only notices a gone client when a write fails,
which on a quiet stream is up to one heartbeat later. We always listen, so a
closed tab releases its follower (and, with `on_disconnect=cancel`, the upstream
call) at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Protocol

from starlette.types import Receive, Scope, Send

from .sse import retry_field

RETRY = retry_field(3000)


class Events(Protocol):
    def __aiter__(self) -> AsyncIterator[bytes]: ...
    async def aclose(self) -> None: ...


class EventStreamResponse:
    def __init__(self, events: Events, headers: dict[str, str] | None = None, *, prefix: bytes = b"") -> None:
        self.events = events
        self.prefix = prefix
        self.headers = {
            "content-type": "text/event-stream; charset=utf-8",
            "cache-control": "no-cache, no-transform",
            "x-accel-buffering": "no",
            **(headers or {}),
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(k.encode(), v.encode()) for k, v in self.headers.items()],
            }
        )
        stream = asyncio.ensure_future(self._stream(send))
        watch = asyncio.ensure_future(_wait_for_disconnect(receive))
        try:
            await asyncio.wait((stream, watch), return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
            stream.cancel()
            await asyncio.gather(stream, watch, return_exceptions=True)
            await self.events.aclose()
        if stream.done() and not stream.cancelled() and stream.exception() is not None:
            raise stream.exception()  # type: ignore[misc]

    async def _stream(self, send: Send) -> None:
        await send({"type": "http.response.body", "body": RETRY + self.prefix, "more_body": True})
        async for chunk in self.events:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
