"""The shared broker on a real Redis: a topic run by one broker, followed through another (each
with its own connection, as two processes would be), exactly, with pings, caps and expiry."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator
from typing import TYPE_CHECKING

import pytest
from redis.asyncio import Redis

from chat.broker import Topic
from chat.redis_broker import RedisBroker, open_redis
from chat.redis_follow import BrokerUnavailable, EventsLost, RemoteTopic, read_end
from chat.redis_keys import Keys
from chat.sse import PING, encode_event
from chat.subscription import CHUNK_BYTES
from tests.live import until

if TYPE_CHECKING:
    from tests.redis_server import RedisServer

pytest_plugins = ["tests.redis_server"]
pytestmark = pytest.mark.anyio

RESET = encode_event("reset", {})


@pytest.fixture
async def brokers(
    redis_server: RedisServer, redis_keys: Keys
) -> AsyncIterator[tuple[RedisBroker, RedisBroker]]:
    """Two brokers on one Redis, each with its own client: the process running a generation,
    and another one a client attached to."""
    running, other = open_redis(redis_server.url), open_redis(redis_server.url)
    pair = (
        RedisBroker(running, retention=30, keys=redis_keys),
        RedisBroker(other, retention=30, keys=redis_keys),
    )
    yield pair
    for broker in pair:
        await broker.aclose()
    await running.aclose()
    await other.aclose()


def publish(topic: Topic, count: int) -> None:
    for _ in range(count):
        topic.publish("token", {"text": f"t{topic.last_id + 1}"})


def tokens(first: int, last: int) -> bytes:
    return b"".join(encode_event("token", {"text": f"t{n}"}, n) for n in range(first, last + 1))


async def remote(broker: RedisBroker, name: str) -> RemoteTopic:
    topic = await until(lambda: broker.find(name), what=f"{name} in Redis")
    assert isinstance(topic, RemoteTopic)
    return topic


async def everything(broker: RedisBroker, topic: Topic, after: int, reset: bytes = b"") -> bytes:
    async with broker.subscribe(topic, after, 60, reset) as subscription:
        return b"".join([chunk async for chunk in within(subscription)])


async def within(chunks: AsyncIterable[bytes], seconds: float = 20) -> AsyncIterator[bytes]:
    """The chunks of a subscription, each within `seconds`: a hang fails the test."""
    iterator = aiter(chunks)
    while True:
        try:
            yield await asyncio.wait_for(anext(iterator), seconds)
        except StopAsyncIteration:
            return


async def test_a_follower_elsewhere_gets_every_event_in_order_and_ends_after_the_last(
    brokers: tuple[RedisBroker, RedisBroker],
) -> None:
    running, other = brokers
    topic = running.open("message:1")
    publish(topic, 300)
    topic.close()
    found = await until(lambda: _closed(other.find("message:1")), what="the end in Redis")
    assert isinstance(found, RemoteTopic) and found.last_id == 300
    assert await everything(other, found, 0) == tokens(1, 300) == b"".join(topic.events)


async def _closed(lookup: object) -> Topic | None:
    topic = await lookup  # type: ignore[misc]
    return topic if topic is not None and topic.closed else None


@pytest.mark.parametrize("after", [1, 7, 299, 300])
async def test_a_resume_after_an_id_gets_exactly_the_events_after_it(
    brokers: tuple[RedisBroker, RedisBroker], after: int
) -> None:
    running, other = brokers
    topic = running.open("message:2")
    publish(topic, 300)
    topic.close()
    found = await until(lambda: _closed(other.find("message:2")), what="the end in Redis")
    assert await everything(other, found, after) == tokens(after + 1, 300)


@pytest.mark.parametrize("after", [0, 5, 150])
async def test_a_resume_while_the_generation_publishes_has_no_duplicates_or_gaps(
    brokers: tuple[RedisBroker, RedisBroker], after: int
) -> None:
    running, other = brokers
    topic = running.open("message:3")
    publish(topic, 200)
    found = await remote(other, "message:3")

    async def keep_publishing() -> None:
        for _ in range(40):
            publish(topic, 10)
            await asyncio.sleep(0.001)  # the generation's pace: the copy writes in between
        topic.close()

    publisher = asyncio.create_task(keep_publishing())
    got = await everything(other, found, after)
    await publisher
    assert got == tokens(after + 1, 600)


async def test_two_processes_followers_and_the_running_ones_own_see_the_same_events(
    brokers: tuple[RedisBroker, RedisBroker], redis_server: RedisServer, redis_keys: Keys
) -> None:
    running, other = brokers
    third_client = open_redis(redis_server.url)
    third = RedisBroker(third_client, retention=30, keys=redis_keys)
    topic = running.open("message:4")
    publish(topic, 3)
    here = asyncio.create_task(everything(running, topic, 0))
    there = asyncio.create_task(everything(other, await remote(other, "message:4"), 0))
    yonder = asyncio.create_task(everything(third, await remote(third, "message:4"), 0))
    publish(topic, 97)
    topic.close()
    assert await here == await there == await yonder == tokens(1, 100)
    assert running.subscribers == other.subscribers == third.subscribers == 0
    await third_client.aclose()


async def test_a_backlog_read_elsewhere_goes_out_in_chunks_of_whole_events(
    brokers: tuple[RedisBroker, RedisBroker],
) -> None:
    running, other = brokers
    topic = running.open("message:13")
    for size in [10_000] * 30 + [3 * CHUNK_BYTES] + [10_000] * 10:
        topic.publish("token", {"text": "x" * size})
    topic.close()
    found = await until(lambda: _closed(other.find("message:13")), what="the end in Redis")
    async with other.subscribe(found, 0, 60) as subscription:
        chunks = [chunk async for chunk in within(subscription)]
    assert b"".join(chunks) == b"".join(topic.events)
    assert len(chunks) > 3
    for chunk in chunks:
        assert len(chunk) <= CHUNK_BYTES or chunk in topic.events


async def test_the_running_process_finds_its_own_topic_not_a_copy(
    brokers: tuple[RedisBroker, RedisBroker],
) -> None:
    running, other = brokers
    topic = running.open("message:5")
    assert await running.find("message:5") is topic
    assert await other.find("message:6") is None


async def test_a_quiet_stream_sends_a_ping_each_heartbeat_between_events(
    brokers: tuple[RedisBroker, RedisBroker],
) -> None:
    running, other = brokers
    topic = running.open("message:7")
    topic.publish("start", {})
    found = await remote(other, "message:7")
    async with other.subscribe(found, 1, 0.05) as subscription:
        assert await asyncio.wait_for(anext(subscription), 5) == PING
        topic.publish("token", {})
        assert await asyncio.wait_for(anext(subscription), 5) == encode_event("token", {}, 2)
        assert await asyncio.wait_for(anext(subscription), 5) == PING


async def test_a_stream_is_capped_and_a_follower_behind_the_cap_is_told(
    redis: Redis, redis_keys: Keys
) -> None:
    broker = RedisBroker(redis, retention=30, keys=redis_keys, max_entries=10)
    topic = broker.open("message:8")
    for _ in range(10):
        publish(topic, 100)
        await until(lambda: _written(redis, redis_keys, topic))
    topic.close()
    found = await until(lambda: _closed(broker_elsewhere(redis, redis_keys).find("message:8")))
    assert await redis.xlen(redis_keys.topic("message:8")) < 300  # MAXLEN ~ trims whole nodes
    assert (await everything(broker, found, 0, RESET)).startswith(RESET)
    with pytest.raises(EventsLost, match="message:8: events 1.."):
        await everything(broker, found, 0)
    await broker.aclose()


def broker_elsewhere(redis: Redis, keys: Keys) -> RedisBroker:
    return RedisBroker(redis, retention=30, keys=keys)


async def _written(redis: Redis, keys: Keys, topic: Topic) -> bool:
    end = await read_end(redis, keys.topic(topic.name))
    return end is not None and end[0] == topic.last_id


async def test_a_closed_stream_expires_after_the_retention_and_an_open_one_after_its_ttl(
    redis: Redis, redis_keys: Keys
) -> None:
    broker = RedisBroker(redis, retention=0.3, keys=redis_keys, open_ttl=600)
    topic = broker.open("message:9")
    publish(topic, 2)
    key = redis_keys.topic("message:9")
    await until(lambda: _written(redis, redis_keys, topic))
    assert 590_000 < await redis.pttl(key) <= 600_000
    topic.close()
    await until(lambda: _closed(broker_elsewhere(redis, redis_keys).find("message:9")))
    assert 0 < await redis.pttl(key) <= 300
    await until(lambda: _gone(redis, key), what="the stream's expiry")
    assert await broker_elsewhere(redis, redis_keys).find("message:9") is None
    await broker.aclose()


async def _gone(redis: Redis, key: str) -> bool:
    return not await redis.exists(key)


async def test_a_name_opened_again_starts_a_new_stream(redis: Redis, redis_keys: Keys) -> None:
    broker = RedisBroker(redis, retention=30, keys=redis_keys)
    old = broker.open("message:10")
    publish(old, 5)
    old.close()
    await until(lambda: _closed(broker_elsewhere(redis, redis_keys).find("message:10")))
    new = broker.open("message:10")
    new.publish("start", {})
    new.close()
    found = await until(lambda: _ended_at(broker_elsewhere(redis, redis_keys), "message:10", 1))
    assert await everything(broker_elsewhere(redis, redis_keys), found, 0) == encode_event("start", {}, 1)
    await broker.aclose()


async def _ended_at(broker: RedisBroker, name: str, last_id: int) -> Topic | None:
    topic = await broker.find(name)
    return topic if topic is not None and topic.closed and topic.last_id == last_id else None


async def test_a_follower_whose_stream_expires_unended_is_told_not_left_pinging(
    redis: Redis, redis_keys: Keys
) -> None:
    broker = RedisBroker(redis, retention=30, keys=redis_keys, open_ttl=0.3)
    topic = broker.open("message:11")  # its process "dies": nothing more is written
    topic.publish("start", {})
    found = await remote(broker_elsewhere(redis, redis_keys), "message:11")
    with pytest.raises(EventsLost, match="expired before it ended"):
        await everything(broker_elsewhere(redis, redis_keys), found, 1)
    await broker.aclose()


async def test_a_redis_blip_mid_stream_is_waited_out_with_pings_and_the_follower_goes_on_exactly(
    own_redis_server: RedisServer, redis_keys: Keys
) -> None:
    server = own_redis_server
    running_client, other_client = open_redis(server.url), open_redis(server.url)
    running = RedisBroker(running_client, retention=30, keys=redis_keys)
    other = RedisBroker(other_client, retention=30, keys=redis_keys)
    try:
        topic = running.open("message:12")
        publish(topic, 10)
        found = await remote(other, "message:12")
        async with other.subscribe(found, 0, 0.2) as subscription:
            assert await anext(subscription) == tokens(1, 10)
            await running_client.save()  # what it holds comes back with it
            server.stop()
            publish(topic, 10)  # the reply goes on while Redis is away: this process has it all
            topic.close()
            assert await asyncio.wait_for(anext(subscription), 5) == PING
            assert await asyncio.wait_for(anext(subscription), 5) == PING
            server.start()
            rest = [chunk async for chunk in subscription if chunk != PING]
        assert b"".join(rest) == tokens(11, 20)
    finally:
        await running.aclose()
        await running_client.aclose()
        await other_client.aclose()


async def test_redis_away_for_good_ends_a_follower_and_the_copy_resumes_exactly_when_it_is_back(
    own_redis_server: RedisServer, redis_keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("chat.redis_follow.OUTAGE_SECONDS", 0.5)
    server = own_redis_server
    running_client, other_client = open_redis(server.url), open_redis(server.url)
    running = RedisBroker(running_client, retention=30, keys=redis_keys)
    other = RedisBroker(other_client, retention=30, keys=redis_keys)
    try:
        topic = running.open("message:12")
        publish(topic, 10)
        found = await remote(other, "message:12")
        async with other.subscribe(found, 0, 60) as subscription:
            assert await anext(subscription) == tokens(1, 10)
            waiting = asyncio.ensure_future(anext(subscription))
            server.stop()
            with pytest.raises(BrokerUnavailable, match="lost Redis while following message:12"):
                await asyncio.wait_for(waiting, 20)
        with pytest.raises(BrokerUnavailable, match="could not look up message:12"):
            await other.find("message:12")
        publish(topic, 10)
        topic.close()
        server.start()  # empty: nothing was saved, so the copy writes the whole stream again
        found = await until(lambda: _closed(other.find("message:12")), what="the copy, once Redis is back")
        assert found.last_id == 20
        assert await everything(other, found, 10) == tokens(11, 20)
    finally:
        await running.aclose()
        await running_client.aclose()
        await other_client.aclose()


async def test_a_reply_looked_for_before_its_first_event_reaches_redis_is_waited_for(
    brokers: tuple[RedisBroker, RedisBroker],
) -> None:
    running, other = brokers
    looking = asyncio.ensure_future(other.find("message:13", expected=5))
    await until(lambda: _blocked_clients(other.redis), what="the look-up to wait")
    topic = running.open("message:13")
    topic.publish("start", {})
    found = await asyncio.wait_for(looking, 5)
    assert isinstance(found, RemoteTopic) and found.last_id >= 1 and not found.closed
    assert await other.find("message:14", expected=0.05) is None  # none came: none there


async def _blocked_clients(redis: Redis) -> bool:
    info = await redis.info("clients")
    return int(info["blocked_clients"]) > 0


async def test_a_backlog_longer_than_a_write_goes_in_pieces_and_arrives_whole(
    brokers: tuple[RedisBroker, RedisBroker], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("chat.redis_copier.MAX_BATCH", 3)
    running, other = brokers
    topic = running.open("message:15")
    publish(topic, 10)
    topic.close()
    found = await until(lambda: _closed(other.find("message:15")), what="the end in Redis")
    assert found.last_id == 10
    assert await everything(other, found, 0) == tokens(1, 10)
