"""A subscriber's view of a topic (`chat.broker`): every event after its position exactly
once and in order, and a ping whenever the stream was quiet for a heartbeat.

Deliberate choices:
- The heartbeat is one timer per subscriber that is moved only when it fires: a
  stream with tokens flowing costs no timer work per token.
- Events that queued up while a subscriber was busy go out together, but in
  pieces of at most `CHUNK_BYTES` (or one event, if that is longer): a client
  that attaches late to a long reply would otherwise get the whole reply as one
  write, a copy of it the server buffers for as long as that client takes to
  read it. The one-event case, each token as it comes, stays a plain lookup.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from .sse import PING

if TYPE_CHECKING:
    from .broker import Topic

CHUNK_BYTES = 64 * 1024  # the most a subscriber hands out at once, unless one event is longer


class Subscription:
    """One subscriber's view of a topic: the encoded events after a position, and a
    ping whenever `heartbeat` seconds passed with nothing sent, until the topic closes."""

    # Slotted: one per open stream, held for as long as it lasts.
    __slots__ = (
        "_topic",
        "_position",
        "_reset",
        "ended",
        "_heartbeat",
        "_loop",
        "_last_sent",
        "_ping_due",
        "_waiter",
        "_timer",
    )

    def __init__(self, topic: Topic, after: int, heartbeat: float, reset: bytes = b"") -> None:
        self._topic = topic
        self._position = after
        self._reset = reset  # sent when the window has let go of events this one had not read
        self.ended = False
        self._heartbeat = heartbeat
        self._loop = asyncio.get_running_loop()
        self._last_sent = self._loop.time()
        self._ping_due = False
        self._waiter: asyncio.Future[None] | None = None
        self._timer = self._loop.call_at(self._last_sent + heartbeat, self._tick)

    def _tick(self) -> None:
        due = self._last_sent + self._heartbeat
        if self._loop.time() < due:  # something was sent since this timer was set
            self._timer = self._loop.call_at(due, self._tick)
            return
        self._ping_due = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> bytes:
        topic = self._topic
        events = topic.events
        while not self.ended:
            first = topic.first
            position, end = self._position - first, len(events)
            if position < 0:  # the window let go of events not read: say so, go on from now
                self._position = topic.last_id
                if self._reset:
                    return self._reset
                continue
            if position < end:
                if end == position + 1:  # the hot path: the one event just published
                    chunk = events[position]
                else:
                    end = _backlog_end(events, position, end)
                    chunk = b"".join(events[position:end])
                self._position = first + end
                self._last_sent = self._loop.time()
                if self._ping_due:  # the events go instead of the ping that was due
                    self._ping_due = False
                    self._timer = self._loop.call_at(self._last_sent + self._heartbeat, self._tick)
                return chunk
            if topic.closed:
                raise StopAsyncIteration
            if self._ping_due:
                self._ping_due = False
                self._last_sent = self._loop.time()
                self._timer = self._loop.call_at(self._last_sent + self._heartbeat, self._tick)
                return PING
            self._waiter = waiter = self._loop.create_future()
            topic.waiters.append(waiter)
            await waiter
        raise StopAsyncIteration

    @property
    def topic(self) -> Topic:
        return self._topic

    def end(self) -> None:
        """End this subscriber's stream now (a member removed), whatever the topic does."""
        self.ended = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def close(self) -> None:
        self._timer.cancel()


def _backlog_end(events: list[bytes], start: int, end: int) -> int:
    """Where the next chunk of the backlog `events[start:end]` ends: as many events as fit
    in `CHUNK_BYTES`, and always at least one."""
    size, stop = len(events[start]), start + 1
    while stop < end and size + len(events[stop]) <= CHUNK_BYTES:
        size += len(events[stop])
        stop += 1
    return stop
