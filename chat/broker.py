"""Fan-out: numbered events on named topics, followed by any number of subscribers.

A topic is one stream of events, kept encoded in an in-memory log: a generation's
(`open`: numbered from 1, kept whole) or a live feed's (`feed`: a window bounded
by count and age, numbered from the clock). A subscriber reads the log by
position, so each gets every event exactly once and in order, a slow one never
holds up the publisher or the others, and resuming after `Last-Event-ID` is
starting at that position.

`Broker` is the interface a shared broker (Redis Streams, for several processes)
stands behind: `open`, `feed`, `get`, `find`, `discard` and `subscribe`, and a topic's
`publish`, `close`, `first` and `last_id`. Only encoded events (bytes) and integer
positions cross it, never Python objects: a stream entry per event, our id kept
with it, `first` the oldest id still kept (XTRIM's MAXLEN and MINID are the
window), and a subscriber's position is its XREAD cursor.

Deliberate choices:
- A closed topic stays `retention` seconds, so a client that reconnects just
  after the end still resumes exactly; later, the reply is told again from its
  row (`chat.replay`). Closed topics expire lazily, in the order they closed,
  whenever a topic is opened or looked up: no timer per topic.
- A subscriber counts from the moment `subscribe` is entered, not from its first
  read, so a client that just attached is never mistaken for no client at all.
- How a subscriber reads (heartbeats, backlogs in pieces) is `chat.subscription`.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from .sse import encode_event, encode_text_event
from .subscription import Subscription


class Topic:
    """A generation's events: the whole log is kept (a reply is bounded), numbered from 1."""

    first = 0  # the id before the log's first event: raised as a window lets old ones go

    def __init__(self, name: str, on_close: Callable[[Topic], None]) -> None:
        self.name = name
        self.events: list[bytes] = []  # the log, encoded; only `publish` appends to it
        self.waiters: list[asyncio.Future[None]] = []  # woken at the next publish or close
        self.closed = False
        self.subscribers = 0
        self.on_abandoned: Callable[[], object] | None = None  # called when the last subscriber leaves
        self._on_close = on_close

    @property
    def last_id(self) -> int:
        return self.first + len(self.events)

    def publish(self, event: str, data: dict[str, Any]) -> int:
        """Append an event and wake the subscribers; its id."""
        return self._append(encode_event(event, data, self.last_id + 1))

    def publish_text(self, event: str, text: str) -> int:
        """`publish(event, {"text": text})`, encoded without a dict: the hot path, one per token."""
        return self._append(encode_text_event(event, text, self.last_id + 1))

    def _append(self, encoded: bytes) -> int:
        self.events.append(encoded)
        if self.waiters:
            self._wake()
        return self.last_id

    def _wake(self) -> None:
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def close(self) -> None:
        """No more events: subscribers end once they have read the log."""
        if self.closed:
            return
        self.closed = True
        self._wake()
        self._on_close(self)


class WindowedTopic(Topic):
    """A feed's events, which never end: only the newest `max_events`, none older than
    `max_seconds`. Ids start from the clock (milliseconds × 1000), so a feed that was
    dropped and opened again never reuses an id a client may still hold."""

    def __init__(
        self,
        name: str,
        on_close: Callable[[Topic], None],
        *,
        max_events: int,
        max_seconds: float,
        clock: Callable[[], float],
    ) -> None:
        super().__init__(name, on_close)
        self.first = int(time.time() * 1000) * 1000
        self.max_events = max_events
        self.max_seconds = max_seconds
        self._clock = clock
        self._stamps: deque[float] = deque()

    def _append(self, encoded: bytes) -> int:
        self.events.append(encoded)
        now = self._clock()
        self._stamps.append(now)
        self._trim(now)
        self._wake()
        return self.last_id

    def _trim(self, now: float) -> None:
        # Old events go in batches, so trimming costs nothing per event on average.
        stamps, oldest = self._stamps, now - self.max_seconds
        expired = 0
        while expired < len(stamps) and stamps[expired] < oldest:
            expired += 1
        drop = max(expired, len(self.events) - self.max_events)
        if drop and (drop >= self.max_events // 2 or expired):
            del self.events[:drop]
            for _ in range(drop):
                stamps.popleft()
            self.first += drop


class Broker:
    """The topics of this process."""

    def __init__(self, *, retention: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.retention = retention
        self._clock = clock
        self._topics: dict[str, Topic] = {}
        self._closed: deque[tuple[float, Topic]] = deque()  # (when it expires, topic), in order
        self.subscribers = 0  # on every topic, for the metrics

    def open(self, name: str) -> Topic:
        """A new topic; one that is still open under this name is a bug."""
        self._expire()
        assert name not in self._topics or self._topics[name].closed, name
        topic = self._topics[name] = Topic(name, self._closing)
        return topic

    def feed(self, name: str, *, max_events: int, max_seconds: float) -> Topic:
        """The feed `name`, opened if it is not: a topic that keeps only a window of events."""
        self._expire()
        topic = self._topics.get(name)
        if topic is None or topic.closed:
            topic = self._topics[name] = WindowedTopic(
                name, self._closing, max_events=max_events, max_seconds=max_seconds, clock=self._clock
            )
        return topic

    def discard(self, topic: Topic) -> None:
        """Forget an open topic nobody follows (an idle feed); its next publisher opens a new one."""
        if self._topics.get(topic.name) is topic:
            del self._topics[topic.name]

    def get(self, name: str) -> Topic | None:
        """The topic, open or closed within the retention time; None once it is gone."""
        self._expire()
        return self._topics.get(name)

    async def problem(self) -> str | None:
        """Why what is live cannot be shared now (`/readyz`); in memory there is nothing to share."""
        return None

    async def find(self, name: str, *, expected: float = 0.0) -> Topic | None:
        """The topic wherever it runs: here, `get`; a shared broker (`chat.redis_broker`) also
        looks for one another process runs, waiting up to `expected` seconds for one that
        should exist to appear. For attaching, never on the per-token path."""
        return self.get(name)

    @asynccontextmanager
    async def subscribe(
        self, topic: Topic, after: int, heartbeat: float, reset: bytes = b""
    ) -> AsyncIterator[Subscription]:
        """Follow `topic` from after event `after` for as long as the block lasts; `reset` is
        sent whenever the topic's window has let go of events not yet read."""
        topic.subscribers += 1
        self.subscribers += 1
        subscription = Subscription(topic, after, heartbeat, reset)
        try:
            yield subscription
        finally:
            subscription.close()
            topic.subscribers -= 1
            self.subscribers -= 1
            if topic.subscribers == 0 and topic.on_abandoned is not None:
                self.abandoned(topic)

    def abandoned(self, topic: Topic) -> None:
        """The last of this process's followers of `topic` left: here, nobody follows it."""
        assert topic.on_abandoned is not None
        topic.on_abandoned()

    def _closing(self, topic: Topic) -> None:
        self._closed.append((self._clock() + self.retention, topic))

    def _expire(self) -> None:
        closed, now = self._closed, self._clock()
        while closed and closed[0][0] <= now:
            topic = closed.popleft()[1]
            if self._topics.get(topic.name) is topic:
                del self._topics[topic.name]
