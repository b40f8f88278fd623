"""Following a feed's stream (`chat.redis_feed_scripts`) from any process: XREAD BLOCK from the
last entry taken, with the `p` chain telling an exact resume from one that must be `reset`.

Deliberate choices:
- Where a follower starts is decided from the stream's last entry: a new follower (no
  `Last-Event-ID`) there; a resume at its id, or before it, from that id (the chain then tells
  whether it is exact); a resume past it, or into a deleted conversation's stream, `reset` first.
- After a `reset`, "from now": what the stream held when the follower started is read through and
  not sent, as the in-memory feed goes on from its last event; what came since is sent. A gap
  found while following (events dropped) is a `reset` too, and what follows it is sent.
- A read that fails ends the follower's stream: its client reconnects and resumes with
  `Last-Event-ID`, wherever Redis answers. Nothing waits for a Redis that is away.
- A cancelled follower stops even when redis-py swallowed the cancellation (`still_wanted`).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from .broker import Topic
from .redis_follow import BATCH, MAX_BLOCK, chunked
from .redis_keys import entry_id, event_id
from .sse import PING
from .subscription import Subscription

log = logging.getLogger("sidechat.redis")


@dataclass(frozen=True, slots=True)
class Start:
    position: int  # the id of the last entry this follower counts as read
    reset: bool = False  # its first event is `reset`
    after_end: bool = False  # `position` is a deleted conversation's `end`: the next life may begin
    last: int = 0  # the stream's last entry then: after a gap, what is not past it is not sent


async def start_of(redis: Redis, key: str, after: int) -> Start:
    """Where a follower of the stream at `key` starts, resuming after `after` (0: from now)."""
    found: Any = await redis.xrevrange(key, count=1)
    last, ended = (event_id(found[0][0]), b"end" in found[0][1]) if found else (0, False)
    if ended:
        return Start(last, reset=bool(after), after_end=True, last=last)
    if after > last:  # past the feed's end: another life's id, or none ever given
        return Start(last, reset=True, last=last)
    return Start(after or last, last=last)


def still_wanted() -> None:
    """Raise the cancellation of the task reading, if it was asked for: redis-py can swallow one
    that lands as its read times out (asyncio.timeout turns it into a TimeoutError, which it
    retries), and a follower that went on reading would keep its response open for ever."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class FeedTopic(Topic):
    """What a feed's follower here says it follows: a name, no log (it is read from Redis)."""

    def __init__(self, name: str) -> None:
        super().__init__(name, _no_close)


def _no_close(topic: Topic) -> None:
    """A shared feed is never closed by a process; its followers end on the stream's entries."""


class FeedSubscription(Subscription):
    """A `Subscription` read from a feed's stream: every event after its position exactly once,
    in order, or `reset` when some are gone; a ping each `heartbeat` seconds with nothing sent;
    the end at an `end` entry, or a `gone` entry naming `user`, or `end()`."""

    def __init__(  # not the in-memory one's: no timer, no log to read
        self,
        redis: Redis,
        topic: Topic,
        key: str,
        start: Start,
        heartbeat: float,
        reset: bytes,
        user: str | None = None,
    ) -> None:
        self._redis = redis
        self._topic = topic
        self._key = key
        self._position = start.position
        self._after_end = start.after_end
        self._heartbeat = heartbeat
        self._reset = reset
        self._user = None if user is None else user.encode()
        self._loop = asyncio.get_running_loop()
        self._last_sent = self._loop.time()
        self._chunks: deque[bytes] = deque([reset] if start.reset else [])
        self._backlog = start.last
        self._skipping = False  # after a gap: reading through what was there at the start
        self._was_reset = start.reset  # the last thing sent was a `reset` (one says it all)
        self._at_end = False
        self._reading: asyncio.Future[Any] | None = None  # the XREAD under way
        self.ended = False

    @property
    def topic(self) -> Topic:
        return self._topic

    def __aiter__(self) -> FeedSubscription:
        return self

    async def __anext__(self) -> bytes:
        while True:
            if self._chunks:
                self._last_sent = self._loop.time()
                return self._chunks.popleft()
            if self._at_end or self.ended:
                raise StopAsyncIteration
            now = self._loop.time()
            due = self._last_sent + self._heartbeat
            if now >= due:
                self._last_sent = now
                return PING
            streams: dict[Any, Any] = {self._key: entry_id(self._position)}
            block = max(1, round(min(due - now, MAX_BLOCK) * 1000))
            self._reading = reading = asyncio.ensure_future(
                self._redis.xread(streams, count=BATCH, block=block)
            )
            try:
                reply: Any = await reading
            except asyncio.CancelledError:
                still_wanted()
                if not self.ended:
                    raise
                raise StopAsyncIteration from None  # `end()` cut the read short
            except (RedisError, OSError) as exc:
                still_wanted()
                log.warning("lost Redis while following %s (%s): the client resumes", self._topic.name, exc)
                raise StopAsyncIteration from None
            still_wanted()
            self._take(list(reply[0][1]) if reply else [])

    def _take(self, entries: list[Any]) -> None:
        parts: list[bytes] = []
        for raw_id, fields in entries:
            number, previous = event_id(raw_id), int(fields[b"p"])
            if previous != self._position and not (self._after_end and previous == 0):
                if not self._was_reset:  # something between was let go: the client refetches
                    parts.append(self._reset)
                    self._was_reset = True
                self._skipping = True
            if self._skipping and number > self._backlog:
                self._skipping = False  # past what was there at the start: "now"
            self._position, self._after_end = number, False
            gone = fields.get(b"gone")
            if b"end" in fields or (gone is not None and gone == self._user):
                self._at_end = True
                break
            if not self._skipping and b"e" in fields:
                parts.append(fields[b"e"])
                self._was_reset = False
        self._chunks.extend(chunked(parts))

    def end(self) -> None:
        """End this follower now: its read under way is cut short."""
        self.ended = True
        if self._reading is not None and not self._reading.done():
            self._reading.cancel()

    def close(self) -> None:
        """Nothing to let go: its reads hold no timer."""
