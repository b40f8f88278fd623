"""Live feeds: what a user's other tabs and a conversation's other members need to stay in
step, as event streams from the same broker the generations use.

    user:<user>          conversation.created/updated/deleted, message.created,
                         generation.started (with stream_url), generation.finished
    conversation:<id>    message.created, generation.started/finished, each reply's
                         `token`s tagged with its message id, presence, typing

Deliberate choices:
- A regenerated reply or an edited message is told as a new turn: `message.created` for an
  edited message (its metadata says which it `supersedes`), none when a reply is generated
  again (its question is not new), and `generation.started` with `supersedes`, the reply it
  replaces. The replaced rows get no event of their own: those ids say all a client needs
  to mark them, and `GET /api/conversations/{id}` shows them with `superseded_by`.
- A feed exists while someone follows it, and for `SIDECHAT_FEED_REPLAY_SECONDS`
  after the last one left, so a dropped tab resumes exactly; after that, nothing is
  kept for it and publishing to it costs nothing. Its window is bounded by count and
  age (`chat.broker.WindowedTopic`); a resume from before it gets `reset`, and the
  client refetches over REST.
- A reply's tokens reach a conversation feed only while that feed exists: the
  generation looks up `watched` (a dict, empty when no conversation feed is open
  anywhere) once per token, so a feed nobody follows costs one falsy check.
- Presence is who follows the conversation feed right now: a user joins with their
  first connection and leaves with their last, however it ended (a closed tab is an
  `http.disconnect`, which ends the response at once). It is sent on every join,
  so that each new connection learns who is there.
- Only encoded events cross the broker, and ids are integers per topic, so a broker
  on Redis Streams can stand behind the same calls. With SIDECHAT_REDIS_URL, `live_feeds`
  gives `chat.redis_feeds.SharedFeeds` instead: the same calls, every process's feeds one.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

from .broker import Broker, Topic
from .config import Settings
from .records import Conversation, Message
from .sse import encode_event
from .subscription import Subscription

RESET = encode_event("reset", {"reason": "events were missed; fetch the current state over the API"})


def user_feed(user: str) -> str:
    return f"user:{user}"


def conversation_feed(conversation_id: int) -> str:
    return f"conversation:{conversation_id}"


@asynccontextmanager
async def live_feeds(broker: Broker, settings: Settings) -> AsyncIterator[Feeds]:
    """The feeds for `broker`: this process's own over an in-memory broker (nothing runs
    beside them), else feeds every process shares through Redis, for as long as the block lasts."""
    if type(broker) is Broker:
        yield Feeds(broker, settings)
        return
    from .redis_broker import RedisBroker
    from .redis_feeds import shared_feeds

    assert isinstance(broker, RedisBroker), broker
    async with shared_feeds(broker, settings) as feeds:
        yield feeds


class Feeds:
    def __init__(self, broker: Broker, settings: Settings) -> None:
        self.broker = broker
        self.heartbeat = settings.heartbeat_seconds
        self.max_events = settings.feed_replay_events
        self.max_seconds = settings.feed_replay_seconds
        self.typing_seconds = settings.typing_seconds
        self.watched: dict[int, Topic] = {}  # conversation id -> its feed, while it exists
        self._present: dict[int, Counter[str]] = {}  # conversation -> user -> connections
        self._followers: dict[tuple[int, str], set[Subscription]] = {}
        self._typing: dict[tuple[int, str], asyncio.TimerHandle] = {}
        self._idle: dict[str, asyncio.TimerHandle] = {}
        self._followed: set[Topic] = set()
        self.closing = False  # shutting down: feeds end, and no new ones start

    # -- publishing -----------------------------------------------------------------------

    def _open(self, name: str) -> Topic | None:
        topic = self.broker.get(name)
        return None if topic is None or topic.closed else topic

    def to_users(self, users: Iterable[str], event: str, data: dict[str, Any]) -> None:
        for user in set(users):
            if (topic := self._open(user_feed(user))) is not None:
                topic.publish(event, data)

    def to_conversation(self, conversation_id: int, event: str, data: dict[str, Any]) -> None:
        if (topic := self.watched.get(conversation_id)) is not None:
            topic.publish(event, data)

    def to_everyone(
        self, conversation_id: int, users: Iterable[str], event: str, data: dict[str, Any]
    ) -> None:
        """To the conversation's feed and to the user feed of each of `users` (its owner and members)."""
        self.to_conversation(conversation_id, event, data)
        self.to_users(users, event, data)

    def turn_started(
        self,
        users: list[str],
        conversation: Conversation | None,
        asked: Message,
        reply: Message,
        *,
        asked_is_new: bool = True,
    ) -> None:
        """A turn was stored and its generation runs; `conversation` when it is new, and
        `asked_is_new` unless a reply to an earlier message is generated again."""
        cid = reply.conversation_id
        if conversation is not None:
            self.to_users(users, "conversation.created", {"conversation": conversation.as_json()})
        if asked_is_new:
            self.to_everyone(cid, users, "message.created", {"message": asked.as_json()})
        started = {
            "conversation_id": cid,
            "message_id": reply.id,
            "user_message_id": asked.id,
            "provider": reply.metadata.get("provider"),
            "model": reply.metadata.get("model"),
            "stream_url": f"/api/messages/{reply.id}/stream",
        }
        if "supersedes" in reply.metadata:
            started["supersedes"] = reply.metadata["supersedes"]
        self.to_everyone(cid, users, "generation.started", started)

    def turn_finished(self, users: list[str], final: Message) -> None:
        metadata = final.metadata
        finished = {
            "conversation_id": final.conversation_id,
            "message_id": final.id,
            "status": final.status,
            "finish_reason": metadata.get("finish_reason"),
            "usage": metadata.get("usage"),
            **({"error": metadata["error"]} if metadata.get("error") else {}),
        }
        self.to_everyone(final.conversation_id, users, "generation.finished", finished)

    def conversation_deleted(self, conversation_id: int, users: Iterable[str]) -> None:
        """Say so on every feed that shows it; its own feed then ends."""
        self.to_everyone(conversation_id, users, "conversation.deleted", {"conversation_id": conversation_id})
        if (topic := self.watched.pop(conversation_id, None)) is not None:
            topic.close()

    def member_removed(self, conversation_id: int, user: str) -> None:
        """Their conversation feed connections end, and their own feed hears it is gone for them."""
        for subscription in list(self._followers.get((conversation_id, user), ())):
            subscription.end()
        self.to_users([user], "conversation.deleted", {"conversation_id": conversation_id})

    # -- typing ---------------------------------------------------------------------------

    def typing(self, conversation_id: int, user: str, typing: bool) -> None:
        """`typing: true` lasts `typing_seconds` unless said again; `false` ends it now."""
        key = (conversation_id, user)
        timer = self._typing.pop(key, None)
        if timer is not None:
            timer.cancel()
        if typing:
            loop = asyncio.get_running_loop()
            self._typing[key] = loop.call_later(self.typing_seconds, self._stopped_typing, key)
        if typing != (timer is not None):  # a change: others hear of it
            self.to_conversation(conversation_id, "typing", {"user": user, "typing": typing})

    def _stopped_typing(self, key: tuple[int, str]) -> None:
        del self._typing[key]
        self.to_conversation(key[0], "typing", {"user": key[1], "typing": False})

    # -- following ------------------------------------------------------------------------

    @asynccontextmanager
    async def follow_user(self, user: str, after: int) -> AsyncIterator[AsyncIterable[bytes]]:
        async with self._follow(user_feed(user), after) as subscription:
            yield subscription

    @asynccontextmanager
    async def follow_conversation(
        self, conversation_id: int, user: str, after: int
    ) -> AsyncIterator[AsyncIterable[bytes]]:
        key = (conversation_id, user)
        async with self._follow(conversation_feed(conversation_id), after) as subscription:
            topic = subscription.topic
            self.watched[conversation_id] = topic
            present = self._present.setdefault(conversation_id, Counter())
            followers = self._followers.setdefault(key, set())
            followers.add(subscription)
            present[user] += 1  # said on every join: a user's second tab must learn it too
            topic.publish("presence", {"users": sorted(present)})
            try:
                yield subscription
            finally:
                followers.discard(subscription)
                if not followers:
                    del self._followers[key]
                present[user] -= 1
                if not present[user]:
                    del present[user]
                    if not topic.closed:
                        topic.publish("presence", {"users": sorted(present)})
                if not present:
                    del self._present[conversation_id]

    def shut_down(self) -> None:
        """End every feed: the server waits for open connections before it stops, and a feed
        would never end by itself."""
        self.closing = True
        for topic in list(self._followed):
            topic.close()
        self._followed.clear()

    @asynccontextmanager
    async def _follow(self, name: str, after: int) -> AsyncIterator[Subscription]:
        topic = self.broker.feed(name, max_events=self.max_events, max_seconds=self.max_seconds)
        if self.closing:
            topic.close()
        self._followed.add(topic)
        if (idle := self._idle.pop(name, None)) is not None:
            idle.cancel()
        if not after:  # a new follower: from now on (what came before, it reads over REST)
            start = topic.last_id
        elif topic.first <= after <= topic.last_id:  # a resume within the window: exactly
            start = after
        else:  # from before the window, or another life of this feed: `reset`, then from now
            start = -1
        async with self.broker.subscribe(topic, start, self.heartbeat, RESET) as subscription:
            try:
                yield subscription
            finally:
                if topic.subscribers == 1:  # the last one is leaving
                    if topic.closed:  # the broker lets it go once its retention is over
                        self._followed.discard(topic)
                    else:
                        loop = asyncio.get_running_loop()
                        self._idle[name] = loop.call_later(self.max_seconds, self._forget, topic)

    def _forget(self, topic: Topic) -> None:
        """Nobody followed it for the replay window: nothing is kept for it any more."""
        self._idle.pop(topic.name, None)
        if topic.subscribers == 0:
            self._followed.discard(topic)
            self.broker.discard(topic)
            for conversation_id, watched in list(self.watched.items()):
                if watched is topic:
                    del self.watched[conversation_id]
