"""A broker shared by several processes: each generation's events copied to a Redis Stream, so a
client attached to any process follows it, and resumes after `Last-Event-ID` exactly.

    BrokerError             the shared broker could not do what was asked
    ├── BrokerUnavailable   Redis could not be reached, or stopped answering
    └── EventsLost          a follower's next events are no longer kept (trimmed or expired)

Deliberate choices:
- The process that runs a generation keeps its topic in memory exactly as `chat.broker` does,
  and its own followers read that log: publishing a token is the same one call, with no await
  and no Redis round trip. One task of the process (`chat.redis_copier`) copies what came on
  every topic since its last write, in one script call: tokens that come faster than Redis
  answers go in batches, by themselves.
- Our event ids are the entries' ids (`0-<id>`, `chat.redis_keys`), so a follower elsewhere
  resumes with `XREAD … 0-<Last-Event-ID>`, and a copy cut off by a Redis outage resumes after
  the last entry Redis has: no duplicates, no gaps, whichever side failed.
- A closed topic's stream ends with an `end` entry and expires `retention` seconds later, as the
  in-memory topic is dropped; an open one expires `open_ttl` after its last write, so the stream
  of a process that died goes away by itself. `MAXLEN ~` caps a stream; the cap is far above a
  reply's length, and a follower that falls behind it is told (`EventsLost`), never silently.
- A reply whose clients are gone (`SIDECHAT_ON_DISCONNECT=cancel`) is stopped only once nobody
  follows it on any process: followers elsewhere are counted at `<prefix>followers:<topic>`,
  and the last of them to leave tells the runner, on the cancel channel.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from .broker import Broker, Topic
from .redis_copier import Copier
from .redis_follow import BrokerUnavailable, RemoteSubscription, RemoteTopic, read_end
from .redis_keys import Keys
from .subscription import Subscription

log = logging.getLogger("sidechat.redis")

MAX_ENTRIES = 100_000  # a stream's cap (MAXLEN ~): far more events than a reply has
OPEN_TTL = 3600.0  # an open topic's stream lives this long after its last write
MAX_CONNECTIONS = 10_000  # Redis's own maxclients: each follower here holds one while it waits


def open_redis(url: str) -> Redis:
    """The client for `SIDECHAT_REDIS_URL`: RESP2, so replies have one shape, and a read timeout
    longer than the longest XREAD BLOCK (`redis_follow.MAX_BLOCK`) so a vanished server is an
    error within seconds, not a hang (TCP keepalive covers the pub/sub reads that block on)."""
    return Redis.from_url(
        url,
        protocol=2,
        socket_timeout=10.0,
        socket_connect_timeout=5.0,
        socket_keepalive=True,
        max_connections=MAX_CONNECTIONS,  # redis-py's default of 100 refused the 101st follower
    )


class RedisBroker(Broker):
    def __init__(
        self,
        redis: Redis,
        *,
        retention: float,
        keys: Keys | None = None,
        max_entries: int = MAX_ENTRIES,
        open_ttl: float = OPEN_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(retention=retention, clock=clock)
        self.redis = redis
        self.keys = keys or Keys()
        self.max_entries = max_entries
        self.open_ttl = open_ttl
        self._copier = Copier(
            redis, self.keys, retention=retention, open_ttl=open_ttl, max_entries=max_entries
        )
        self._checks: set[asyncio.Task[None]] = set()  # is an abandoned topic followed elsewhere?

    def open(self, name: str) -> Topic:
        """A new topic, in memory as ever, copied to its stream from now on."""
        topic = super().open(name)
        self._copier.add(topic)
        return topic

    async def problem(self) -> str | None:
        """Redis not answering a PING within a second: this process cannot share what is live."""
        try:
            async with asyncio.timeout(1.0):
                await self.redis.ping()
        except (TimeoutError, OSError, RedisError) as exc:
            return f"Redis (SIDECHAT_REDIS_URL) is unreachable: {type(exc).__name__}"
        return None

    async def find(self, name: str, *, expected: float = 0.0) -> Topic | None:
        """This process's topic of that name, else the stream another one writes (how far it had
        got, and whether it had ended, when we looked); None when neither exists, after waiting
        up to `expected` seconds for its first entry (a reply just stored by another process,
        whose copy has not written yet)."""
        local = self.get(name)
        if local is not None:
            return local
        key = self.keys.topic(name)
        try:
            last = await read_end(self.redis, key)
            if last is None and expected > 0:
                streams: dict[Any, Any] = {key: "0-0"}
                await self.redis.xread(streams, count=1, block=max(1, round(expected * 1000)))
                last = await read_end(self.redis, key)
        except (RedisError, OSError) as exc:
            raise BrokerUnavailable(f"could not look up {name} in Redis: {exc}") from exc
        if last is None:
            return self.get(name)  # it may have started here while we looked
        last_id, closed = last
        return RemoteTopic(name, key, last_id, closed)

    @asynccontextmanager
    async def subscribe(
        self, topic: Topic, after: int, heartbeat: float, reset: bytes = b""
    ) -> AsyncIterator[Subscription]:
        if not isinstance(topic, RemoteTopic):
            async with super().subscribe(topic, after, heartbeat, reset) as local:
                yield local
            return
        self.subscribers += 1
        followers = self.keys.followers(topic.name)
        await self._count(followers, 1)
        try:
            yield RemoteSubscription(self.redis, topic, after, heartbeat, reset)
        finally:
            self.subscribers -= 1
            if await self._count(followers, -1) == 0:  # perhaps nobody follows it now: ask its runner
                await self._tell(json.dumps({"abandoned": topic.name}))

    def abandoned(self, topic: Topic) -> None:
        """This process's last follower left: the reply is abandoned unless another process's
        clients follow it (they tell its runner when the last of them leaves)."""
        task = asyncio.create_task(self._abandon_unless_followed(topic))
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)

    async def _abandon_unless_followed(self, topic: Topic) -> None:
        try:
            followed = int(await self.redis.get(self.keys.followers(topic.name)) or 0) > 0
        except (RedisError, OSError):
            followed = False  # nobody can follow it from elsewhere while Redis is away
        if not followed and topic.subscribers == 0 and not topic.closed and topic.on_abandoned is not None:
            topic.on_abandoned()

    async def _count(self, key: str, change: int) -> int | None:
        """The count of followers at `key` changed by `change`; None when Redis did not answer
        (then a runner may go on with a reply nobody follows, as it would without `cancel`)."""
        try:
            pipe: Any = self.redis.pipeline(transaction=True)
            pipe.incrby(key, change)
            pipe.pexpire(key, max(1, round(self.open_ttl * 1000)))
            count, _ = await pipe.execute()
            return int(count)
        except (RedisError, OSError) as exc:
            log.warning("could not count the followers at %s: %s", key, exc)
            return None

    async def _tell(self, notice: str) -> None:
        try:
            await self.redis.publish(self.keys.cancel, notice)
        except (RedisError, OSError) as exc:
            log.warning("could not tell the other processes %s: %s", notice, exc)

    async def aclose(self, grace: float = 5.0) -> None:
        """Let the copies of closed topics finish writing, for up to `grace` seconds; the rest
        (topics still open: the generations were ended before) are abandoned, and their streams
        expire by themselves."""
        await self._copier.drain(grace)
        await self._copier.aclose()
        for task in self._checks:
            task.cancel()
        await asyncio.gather(*self._checks, return_exceptions=True)
