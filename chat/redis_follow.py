"""Following, from one process, a topic another process runs: XREAD BLOCK from the last id seen.

A follower here reads the stream the running process writes (`chat.redis_broker`), with the
same contract as `chat.subscription.Subscription`: every event after its position exactly once, in
order, in chunks of at most `CHUNK_BYTES`, a ping whenever `heartbeat` seconds passed with
nothing sent, and the end once the stream's `end` entry is read.

Deliberate choices:
- One XREAD per wake-up, blocking at most until the next ping is due (and never longer than
  `MAX_BLOCK`, well inside the client's read timeout), so a quiet stream costs one command per
  heartbeat and a Redis that went away is a `BrokerUnavailable` within seconds, not a hang.
- An XREAD that found nothing is followed by an EXISTS: a stream that expired under us (its
  writer died and nobody ended it) ends the follower with `EventsLost` instead of pinging
  forever.
- A Redis that stops answering is waited for, pinging the client as ever, for up to
  `OUTAGE_SECONDS`: the writer's copy waits for it too, so after a blip the follower goes on
  from where it was, exactly. Past that, `BrokerUnavailable`: the response ends unfinished
  and the client resumes with `Last-Event-ID` (`chat.responses`).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from .broker import Topic
from .live_errors import BrokerError, BrokerUnavailable, EventsLost
from .redis_keys import entry_id, event_id
from .redis_leases import still_wanted
from .sse import PING
from .subscription import CHUNK_BYTES, Subscription

__all__ = ["BrokerError", "BrokerUnavailable", "EventsLost", "RemoteSubscription", "RemoteTopic", "read_end"]

MAX_BLOCK = 2.0  # seconds an XREAD may block
BATCH = 512  # entries an XREAD may return
OUTAGE_SECONDS = 30.0  # how long a follower waits, pinging, for a Redis that stopped answering
RETRY_SECONDS = 0.5  # between its tries meanwhile


class RemoteTopic(Topic):
    """A topic another process runs, as this one found it when it looked: how far it had got
    (`last_id`) and whether it had ended. It holds no events here; it is read from `key`."""

    def __init__(self, name: str, key: str, last_id: int, closed: bool) -> None:
        super().__init__(name, _no_close)
        self.key = key
        self.first = last_id  # no events are kept here, so `last_id` is this
        self.closed = closed


def _no_close(topic: Topic) -> None:
    raise AssertionError(f"{topic.name} is run by another process; only it may close it")


async def read_end(redis: Redis, key: str) -> tuple[int, bool] | None:
    """The last event id in the stream at `key`, and whether its topic has closed; None when
    there is no such stream."""
    found: Any = await redis.xrevrange(key, count=1)
    if not found:
        return None
    raw_id, fields = found[0]
    last = event_id(raw_id)
    return (last - 1, True) if b"end" in fields else (last, False)


class RemoteSubscription(Subscription):
    """A `Subscription` (same contract, so the brokers are interchangeable) read from Redis;
    it shares none of the in-memory one's state, so it sets up its own."""

    def __init__(  # not the in-memory one's: no timer, no log to read
        self, redis: Redis, topic: RemoteTopic, after: int, heartbeat: float, reset: bytes
    ) -> None:
        self._redis = redis
        self._topic = topic
        self._key = topic.key
        self._position = after
        self._heartbeat = heartbeat
        self._reset = reset  # sent when events this one had not read were trimmed away
        self._loop = asyncio.get_running_loop()
        self._last_sent = self._loop.time()
        self._chunks: deque[bytes] = deque()
        self._at_end = False  # the stream's `end` entry was read
        self.ended = False  # `end()` was called
        self._away_since = 0.0  # when Redis stopped answering it (0: it answers)

    @property
    def topic(self) -> Topic:
        return self._topic

    def __aiter__(self) -> RemoteSubscription:
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
            try:
                entries = await self._read(min(due - now, MAX_BLOCK))
                if not entries and not await self._call(self._redis.exists(self._key)):
                    raise EventsLost(f"{self._topic.name}: its stream expired before it ended")
            except BrokerUnavailable:
                still_wanted()  # a cancel can come back from the client as its error
                self._away_since = self._away_since or now
                if now - self._away_since >= OUTAGE_SECONDS:
                    raise
                await asyncio.sleep(min(RETRY_SECONDS, due - now))  # pings go on meanwhile
                continue
            self._away_since = 0.0
            self._take(entries)

    def end(self) -> None:
        """End this follower once its current read returns (within `MAX_BLOCK`)."""
        self.ended = True

    def close(self) -> None:
        """Nothing to let go: its reads hold no timer, and end with the block that awaits them."""

    async def _read(self, seconds: float) -> list[Any]:
        streams: dict[Any, Any] = {self._key: entry_id(self._position)}
        reply: Any = await self._call(
            self._redis.xread(streams, count=BATCH, block=max(1, round(seconds * 1000)))
        )
        return list(reply[0][1]) if reply else []

    async def _call(self, command: Any) -> Any:
        try:
            return await command
        except (RedisError, OSError) as exc:
            raise BrokerUnavailable(f"lost Redis while following {self._topic.name}: {exc}") from exc

    def _take(self, entries: list[Any]) -> None:
        parts: list[bytes] = []
        for raw_id, fields in entries:
            number = event_id(raw_id)
            if number != self._position + 1:  # trimmed away before we read them
                if not self._reset:
                    raise EventsLost(
                        f"{self._topic.name}: events {self._position + 1}..{number - 1} are gone"
                    )
                parts.append(self._reset)
            self._position = number
            if b"end" in fields:
                self._at_end = True
                break
            parts.append(fields[b"e"])
        self._chunks.extend(chunked(parts))


def chunked(parts: list[bytes]) -> list[bytes]:
    """`parts` joined into pieces of at most `CHUNK_BYTES`, whole parts each, at least one."""
    if len(parts) <= 1:
        return parts
    chunks, start, size = [], 0, 0
    for index, part in enumerate(parts):
        if index > start and size + len(part) > CHUNK_BYTES:
            chunks.append(b"".join(parts[start:index]))
            start, size = index, 0
        size += len(part)
    chunks.append(b"".join(parts[start:]))
    return chunks
