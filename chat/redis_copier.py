"""The copy of this process's topics to their Redis Streams (`chat.redis_broker`): one task for
every topic, one script call per round trip for every topic that has news.

Deliberate choices:
- One writer, not a task per topic: with many replies running, what came on each since the last
  write goes in the same call, so a round trip (and redis-py's work on it) is shared by every
  topic that has news, rather than paid per topic per token. Publishing is unchanged: a topic
  is watched with a future on its `waiters`, as a follower watches it, whose callback only
  marks it as having news.
- A write is one Lua script (`APPEND`): every entry is Redis's work, not the client's.
- After a write, the next waits `GATHER_SECONDS`: with tokens coming one at a time on many
  replies, a write per token (a round trip and redis-py's work each) cost a third more CPU
  per token than in memory; gathered, a write carries what came on every reply meanwhile.
  The first news after a quiet moment goes at once, so a follower elsewhere waits at most
  that much longer for a token, never the first.
- Our event ids are the entries' ids, so a write that failed (or whose answer was lost) is
  followed by a look at how far each of its streams got, and the copy goes on from there:
  no duplicates, no gaps. Redis away is retried, with a growing pause, until it is back.
- A closed topic's stream ends with an `end` entry and expires `retention` later; an open one
  expires `open_ttl` after its last write (the stream of a process that died goes by itself).
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from .broker import Topic
from .redis_follow import read_end
from .redis_keys import Keys

log = logging.getLogger("sidechat.redis")

MAX_BATCH = 4096  # the most events of one topic a write copies (a backlog goes in pieces)
RETRY_SECONDS = (0.05, 0.2, 0.5, 1.0)  # between tries to copy, while Redis is away
GATHER_SECONDS = 0.002  # after a write, news gathers this long before the next

# KEYS: the streams. ARGV: the cap, then six for each key: fresh (1: delete what an earlier topic
# of the name left), expiry in ms, closing (1: add the `end` entry), the first new event's id,
# the events' lengths (comma-separated), and the events themselves, one after the other. Passed
# whole and split here, so the client's work is per write, not per event.
APPEND = """
local cap, a = ARGV[1], 2
for k = 1, #KEYS do
  local key = KEYS[k]
  if ARGV[a] == '1' then redis.call('DEL', key) end
  local ttl, closing, id, events = ARGV[a + 1], ARGV[a + 2], tonumber(ARGV[a + 3]), ARGV[a + 5]
  local at = 1
  for size in string.gmatch(ARGV[a + 4], '%d+') do
    local n = tonumber(size)
    redis.call('XADD', key, 'MAXLEN', '~', cap, '0-' .. id, 'e', string.sub(events, at, at + n - 1))
    at, id = at + n, id + 1
  end
  if closing == '1' then redis.call('XADD', key, 'MAXLEN', '~', cap, '0-' .. id, 'end', '') end
  redis.call('PEXPIRE', key, ttl)
  a = a + 6
end
"""


class Copier:
    def __init__(
        self, redis: Redis, keys: Keys, *, retention: float, open_ttl: float, max_entries: int
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.retention = retention
        self.open_ttl = open_ttl
        self.max_entries = max_entries
        self._written: dict[Topic, int | None] = {}  # topics copied: events in their stream (None: unknown)
        self._news: dict[Topic, None] = {}  # topics with events (or an end) not written yet, in order
        self._watched: set[Topic] = set()  # topics with a waiter of ours on them
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()  # set after each round, for `drain`
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._append = redis.register_script(APPEND)

    def add(self, topic: Topic) -> None:
        """Copy `topic` from its first event to its end."""
        self._written[topic] = 0
        self._heard(topic)
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="copy topics to Redis")

    @property
    def copying(self) -> int:
        return len(self._written)

    async def drain(self, grace: float) -> None:
        """Let the closed topics' streams be written to their end, for up to `grace` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while any(topic.closed for topic in self._written) and (left := deadline - loop.time()) > 0:
            self._progress.clear()
            try:
                await asyncio.wait_for(self._progress.wait(), left)
            except TimeoutError:
                break

    async def aclose(self) -> None:
        """Stop copying; topics still open are left to expire."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    # -- the writer ---------------------------------------------------------------------------

    def _heard(self, topic: Topic, _: object = None) -> None:
        self._watched.discard(topic)
        self._news[topic] = None
        self._wake.set()

    def _watch(self, topic: Topic) -> None:
        """Hear of `topic`'s next event (or its end)."""
        if topic not in self._watched:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            waiter.add_done_callback(partial(self._heard, topic))
            topic.waiters.append(waiter)
            self._watched.add(topic)

    async def _run(self) -> None:
        failures = 0
        while not self._stopping:
            await self._wake.wait()
            self._wake.clear()
            topics, self._news = list(self._news), {}
            try:
                await self._write(topics)
            except (RedisError, OSError) as exc:
                if failures == 0:
                    log.warning("could not copy %d topics to Redis (%s); retrying", len(topics), exc)
                for topic in topics:
                    if topic in self._written:
                        self._written[topic] = None
                        self._news[topic] = None
                self._wake.set()
                await asyncio.sleep(RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)])
                failures += 1
                continue
            finally:
                self._progress.set()
            if failures:
                log.warning("copying to Redis again, after %d failures", failures)
                failures = 0
            await asyncio.sleep(GATHER_SECONDS)

    async def _write(self, topics: list[Topic]) -> None:
        unknown = [topic for topic in topics if self._written.get(topic, 0) is None]
        if unknown:
            await self._find_where(unknown)
        keys: list[str] = []
        args: list[Any] = [self.max_entries]
        ending: list[tuple[Topic, int, bool]] = []
        for topic in topics:
            written = self._written.get(topic)
            if written is None:
                continue  # its end was written already
            closed = topic.closed
            if not closed:
                self._watch(topic)  # before reading its length: an event after that is news
            count = len(topic.events)
            end = min(count, written + MAX_BATCH)
            closing = closed and end == count
            if end == written and not closing:
                continue
            if end < count:
                self._news[topic] = None  # the rest, in the next round
                self._wake.set()
            keys.append(self.keys.topic(topic.name))
            ttl = self.retention if closing else self.open_ttl
            new = topic.events[written:end]
            lengths = ",".join([str(len(event)) for event in new])
            args += (int(written == 0), max(1, round(ttl * 1000)), int(closing), written + 1, lengths)
            args.append(b"".join(new))
            ending.append((topic, end, closing))
        if keys:
            await self._append(keys=keys, args=args)
        for topic, end, closing in ending:
            if closing:
                del self._written[topic]
            else:
                self._written[topic] = end

    async def _find_where(self, topics: list[Topic]) -> None:
        """How far each stream got, after a write whose outcome is unknown."""
        for topic in topics:
            found = await read_end(self.redis, self.keys.topic(topic.name))
            if found is not None and found[1]:
                del self._written[topic]  # its end was written before the answer was lost
            else:
                self._written[topic] = 0 if found is None else found[0]
