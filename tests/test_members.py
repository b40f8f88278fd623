"""Shared conversations, against a real server: a member reads, posts, attaches and cancels;
only the owner renames, deletes or changes members (403 to a member); anyone else gets a 404
everywhere, and so does a member once removed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.backends import Backend, every_backend
from tests.conftest import settings_for
from tests.fakeupstream import FakeUpstream, Reply, openai_chunk, openai_reply
from tests.live import EventReader, read_stream, serve

pytestmark = [pytest.mark.anyio, every_backend]

ALICE = "alice-token-0123456789"
BOB = "bob-token-9876543210ab"
CAROL = "carol-token-0246813579"


@dataclass
class Shared:
    upstream: FakeUpstream
    alice: httpx.AsyncClient  # the owner
    bob: httpx.AsyncClient  # a member
    carol: httpx.AsyncClient  # neither
    conversation: int  # alice's, shared with bob, with one finished turn
    reply: int  # its reply

    async def snapshot(self) -> tuple[Any, Any]:
        """The conversation and its members as the owner sees them."""
        conversation = await self.alice.get(f"/api/conversations/{self.conversation}")
        members = await self.alice.get(f"/api/conversations/{self.conversation}/members")
        return conversation.json(), members.json()


def client(url: str, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {token}"}, timeout=10)


@pytest.fixture
async def shared(upstream: FakeUpstream, tmp_path: Path, database: Backend) -> AsyncIterator[Shared]:
    upstream.add(Reply(openai_reply("hello there")))
    tokens = ((ALICE, "alice"), (BOB, "bob"), (CAROL, "carol"))
    async with serve(settings_for(upstream, tmp_path, db=database.db, api_tokens=tokens)) as url:
        async with client(url, ALICE) as alice, client(url, BOB) as bob, client(url, CAROL) as carol:
            done = await alice.post("/api/chat", json={"message": "hello", "wait": True})
            assert done.status_code == 200, done.text
            reply = done.json()["message"]
            added = await alice.post(
                f"/api/conversations/{reply['conversation_id']}/members", json={"user": "bob"}
            )
            assert added.status_code == 201, added.text
            yield Shared(upstream, alice, bob, carol, reply["conversation_id"], reply["id"])


# (method, path, body): {c} is the shared conversation, {m} its reply.
EVERY_ROUTE = [
    ("GET", "/api/conversations/{c}", None),
    ("PATCH", "/api/conversations/{c}", {"title": "mine now"}),
    ("DELETE", "/api/conversations/{c}", None),
    ("GET", "/api/conversations/{c}/messages", None),
    ("GET", "/api/conversations/{c}/members", None),
    ("POST", "/api/conversations/{c}/members", {"user": "carol"}),
    ("DELETE", "/api/conversations/{c}/members/bob", None),
    ("POST", "/api/chat", {"message": "hi", "conversation_id": "{c}"}),
    ("POST", "/api/chat/stream", {"message": "hi", "conversation_id": "{c}"}),
    ("GET", "/api/messages/{m}/stream", None),
    ("POST", "/api/messages/{m}/cancel", None),
]
OWNER_ONLY = [
    ("PATCH", "/api/conversations/{c}", {"title": "mine now"}),
    ("DELETE", "/api/conversations/{c}", None),
    ("POST", "/api/conversations/{c}/members", {"user": "carol"}),
    ("POST", "/api/conversations/{c}/members", {"user": "bob"}),
    ("DELETE", "/api/conversations/{c}/members/bob", None),  # leaving, too, is the owner's to do
    ("DELETE", "/api/conversations/{c}/members/carol", None),
]


def fill(template: Any, shared: Shared) -> Any:
    if template == "{c}":
        return shared.conversation
    if isinstance(template, str):
        return template.replace("{c}", str(shared.conversation)).replace("{m}", str(shared.reply))
    if isinstance(template, dict):
        return {k: fill(v, shared) for k, v in template.items()}
    return template


async def each_is_404(shared: Shared, who: httpx.AsyncClient) -> None:
    before = await shared.snapshot()
    for method, path, body in EVERY_ROUTE:
        response = await who.request(method, fill(path, shared), json=fill(body, shared))
        assert response.status_code == 404, (method, path, response.text)
        assert response.json()["error"]["type"] == "not_found"
    assert await shared.snapshot() == before
    assert (await who.get("/api/conversations")).json()["conversations"] == []
    assert len(shared.upstream.requests) == 1  # only the fixture's turn reached the provider


async def test_a_member_sees_it_in_their_list_and_reads_it(shared: Shared) -> None:
    listed = (await shared.bob.get("/api/conversations")).json()["conversations"]
    assert [c["id"] for c in listed] == [shared.conversation]
    (conversation, members) = await shared.snapshot()
    read = await shared.bob.get(f"/api/conversations/{shared.conversation}")
    assert read.status_code == 200 and read.json() == conversation
    messages = await shared.bob.get(f"/api/conversations/{shared.conversation}/messages")
    assert messages.json()["messages"] == conversation["messages"]
    assert members == {"owner": "alice", "members": ["bob"]}
    assert (await shared.bob.get(f"/api/conversations/{shared.conversation}/members")).json() == members


async def test_a_member_posts_into_the_owners_conversation(shared: Shared) -> None:
    shared.upstream.add(*(Reply(openai_reply(text)) for text in ("from bob's turn", "again", "alice's")))
    body = {"message": "bob here", "conversation_id": shared.conversation}
    waited = await shared.bob.post("/api/chat", json={**body, "wait": True})
    assert waited.status_code == 200, waited.text
    assert waited.json()["message"]["content"] == "from bob's turn"

    key = {"idempotency-key": "bob-1"}
    started = await shared.bob.post("/api/chat", json=body, headers=key)
    assert started.status_code == 202, started.text
    retried = await shared.bob.post("/api/chat", json=body, headers=key)  # finds bob's own turn
    assert retried.status_code == 202 and retried.json() == started.json()
    async with shared.bob.stream("GET", started.json()["stream_url"]) as response:
        transcript = await read_stream(response)
    assert (transcript.status, transcript.text, transcript.terminal.event) == (200, "again", "done")

    conversation, _ = await shared.snapshot()
    assert [(m["role"], m["content"]) for m in conversation["messages"]] == [
        ("user", "hello"),
        ("assistant", "hello there"),
        ("user", "bob here"),
        ("assistant", "from bob's turn"),
        ("user", "bob here"),
        ("assistant", "again"),
    ]
    assert len(shared.upstream.requests) == 3  # the retry started nothing
    # The owner's turn under the same key is the owner's own, not bob's.
    alice = await shared.alice.post("/api/chat", json=body, headers=key)
    assert alice.status_code == 202 and alice.json()["message_id"] != started.json()["message_id"]


async def test_a_member_attaches_to_a_reply_and_cancels_it(shared: Shared) -> None:
    held = asyncio.Event()  # never set: the reply runs until it is cancelled
    shared.upstream.add(Reply([openai_chunk("half"), held]))
    started = await shared.alice.post(
        "/api/chat", json={"message": "a long one", "conversation_id": shared.conversation}
    )
    assert started.status_code == 202, started.text
    message_id = started.json()["message_id"]

    finished = await shared.bob.get(f"/api/messages/{shared.reply}/stream")
    assert finished.status_code == 200 and "hello there" in finished.text
    async with shared.bob.stream("GET", f"/api/messages/{message_id}/stream") as response:
        reader = EventReader(response)
        first = await reader.read(until=2)
        assert [e.event for e in first.events] == ["start", "token"]
        cancelled = await shared.bob.post(f"/api/messages/{message_id}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["message"]["status"] == "cancelled"
        rest = await reader.read()
    assert rest.terminal.event == "done" and rest.terminal.data["finish_reason"] == "cancelled"


@pytest.mark.parametrize(
    ("method", "path", "body"), OWNER_ONLY, ids=[f"{m} {p} {b}" for m, p, b in OWNER_ONLY]
)
async def test_a_member_is_refused_what_only_the_owner_may_do(
    shared: Shared, method: str, path: str, body: dict[str, Any] | None
) -> None:
    before = await shared.snapshot()
    response = await shared.bob.request(method, fill(path, shared), json=fill(body, shared))
    assert response.status_code == 403, response.text
    assert response.json()["error"]["type"] == "forbidden"
    assert await shared.snapshot() == before


async def test_anyone_else_gets_404_everywhere(shared: Shared) -> None:
    await each_is_404(shared, shared.carol)


async def test_a_removed_member_gets_404_everywhere_again(shared: Shared) -> None:
    removed = await shared.alice.delete(f"/api/conversations/{shared.conversation}/members/bob")
    assert removed.status_code == 204 and not removed.content
    await each_is_404(shared, shared.bob)
    again = await shared.alice.delete(f"/api/conversations/{shared.conversation}/members/bob")
    assert again.status_code == 404 and again.json()["error"]["type"] == "not_found"


async def test_the_owner_adds_members_once_and_never_themself(shared: Shared) -> None:
    members = f"/api/conversations/{shared.conversation}/members"
    added = await shared.alice.post(members, json={"user": "carol"})
    assert (added.status_code, added.json()) == (201, {"owner": "alice", "members": ["bob", "carol"]})
    again = await shared.alice.post(members, json={"user": "carol"})
    assert (again.status_code, again.json()) == (200, added.json())
    assert (await shared.carol.get(f"/api/conversations/{shared.conversation}")).status_code == 200

    for body, problem in [
        ({"user": "alice"}, "is the conversation's owner"),
        ({}, "required"),
        ({"user": ""}, "must not be empty"),
        ({"user": 5}, "must be a string"),
        ({"user": "a\nb"}, "must be printable: no newlines or other control characters"),
        ({"user": "x" * 201}, "must be at most 200 characters"),
    ]:
        refused = await shared.alice.post(members, json=body)
        assert refused.status_code == 422, (body, refused.text)
        assert refused.json()["error"]["fields"] == {"user": problem}
    assert (await shared.alice.get(members)).json()["members"] == ["bob", "carol"]
    for stranger in ("dave", "alice"):
        missing = await shared.alice.delete(f"{members}/{stranger}")
        assert missing.status_code == 404, missing.text


async def test_deleting_the_conversation_takes_its_members_with_it(shared: Shared, database: Backend) -> None:
    deleted = await shared.alice.delete(f"/api/conversations/{shared.conversation}")
    assert deleted.status_code == 204
    assert (await shared.alice.get(f"/api/conversations/{shared.conversation}/members")).status_code == 404
    assert (await shared.bob.get("/api/conversations")).json()["conversations"] == []
    # SQLite hands the id out again (Postgres's sequence never does): either way the new
    # conversation is not shared with the old one's members.
    made = await shared.alice.post("/api/conversations", json={"title": "new"})
    fresh = made.json()["conversation"]["id"]
    assert (fresh == shared.conversation) == (database.kind == "sqlite")
    assert (await shared.bob.get(f"/api/conversations/{fresh}")).status_code == 404
    assert (await shared.alice.get(f"/api/conversations/{fresh}/members")).json() == {
        "owner": "alice",
        "members": [],
    }
