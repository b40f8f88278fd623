"""Live sync against a real server: two users sharing a conversation, several feeds at once."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import settings_for
from tests.fakeupstream import FakeUpstream, Reply, openai_chunk, openai_reply
from tests.live import Event, EventReader, serve

pytestmark = pytest.mark.anyio

ALICE = "alice-token-0123456789"
BOB = "bob-token-9876543210ab"
CAROL = "carol-token-0123456789"


@dataclass
class Feed:
    """A feed being read, event by event, with everything read so far."""

    reader: EventReader
    events: list[Event] = field(default_factory=list)

    async def until(self, name: str, **match: Any) -> Event:
        """The first event called `name` whose data has `match`, read so far or still to come."""
        try:
            async with asyncio.timeout(10):
                return await self._until(name, match)
        except TimeoutError:
            raise AssertionError(f"no {name} {match} came: {[e.event for e in self.events]}") from None

    async def _until(self, name: str, match: dict[str, Any]) -> Event:
        seen = [e for e in self.events if e.event == name and _matches(e, match)]
        while not seen:
            fresh = (await self.reader.read(until=1)).events
            if not fresh:
                raise AssertionError(
                    f"the feed ended before {name} {match}: {[e.event for e in self.events]}"
                )
            self.events += fresh
            seen = [e for e in fresh if e.event == name and _matches(e, match)]
        return seen[0]

    def names(self) -> list[str]:
        return [e.event for e in self.events]


def _matches(event: Event, match: dict[str, Any]) -> bool:
    return all(event.data.get(k) == v for k, v in match.items())


@dataclass
class World:
    url: str
    alice: httpx.AsyncClient
    bob: httpx.AsyncClient
    carol: httpx.AsyncClient
    conversation: int
    stack: contextlib.AsyncExitStack

    async def feed(self, client: httpx.AsyncClient, path: str, last_event_id: str | None = None) -> Feed:
        headers = {"last-event-id": last_event_id} if last_event_id else {}
        response = await self.stack.enter_async_context(client.stream("GET", path, headers=headers))
        assert response.status_code == 200, (await response.aread()).decode()
        return Feed(EventReader(response))


def client(url: str, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {token}"}, timeout=10)


@pytest.fixture
async def world(
    upstream: FakeUpstream, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[World]:
    tokens = ((ALICE, "alice"), (BOB, "bob"), (CAROL, "carol"))
    settings = settings_for(upstream, tmp_path, api_tokens=tokens, **getattr(request, "param", {}))
    async with serve(settings) as url, contextlib.AsyncExitStack() as stack:
        alice, bob, carol = [await stack.enter_async_context(client(url, t)) for t, _ in tokens]
        made = await alice.post("/api/conversations", json={"title": "support"})
        conversation = made.json()["conversation"]["id"]
        shared = await alice.post(f"/api/conversations/{conversation}/members", json={"user": "bob"})
        assert shared.status_code in (200, 201), shared.text
        async with contextlib.AsyncExitStack() as feeds:
            yield World(url, alice, bob, carol, conversation, feeds)


async def test_a_members_message_reaches_every_feed_and_the_tokens_are_the_reply(
    world: World, upstream: FakeUpstream
) -> None:
    upstream.add(Reply(openai_reply("Hel", "lo ", "there")))
    alice_feed = await world.feed(world.alice, "/api/events")
    bob_feed = await world.feed(world.bob, "/api/events")
    room = await world.feed(world.alice, f"/api/conversations/{world.conversation}/events")
    await room.until("presence")

    posted = await world.bob.post(
        "/api/chat", json={"message": "my order?", "conversation_id": world.conversation}
    )
    assert posted.status_code == 202
    reply = posted.json()["message_id"]

    for feed in (alice_feed, bob_feed, room):
        created = await feed.until("message.created")
        assert created.data["message"]["content"] == "my order?"
        assert created.data["message"]["user"] == "bob"  # who wrote it, for all to see
        started = await feed.until("generation.started")
        assert started.data["stream_url"] == f"/api/messages/{reply}/stream"
        finished = await feed.until("generation.finished", message_id=reply)
        assert finished.data["status"] == "completed" and finished.data["usage"]["output_tokens"] == 2
    tokens = [e for e in room.events if e.event == "token"]
    assert {e.data["message_id"] for e in tokens} == {reply}
    stored = (await world.alice.get(f"/api/conversations/{world.conversation}")).json()["messages"][-1]
    assert "".join(e.data["text"] for e in tokens) == stored["content"] == "Hello there"
    ids = [int(e.id or 0) for e in room.events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


async def test_conversation_changes_reach_the_user_feeds_of_owner_and_members(world: World) -> None:
    alice_feed = await world.feed(world.alice, "/api/events")
    bob_feed = await world.feed(world.bob, "/api/events")
    renamed = await world.alice.patch(f"/api/conversations/{world.conversation}", json={"title": "refund"})
    assert renamed.status_code == 200
    for feed in (alice_feed, bob_feed):
        assert (await feed.until("conversation.updated")).data["conversation"]["title"] == "refund"
    made = await world.alice.post("/api/conversations", json={"title": "private"})
    assert (await alice_feed.until("conversation.created")).data["conversation"]["title"] == "private"
    await world.alice.delete(f"/api/conversations/{made.json()['conversation']['id']}")
    await alice_feed.until("conversation.deleted")
    assert "conversation.created" not in bob_feed.names()  # not shared with bob


async def test_presence_follows_joins_and_leaves_even_an_abrupt_one(world: World) -> None:
    path = f"/api/conversations/{world.conversation}/events"
    room = await world.feed(world.alice, path)
    assert (await room.until("presence")).data["users"] == ["alice"]
    host, port = str(world.alice.base_url.host), int(world.alice.base_url.port or 0)
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {BOB}\r\n\r\n".encode())
    await writer.drain()
    await room.until("presence", users=["alice", "bob"])
    writer.transport.abort()  # no goodbye: the socket is simply gone
    await room.until("presence", users=["alice"])


@pytest.mark.parametrize("world", [{"typing_seconds": 0.2}], indirect=True)
async def test_typing_is_seen_and_ends_by_itself_and_a_flood_is_refused(world: World) -> None:
    room = await world.feed(world.alice, f"/api/conversations/{world.conversation}/events")
    url = f"/api/conversations/{world.conversation}/typing"
    assert (await world.bob.post(url, json={"typing": True})).status_code == 204
    assert (await room.until("typing", user="bob", typing=True)).data == {"user": "bob", "typing": True}
    await room.until("typing", user="bob", typing=False)  # nobody said so: it expired
    answers = [(await world.bob.post(url, json={"typing": n % 2 == 0})).status_code for n in range(12)]
    assert 429 in answers and set(answers) <= {204, 429}
    assert (await world.bob.post(url, json={"typing": "yes"})).status_code == 422


async def test_a_dropped_feed_resumes_with_no_duplicates_and_no_gaps(world: World) -> None:
    async with world.alice.stream("GET", "/api/events") as first:
        feed = Feed(EventReader(first))
        await world.alice.patch(f"/api/conversations/{world.conversation}", json={"title": "one"})
        seen = await feed.until("conversation.updated")
    for title in ("two", "three"):
        await world.alice.patch(f"/api/conversations/{world.conversation}", json={"title": title})
    resumed = await world.feed(world.alice, "/api/events", last_event_id=seen.id)
    titles = []
    while len(titles) < 2:
        event = await resumed.until("conversation.updated")
        resumed.events.remove(event)
        titles.append(event.data["conversation"]["title"])
        assert int(event.id or 0) > int(seen.id or 0)
    assert titles == ["two", "three"]


@pytest.mark.parametrize("world", [{"feed_replay_events": 2}], indirect=True)
async def test_a_resume_from_before_the_window_is_told_to_refetch(world: World) -> None:
    async with world.alice.stream("GET", "/api/events") as first:
        feed = Feed(EventReader(first))
        await world.alice.patch(f"/api/conversations/{world.conversation}", json={"title": "a"})
        seen = await feed.until("conversation.updated")
        for title in "bcdefgh":
            await world.alice.patch(f"/api/conversations/{world.conversation}", json={"title": title})
    resumed = await world.feed(world.alice, "/api/events", last_event_id=seen.id)
    await world.alice.patch(f"/api/conversations/{world.conversation}", json={"title": "now"})
    assert (await resumed.until("conversation.updated")).data["conversation"]["title"] == "now"
    assert resumed.names()[0] == "reset" and resumed.events[0].id is None


async def test_a_deleted_conversations_feed_ends_and_a_removed_member_is_let_go(world: World) -> None:
    path = f"/api/conversations/{world.conversation}/events"
    bob_room = await world.feed(world.bob, path)
    bob_feed = await world.feed(world.bob, "/api/events")
    await bob_room.until("presence")
    assert (
        await world.alice.delete(f"/api/conversations/{world.conversation}/members/bob")
    ).status_code == 204
    async with asyncio.timeout(5):  # the server ends bob's feed: reading it to its end returns
        await bob_room.reader.read()
    await bob_feed.until("conversation.deleted", conversation_id=world.conversation)
    assert (await world.bob.get(path)).status_code == 404

    alice_room = await world.feed(world.alice, path)
    await alice_room.until("presence")
    assert (await world.alice.delete(f"/api/conversations/{world.conversation}")).status_code == 204
    async with asyncio.timeout(5):
        rest = await alice_room.reader.read()  # to its end
    assert [e.event for e in rest.events][-1:] == ["conversation.deleted"]


async def test_a_non_member_gets_404_on_every_feed_and_action(world: World) -> None:
    base = f"/api/conversations/{world.conversation}"
    assert (await world.carol.get(f"{base}/events")).status_code == 404
    assert (await world.carol.post(f"{base}/typing", json={"typing": True})).status_code == 404
    assert (await world.carol.get("/api/events", headers={"authorization": "Bearer nope"})).status_code == 401


async def test_with_no_auth_two_tabs_of_the_local_user_stay_in_step(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    upstream.add(Reply([openai_chunk("hi"), *openai_reply()]))
    async with (
        serve(settings_for(upstream, tmp_path)) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as http,
    ):
        async with http.stream("GET", "/api/events") as tab:
            feed = Feed(EventReader(tab))
            accepted = (await http.post("/api/chat", json={"message": "from the other tab"})).json()
            created = await feed.until("conversation.created")
            assert created.data["conversation"]["id"] == accepted["conversation_id"]
            started = await feed.until("generation.started")
            assert started.data["message_id"] == accepted["message_id"]
            await feed.until("generation.finished")
