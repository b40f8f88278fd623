"""Attaching a client to a reply: live from its topic while the broker keeps it, else
told again from its stored row (`chat.replay`)."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable
from contextlib import asynccontextmanager, nullcontext

from . import events
from .generations import topic_name
from .records import Message
from .replay import stored_events
from .responses import Events
from .services import Services
from .sse import encode_event

APPEAR_SECONDS = 2.0  # how long a streaming reply's events may take to appear where it is not run


async def reply_events(services: Services, user: str, message: Message, after: int) -> Events | None:
    """The events of `message` after id `after`; None when the client has them all."""
    heartbeat = services.settings.heartbeat_seconds
    # A reply stored as streaming a moment ago by another process may not be in Redis yet.
    expected = APPEAR_SECONDS if message.status == "streaming" else 0.0
    topic = await services.broker.find(topic_name(message.id), expected=expected)
    if topic is not None:
        if topic.closed and after >= topic.last_id:
            return None
        if after > topic.last_id:  # ids this generation never sent: start the client over
            reset = encode_event("reset", events.reset(message.id))
            return _first(reset, services.broker.subscribe(topic, 0, heartbeat))
        return services.broker.subscribe(topic, after, heartbeat)
    if message.status == "streaming":  # its topic ended while we read the row: read it again
        message = await services.store.get_message(user, message.id) or message
    told = stored_events(message, after)
    return nullcontext(_each(told)) if told else None


async def ended(services: Services, message: Message) -> None:
    """Until the generation of `message` (as stored when it was read) has ended, wherever it runs."""
    generation = services.generations.get(message.id)
    if generation is not None:
        await generation.finished.wait()
        return
    if message.status != "streaming":
        return
    topic = await services.broker.find(topic_name(message.id), expected=APPEAR_SECONDS)
    if topic is None or topic.closed:
        return
    heartbeat = services.settings.heartbeat_seconds
    async with services.broker.subscribe(topic, topic.last_id, heartbeat) as rest:
        async for _ in rest:  # its end is stored before it is told
            pass


async def _each(chunks: list[bytes]) -> AsyncIterator[bytes]:
    while chunks:  # each let go once sent: a slow client holds no copy of what it has
        yield chunks.pop(0)


@asynccontextmanager
async def _first(chunk: bytes, subscription: Events) -> AsyncIterator[AsyncIterable[bytes]]:
    async with subscription as rest:
        yield _then(chunk, rest)


async def _then(chunk: bytes, rest: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    yield chunk
    async for more in rest:
        yield more


@asynccontextmanager
async def counted(events: Events, release: Callable[[], object]) -> AsyncIterator[AsyncIterable[bytes]]:
    """`events`, calling `release` once the stream has ended, however it ended."""
    try:
        async with events as chunks:
            yield chunks
    finally:
        release()
