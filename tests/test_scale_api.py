"""The API of two sidechat processes sharing one database and one Redis: whatever process a
request lands on, it sees what the other runs (attach, resume, wait, cancel, delete, an
idempotent retry), on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from chat.generations import topic_name
from chat.redis_broker import RedisBroker
from tests.backends import Backend, every_backend
from tests.conftest import settings_for
from tests.fakeupstream import FakeUpstream, Reply, openai_chunk, openai_reply
from tests.live import EventReader, Transcript, read_stream, serve, until

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from chat.redis_keys import Keys
    from tests.redis_server import RedisServer

pytest_plugins = ["tests.redis_server"]
pytestmark = [pytest.mark.anyio, every_backend]


@dataclass
class Pair:
    a: httpx.AsyncClient  # where the chat requests go: it runs the replies
    b: httpx.AsyncClient  # the other process


async def _pair(settings: dict[str, Any], upstream: FakeUpstream, tmp_path: Path) -> AsyncIterator[Pair]:
    async with AsyncExitStack() as stack:
        clients = []
        for _ in range(2):
            url = await stack.enter_async_context(serve(settings_for(upstream, tmp_path, **settings)))
            clients.append(await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=20)))
        yield Pair(*clients)


@pytest.fixture
async def pair(
    upstream: FakeUpstream, tmp_path: Path, database: Backend, redis_server: RedisServer, redis_keys: Keys
) -> AsyncIterator[Pair]:
    settings = {"db": database.db, "redis_url": redis_server.url, "redis_prefix": redis_keys.prefix}
    async for pair in _pair(settings, upstream, tmp_path):
        yield pair


def held_reply(*tokens: str) -> tuple[Reply, asyncio.Event]:
    """A reply that sends its first token, then waits for the event before the rest."""
    gate = asyncio.Event()
    return Reply([openai_chunk(tokens[0]), gate, *openai_reply(*tokens[1:])]), gate


async def started(client: httpx.AsyncClient, body: dict[str, Any], **headers: str) -> dict[str, Any]:
    response = await client.post("/api/chat", json=body, headers=headers)
    assert response.status_code == 202, response.text
    accepted: dict[str, Any] = response.json()
    return accepted


async def attached(client: httpx.AsyncClient, message_id: int, after: int = 0) -> Transcript:
    headers = {"last-event-id": str(after)} if after else {}
    async with client.stream("GET", f"/api/messages/{message_id}/stream", headers=headers) as response:
        assert response.status_code == 200
        return await read_stream(response)


async def stored(client: httpx.AsyncClient, message_id: int) -> dict[str, Any]:
    conversations = (await client.get("/api/conversations")).json()["conversations"]
    for conversation in conversations:
        messages = (await client.get(f"/api/conversations/{conversation['id']}/messages")).json()
        for message in messages["messages"]:
            if message["id"] == message_id:
                found: dict[str, Any] = message
                return found
    raise AssertionError(f"message {message_id} is not stored")


def ids_increase(transcript: Transcript) -> bool:
    ids = [int(event.id) for event in transcript.events if event.id]
    return ids == sorted(set(ids)) and len(ids) == len(transcript.events)


async def test_a_reply_run_on_one_process_is_followed_on_the_other_as_it_streams(
    pair: Pair, upstream: FakeUpstream
) -> None:
    reply, gate = held_reply("Hel", "lo", " there")
    upstream.add(reply)
    accepted = await started(pair.a, {"message": "hi"})
    following = asyncio.ensure_future(attached(pair.b, accepted["message_id"]))
    await until(lambda: len(upstream.requests) == 1, what="the upstream call")
    gate.set()
    elsewhere = await following
    here = await attached(pair.a, accepted["message_id"])
    assert elsewhere.names == ["start", "token", "token", "token", "done"]
    assert [(e.id, e.event, e.data) for e in elsewhere.events] == [
        (e.id, e.event, e.data) for e in here.events
    ]
    assert ids_increase(elsewhere)
    assert elsewhere.text == "Hello there" == (await stored(pair.b, accepted["message_id"]))["content"]


async def test_a_resume_on_the_other_process_gets_exactly_the_events_after_its_id(
    pair: Pair, upstream: FakeUpstream
) -> None:
    reply, gate = held_reply("a", "b", "c", "d")
    upstream.add(reply)
    accepted = await started(pair.a, {"message": "hi"})
    gate.set()
    whole = await attached(pair.a, accepted["message_id"])
    for seen in range(len(whole.events)):
        resumed = await attached(pair.b, accepted["message_id"], after=seen)
        assert [(e.id, e.event, e.data) for e in resumed.events] == [
            (e.id, e.event, e.data) for e in whole.events[seen:]
        ]


async def test_a_reply_attached_on_the_other_process_at_once_is_followed_not_told_as_cut_off(
    pair: Pair, upstream: FakeUpstream
) -> None:
    for _ in range(5):  # the other process asks before (or just after) the first event is copied
        upstream.add(Reply(openai_reply("x", "y")))
        accepted = await started(pair.a, {"message": "hi"})
        transcript = await attached(pair.b, accepted["message_id"])
        assert transcript.terminal.event == "done", transcript.events
        assert transcript.text == "xy"


async def test_a_reply_stored_elsewhere_whose_first_event_is_not_in_redis_yet_is_waited_for(
    pair: Pair, upstream: FakeUpstream, database: Backend, redis: Redis, redis_keys: Keys
) -> None:
    upstream.add(Reply(openai_reply("first")))
    accepted = await started(pair.a, {"message": "hi"})
    store = await database.open()  # a third process, which has just stored a turn
    try:
        _, reply = await store.start_turn(accepted["conversation_id"], "again", metadata={})
    finally:
        await store.close()
    following = asyncio.ensure_future(attached(pair.b, reply.id))
    await until(lambda: _blocked_clients(redis), what="the other process to wait for its stream")
    third = RedisBroker(redis, retention=30, keys=redis_keys)
    topic = third.open(topic_name(reply.id))
    topic.publish("start", {"message_id": reply.id})
    topic.publish("token", {"text": "live"})
    topic.publish("done", {"finish_reason": "stop"})
    topic.close()
    transcript = await asyncio.wait_for(following, 10)
    await third.aclose()
    assert [(e.id, e.event) for e in transcript.events] == [("1", "start"), ("2", "token"), ("3", "done")]
    assert transcript.text == "live"


async def test_an_idempotent_retry_on_the_other_process_makes_no_second_reply(
    pair: Pair, upstream: FakeUpstream
) -> None:
    reply, gate = held_reply("one", " reply")
    upstream.add(reply)
    first = await started(pair.a, {"message": "hi"}, **{"idempotency-key": "k-1"})
    again = await started(pair.b, {"message": "hi"}, **{"idempotency-key": "k-1"})
    assert again["message_id"] == first["message_id"]
    async with pair.b.stream(
        "POST", "/api/chat/stream", json={"message": "hi"}, headers={"idempotency-key": "k-1"}
    ) as response:
        gate.set()
        retried = await read_stream(response)
    assert retried.events[0].data["message_id"] == first["message_id"]
    assert retried.text == "one reply" and retried.terminal.event == "done"
    assert len(upstream.requests) == 1


async def test_waiting_on_the_other_process_answers_once_the_reply_has_ended(
    pair: Pair, upstream: FakeUpstream, redis: Redis
) -> None:
    reply, gate = held_reply("slow", " one")
    upstream.add(reply)
    first = await started(pair.a, {"message": "hi"}, **{"idempotency-key": "k-2"})
    waiting = asyncio.ensure_future(
        pair.b.post("/api/chat", json={"message": "hi", "wait": True}, headers={"idempotency-key": "k-2"})
    )
    await until(lambda: _blocked_clients(redis), what="the other process to follow the reply")
    gate.set()
    answer = await waiting
    assert answer.status_code == 200, answer.text
    message = answer.json()["message"]
    assert message["id"] == first["message_id"]
    assert (message["status"], message["content"]) == ("completed", "slow one")


async def test_a_cancel_on_the_other_process_stops_the_upstream_call(
    pair: Pair, upstream: FakeUpstream
) -> None:
    reply, _ = held_reply("never", " finished")
    upstream.add(reply)
    accepted = await started(pair.a, {"message": "hi"})
    await until(lambda: len(upstream.requests) == 1, what="the upstream call")
    cancelled = await pair.b.post(f"/api/messages/{accepted['message_id']}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    await until(lambda: upstream.hangups == 1, what="the upstream call to be closed")
    row = await stored(pair.a, accepted["message_id"])
    assert (row["status"], row["content"]) == ("cancelled", "never")
    transcript = await attached(pair.b, accepted["message_id"])
    assert transcript.terminal.event == "done" and transcript.terminal.data["finish_reason"] == "cancelled"


async def test_deleting_the_conversation_on_the_other_process_stops_its_reply(
    pair: Pair, upstream: FakeUpstream
) -> None:
    reply, _ = held_reply("doomed", " text")
    upstream.add(reply)
    accepted = await started(pair.a, {"message": "hi"})
    following = asyncio.ensure_future(attached(pair.a, accepted["message_id"]))
    await until(lambda: len(upstream.requests) == 1, what="the upstream call")
    deleted = await pair.b.delete(f"/api/conversations/{accepted['conversation_id']}")
    assert deleted.status_code == 204, deleted.text
    await until(lambda: upstream.hangups == 1, what="the upstream call to be closed")
    transcript = await asyncio.wait_for(following, 10)
    assert transcript.terminal.data["finish_reason"] == "cancelled"
    assert (await pair.a.get(f"/api/conversations/{accepted['conversation_id']}")).status_code == 404


@pytest.fixture
async def cancelling_pair(
    upstream: FakeUpstream, tmp_path: Path, database: Backend, redis_server: RedisServer, redis_keys: Keys
) -> AsyncIterator[Pair]:
    """Two processes that stop a reply once no client follows it (SIDECHAT_ON_DISCONNECT=cancel)."""
    settings = {
        "db": database.db,
        "redis_url": redis_server.url,
        "redis_prefix": redis_keys.prefix,
        "on_disconnect": "cancel",
    }
    async for pair in _pair(settings, upstream, tmp_path):
        yield pair


async def test_with_cancel_on_disconnect_a_reply_followed_elsewhere_goes_on_until_that_client_leaves(
    cancelling_pair: Pair, upstream: FakeUpstream, redis: Redis, redis_keys: Keys
) -> None:
    pair = cancelling_pair
    for text, leaves in (("still followed", False), ("left behind", True)):
        first, _, rest = text.partition(" ")
        reply, gate = held_reply(first, " " + rest)
        upstream.add(reply)
        async with pair.a.stream("POST", "/api/chat/stream", json={"message": "hi"}) as posted:
            asking = EventReader(posted)  # kept: a reader let go would close the response
            message_id = (await asking.read(until=1)).events[0].data["message_id"]
            request = pair.b.build_request("GET", f"/api/messages/{message_id}/stream")
            elsewhere = await pair.b.send(request, stream=True)
            key = redis_keys.followers(topic_name(message_id))
            await until(lambda: _count_is(redis, key, 1), what="the follower elsewhere to be counted")  # noqa: B023
        # The client that asked is gone; the one on the other process still follows it.
        if leaves:
            await elsewhere.aclose()
            await until(lambda: upstream.hangups == 1, what="the reply nobody follows to be stopped")
            row = await stored(pair.a, message_id)
            assert (row["status"], row["content"]) == ("cancelled", "left")  # its first token
        else:
            gate.set()
            followed = await EventReader(elsewhere).read()
            await elsewhere.aclose()
            assert followed.terminal.event == "done" and followed.text == "still followed"
            assert upstream.hangups == 0


async def _count_is(redis: Redis, key: str, count: int) -> bool:
    return int(await redis.get(key) or 0) == count


@pytest.fixture
async def pair_on_own_redis(
    upstream: FakeUpstream, tmp_path: Path, database: Backend, own_redis_server: RedisServer
) -> AsyncIterator[Pair]:
    settings = {"db": database.db, "redis_url": own_redis_server.url}
    async for pair in _pair(settings, upstream, tmp_path):
        yield pair


async def test_while_redis_is_away_attaching_elsewhere_is_a_503_and_the_running_reply_is_kept(
    pair_on_own_redis: Pair, upstream: FakeUpstream, own_redis_server: RedisServer
) -> None:
    pair = pair_on_own_redis
    reply, gate = held_reply("kept", " whole")
    upstream.add(reply)
    accepted = await started(pair.a, {"message": "hi"})
    await until(lambda: len(upstream.requests) == 1, what="the upstream call")
    own_redis_server.stop()
    refused = await pair.b.get(f"/api/messages/{accepted['message_id']}/stream")
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "2"
    assert refused.json()["error"]["type"] == "live_unavailable"
    gate.set()
    here = await attached(pair.a, accepted["message_id"])  # its own process still has it all
    assert here.text == "kept whole" and here.terminal.event == "done"
    row = await stored(pair.a, accepted["message_id"])
    assert (row["status"], row["content"]) == ("completed", "kept whole")
    own_redis_server.start()
    elsewhere = await until(
        lambda: _attached_when_back(pair.b, accepted["message_id"]), timeout=20, what="Redis back"
    )
    assert elsewhere.text == "kept whole" and elsewhere.terminal.event == "done"


async def _blocked_clients(redis: Redis) -> bool:
    info = await redis.info("clients")
    return int(info["blocked_clients"]) > 0


async def _attached_when_back(client: httpx.AsyncClient, message_id: int) -> Transcript | None:
    async with client.stream("GET", f"/api/messages/{message_id}/stream") as response:
        if response.status_code == 503:
            return None
        return await read_stream(response)
