"""Live feeds across two sidechat servers sharing one database and one Redis prefix, as two
processes: whatever process a feed is followed on, it hears what the other did."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from chat.config import Settings
from tests.conftest import settings_for
from tests.fakeupstream import FakeUpstream, Reply, openai_reply
from tests.live import Event, EventReader, serve
from tests.test_live_sync import Feed

if TYPE_CHECKING:
    from chat.redis_keys import Keys
    from tests.redis_server import RedisServer

pytest_plugins = ["tests.redis_server"]
pytestmark = pytest.mark.anyio

ALICE = "alice-token-0123456789"
BOB = "bob-token-9876543210ab"


@dataclass
class Side:
    """One server, as alice and as bob."""

    alice: httpx.AsyncClient
    bob: httpx.AsyncClient
    stack: contextlib.AsyncExitStack

    async def feed(self, client: httpx.AsyncClient, path: str, last_event_id: str | None = None) -> Feed:
        headers = {"last-event-id": last_event_id} if last_event_id else {}
        response = await self.stack.enter_async_context(client.stream("GET", path, headers=headers))
        assert response.status_code == 200, (await response.aread()).decode()
        return Feed(EventReader(response))


@contextlib.asynccontextmanager
async def two_servers(settings: Settings) -> AsyncIterator[tuple[Side, Side]]:
    async with contextlib.AsyncExitStack() as stack:
        sides = []
        for _ in range(2):
            url = await stack.enter_async_context(serve(settings))
            clients = [
                await stack.enter_async_context(
                    httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {t}"}, timeout=10)
                )
                for t in (ALICE, BOB)
            ]
            sides.append(Side(*clients, stack))
        yield sides[0], sides[1]


def shared(upstream: FakeUpstream, tmp_path: Path, url: str, keys: Keys, **changes: Any) -> Settings:
    tokens = ((ALICE, "alice"), (BOB, "bob"))
    return settings_for(
        upstream, tmp_path, api_tokens=tokens, redis_url=url, redis_prefix=keys.prefix, **changes
    )


@pytest.fixture
async def pair(
    upstream: FakeUpstream, tmp_path: Path, redis_server: RedisServer, redis_keys: Keys
) -> AsyncIterator[tuple[Side, Side]]:
    async with two_servers(shared(upstream, tmp_path, redis_server.url, redis_keys)) as sides:
        yield sides


async def conversation_of(side: Side, title: str = "support") -> int:
    made = await side.alice.post("/api/conversations", json={"title": title})
    conversation: int = made.json()["conversation"]["id"]
    added = await side.alice.post(f"/api/conversations/{conversation}/members", json={"user": "bob"})
    assert added.status_code in (200, 201), added.text
    return conversation


async def test_a_conversation_created_on_one_is_heard_on_the_others_user_feed(
    pair: tuple[Side, Side],
) -> None:
    a, b = pair
    mine = await b.feed(b.alice, "/api/events")
    made = await a.alice.post("/api/conversations", json={"title": "from a"})
    created = await mine.until("conversation.created")
    assert created.data["conversation"]["id"] == made.json()["conversation"]["id"]


async def test_presence_lists_a_user_on_each_and_typing_on_one_is_heard_on_the_other(
    pair: tuple[Side, Side],
) -> None:
    a, b = pair
    conversation = await conversation_of(a)
    path = f"/api/conversations/{conversation}/events"
    room = await b.feed(b.bob, path)
    await room.until("presence", users=["bob"])
    await a.feed(a.alice, path)
    await room.until("presence", users=["alice", "bob"])
    typed = await a.alice.post(f"/api/conversations/{conversation}/typing", json={"typing": True})
    assert typed.status_code == 204
    assert (await room.until("typing")).data == {"user": "alice", "typing": True}


async def test_a_reply_run_on_one_streams_its_tokens_to_a_feed_followed_on_the_other(
    pair: tuple[Side, Side], upstream: FakeUpstream
) -> None:
    a, b = pair
    upstream.add(Reply(openai_reply("Hel", "lo ", "there")))
    conversation = await conversation_of(a)
    room = await b.feed(b.bob, f"/api/conversations/{conversation}/events")
    await room.until("presence")
    posted = await a.alice.post("/api/chat", json={"message": "hi", "conversation_id": conversation})
    reply = posted.json()["message_id"]
    await room.until("generation.finished", message_id=reply)
    tokens = [e for e in room.events if e.event == "token"]
    assert "".join(e.data["text"] for e in tokens) == "Hello there"
    ids = [int(e.id or 0) for e in room.events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


async def test_a_resume_on_one_with_an_id_from_the_others_feed_is_exact(pair: tuple[Side, Side]) -> None:
    a, b = pair
    conversation = await conversation_of(a)
    async with a.alice.stream("GET", "/api/events") as first:
        feed = Feed(EventReader(first))
        await a.alice.patch(f"/api/conversations/{conversation}", json={"title": "one"})
        seen = await feed.until("conversation.updated")
    for title in ("two", "three"):
        await a.alice.patch(f"/api/conversations/{conversation}", json={"title": title})
    resumed = await b.feed(b.alice, "/api/events", last_event_id=seen.id)
    titles: list[Any] = []
    while len(titles) < 2:
        event = await resumed.until("conversation.updated")
        resumed.events.remove(event)
        titles.append(event)
    assert [e.data["conversation"]["title"] for e in titles] == ["two", "three"]
    assert "reset" not in resumed.names()


async def test_a_resume_from_before_the_window_is_reset(
    upstream: FakeUpstream, tmp_path: Path, redis_server: RedisServer, redis_keys: Keys
) -> None:
    settings = shared(upstream, tmp_path, redis_server.url, redis_keys, feed_replay_events=2)
    async with two_servers(settings) as (a, b):
        conversation = await conversation_of(a)
        async with a.alice.stream("GET", "/api/events") as first:
            feed = Feed(EventReader(first))
            await a.alice.patch(f"/api/conversations/{conversation}", json={"title": "a"})
            seen = await feed.until("conversation.updated")
            for title in "bcdefgh":
                await a.alice.patch(f"/api/conversations/{conversation}", json={"title": title})
            await titled(feed, "h")  # all of them are in the stream
        resumed = await b.feed(b.alice, "/api/events", last_event_id=seen.id)
        await a.alice.patch(f"/api/conversations/{conversation}", json={"title": "now"})
        assert (await resumed.until("conversation.updated")).data["conversation"]["title"] == "now"
        assert resumed.names()[0] == "reset" and resumed.events[0].id is None


async def titled(feed: Feed, title: str) -> Event:
    """The first `conversation.updated` to `title`, dropping the ones before it."""
    while True:
        event = await feed.until("conversation.updated")
        feed.events.remove(event)
        if event.data["conversation"]["title"] == title:
            return event


async def test_redis_stopped_and_started_mid_follow(
    upstream: FakeUpstream, tmp_path: Path, own_redis_server: RedisServer, redis_keys: Keys
) -> None:
    settings = shared(upstream, tmp_path, own_redis_server.url, redis_keys)
    async with two_servers(settings) as (a, b):
        conversation = await conversation_of(a)
        async with b.alice.stream("GET", "/api/events") as first:
            feed = Feed(EventReader(first))
            await a.alice.patch(f"/api/conversations/{conversation}", json={"title": "before"})
            seen = await feed.until("conversation.updated")
            own_redis_server.stop()
            renamed = await a.alice.patch(f"/api/conversations/{conversation}", json={"title": "during"})
            assert renamed.status_code == 200  # the change is stored; its event is what is lost
            async with asyncio.timeout(10):
                await feed.reader.read()  # the follower's read failed: its stream ends
        own_redis_server.start()
        resumed = await b.feed(b.alice, "/api/events", last_event_id=seen.id)
        await a.alice.patch(f"/api/conversations/{conversation}", json={"title": "after"})
        assert (await resumed.until("conversation.updated")).data["conversation"]["title"] == "after"
        assert resumed.names()[0] == "reset"  # "during" was dropped: said, never skipped silently
