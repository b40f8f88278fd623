"""Only the right people: tokens on every /api route, and someone else's id is a 404 everywhere.

The table below is every route that takes a conversation or message id; each route
added later (feeds, regenerate, members, /v1) joins it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from chat.config import Settings
from tests.backends import Backend, every_backend
from tests.conftest import settings_for
from tests.fakeupstream import FakeUpstream, Reply, openai_chunk, openai_reply
from tests.live import serve

pytestmark = [pytest.mark.anyio, every_backend]

ALICE = "alice-token-0123456789"
BOB = "bob-token-9876543210ab"


@dataclass
class World:
    url: str
    alice: httpx.AsyncClient
    bob: httpx.AsyncClient
    anonymous: httpx.AsyncClient
    conversation: int  # alice's, with one finished turn
    finished: int  # its reply
    question: int  # and its user message
    running: int  # a reply of alice's still being generated, in another conversation
    running_conversation: int


def client(url: str, token: str | None) -> httpx.AsyncClient:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(base_url=url, headers=headers, timeout=10)


@pytest.fixture
async def world(upstream: FakeUpstream, tmp_path: Path, database: Backend) -> AsyncIterator[World]:
    held = asyncio.Event()  # never set: the second reply runs until the server stops
    upstream.add(Reply(openai_reply("hello there")), Reply([openai_chunk("and"), held]))
    settings = settings_for(upstream, tmp_path, db=database.db, api_tokens=((ALICE, "alice"), (BOB, "bob")))
    async with serve(settings) as url:
        async with client(url, ALICE) as alice, client(url, BOB) as bob, client(url, None) as anonymous:
            done = await alice.post("/api/chat", json={"message": "hello", "wait": True})
            assert done.status_code == 200, done.text
            finished = done.json()["message"]
            started = await alice.post("/api/chat", json={"message": "tell me more"})
            assert started.status_code == 202
            running = started.json()
            yield World(
                url,
                alice,
                bob,
                anonymous,
                conversation=finished["conversation_id"],
                finished=finished["id"],
                question=finished["metadata"]["user_message_id"],
                running=running["message_id"],
                running_conversation=running["conversation_id"],
            )


# (method, path, body): {c} is alice's conversation, {m} her finished reply, {u} its question,
# {r} her running reply.
FOREIGN = [
    ("GET", "/api/conversations/{c}", None),
    ("PATCH", "/api/conversations/{c}", {"title": "mine now"}),
    ("DELETE", "/api/conversations/{c}", None),
    ("GET", "/api/conversations/{c}/messages", None),
    ("GET", "/api/conversations/{c}/members", None),
    ("POST", "/api/conversations/{c}/members", {"user": "bob"}),
    ("GET", "/api/conversations/{c}/events", None),
    ("POST", "/api/conversations/{c}/typing", {"typing": True}),
    ("DELETE", "/api/conversations/{c}/members/bob", None),
    ("POST", "/api/chat", {"message": "hi", "conversation_id": "{c}"}),
    ("POST", "/api/chat/stream", {"message": "hi", "conversation_id": "{c}"}),
    ("GET", "/api/messages/{m}/stream", None),
    ("GET", "/api/messages/{r}/stream", None),
    ("POST", "/api/messages/{r}/cancel", None),
    ("POST", "/api/messages/{m}/cancel", None),
    ("POST", "/api/messages/{m}/regenerate", None),
    ("POST", "/api/messages/{r}/regenerate", {"wait": True}),
    ("POST", "/api/messages/{u}/edit", {"message": "mine now"}),
]


def fill(template: Any, world: World) -> Any:
    ids = {"{c}": world.conversation, "{m}": world.finished, "{u}": world.question, "{r}": world.running}
    if isinstance(template, str):
        for name, value in ids.items():
            if template == name:
                return value
            template = template.replace(name, str(value))
        return template
    if isinstance(template, dict):
        return {k: fill(v, world) for k, v in template.items()}
    return template


@pytest.mark.parametrize(("method", "path", "body"), FOREIGN, ids=[f"{m} {p}" for m, p, _ in FOREIGN])
async def test_someone_elses_id_is_404_and_changes_nothing(
    world: World, method: str, path: str, body: dict[str, Any] | None
) -> None:
    before = (await world.alice.get(f"/api/conversations/{world.conversation}")).json()
    response = await world.bob.request(method, fill(path, world), json=fill(body, world))
    assert response.status_code == 404, response.text
    assert response.json()["error"]["type"] == "not_found"
    after = (await world.alice.get(f"/api/conversations/{world.conversation}")).json()
    assert after == before
    running = (await world.alice.get(f"/api/conversations/{world.running_conversation}")).json()
    assert running["messages"][-1]["status"] == "streaming"  # not cancelled by bob
    assert (await world.bob.get("/api/conversations")).json()["conversations"] == []


async def test_the_list_shows_each_user_only_their_own(world: World) -> None:
    made = await world.bob.post("/api/conversations", json={"title": "bob's"})
    assert made.status_code == 201
    alice = [c["id"] for c in (await world.alice.get("/api/conversations")).json()["conversations"]]
    bob = [c["id"] for c in (await world.bob.get("/api/conversations")).json()["conversations"]]
    assert bob == [made.json()["conversation"]["id"]]
    assert sorted(alice) == sorted([world.conversation, world.running_conversation])


async def test_each_token_is_told_whose_it_is(world: World) -> None:
    assert (await world.alice.get("/api/me")).json() == {"user": "alice"}
    assert (await world.bob.get("/api/me")).json() == {"user": "bob"}


async def test_the_same_idempotency_key_is_each_users_own(world: World) -> None:
    key = {"idempotency-key": "shared-key-1"}
    first = await world.alice.post("/api/chat", json={"message": "one"}, headers=key)
    second = await world.bob.post("/api/chat", json={"message": "one"}, headers=key)
    assert first.status_code == second.status_code == 202
    assert first.json()["message_id"] != second.json()["message_id"]
    theirs = await world.bob.get(f"/api/conversations/{second.json()['conversation_id']}")
    assert theirs.status_code == 200


async def test_the_owner_still_reaches_everything(world: World) -> None:
    for method, path, body in FOREIGN:
        if method in ("DELETE", "POST") and "cancel" not in path:
            continue  # changes or new turns: covered by their own tests
        if path.endswith(("/events", "/stream")):  # a feed, or a reply still running, does not
            # end by itself (reading {r} to its end waited out the client's timeout): its start is enough
            async with world.alice.stream(method, fill(path, world)) as feed:
                assert feed.status_code == 200
            continue
        response = await world.alice.request(method, fill(path, world), json=fill(body, world))
        assert response.status_code in (200, 409), (method, path, response.text)


ROUTES = [
    ("GET", "/api/conversations"),
    ("POST", "/api/conversations"),
    ("GET", "/api/conversations/1"),
    ("PATCH", "/api/conversations/1"),
    ("DELETE", "/api/conversations/1"),
    ("GET", "/api/conversations/1/messages"),
    ("GET", "/api/conversations/1/members"),
    ("POST", "/api/conversations/1/members"),
    ("DELETE", "/api/conversations/1/members/bob"),
    ("GET", "/api/conversations/1/events"),
    ("POST", "/api/conversations/1/typing"),
    ("GET", "/api/events"),
    ("POST", "/api/chat"),
    ("POST", "/api/chat/stream"),
    ("GET", "/api/messages/1/stream"),
    ("POST", "/api/messages/1/cancel"),
    ("POST", "/api/messages/1/regenerate"),
    ("POST", "/api/messages/1/edit"),
    ("GET", "/api/providers"),
    ("GET", "/api/me"),
    ("GET", "/api/usage"),
]


@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.parametrize("token", [None, "wrong-token-0123456789", ALICE[:-1]])
async def test_every_api_route_needs_a_valid_token(
    world: World, method: str, path: str, token: str | None
) -> None:
    async with client(world.url, token) as http:
        response = await http.request(method, path, json={"message": "hi"} if method != "GET" else None)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith('Bearer realm="sidechat"')
    assert response.json()["error"]["type"] == "unauthorized"


async def test_probes_and_the_page_stay_open(world: World) -> None:
    for path in ("/healthz", "/readyz", "/", "/openapi.json"):
        assert (await world.anonymous.get(path)).status_code == 200, path


async def test_nothing_was_stored_for_refused_requests(world: World) -> None:
    for _ in range(3):
        await world.anonymous.post("/api/chat", json={"message": "free lunch"})
    conversations = (await world.alice.get("/api/conversations")).json()["conversations"]
    assert len(conversations) == 2
    assert (await world.bob.get("/api/conversations")).json()["conversations"] == []


@pytest.fixture
async def header_world(database: Backend) -> AsyncIterator[str]:
    settings = Settings(db=database.db, provider="demo", demo_delay=0.0, trusted_user_header="x-user")
    async with serve(settings) as url:
        yield url


async def test_trusted_header_names_the_user(header_world: str) -> None:
    async with httpx.AsyncClient(base_url=header_world, timeout=10) as http:
        made = await http.post("/api/chat", json={"message": "hi", "wait": True}, headers={"x-user": "carol"})
        assert made.status_code == 200
        conversation = made.json()["message"]["conversation_id"]
        assert (
            await http.get(f"/api/conversations/{conversation}", headers={"x-user": "carol"})
        ).status_code == 200
        assert (
            await http.get(f"/api/conversations/{conversation}", headers={"x-user": "dave"})
        ).status_code == 404
        refused = await http.get("/api/conversations")
        assert refused.status_code == 401
