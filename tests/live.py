"""sidechat on a real uvicorn server on a loopback port, and a streaming reader for it.

httpx's ASGITransport and Starlette's TestClient buffer whole bodies, so anything
about timing, heartbeats, incremental delivery or disconnects is tested here.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from app import create_app
from chat.config import Settings
from chat.sse import SSEDecoder


class Prefixed:
    """An app as a reverse proxy and `uvicorn --root-path` present it under `prefix`: the path
    keeps the prefix and `root_path` names it (the ASGI spec's form). Anything outside the
    prefix is a 404, as it would be at the proxy, so an absolute URL fails visibly."""

    def __init__(self, app: ASGIApp, prefix: str) -> None:
        self.app = app
        self.prefix = prefix.rstrip("/")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
        elif scope["path"].startswith(self.prefix + "/"):
            await self.app({**scope, "root_path": self.prefix}, receive, send)
        else:
            await PlainTextResponse(f"only {self.prefix}/ is served here", 404)(scope, receive, send)


@contextlib.asynccontextmanager
async def serve(settings: Settings, *, prefix: str = "") -> AsyncIterator[str]:
    """sidechat on a loopback port, answering its URL; under `prefix` (`/chat`) if given,
    as behind a proxy, and then the URL ends with the prefix."""
    app: ASGIApp = create_app(settings)
    if prefix:
        app = Prefixed(app, prefix)
    # Without uvicorn's proxy headers, as `sidechat serve` runs it (chat.forwarded says why).
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_level="warning", lifespan="on", proxy_headers=False
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    await until(lambda: server.started or task.done(), what="the server to start")
    if not server.started:
        task.result()  # start-up failed: raise its error
        raise AssertionError("the server did not start; its log says why")
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}{prefix.rstrip('/')}"
    finally:
        server.should_exit = True
        await task


async def until(check: Callable[[], object], *, timeout: float = 10.0, what: str = "") -> Any:
    """Wait for an observable fact: poll `check()` (it may be async) until it is truthy, and
    answer it. The fact, not the time, is what a test waits for; the timeout only ends a
    wait that would never end."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        await asyncio.sleep(0.005)


@dataclass
class Event:
    event: str
    data: dict[str, Any]
    id: str | None
    at: float  # time.monotonic() when the bytes holding it arrived


@dataclass
class Transcript:
    status: int
    headers: httpx.Headers
    raw: bytes = b""
    events: list[Event] = field(default_factory=list)
    pings: list[float] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [e.event for e in self.events]

    @property
    def text(self) -> str:
        return "".join(e.data["text"] for e in self.events if e.event == "token")

    @property
    def terminal(self) -> Event:
        return self.events[-1]


class EventReader:
    """Reads an event stream in steps, timing each event and ping as it arrives."""

    def __init__(self, response: httpx.Response, *, decoded: bool = False) -> None:
        """`decoded`: read the body as its Content-Encoding gives it (a proxy may compress it)."""
        self.transcript = Transcript(response.status_code, response.headers)
        self._chunks = response.aiter_bytes() if decoded else response.aiter_raw()
        self._decoder = SSEDecoder()

    async def read(self, until: int | None = None) -> Transcript:
        """Read to the end of the stream, or until `until` more events arrived; answers those."""
        transcript = self.transcript
        first = len(transcript.events)
        async for chunk in self._chunks:
            now = time.monotonic()
            transcript.raw += chunk
            transcript.pings += [now] * chunk.count(b": ping\n\n")
            for event in self._decoder.feed(chunk):
                transcript.events.append(Event(event.event, json.loads(event.data), event.id, now))
            if until is not None and len(transcript.events) - first >= until:
                break
        return Transcript(
            transcript.status, transcript.headers, transcript.raw, transcript.events[first:], transcript.pings
        )


async def read_stream(response: httpx.Response) -> Transcript:
    return await EventReader(response).read()


async def chat_stream(
    client: httpx.AsyncClient, body: dict[str, Any], headers: dict[str, str] | None = None
) -> Transcript:
    async with client.stream("POST", "/api/chat/stream", json=body, headers=headers) as response:
        return await read_stream(response)


async def half_a_body(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A POST /api/chat whose body stops halfway, on a socket of its own, left open."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"POST /api/chat HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        b'content-length: 100\r\n\r\n{"message": "half'
    )
    await writer.drain()
    return reader, writer
