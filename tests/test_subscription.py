"""A subscriber reads its topic by position: what is new at once, a backlog in bounded
chunks, and pings while it is quiet."""

from __future__ import annotations

import asyncio

import pytest

from chat.broker import Broker, Topic
from chat.sse import PING, encode_event
from chat.subscription import CHUNK_BYTES

pytestmark = pytest.mark.anyio


async def test_a_subscriber_waits_for_the_next_event_and_ends_at_close() -> None:
    broker = Broker(retention=30)
    topic = broker.open("t")
    async with broker.subscribe(topic, 0, 60) as subscription:
        pending = asyncio.ensure_future(anext(subscription))
        await asyncio.sleep(0)  # one step of the subscriber's task: it reads, finds nothing, waits
        assert len(topic.waiters) == 1 and not pending.done()
        topic.publish("token", {"text": "a"})
        assert await pending == encode_event("token", {"text": "a"}, 1)
        topic.close()
        assert [chunk async for chunk in subscription] == []


async def test_events_that_queued_up_go_out_as_one_chunk() -> None:
    broker = Broker(retention=30)
    topic = broker.open("t")
    async with broker.subscribe(topic, 0, 60) as subscription:
        topic.publish("a", {})
        topic.publish("b", {})
        assert await anext(subscription) == encode_event("a", {}, 1) + encode_event("b", {}, 2)


async def test_one_new_event_goes_out_as_that_very_event() -> None:
    broker = Broker(retention=30)
    topic = broker.open("t")
    async with broker.subscribe(topic, 0, 60) as subscription:
        topic.publish("token", {"text": "a"})
        assert await anext(subscription) is topic.events[0]
        topic.publish("token", {"text": "b" * 2 * CHUNK_BYTES})  # longer than a chunk: still itself
        assert await anext(subscription) is topic.events[1]


def publish_sized(topic: Topic, size: int) -> None:
    """Publish a token whose encoded event is `size` bytes long."""
    framing = len(encode_event("token", {"text": ""}, topic.last_id + 1))
    topic.publish("token", {"text": "x" * (size - framing)})


# Encoded event sizes, repeated until the backlog is several chunks long: tokens, long tokens,
# events that fill a chunk exactly, events that miss by a byte, and events longer than a chunk.
SIZES = {
    "tokens": [67, 52, 110],
    "long tokens": [3000, 700],
    "four to a chunk": [CHUNK_BYTES // 4],
    "two to a chunk": [CHUNK_BYTES - 100, 100],
    "a byte too many": [CHUNK_BYTES - 100, 101],
    "longer than a chunk": [60, 3 * CHUNK_BYTES, 500],
}


@pytest.mark.parametrize("sizes", SIZES.values(), ids=SIZES.keys())
@pytest.mark.parametrize("after", [0, 7])
async def test_a_backlog_goes_out_in_full_chunks_in_order(sizes: list[int], after: int) -> None:
    broker = Broker(retention=30)
    topic = broker.open("t")
    while topic.last_id < after + 10 or len(b"".join(topic.events[after:])) < 5 * CHUNK_BYTES:
        publish_sized(topic, sizes[topic.last_id % len(sizes)])
    topic.close()

    async with broker.subscribe(topic, after, 60) as subscription:
        chunks = [chunk async for chunk in subscription]

    assert b"".join(chunks) == b"".join(topic.events[after:])  # nothing lost, nothing twice
    position = after
    for chunk in chunks:
        # Each chunk is whole events, as many as fit, and at least one.
        end, size = position, 0
        while size < len(chunk):
            size += len(topic.events[end])
            end += 1
        assert chunk == b"".join(topic.events[position:end])
        assert len(chunk) <= CHUNK_BYTES or end == position + 1
        assert end == len(topic.events) or len(chunk) + len(topic.events[end]) > CHUNK_BYTES
        position = end
    assert len(chunks) > 1


async def test_a_quiet_topic_sends_a_ping_each_heartbeat_between_events() -> None:
    broker = Broker(retention=30)
    topic = broker.open("t")
    async with broker.subscribe(topic, 0, 0.02) as subscription:
        assert await asyncio.wait_for(anext(subscription), 5) == PING
        topic.publish("token", {})
        assert await anext(subscription) == encode_event("token", {}, 1)
        assert await asyncio.wait_for(anext(subscription), 5) == PING
