"""Ending a dead process's replies, on SQLite and PostgreSQL with a real Redis: the reaper ends
those registered under an expired lease (the row `interrupted` with the text its stream holds,
the stream given an `error` and its end), never a live process's, waits out a Redis outage
before it reaps anything, and the sweep ends only the old `streaming` rows nobody registered."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest
from redis.asyncio import Redis

from chat import events
from chat.config import Settings
from chat.database import stamp
from chat.generations import topic_name
from chat.orphans import Reaper, end_orphan, read_published
from chat.records import Message
from chat.redis_broker import RedisBroker, open_redis
from chat.redis_follow import RemoteTopic, read_end
from chat.redis_leases import Lease
from chat.services import open_store
from chat.sse import SSEDecoder, encode_event
from chat.store import Store
from chat.store_none import MemoryStore
from tests.backends import Backend
from tests.live import until

if TYPE_CHECKING:
    from chat.redis_keys import Keys
    from tests.redis_server import RedisServer

pytest_plugins = ["tests.redis_server"]
pytestmark = pytest.mark.anyio

SECONDS = 0.5  # the lease


async def a_reply(store: Store) -> Message:
    conversation = await store.create_conversation("local")
    _, reply = await store.start_turn(conversation.id, "hi", metadata={"provider": "openai", "model": "m"})
    return reply


async def aged(backend: Backend, reply: Message, seconds: float = 60.0) -> None:
    """Make `reply` look stored `seconds` ago."""
    old = stamp(datetime.now(UTC) - timedelta(seconds=seconds))
    await backend.execute("UPDATE messages SET created_at = ? WHERE id = ?", old, reply.id)


async def published(redis: Redis, keys: Keys, reply: Message, *tokens: str) -> None:
    """The stream of `reply` as the broker of a process that then died left it: a start and
    `tokens`, copied, and no end."""
    broker = RedisBroker(redis, retention=5.0, keys=keys)
    topic = broker.open(topic_name(reply.id))
    topic.publish("start", events.start(reply.conversation_id, reply.id, {}))
    for token in tokens:
        topic.publish("token", {"text": token})
    key = keys.topic(topic_name(reply.id))
    await until(lambda: _at(redis, key, (1 + len(tokens), False)), what="the copy")
    await broker.aclose(0)  # its copy goes, as with its process


async def _at(redis: Redis, key: str, end: tuple[int, bool]) -> bool:
    return await read_end(redis, key) == end


async def dead_process(redis: Redis, keys: Keys, *replies: Message) -> str:
    """A process that registered `replies` and whose lease has expired."""
    await redis.sadd(keys.processes, "dead")
    await redis.sadd(keys.runs("dead"), *(r.id for r in replies))
    return "dead"


async def stream_events(redis: Redis, keys: Keys, reply: Message) -> list[tuple[str, str, Any]]:
    """(entry id, event name or "end", data) of every entry of the reply's stream."""
    found: Any = await redis.xrange(keys.topic(topic_name(reply.id)))
    out: list[tuple[str, str, Any]] = []
    for raw_id, fields in found:
        if b"end" in fields:
            out.append((raw_id.decode(), "end", None))
            continue
        (event,) = SSEDecoder().feed(fields[b"e"])
        out.append((raw_id.decode(), event.event, json.loads(event.data)))
    return out


@pytest.fixture
async def reaper(redis: Redis, redis_keys: Keys, store: Store) -> AsyncIterator[Reaper]:
    """This (live) process's reaper; its loop is not running: tests call its steps."""
    yield Reaper(Lease(redis, redis_keys, SECONDS), store, retention=5.0, stored=True)


async def test_a_dead_processes_reply_ends_interrupted_with_its_text_and_its_followers_hear_it(
    reaper: Reaper, store: Store, redis: Redis, redis_keys: Keys
) -> None:
    reply = await a_reply(store)
    await published(redis, redis_keys, reply, "Hel", "lo")
    await dead_process(redis, redis_keys, reply)
    follower = RedisBroker(redis, retention=5.0, keys=redis_keys)
    topic = await follower.find(topic_name(reply.id))
    assert isinstance(topic, RemoteTopic) and not topic.closed

    async def follow() -> bytes:
        async with follower.subscribe(topic, 3, heartbeat=30.0) as subscription:
            return b"".join([chunk async for chunk in subscription])

    heard = asyncio.create_task(follow())
    assert await reaper.reap() == 1
    told = SSEDecoder().feed(await asyncio.wait_for(heard, 10))

    row = await store.get_message("local", reply.id)
    assert row is not None
    assert (row.status, row.content, row.last_event_id) == ("interrupted", "Hello", 4)
    assert row.metadata["error"] == events.INTERRUPTED and row.completed_at is not None
    error = {"message_id": reply.id, "error": events.INTERRUPTED, "partial": True}
    assert [(e.event, json.loads(e.data), e.id) for e in told] == [("error", error, "4")]
    assert (await stream_events(redis, redis_keys, reply))[-2:] == [
        ("0-4", "error", error),
        ("0-5", "end", None),
    ]
    assert 0 < await redis.pttl(redis_keys.topic(topic_name(reply.id))) <= 5000  # kept as a closed one is
    assert not await redis.exists(redis_keys.runs("dead"))
    assert not await redis.sismember(redis_keys.processes, "dead")
    assert await reaper.reap() == 0  # forgotten: nothing more to do


async def test_a_live_process_is_never_reaped(
    reaper: Reaper, store: Store, redis: Redis, redis_keys: Keys
) -> None:
    reply = await a_reply(store)
    await published(redis, redis_keys, reply, "still going")
    await redis.sadd(redis_keys.processes, "alive")
    await redis.sadd(redis_keys.runs("alive"), reply.id)
    await redis.set(redis_keys.process("alive"), "alive", px=10_000)
    own = await a_reply(store)
    reaper.lease.running.add(own.id)
    await redis.sadd(redis_keys.processes, reaper.lease.id)  # its own, with no lease key written
    await redis.sadd(redis_keys.runs(reaper.lease.id), own.id)

    assert await reaper.reap() == 0
    for each in (reply, own):
        row = await store.get_message("local", each.id)
        assert row is not None and row.status == "streaming"
    assert await read_end(redis, redis_keys.topic(topic_name(reply.id))) == (2, False)


async def test_a_dead_process_another_reaper_is_reaping_is_left_to_it(
    reaper: Reaper, store: Store, redis: Redis, redis_keys: Keys
) -> None:
    reply = await a_reply(store)
    await dead_process(redis, redis_keys, reply)
    await redis.set(redis_keys.reaping("dead"), "another", px=10_000)
    assert await reaper.reap() == 0
    row = await store.get_message("local", reply.id)
    assert row is not None and row.status == "streaming"
    assert await redis.sismember(redis_keys.processes, "dead")


async def test_a_reply_that_ended_by_itself_is_not_told_as_interrupted(
    reaper: Reaper, store: Store, redis: Redis, redis_keys: Keys
) -> None:
    reply = await a_reply(store)
    await published(redis, redis_keys, reply, "whole")
    # Its end is stored; its process died before the copy of its last events.
    await store.finish_message(reply.id, status="completed", content="whole", metadata={}, last_event_id=3)
    await dead_process(redis, redis_keys, reply)
    assert await reaper.reap() == 0
    row = await store.get_message("local", reply.id)
    assert row is not None and (row.status, row.content) == ("completed", "whole")
    # Its stream, which would never end, is gone: its followers elsewhere resume from the row.
    assert await stream_events(redis, redis_keys, reply) == []
    assert not await redis.sismember(redis_keys.processes, "dead")


async def test_a_stream_missing_its_first_events_leaves_the_checkpointed_text(
    reaper: Reaper, store: Store, redis: Redis, redis_keys: Keys
) -> None:
    reply = await a_reply(store)
    await store.checkpoint_message(reply.id, "checkpointed text")
    key = redis_keys.topic(topic_name(reply.id))
    for n in (5, 6):  # the first four were trimmed away
        await redis.xadd(key, {"e": encode_event("token", {"text": f"t{n}"}, n)}, id=f"0-{n}")
    await dead_process(redis, redis_keys, reply)
    assert await reaper.reap() == 1
    row = await store.get_message("local", reply.id)
    assert row is not None
    assert (row.status, row.content, row.last_event_id) == ("interrupted", "checkpointed text", 7)
    assert [entry for entry, _, _ in await stream_events(redis, redis_keys, reply)][-2:] == ["0-7", "0-8"]


async def test_a_checkpoint_longer_than_the_stream_is_kept(
    reaper: Reaper, store: Store, redis: Redis, redis_keys: Keys
) -> None:
    reply = await a_reply(store)
    await published(redis, redis_keys, reply, "Hel")
    await store.checkpoint_message(reply.id, "Hello, wor")  # the copy had fallen behind
    await dead_process(redis, redis_keys, reply)
    assert await reaper.reap() == 1
    row = await store.get_message("local", reply.id)
    assert row is not None and (row.status, row.content) == ("interrupted", "Hello, wor")


async def test_a_reply_with_no_stream_ends_interrupted_with_no_ids_known(
    reaper: Reaper, store: Store, redis: Redis, redis_keys: Keys
) -> None:
    reply = await a_reply(store)
    await dead_process(redis, redis_keys, reply)
    assert await reaper.reap() == 1
    row = await store.get_message("local", reply.id)
    assert row is not None and (row.status, row.content, row.last_event_id) == ("interrupted", "", 0)
    assert not await redis.exists(redis_keys.topic(topic_name(reply.id)))


async def test_the_sweep_ends_only_old_streaming_rows_that_nobody_registered(
    reaper: Reaper, store: Store, backend: Backend, redis: Redis, redis_keys: Keys
) -> None:
    orphan, young, elsewhere, mine, finished = [await a_reply(store) for _ in range(5)]
    for reply in (orphan, elsewhere, mine, finished):
        await aged(backend, reply)
    await published(redis, redis_keys, orphan, "left ", "behind")
    await redis.sadd(redis_keys.processes, "alive")
    await redis.set(redis_keys.process("alive"), "alive", px=10_000)
    await redis.sadd(redis_keys.runs("alive"), elsewhere.id)
    reaper.lease.running.add(mine.id)  # registered here, not yet in Redis
    await store.finish_message(finished.id, status="completed", content="done", metadata={}, last_event_id=2)

    assert await reaper.sweep() == 1
    statuses = {}
    for reply in (orphan, young, elsewhere, mine, finished):
        row = await store.get_message("local", reply.id)
        assert row is not None
        statuses[reply.id] = (row.status, row.content)
    assert statuses == {
        orphan.id: ("interrupted", "left behind"),
        young.id: ("streaming", ""),
        elsewhere.id: ("streaming", ""),
        mine.id: ("streaming", ""),
        finished.id: ("completed", "done"),
    }
    assert [name for _, name, _ in await stream_events(redis, redis_keys, orphan)][-2:] == ["error", "end"]
    assert await reaper.sweep() == 0


async def test_the_store_ends_only_a_streaming_reply_and_lists_the_old_ones(
    store: Store, backend: Backend
) -> None:
    old = await a_reply(store)
    await a_reply(store)  # a young one: not listed
    await aged(backend, old)
    before = stamp(datetime.now(UTC) - timedelta(seconds=10))
    assert await store.streaming_replies(created_before=before) == [old.id]
    assert await store.interrupt_reply(old.id, content="abc", error=events.INTERRUPTED, last_event_id=None)
    assert not await store.interrupt_reply(
        old.id, content="abcdef", error=events.INTERRUPTED, last_event_id=9
    )
    row = await store.get_message("local", old.id)
    assert row is not None and (row.status, row.content, row.last_event_id) == ("interrupted", "abc", 0)
    assert await store.streaming_replies(created_before=before) == []


async def test_a_store_that_keeps_nothing_has_no_orphans_and_ends_their_streams_anyway(
    redis: Redis, redis_keys: Keys
) -> None:
    store = MemoryStore(keep_seconds=1)
    assert await store.streaming_replies(created_before=stamp(datetime.now(UTC))) == []
    reply = await a_reply_in(store)
    await published(redis, redis_keys, reply, "gone")
    assert await end_orphan(redis, redis_keys, store, reply.id, retention=5.0, stored=False)
    assert [name for _, name, _ in await stream_events(redis, redis_keys, reply)][-2:] == ["error", "end"]
    found = await read_published(redis, redis_keys.topic(topic_name(reply.id)))
    assert found is not None and (found.text, found.closed) == ("gone", True)


async def a_reply_in(store: MemoryStore) -> Message:
    _, reply = await store.start_turn(1, "hi", metadata={})
    return reply


async def test_nothing_is_reaped_until_redis_has_answered_for_a_whole_lease_period(
    own_redis_server: RedisServer, redis_keys: Keys, store: Store
) -> None:
    redis = open_redis(own_redis_server.url)
    reaper = Reaper(Lease(redis, redis_keys, 1.0), store, retention=5.0, stored=True)
    first = await a_reply(store)
    looking: asyncio.Task[None] | None = None
    try:
        await dead_process(redis, redis_keys, first)
        started = time.monotonic()
        looking = asyncio.create_task(reaper.run())
        await until(lambda: _status(store, first, "interrupted"), what="the first reaped")
        assert time.monotonic() - started >= 1.0  # not before a whole period after start-up

        own_redis_server.stop()
        stopped = time.monotonic()
        await until(lambda: not reaper.quiet(), what="the reaper to see Redis gone")
        own_redis_server.start()  # with no keys at all: it persists nothing
        second = await a_reply(store)
        await dead_process(redis, redis_keys, second)
        await until(lambda: _status(store, second, "interrupted"), what="the second reaped")
        # The loop's clock is time.monotonic: a whole period after the last failure it saw.
        assert reaper.trouble_at > stopped and time.monotonic() - reaper.trouble_at >= 1.0
    finally:
        if looking is not None:
            looking.cancel()
            await asyncio.gather(looking, return_exceptions=True)
        await redis.aclose()


async def test_a_failing_lease_write_holds_the_reaper_too(redis: Redis, redis_keys: Keys) -> None:
    store = MemoryStore(keep_seconds=1)
    reaper = Reaper(Lease(redis, redis_keys, SECONDS), store, retention=5.0, stored=False)
    reaper.trouble_at = asyncio.get_running_loop().time() - 2 * SECONDS
    assert reaper.quiet()
    reaper.lease.trouble_at = asyncio.get_running_loop().time()
    assert not reaper.quiet()


async def test_with_redis_start_up_leaves_streaming_rows_to_the_reaper(
    backend: Backend, redis_server: RedisServer
) -> None:
    store = await backend.open()
    reply = await a_reply(store)
    await store.close()
    shared = await open_store(Settings(db=backend.db, redis_url=redis_server.url))
    row = await shared.get_message("local", reply.id)
    await shared.close()
    assert row is not None and row.status == "streaming"
    alone = await open_store(Settings(db=backend.db))
    row = await alone.get_message("local", reply.id)
    await alone.close()
    assert row is not None and row.status == "interrupted"


async def _status(store: Store, reply: Message, status: str) -> bool:
    row = await store.get_message("local", reply.id)
    return row is not None and row.status == status


class Meanwhile(Store):
    """A store on the test's database whose end of a reply is slow enough for its process to
    write one more event first: a process that was not dead after all."""

    def __init__(self, store: Store, redis: Redis, keys: Keys) -> None:
        self.__dict__.update(store.__dict__)
        self._store, self._redis, self._keys = store, redis, keys

    async def interrupt_reply(self, message_id: int, **changes: Any) -> bool:
        key = self._keys.topic(topic_name(message_id))
        last = await read_end(self._redis, key)
        assert last is not None
        await self._redis.xadd(
            key, {"e": encode_event("token", {"text": "!"}, last[0] + 1)}, id=f"0-{last[0] + 1}"
        )
        return await self._store.interrupt_reply(message_id, **changes)


async def test_a_stream_written_to_meanwhile_is_left_for_the_next_look(
    store: Store, redis: Redis, redis_keys: Keys
) -> None:
    reply = await a_reply(store)
    await published(redis, redis_keys, reply, "alive")
    await dead_process(redis, redis_keys, reply)
    reaper = Reaper(
        Lease(redis, redis_keys, SECONDS), Meanwhile(store, redis, redis_keys), retention=5.0, stored=True
    )
    assert await reaper.reap() == 0
    assert [name for _, name, _ in await stream_events(redis, redis_keys, reply)] == [
        "start",
        "token",
        "token",
    ]
    assert await redis.sismember(redis_keys.processes, "dead")
    assert await redis.sismember(redis_keys.runs("dead"), reply.id)


async def test_a_database_refusing_the_end_is_tried_again_until_it_takes_it(
    store: Store, backend: Backend, redis: Redis, redis_keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    reply = await a_reply(store)
    await published(redis, redis_keys, reply, "patience")
    await dead_process(redis, redis_keys, reply)
    await backend.refuse_marks("assistant")
    reaper = Reaper(Lease(redis, redis_keys, SECONDS), store, retention=5.0, stored=True)
    reaper.trouble_at = -SECONDS  # as if Redis had answered since long before
    looking = asyncio.create_task(reaper.run())
    try:
        await until(lambda: "the reaper failed" in caplog.text, what="the refusal")
        assert await _status(store, reply, "streaming")
        await backend.execute(
            "DROP TRIGGER refuse_mark" + ("" if backend.kind == "sqlite" else " ON messages")
        )
        key = redis_keys.topic(topic_name(reply.id))
        await until(lambda: _at(redis, key, (3, True)), what="its stream ended")  # after its row
    finally:
        looking.cancel()
        await asyncio.gather(looking, return_exceptions=True)
    assert await _status(store, reply, "interrupted")
    assert [name for _, name, _ in await stream_events(redis, redis_keys, reply)][-2:] == ["error", "end"]


async def test_a_redis_that_lost_its_keys_between_two_looks_holds_the_reaper(
    store: Store, backend: Backend, redis: Redis, redis_keys: Keys
) -> None:
    reply = await a_reply(store)
    await aged(backend, reply)
    await redis.sadd(redis_keys.processes, "alive")
    await redis.sadd(redis_keys.runs("alive"), reply.id)
    await redis.set(redis_keys.process("alive"), "alive", px=60_000)
    reaper = Reaper(Lease(redis, redis_keys, SECONDS), store, retention=5.0, stored=True)
    looking = asyncio.create_task(reaper.run())
    try:
        await until(lambda: reaper.epoch is not None, what="the first look")
        reaper.trouble_at = -SECONDS  # as if Redis had answered since long before
        # A restart without persistence, between two looks: every key gone at once, the
        # registry of the live process running `reply` with them.
        lost: Any = redis.pipeline(transaction=True)
        lost.delete(redis_keys.epoch, redis_keys.runs("alive"), redis_keys.process("alive"))
        lost.srem(redis_keys.processes, "alive")
        await lost.execute()
        await until(lambda: not reaper.quiet(), what="the reaper to notice")
        assert await _status(store, reply, "streaming")
    finally:
        looking.cancel()
        await asyncio.gather(looking, return_exceptions=True)
