"""Feeds shared by every process through Redis (`SIDECHAT_REDIS_URL`): a tab following its user
feed on one process hears what another did, presence counts every process's followers, and a
resume anywhere is exact or `reset`. Keys and scripts: `chat.redis_feed_scripts`.

Deliberate choices:
- Publishing never waits for Redis: events are queued and written in batches by one task
  (`chat.redis_feed_outbox`); a batch Redis did not take becomes a `reset` for the followers.
- Rare events (a message, a title, typing, presence) always go to the stream. A reply's tokens go
  to a conversation's feed only while `watched` has it: the conversations followed on any process,
  learned from `<prefix>watched`, at once from a `<prefix>watching` nudge when a process starts
  following one, and every `refresh` seconds (which also lets expired ones go). A conversation
  stays watched for the replay window after its last follower left, so a resume is exact.
- Presence is one sorted set per conversation whose members expire unless their process refreshes
  them: a process that dies stops counting within `ttl` seconds, and the next refresh anywhere
  tells the followers. The typing timer stays in the process that was told of the typing.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

from redis.exceptions import RedisError

from .config import Settings
from .feeds import RESET, Feeds, conversation_feed, user_feed
from .redis_broker import RedisBroker
from .redis_feed_follow import FeedSubscription, FeedTopic, Start, start_of, still_wanted
from .redis_feed_outbox import Outbox, Outboxes
from .redis_feed_scripts import WATCH, FeedKeys
from .subscription import Subscription

log = logging.getLogger("sidechat.redis")

REFRESH_SECONDS = 5.0  # how often a process renews its presence and watches, and learns others'
PRESENCE_TTL = 15.0  # how long a process's presence counts without being renewed
LISTEN_SECONDS = 5.0  # the longest a wait for a `watching` nudge lasts before it looks again


class SharedFeeds(Feeds):
    def __init__(
        self,
        broker: RedisBroker,
        settings: Settings,
        *,
        refresh: float = REFRESH_SECONDS,
        ttl: float = PRESENCE_TTL,
    ) -> None:
        super().__init__(broker, settings)
        self.redis, self.keys = broker.redis, FeedKeys.of(broker.keys)
        self.refresh, self.ttl = refresh, ttl
        self.process = uuid.uuid4().hex[:16]
        self._watch = self.redis.register_script(WATCH)
        window = (self.max_events, max(1, round(self.max_seconds * 1000)))
        self.outboxes = Outboxes(self.redis, self.keys, window, f"{self.process}:", round(ttl * 1000))
        self.outboxes.keep = self._watched_outbox
        self._here: Counter[int] = Counter()  # conversation id -> its followers here, joined or joining
        self._released: set[int] = set()  # conversations no longer followed here: watched a while yet
        self._following: Counter[str] = Counter()  # stream key -> followers here
        self._subscriptions: set[Subscription] = set()
        self.tasks: list[asyncio.Task[None]] = []  # what runs beside it (`shared_feeds`)

    # -- publishing -----------------------------------------------------------------------

    def outbox(self, name: str) -> Outbox:
        return self.outboxes.get(name)

    def to_users(self, users: Iterable[str], event: str, data: dict[str, Any]) -> None:
        for user in set(users):
            self.outbox(user_feed(user)).publish(event, data)

    def to_conversation(self, conversation_id: int, event: str, data: dict[str, Any]) -> None:
        self.outbox(conversation_feed(conversation_id)).publish(event, data)

    def conversation_deleted(self, conversation_id: int, users: Iterable[str]) -> None:
        self.to_everyone(conversation_id, users, "conversation.deleted", {"conversation_id": conversation_id})
        self.outbox(conversation_feed(conversation_id)).control("end")
        self.watched.pop(conversation_id, None)

    def member_removed(self, conversation_id: int, user: str) -> None:
        super().member_removed(conversation_id, user)  # here at once, and their own feed hears it
        self.outbox(conversation_feed(conversation_id)).control("gone", user)  # and everywhere

    # -- following ------------------------------------------------------------------------

    @asynccontextmanager
    async def follow_conversation(
        self, conversation_id: int, user: str, after: int
    ) -> AsyncIterator[Subscription]:
        key, name = (conversation_id, user), conversation_feed(conversation_id)
        outbox = self.outbox(name)
        first = not self._here[conversation_id]
        self._here[conversation_id] += 1
        joined: Subscription | None = None
        try:
            if first:  # the first follower here: the others learn it at once
                self.watched[conversation_id] = outbox
                self._released.discard(conversation_id)
                await self._start_watching(conversation_id)
            async with self._follow(name, after, user) as subscription:
                self._followers.setdefault(key, set()).add(subscription)
                self._present.setdefault(conversation_id, Counter())[user] += 1
                joined = subscription
                outbox.control("join", user)  # said on every join: a second tab must learn it too
                yield subscription
        finally:
            if joined is not None:
                self._left(conversation_id, user, joined)
            self._here[conversation_id] -= 1
            if not self._here[conversation_id]:
                del self._here[conversation_id]
                self._released.add(conversation_id)

    def _left(self, conversation_id: int, user: str, subscription: Subscription) -> None:
        key = (conversation_id, user)
        followers = self._followers[key]
        followers.discard(subscription)
        if not followers:
            del self._followers[key]
        present = self._present[conversation_id]
        present[user] -= 1
        if not present[user]:  # their last connection here: gone, unless another process has one
            del present[user]
            self.outbox(conversation_feed(conversation_id)).control("leave", user)
        if not present:
            del self._present[conversation_id]

    async def _start_watching(self, conversation_id: int) -> None:
        try:
            async with asyncio.timeout(2.0):
                await self._watch([self.keys.watched], [round(self.ttl * 1000), conversation_id])
                await self.redis.publish(self.keys.watching, str(conversation_id))
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("could not tell the others conversation %s is followed: %s", conversation_id, exc)

    @asynccontextmanager
    async def _follow(self, name: str, after: int, user: str | None = None) -> AsyncIterator[Subscription]:
        key = self.keys.feed(name)
        self.broker.subscribers += 1
        try:
            start = Start(0)
            ended = self.closing
            if not ended:
                try:
                    start = await start_of(self.redis, key, after)
                except (RedisError, OSError) as exc:
                    log.warning("could not follow %s (%s): the client resumes", name, exc)
                    ended = True
            subscription = FeedSubscription(
                self.redis, FeedTopic(name), key, start, self.heartbeat, RESET, user
            )
            subscription.ended = ended
            self._subscriptions.add(subscription)
            self._following[key] += 1
            try:
                yield subscription
            finally:
                self._subscriptions.discard(subscription)
                self._following[key] -= 1
                if not self._following[key]:
                    del self._following[key]
        finally:
            self.broker.subscribers -= 1

    def shut_down(self) -> None:
        self.closing = True
        for subscription in list(self._subscriptions):
            subscription.end()

    # -- what the other processes do ------------------------------------------------------

    async def _refresh_forever(self) -> None:
        failing = False
        while True:
            try:
                await self.renew()
                failing = False
            except (RedisError, OSError) as exc:
                if not failing:
                    log.warning("could not renew presence and watches in Redis (%s); retrying", exc)
                failing = True
            await asyncio.sleep(self.refresh)

    async def renew(self) -> None:
        """Renew this process's presence, watches and followed streams, and learn what is watched."""
        for conversation_id, present in self._present.items():
            outbox = self.outbox(conversation_feed(conversation_id))
            for user in present:
                outbox.control("hold", user)
        released, self._released = self._released, set()
        try:
            pipe: Any
            async with self.redis.pipeline(transaction=False) as pipe:
                await self._watch([self.keys.watched], [round(self.ttl * 1000), *self._here], client=pipe)
                if released:
                    window = round(self.max_seconds * 1000)
                    await self._watch([self.keys.watched], [window, *released], client=pipe)
                for key in self._following:
                    pipe.pexpire(key, max(1, round(self.max_seconds * 1000)))
                live: Any = (await pipe.execute())[0]
        except BaseException:
            self._released |= released - set(self._here)
            raise
        watched = {int(found) for found in live} | set(self._here)
        for conversation_id in watched:
            self._watched_here(conversation_id)
        for conversation_id in set(self.watched) - watched:
            del self.watched[conversation_id]

    def _watched_outbox(self, outbox: Outbox) -> bool:
        cid = outbox.conversation_id
        return cid is not None and self.watched.get(cid) is outbox

    def _watched_here(self, conversation_id: int) -> None:
        """Its tokens go to its feed from now on, wherever its reply runs."""
        if conversation_id not in self.watched:
            self.watched[conversation_id] = self.outbox(conversation_feed(conversation_id))

    async def _listen_forever(self) -> None:
        while True:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(self.keys.watching)
                await self.renew()  # what was said while this one was not listening
                while True:
                    found = await pubsub.get_message(ignore_subscribe_messages=True, timeout=LISTEN_SECONDS)
                    still_wanted()
                    if found is not None:
                        self._watched_here(int(found["data"]))
            except (RedisError, OSError, ValueError) as exc:
                log.warning("not hearing which conversations are followed elsewhere (%s); retrying", exc)
            finally:
                await pubsub.aclose()  # type: ignore[no-untyped-call]  # untyped in redis-py 8.1
            await asyncio.sleep(self.refresh)


@asynccontextmanager
async def shared_feeds(
    broker: RedisBroker,
    settings: Settings,
    *,
    refresh: float = REFRESH_SECONDS,
    ttl: float = PRESENCE_TTL,
) -> AsyncIterator[SharedFeeds]:
    """Feeds every process shares, for as long as the block lasts; on the way out, what was
    queued is written (for up to the shutdown grace)."""
    feeds = SharedFeeds(broker, settings, refresh=refresh, ttl=ttl)
    feeds.tasks = tasks = [
        asyncio.create_task(run(), name=f"feeds: {run.__name__}")
        for run in (feeds.outboxes.flush_forever, feeds._refresh_forever, feeds._listen_forever)
    ]
    try:
        yield feeds
    finally:
        feeds.shut_down()
        await feeds.outboxes.flushed(max(1.0, settings.shutdown_grace_seconds))
        pending = set(tasks)
        while pending:  # again until it lands: redis-py can swallow a cancellation mid-read
            for task in pending:
                task.cancel()
            pending = (await asyncio.wait(pending, timeout=1.0))[1]
