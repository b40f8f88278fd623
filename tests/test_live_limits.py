"""The limits as a client meets them: 429 and 503 with Retry-After, and nothing stored."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import httpx
import pytest

from tests.fakeupstream import FakeUpstream, Reply, openai_chunk, openai_reply
from tests.live import EventReader, until

pytestmark = pytest.mark.anyio


def stored_messages(tmp_path: Path) -> int:
    with sqlite3.connect(tmp_path / "chat.db") as db:
        return int(db.execute("SELECT count(*) FROM messages").fetchone()[0])


def assert_refused(response: httpx.Response, status: int, kind: str) -> float:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == kind
    assert error["retry_after"] > 0
    assert int(response.headers["retry-after"]) >= error["retry_after"]
    return float(error["retry_after"])


@pytest.mark.parametrize("client", [{"rate_limit": (3, 60.0)}], indirect=True)
@pytest.mark.parametrize("path", ["/api/chat", "/api/chat/stream"])
async def test_the_request_past_the_rate_is_429_and_stores_nothing(
    client: httpx.AsyncClient, upstream: FakeUpstream, tmp_path: Path, path: str
) -> None:
    upstream.add(*[Reply(openai_reply("ok")) for _ in range(3)])
    for _ in range(3):  # all three at once: the burst is the whole allowance
        done = await client.post("/api/chat", json={"message": "hi", "wait": True})
        assert done.status_code == 200
    before = stored_messages(tmp_path)
    wait = assert_refused(await client.post(path, json={"message": "one more"}), 429, "rate_limited")
    assert 15 <= wait <= 20
    assert stored_messages(tmp_path) == before
    assert len(upstream.requests) == 3


@pytest.mark.parametrize("client", [{"max_streams_per_user": 2}], indirect=True)
async def test_a_user_with_as_many_running_replies_as_allowed_gets_429_until_one_ends(
    client: httpx.AsyncClient, upstream: FakeUpstream, tmp_path: Path
) -> None:
    gate = asyncio.Event()
    upstream.add(*[Reply([openai_chunk("slow"), gate, *openai_reply(" end")]) for _ in range(2)])
    upstream.add(Reply(openai_reply("third")))
    running = [await client.post("/api/chat", json={"message": f"q{i}"}) for i in range(2)]
    assert {r.status_code for r in running} == {202}
    before = stored_messages(tmp_path)
    assert_refused(await client.post("/api/chat/stream", json={"message": "q3"}), 429, "rate_limited")
    assert stored_messages(tmp_path) == before
    gate.set()
    first = running[0].json()["message_id"]

    async def admitted() -> bool:
        response = await client.post("/api/chat", json={"message": "q3", "wait": True})
        return response.status_code == 200

    # The slot comes back when a generation ends, which the client learns only by asking.
    await until(admitted, what="a slot to come back")
    message = (await client.get(f"/api/messages/{first}/stream")).text
    assert "event: done" in message


@pytest.mark.parametrize("client", [{"max_connections_per_user": 2}], indirect=True)
async def test_open_streams_past_the_cap_get_503_and_closing_one_makes_room(
    client: httpx.AsyncClient, upstream: FakeUpstream, tmp_path: Path
) -> None:
    gate = asyncio.Event()
    upstream.add(Reply([openai_chunk("held"), gate, *openai_reply(" end")]), Reply(openai_reply("x")))
    reply = (await client.post("/api/chat", json={"message": "hi"})).json()["message_id"]
    url = f"/api/messages/{reply}/stream"
    async with client.stream("GET", url) as one, client.stream("GET", url) as two:
        readers = [EventReader(one), EventReader(two)]  # kept: a reader let go closes its stream
        for reader in readers:
            await reader.read(until=1)
        assert_refused(await client.get(url), 503, "too_many_connections")
        before = stored_messages(tmp_path)
        refused = await client.post("/api/chat/stream", json={"message": "new"})
        assert_refused(refused, 503, "too_many_connections")
        assert stored_messages(tmp_path) == before  # refused before anything was stored
    gate.set()
    await until(lambda: _answers(client, url), what="the closed streams to be given back")


async def _answers(client: httpx.AsyncClient, url: str) -> bool:
    return (await client.get(url)).status_code == 200
