"""Feeds shared through a real Redis: two `SharedFeeds` on one prefix, each with its own client,
behave as two processes: events, ids, resumes, presence, typing, tokens, and Redis trouble."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import pytest

from chat.config import Settings
from chat.feeds import conversation_feed, user_feed
from chat.redis_broker import RedisBroker, open_redis
from chat.redis_feed_scripts import FeedKeys
from chat.redis_feeds import SharedFeeds, shared_feeds
from chat.redis_follow import MAX_BLOCK
from chat.sse import PING, SSEDecoder
from tests.live import until

if TYPE_CHECKING:
    from chat.redis_keys import Keys
    from tests.redis_server import RedisServer

pytest_plugins = ["tests.redis_server"]
pytestmark = pytest.mark.anyio

Opener = Callable[..., contextlib.AbstractAsyncContextManager[SharedFeeds]]


@pytest.fixture
def process(redis_server: RedisServer, redis_keys: Keys) -> Opener:
    """Opens a "process": its own Redis client, broker and shared feeds, under the test's prefix
    (renewing every 0.1 s, its presence counting for 2 s)."""

    @contextlib.asynccontextmanager
    async def opened(url: str = redis_server.url, **changes: Any) -> AsyncIterator[SharedFeeds]:
        settings = Settings(**{"heartbeat_seconds": 60.0, "shutdown_grace_seconds": 1.0, **changes})
        redis = open_redis(url)
        broker = RedisBroker(redis, retention=30, keys=redis_keys)
        try:
            async with shared_feeds(broker, settings, refresh=0.1, ttl=2.0) as feeds:
                yield feeds
        finally:
            await broker.aclose()
            await redis.aclose()

    return opened


Event = tuple[str, dict[str, Any], int | None]  # name, data, id


class Reader:
    """A feed's stream read event by event, as (name, data, id); pings are counted and skipped."""

    def __init__(self, stream: AsyncIterable[bytes]) -> None:
        self._chunks = aiter(stream)
        self._decoder = SSEDecoder()
        self._ready: list[Event] = []
        self.seen: list[Event] = []
        self.pings = 0

    async def next(self) -> Event:
        """The next event; the stream's end is an error."""
        while not self._ready:
            async with asyncio.timeout(10):
                chunk = await anext(self._chunks)
            if chunk == PING:
                self.pings += 1
            for event in self._decoder.feed(chunk):
                found = (event.event, json.loads(event.data), int(event.id) if event.id else None)
                self.seen.append(found)
                self._ready.append(found)
        return self._ready.pop(0)

    async def until(self, name: str, **match: Any) -> Event:
        while True:
            found = await self.next()
            if found[0] == name and all(found[1].get(k) == v for k, v in match.items()):
                return found

    async def ended(self) -> bool:
        """Whether the stream ends, within seconds (whatever it still sends before)."""
        async with asyncio.timeout(10):
            async for _ in self._chunks:
                pass
        return True


reader = Reader


async def test_an_event_published_in_one_process_is_heard_in_the_other(process: Opener) -> None:
    async with process() as a, process() as b, b.follow_user("alice", 0) as mine:
        a.to_users(["alice", "bob"], "conversation.created", {"conversation": {"id": 7}})
        name, data, event_id = await reader(mine).next()
        assert (name, data) == ("conversation.created", {"conversation": {"id": 7}})
        assert event_id is not None and event_id > 10**15  # from the clock, as in memory


async def test_ids_are_strictly_increasing_across_processes_and_a_resume_anywhere_is_exact(
    process: Opener,
) -> None:
    async with process() as a, process() as b:
        async with a.follow_user("alice", 0) as first:
            seen = reader(first)
            for n in range(6):
                (a if n % 2 else b).to_users(["alice"], "n", {"n": n})
                await seen.until("n", n=n)
        ids = [event_id for _, _, event_id in seen.seen]
        assert ids == sorted(ids) and len(set(ids)) == 6
        for n in range(6, 9):  # while nobody follows: kept for a resume
            a.to_users(["alice"], "n", {"n": n})
        await a.outboxes.flushed(5)
        async with b.follow_user("alice", ids[2] or 0) as resumed:
            again = reader(resumed)
            assert [(await again.next())[1]["n"] for _ in range(6)] == [3, 4, 5, 6, 7, 8]
            assert again.seen[0][2] == ids[3]


async def test_a_new_follower_starts_from_now(process: Opener) -> None:
    async with process() as a, process() as b:
        a.to_users(["alice"], "old", {})
        await a.outboxes.flushed(5)
        async with b.follow_user("alice", 0) as mine:
            a.to_users(["alice"], "new", {})
            assert (await reader(mine).next())[0] == "new"


async def test_a_resume_from_before_the_window_or_from_nowhere_is_reset(process: Opener) -> None:
    async with process(feed_replay_events=3) as a, process(feed_replay_events=3) as b:
        async with a.follow_user("alice", 0) as first:
            a.to_users(["alice"], "n", {"n": 0})
            _, _, old = await reader(first).next()
        for n in range(1, 10):
            a.to_users(["alice"], "n", {"n": n})
        await a.outboxes.flushed(5)
        async with b.follow_user("alice", old or 0) as resumed:
            again = reader(resumed)
            assert (await again.next())[0] == "reset"
            a.to_users(["alice"], "n", {"n": 10})
            assert (await again.next())[1] == {"n": 10}  # then from now: nothing the window held
        for bogus in (5, 10**18):  # an id this feed never gave: before it, or past its end
            async with b.follow_user("alice", bogus) as resumed:
                again = reader(resumed)
                assert (await again.next())[0] == "reset"
                a.to_users(["alice"], "n", {"n": bogus})
                assert (await again.next())[1] == {"n": bogus}


async def test_the_stream_keeps_a_window_and_expires(process: Opener, redis_keys: Keys) -> None:
    async with process(feed_replay_events=5, feed_replay_seconds=0.5) as a:
        for n in range(50):
            a.to_users(["alice"], "n", {"n": n})
        await a.outboxes.flushed(5)
        key = FeedKeys(redis_keys.prefix).feed(user_feed("alice"))
        assert await a.redis.xlen(key) == 5
        assert 0 < await a.redis.pttl(key) <= 500

        async def gone() -> bool:
            return not await a.redis.exists(key)

        await until(gone, what="the idle feed to expire")


async def test_presence_lists_the_followers_of_every_process_and_a_dead_one_stops_counting(
    process: Opener,
) -> None:
    async with process() as a, process() as b:
        async with a.follow_conversation(7, "alice", 0) as alice:
            room = reader(alice)
            assert (await room.until("presence"))[1] == {"users": ["alice"]}
            async with b.follow_conversation(7, "bob", 0) as bob:
                assert (await room.until("presence"))[1] == {"users": ["alice", "bob"]}
                assert (await reader(bob).until("presence"))[1] == {"users": ["alice", "bob"]}
            assert (await room.until("presence"))[1] == {"users": ["alice"]}
            async with process() as c:
                dying = c.follow_conversation(7, "carol", 0)
                await dying.__aenter__()
                assert (await room.until("presence"))[1] == {"users": ["alice", "carol"]}
                await c.outboxes.flushed(5)
                for task in c.tasks:
                    task.cancel()  # it stops renewing, as a dead process would
                # within its ttl (2 s here; 15 s by default), a renewal elsewhere tells everyone
                await room.until("presence", users=["alice"])


async def test_typing_in_one_process_is_heard_in_the_other_and_ends_by_itself(process: Opener) -> None:
    async with process(typing_seconds=0.1) as a, process() as b, b.follow_conversation(7, "bob", 0) as bob:
        room = reader(bob)
        await room.until("presence")
        a.typing(7, "alice", True)
        assert (await room.until("typing"))[1] == {"user": "alice", "typing": True}
        assert (await room.until("typing"))[1] == {"user": "alice", "typing": False}  # a's timer


async def test_a_reply_in_one_process_streams_its_tokens_to_a_follower_in_another(process: Opener) -> None:
    async with process() as a, process() as b:
        assert 7 not in a.watched  # nobody follows it: a token costs a falsy lookup
        async with b.follow_conversation(7, "bob", 0) as bob:
            room = reader(bob)
            await room.until("presence")
            feed = await until(lambda: a.watched.get(7), what="a to learn that 7 is followed")
            for text in ("Hel", "lo"):
                feed.publish("token", {"message_id": 42, "text": text})
            got = [await room.next() for _ in range(2)]
            assert [data.get("text") for _, data, _ in got] == ["Hel", "lo"], room.seen
        # left: still watched for the replay window, so a resume is exact
        await until(lambda: 7 in a.watched and 7 in b.watched, what="7 to stay watched")


async def test_a_watch_expires_everywhere_after_the_replay_window(process: Opener) -> None:
    async with process(feed_replay_seconds=0.3) as a, process(feed_replay_seconds=0.3) as b:
        async with b.follow_conversation(7, "bob", 0):
            await until(lambda: 7 in a.watched, what="a to learn that 7 is followed")
        await until(lambda: 7 not in a.watched and 7 not in b.watched, what="the watch to expire")


async def test_a_deleted_conversation_ends_its_feed_everywhere_and_a_removed_member_is_let_go(
    process: Opener,
) -> None:
    async with process() as a, process() as b:
        async with b.follow_conversation(7, "bob", 0) as bob, b.follow_conversation(7, "carol", 0) as carol:
            await reader(bob).until("presence", users=["bob", "carol"])
            a.member_removed(7, "bob")
            assert await reader(bob).ended()
            async with b.follow_conversation(7, "erin", 0) as erin:
                await reader(erin).until("presence")
                asked = asyncio.get_running_loop().time()
                b.member_removed(7, "erin")  # here: ended at once, not when its read is over
                assert await reader(erin).ended()
                assert asyncio.get_running_loop().time() - asked < MAX_BLOCK / 2
            room = reader(carol)
            a.conversation_deleted(7, ["carol"])
            await room.until("conversation.deleted")
            assert await room.ended()
        await b.outboxes.flushed(5)  # carol left: nobody is told, and the stream still ends there
        stream = FeedKeys(b.keys.prefix).feed(conversation_feed(7))
        assert b"end" in (await a.redis.xrevrange(stream, count=1))[0][1], await a.redis.xrange(stream)
        async with a.follow_conversation(7, "dave", 0) as again:  # the id again (SQLite reuses it)
            assert (await reader(again).next())[1] == {"users": ["dave"]}


async def test_publishing_while_redis_is_down_never_fails_and_followers_end_then_get_reset(
    process: Opener, own_redis_server: RedisServer
) -> None:
    async with process(own_redis_server.url) as a, process(own_redis_server.url) as b:
        async with b.follow_user("alice", 0) as mine:
            seen = reader(mine)
            a.to_users(["alice"], "n", {"n": 0})
            _, _, last = await seen.next()
            own_redis_server.stop()
            a.to_users(["alice"], "n", {"n": 1})  # queued: never an error for the request
            a.typing(7, "alice", True)
            assert await seen.ended()  # its read failed: the client reconnects
        await until(lambda: a.outboxes.get(user_feed("alice")).lost, what="the write to fail")
        own_redis_server.start()
        await until(lambda: not a.outboxes.get(user_feed("alice")).lost, what="the gap to be written")
        async with b.follow_user("alice", last or 0) as resumed:
            again = reader(resumed)
            assert (await again.next())[0] == "reset"  # n=1 was dropped: said, never skipped silently
            a.to_users(["alice"], "n", {"n": 2})
            assert (await again.next())[1] == {"n": 2}


async def test_following_while_redis_is_down_ends_at_once(
    process: Opener, own_redis_server: RedisServer
) -> None:
    async with process(own_redis_server.url) as a:
        own_redis_server.stop()
        async with a.follow_conversation(7, "alice", 0) as room:
            assert [chunk async for chunk in room] == []
        own_redis_server.start()


async def test_shutting_down_ends_every_follower(process: Opener) -> None:
    async with process() as a, a.follow_user("alice", 0) as mine, a.follow_conversation(7, "bob", 0) as room:
        a.shut_down()
        assert await reader(mine).ended() and await reader(room).ended()
        async with a.follow_user("carol", 0) as late:
            assert [chunk async for chunk in late] == []


async def test_a_redis_that_forgot_the_script_is_given_it_again(
    process: Opener, own_redis_server: RedisServer
) -> None:
    async with process(own_redis_server.url) as a, a.follow_user("alice", 0) as mine:
        seen = reader(mine)
        a.to_users(["alice"], "n", {"n": 0})
        assert (await seen.next())[1] == {"n": 0}
        await a.redis.script_flush()  # as after a restart, or a failover to a replica without it
        a.to_users(["alice"], "n", {"n": 1})
        assert (await seen.next())[1] == {"n": 1}  # exactly once, and no reset: nothing ran before
