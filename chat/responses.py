"""The `text/event-stream` response.

Starlette's StreamingResponse stops listening for `http.disconnect` once the
server speaks ASGI 2.4 and then only notices a gone client when a write fails,
which on a quiet stream is up to one heartbeat later. We always listen, so a
closed tab releases its subscription (and, with `on_disconnect=cancel`, the upstream
call) at once.

Deliberate choices:
- A response streams in the server's task for it; the watch of `receive` is the one task
  more, and it (or the stall timer) ends the stream by cancelling that task. Three tasks and
  an `asyncio.wait` per response were a good part of what an idle stream held in memory.
- A client that stops reading is let go. uvicorn puts each chunk in its transport
  buffer at once and makes the *next* send wait while that buffer is full; it empties as
  the client reads (the kernel takes more once a good part of its own buffer was read).
  So a send not done after `stall` seconds means a client that took in next to nothing
  for that long. One timer per response looks at a count of sends every `stall / 2`
  seconds; nothing is timed per token.
- Letting go is returning without ending the body: ASGI has no way to abort a
  connection, and a last chunk could not be sent anyway (the send would wait like the
  others). uvicorn then logs "ASGI callable returned without completing response" and
  closes the connection once what it buffered has gone out, so the client reads to the end
  of a chunk, sees the connection end rather than a finished stream, and resumes with
  `Last-Event-ID`. Until it reads (or goes), the server holds one transport buffer for it
  (no chunk is longer than `CHUNK_BYTES`) and the connection stays open.
- A follower of a shared broker that lost Redis for good (`chat.live_errors.BrokerError`)
  ends the same way, unfinished: the reply is not over, so no `error` event, and the client
  resumes with `Last-Event-ID` wherever Redis answers again.
- A client let go is a client gone: it leaves the topic like a closed tab, so with
  `on_disconnect=cancel` the generation stops if it was the last one following. A client
  too slow to take in the reply is not one to keep paying the provider for.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable
from contextlib import AbstractAsyncContextManager
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from .live_errors import BrokerError
from .sse import retry_field
from .subscription import CHUNK_BYTES

log = logging.getLogger("sidechat")

RETRY = retry_field(3000)

# The headers of every event stream, encoded once: each open stream holds its list of headers.
_OWN_HEADERS = (
    ("cache-control", "no-cache, no-transform"),
    ("x-accel-buffering", "no"),
    ("content-type", "text/event-stream; charset=utf-8"),
)
_OWN = frozenset(name for name, _ in _OWN_HEADERS)
HEADERS = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in _OWN_HEADERS]

# What a response streams: entered when the response starts, left when it ends.
Events = AbstractAsyncContextManager[AsyncIterable[bytes]]


class EventStreamResponse(Response):
    """Streams `events` until they end, the client leaves, or a send of it has waited
    `stall` seconds."""

    media_type = "text/event-stream; charset=utf-8"

    def __init__(self, events: Events, headers: dict[str, str] | None = None, *, stall: float = 30.0) -> None:
        self.events = events
        self.stall = stall
        self.status_code = 200
        self.background = None
        headers = headers or {}
        if any(name.lower() in _OWN for name in headers):  # one of ours replaced: Starlette's way
            replaced = {name.lower() for name in headers}
            self.init_headers({**{k: v for k, v in _OWN_HEADERS if k not in replaced}, **headers})
        else:  # ours are shared, encoded once; only the response's own are made for it
            own = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
            self.raw_headers = HEADERS + own

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with self.events as chunks:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            if scope["method"] == "HEAD":  # the headers are the whole answer; a feed never ends
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            try:
                let_go = await _relay(chunks, send, receive, self.stall)
            except BrokerError as error:
                log.warning(
                    "%s %s: %s; the response ends unfinished, and the client resumes with Last-Event-ID",
                    scope["method"],
                    scope["path"],
                    error,
                )
                return
        if let_go:
            client = scope.get("client") or ("unknown", 0)
            log.info(
                "%s %s: let the client at %s:%s go, it took in nothing for %gs (it can resume with"
                " Last-Event-ID)",
                scope["method"],
                scope["path"],
                *client,
                self.stall,
            )


async def _relay(chunks: AsyncIterable[bytes], send: Send, receive: Receive, stall: float) -> bool:
    """Stream `chunks` in this task until they end or the client is let go: True when it was let
    go for taking in nothing for `stall` seconds, False when it went or the chunks ended."""
    task = asyncio.current_task()
    assert task is not None
    sends = Sends(stall, task)
    watch = asyncio.ensure_future(_wait_for_disconnect(receive))
    watch.add_done_callback(sends.gone)
    try:
        await _stream(chunks, send, sends)
    except asyncio.CancelledError:
        if not sends.ended or task.uncancel() > 0:  # cancelled from outside too: not ours to end
            raise
    finally:
        sends.close()
        watch.remove_done_callback(sends.gone)
        watch.cancel()
    return sends.stalled


class Sends:
    """How far a response's sends got, looked at by one timer every `stall / 2` seconds; and
    the one place that ends the response's task early, when its client is gone or stalled.

    `count` goes up once as a send begins and once as it ends, so it is odd while one is
    under way. The same send still under way at three looks in a row has waited at least
    `stall` seconds (and less than 1.5 × `stall`): then `stalled` is set and the task is
    cancelled, as it is when the client is `gone`. `ended` says the task was cancelled here."""

    __slots__ = ("count", "stalled", "ended", "_task", "_loop", "_period", "_seen", "_looks", "_timer")

    def __init__(self, stall: float, task: asyncio.Task[Any]) -> None:
        self.count = 0
        self.stalled = False
        self.ended = False
        self._task = task
        self._loop = asyncio.get_running_loop()
        self._period = stall / 2
        self._seen = 0  # `count` at the look that first found the send under way now
        self._looks = 0  # looks since then that found it still under way
        self._timer: asyncio.TimerHandle | None = self._loop.call_later(self._period, self._look)

    def _look(self) -> None:
        if self.count % 2 and self.count == self._seen:
            self._looks += 1
            if self._looks == 2:
                self.stalled = True
                self._end()
                return
        else:
            self._seen, self._looks = self.count, 0
        self._timer = self._loop.call_later(self._period, self._look)

    def gone(self, watch: asyncio.Future[None]) -> None:
        """The watch of `receive` ended: the client disconnected (or the server gave up on it)."""
        if not watch.cancelled():
            watch.exception()  # looked at: whatever ended it, the client is as good as gone
        self._end()

    def _end(self) -> None:
        if self._timer is not None and not self.ended:
            self.ended = True
            self._task.cancel()

    def close(self) -> None:
        """The response is over: nothing is cancelled from here any more."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


async def _stream(chunks: AsyncIterable[bytes], send: Send, sends: Sends) -> None:
    await _send(send, sends, RETRY)
    limit = CHUNK_BYTES
    async for chunk in chunks:
        if len(chunk) <= limit:  # the per-token path, written out: no call more than needed
            sends.count += 1
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            sends.count += 1
        else:  # a stored reply told again, say: handed to the server a piece at a time
            for start in range(0, len(chunk), CHUNK_BYTES):
                await _send(send, sends, chunk[start : start + CHUNK_BYTES])
    await _send(send, sends, b"", more_body=False)


async def _send(send: Send, sends: Sends, body: bytes, *, more_body: bool = True) -> None:
    sends.count += 1
    await send({"type": "http.response.body", "body": body, "more_body": more_body})
    sends.count += 1


async def _wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
