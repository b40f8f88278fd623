"""SIDECHAT_STORE=none over real sockets: a pure relay that writes nothing, whose replies
stream, resume while their replay window lasts, cancel and retry as ever."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from chat.settings_types import Budget
from tests.conftest import settings_for
from tests.fakeupstream import FakeUpstream, Reply, openai_chunk, openai_reply
from tests.live import EventReader, chat_stream, read_stream, serve, until
from tests.test_metrics import scrape, settles

pytestmark = pytest.mark.anyio


@pytest.fixture
async def relay(
    upstream: FakeUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> AsyncIterator[httpx.AsyncClient]:
    """sidechat storing nothing, run from an empty directory of its own with the default
    (relative) database path; parametrize indirectly to change settings."""
    monkeypatch.chdir(tmp_path)
    changes = {"store": "none", "db": "./sidechat.db", **getattr(request, "param", {})}
    async with serve(settings_for(upstream, tmp_path, **changes)) as url:
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            yield http


async def resumed(client: httpx.AsyncClient, message_id: int, after: int) -> httpx.Response | list[str]:
    """The event names of a resume after id `after`, or the response when it is no stream."""
    headers = {"last-event-id": str(after)}
    async with client.stream("GET", f"/api/messages/{message_id}/stream", headers=headers) as response:
        if response.status_code != 200:
            await response.aread()
            return response
        return (await read_stream(response)).names


async def test_a_chat_streams_to_done_and_no_file_is_created(
    upstream: FakeUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    upstream.add(Reply(openai_reply("Hel", "lo")), Reply(openai_reply("again")))
    told = []
    for db in ("./sidechat.db", str(tmp_path / "data" / "chat.db")):
        async with serve(settings_for(upstream, tmp_path, store="none", db=db)) as url:
            async with httpx.AsyncClient(base_url=url, timeout=10) as client:
                transcript = await chat_stream(client, {"message": "hi"})
        assert transcript.status == 200
        assert transcript.names[0] == "start" and transcript.terminal.event == "done"
        assert transcript.terminal.data["finish_reason"] == "stop"
        assert transcript.headers["x-message-id"] == str(transcript.events[0].data["message_id"])
        told.append((transcript.text, transcript.events[0].data["message_id"]))

    (first, first_id), (second, second_id) = told
    assert (first, second) == ("Hello", "again")
    assert second_id > first_id  # the restarted relay gave out no id a client may still hold
    assert [p.name for p in tmp_path.iterdir()] == ["data"]
    assert list((tmp_path / "data").iterdir()) == []
    assert upstream.requests[1].json()["messages"] == [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("relay", [{"db": "/nonexistent/directory/chat.db"}], indirect=True)
async def test_a_database_path_that_cannot_exist_is_never_opened(
    relay: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    upstream.add(Reply(openai_reply("fine")))
    transcript = await chat_stream(relay, {"message": "hi"})
    assert (transcript.names[-1], transcript.text) == ("done", "fine")


async def test_ids_increase_and_no_history_is_sent(relay: httpx.AsyncClient, upstream: FakeUpstream) -> None:
    upstream.add(Reply(openai_reply("one")), Reply(openai_reply("two")))
    first = await chat_stream(relay, {"message": "one"})
    second = await chat_stream(relay, {"message": "two"})
    a, b = first.events[0].data, second.events[0].data
    assert a["user_message_id"] < a["message_id"] < b["user_message_id"] < b["message_id"]
    assert a["conversation_id"] < b["conversation_id"]
    assert upstream.requests[1].json()["messages"] == [{"role": "user", "content": "two"}]


async def test_the_history_a_client_sends_is_relayed_as_it_is(
    relay: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    upstream.add(Reply(openai_reply("four")))
    history = [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "two plus two?"},
        {"role": "assistant", "content": "four"},
        {"role": "user", "content": "and again?"},
    ]
    transcript = await chat_stream(relay, {"messages": history})
    assert (transcript.names[-1], transcript.text) == ("done", "four")
    assert upstream.requests[0].json()["messages"] == history


async def test_conversation_routes_answer_404(relay: httpx.AsyncClient, upstream: FakeUpstream) -> None:
    upstream.add(Reply(openai_reply("hi")))
    transcript = await chat_stream(relay, {"message": "hi"})
    start = transcript.events[0].data
    cid, reply, asked = start["conversation_id"], start["message_id"], start["user_message_id"]
    base = f"/api/conversations/{cid}"

    calls = [
        relay.get(base),
        relay.get(f"{base}/messages"),
        relay.patch(base, json={"title": "new"}),
        relay.delete(base),
        relay.get(f"{base}/members"),
        relay.post(f"{base}/members", json={"user": "bob"}),
        relay.delete(f"{base}/members/bob"),
        relay.get(f"{base}/events"),
        relay.post(f"{base}/typing", json={"typing": True}),
        relay.post("/api/chat", json={"message": "more", "conversation_id": cid}),
        relay.post(f"/api/messages/{reply}/regenerate"),
        relay.post(f"/api/messages/{asked}/edit", json={"message": "instead"}),
    ]
    answers = [await call for call in calls]
    assert [(a.request.method, a.status_code) for a in answers] == [(a.request.method, 404) for a in answers]
    assert len(upstream.requests) == 1
    listed = await relay.get("/api/conversations")
    assert listed.json() == {"conversations": [], "next_cursor": None}
    made = await relay.post("/api/conversations", json={"title": "kept?"})
    assert (made.status_code, made.json()["error"]["type"]) == (409, "storage_off")
    assert "SIDECHAT_STORE=none" in made.json()["error"]["message"]


@pytest.mark.parametrize("relay", [{"replay_seconds": 1.5}], indirect=True)
async def test_attach_resumes_during_and_after_the_reply_until_its_window_ends(
    relay: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    gate = asyncio.Event()
    upstream.add(Reply([openai_chunk("a"), gate, *openai_reply("b")]))
    accepted = (await relay.post("/api/chat", json={"message": "hi"})).json()
    message_id = accepted["message_id"]

    async with relay.stream("GET", accepted["stream_url"]) as response:
        head = await EventReader(response).read(until=2)
    assert head.names == ["start", "token"]
    async with relay.stream(
        "GET", f"/api/messages/{message_id}/stream", headers={"last-event-id": "2"}
    ) as response:
        reader = EventReader(response)
        gate.set()
        rest = await reader.read()
    assert (rest.names, rest.text, rest.events[0].id) == (["token", "done"], "b", "3")

    assert await resumed(relay, message_id, 2) == ["token", "done"]  # just after its end
    done = await resumed(relay, message_id, 4)
    assert isinstance(done, httpx.Response) and done.status_code == 204

    async def forgotten() -> bool:
        answer = await resumed(relay, message_id, 2)
        return isinstance(answer, httpx.Response) and answer.status_code == 404

    await until(forgotten, what="the reply to be forgotten after its window")
    assert (await relay.post(f"/api/messages/{message_id}/cancel")).status_code == 404


async def test_cancel_stops_a_running_reply(relay: httpx.AsyncClient, upstream: FakeUpstream) -> None:
    upstream.add(Reply([openai_chunk("part"), asyncio.Event()], finish=False))
    async with relay.stream("POST", "/api/chat/stream", json={"message": "hi"}) as response:
        reader = EventReader(response)
        head = await reader.read(until=2)
        message_id = head.events[0].data["message_id"]
        stopped = await relay.post(f"/api/messages/{message_id}/cancel")
        rest = await reader.read()

    assert stopped.status_code == 200
    message = stopped.json()["message"]
    assert (message["status"], message["content"]) == ("cancelled", "part")
    assert rest.terminal.event == "done" and rest.terminal.data["finish_reason"] == "cancelled"
    await until(lambda: upstream.hangups, what="the upstream call to be closed")
    again = await relay.post(f"/api/messages/{message_id}/cancel")
    assert (again.status_code, again.json()["error"]["status"]) == (409, "cancelled")


@pytest.mark.parametrize("relay", [{"heartbeat_seconds": 0.1}], indirect=True)
async def test_heartbeats_keep_a_slow_reply_alive(relay: httpx.AsyncClient, upstream: FakeUpstream) -> None:
    gate = asyncio.Event()
    upstream.add(Reply([gate, *openai_reply("late")]))
    async with relay.stream("POST", "/api/chat/stream", json={"message": "hi"}) as response:
        reader = EventReader(response)
        reading = asyncio.create_task(reader.read())
        await until(lambda: len(reader.transcript.pings) >= 2, what="two heartbeats before the first token")
        gate.set()
        transcript = await reading
    assert (transcript.names, transcript.text) == (["start", "token", "done"], "late")


@pytest.mark.parametrize("relay", [{"replay_seconds": 0.3}], indirect=True)
async def test_an_idempotency_key_retry_attaches_while_the_turn_is_known(
    relay: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    gate = asyncio.Event()
    upstream.add(Reply([openai_chunk("once"), gate, *openai_reply("")]), Reply(openai_reply("new")))
    key = {"idempotency-key": "retry-1"}
    first = await relay.post("/api/chat", json={"message": "hi"}, headers=key)
    retry = await relay.post("/api/chat", json={"message": "hi"}, headers=key)
    other = await relay.post("/api/chat", json={"message": "something else"}, headers=key)
    assert (first.status_code, retry.status_code) == (202, 202)
    assert retry.json() == first.json()
    assert (other.status_code, other.json()["error"]["type"]) == (422, "idempotency_key_reused")

    message_id = first.json()["message_id"]
    async with relay.stream("GET", first.json()["stream_url"]) as response:
        reader = EventReader(response)
        gate.set()
        assert (await reader.read()).text == "once"
    assert len(upstream.requests) == 1
    await until(lambda: _gone(relay, message_id), what="the first turn to be forgotten after its window")
    later = await relay.post("/api/chat", json={"message": "hi", "wait": True}, headers=key)
    assert later.json()["message"]["id"] != message_id  # the key was forgotten with its turn
    assert len(upstream.requests) == 2


async def _gone(client: httpx.AsyncClient, message_id: int) -> bool:
    return (await client.get(f"/api/messages/{message_id}/stream")).status_code == 404


# With no replay window, the finished row is still there for the moment the answer is read.
@pytest.mark.parametrize("relay", [{}, {"replay_seconds": 0.0}], indirect=True)
async def test_wait_true_answers_the_finished_message(
    relay: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    upstream.add(Reply(openai_reply("Hel", "lo")))
    response = await relay.post("/api/chat", json={"message": "hi", "wait": True})
    assert response.status_code == 200
    message = response.json()["message"]
    assert (message["role"], message["status"], message["content"]) == ("assistant", "completed", "Hello")
    assert message["metadata"]["usage"] == {"input_tokens": 12, "output_tokens": 2}
    assert message["completed_at"] is not None


async def test_the_user_feed_tells_the_turn(relay: httpx.AsyncClient, upstream: FakeUpstream) -> None:
    upstream.add(Reply(openai_reply("hi")))
    async with relay.stream("GET", "/api/events") as response:
        feed = EventReader(response)
        await relay.post("/api/chat", json={"message": "hi", "wait": True})
        told = await feed.read(until=4)
    assert told.names == [
        "conversation.created",
        "message.created",
        "generation.started",
        "generation.finished",
    ]
    assert told.events[-1].data["status"] == "completed"


async def test_ready_healthy_and_counted_without_a_database(
    relay: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    upstream.add(Reply(openai_reply("hi")))
    await relay.post("/api/chat", json={"message": "hi", "wait": True})

    ready, healthy = await relay.get("/readyz"), await relay.get("/healthz")
    assert (ready.status_code, ready.json()) == (200, {"status": "ok", "store": "none"})
    assert (healthy.status_code, healthy.json()) == (200, {"status": "ok", "store": "none"})
    counted = await settles(relay, "sidechat_generations_total", 1, outcome="completed")
    assert counted.value("sidechat_db_write_seconds_count") == 0  # not one write
    usage = (await relay.get("/api/usage")).json()
    assert (usage["usage"], usage["total"]["replies"]) == ([], 0)  # nothing stored to count


@pytest.mark.parametrize("relay", [{"user_budget": (Budget(10, "tokens", "day"),)}], indirect=True)
async def test_a_budget_counts_the_replies_this_process_ran(
    relay: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    upstream.add(Reply(openai_reply("hi")))  # 14 tokens
    assert (await relay.post("/api/chat", json={"message": "hi", "wait": True})).status_code == 200
    refused = await relay.post("/api/chat", json={"message": "more"})
    assert (refused.status_code, refused.json()["error"]["type"]) == (429, "quota_exceeded")


@pytest.mark.parametrize("relay", [{"rate_limit": (1, 60.0)}], indirect=True)
async def test_the_rate_limit_applies(relay: httpx.AsyncClient, upstream: FakeUpstream) -> None:
    upstream.add(Reply(openai_reply("hi")))
    assert (await relay.post("/api/chat", json={"message": "hi", "wait": True})).status_code == 200
    refused = await relay.post("/api/chat", json={"message": "more"})
    assert (refused.status_code, refused.json()["error"]["type"]) == (429, "rate_limited")
    assert (await scrape(relay)).value("sidechat_db_write_seconds_count") == 0
