"""A `/v1` stream: when its HTTP status is decided, and the chunks it sends after that.

The held status. An OpenAI client learns of a failure before the first token from the
status (its SDK raises `RateLimitError`, `InternalServerError`...  and retries by its own
rules), but a slow first token must not leave the connection silent for so long that a
proxy gives up on it: heartbeats need the response started. So the status is held until
whichever comes first:

- the first token (or the end: a reply of tool calls only, or an empty one): 200, and the
  stream goes on;
- a failure: its own status and OpenAI's error body (`chat.v1_errors`), as if it were any
  HTTP API;
- one heartbeat interval (SIDECHAT_HEARTBEAT_SECONDS) without either: 200 then, with the
  role chunk, and `: ping` comments every interval until the first token.

Once the status is sent, a failure can only be told in the stream: one chunk
`data: {"error": {...}}`, and the stream ends without `[DONE]`, whether the first token
had come or not. A client that sees `[DONE]` has the whole reply.

The response is the native event stream's (`chat.responses`: disconnects noticed at once,
a client that stops reading let go) less its `retry:` line: OpenAI's SDKs read that block
as an event with empty data, and fail to parse it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from starlette.types import Message, Receive, Scope, Send

from .responses import RETRY, EventStreamResponse
from .v1_chunks import PING, Chunks, model_id, native_events
from .v1_errors import V1Error, from_stream_error

DECIDING = frozenset({b"token", b"done", b"error", b"ping"})  # events that decide the status


@dataclass(slots=True)
class Opening:
    """What the events read while the status was held decided: a failure's error, else 200,
    with the chunks read so far (to be sent first)."""

    error: V1Error | None = None
    read: list[bytes] = field(default_factory=list)


async def hold(events: AsyncIterator[bytes]) -> Opening:
    """Read `events` until one decides the status (see the module's docstring)."""
    opening = Opening()
    async for chunk in events:
        opening.read.append(chunk)
        for name, data in native_events(chunk):
            if name == b"error":
                opening.error = from_stream_error(_json(data)["error"])
                return opening
            if name in DECIDING:
                return opening
    return opening  # ended without a terminal event: the chunks tell the rest


def _json(data: bytes) -> dict[str, Any]:
    value = json.loads(data)
    assert isinstance(value, dict)
    return value


async def chunks_of(
    opening: Opening, events: AsyncIterator[bytes], chunks: Chunks, include_usage: bool
) -> AsyncIterator[bytes]:
    """The stream after a 200: the role chunk, then each event as OpenAI's chunk."""
    yield chunks.role()
    for chunk in opening.read:
        for out in translated(chunk, chunks, include_usage):
            if out is None:
                return
            yield out
    async for chunk in events:
        for out in translated(chunk, chunks, include_usage):
            if out is None:
                return
            yield out


def translated(chunk: bytes, chunks: Chunks, include_usage: bool) -> list[bytes | None]:
    """What a subscription's chunk (one event, mostly: a token) becomes; None after the
    stream's last chunk."""
    out: list[bytes | None] = []
    for name, data in native_events(chunk):
        if name == b"token":
            out.append(chunks.token(data))
        elif name == b"ping":
            out.append(PING)
        elif name == b"provider":  # a fallback answers: its chunks say so
            chunks.model = model_id(_json(data))
        elif name == b"done":
            return [*out, chunks.end(_json(data), include_usage), None]
        elif name == b"error":
            return [*out, from_stream_error(_json(data)["error"]).chunk(), None]
    return out


@asynccontextmanager
async def resumed(stack: AsyncExitStack, events: AsyncIterator[bytes]) -> AsyncIterator[AsyncIterator[bytes]]:
    """Events whose subscription was entered on `stack` while the status was held, left with it."""
    async with stack:
        yield events


class V1EventStream(EventStreamResponse):
    """The native event stream's response, without its `retry:` line (see the docstring)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def without_retry(message: Message) -> None:
            if message.get("body") is not RETRY:
                await send(message)

        await super().__call__(scope, receive, without_retry)
