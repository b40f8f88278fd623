"""The fan-out: topics numbered from 1, subscribers counted, retention."""

from __future__ import annotations

import pytest

from chat.broker import Broker
from chat.sse import encode_event
from tests.providers.fakes import FakeClock

pytestmark = pytest.mark.anyio


async def test_events_are_numbered_from_one_and_read_from_any_position() -> None:
    broker = Broker(retention=30)
    topic = broker.open("t")
    assert [topic.publish("token", {"n": n}) for n in range(3)] == [1, 2, 3]
    topic.close()
    for after in range(4):
        async with broker.subscribe(topic, after, 60) as subscription:
            got = b"".join([chunk async for chunk in subscription])
        assert got == b"".join(encode_event("token", {"n": n}, n + 1) for n in range(after, 3))


async def test_a_text_event_is_numbered_as_any_other_on_every_kind_of_topic() -> None:
    broker = Broker(retention=30)
    reply, feed = broker.open("t"), broker.feed("f", max_events=2, max_seconds=60)
    for topic in (reply, feed):
        before = topic.publish("start", {})
        assert topic.publish_text("token", "a") == before + 1 == topic.last_id
        assert topic.events[-1] == encode_event("token", {"text": "a"}, before + 1)
    first = feed.first
    feed.publish_text("token", "b")
    assert (feed.first, len(feed.events)) == (first + 1, 2)  # the window let the oldest go


async def test_the_last_subscriber_leaving_calls_on_abandoned_once() -> None:
    broker = Broker(retention=30)
    topic = broker.open("t")
    left: list[int] = []
    topic.on_abandoned = lambda: left.append(topic.subscribers)
    async with broker.subscribe(topic, 0, 60):
        async with broker.subscribe(topic, 0, 60):
            assert topic.subscribers == 2
        assert left == []
    assert left == [0]


async def test_a_closed_topic_is_kept_for_the_retention_time_then_dropped() -> None:
    clock = FakeClock()
    broker = Broker(retention=10, clock=clock)
    first, second = broker.open("a"), broker.open("b")
    first.close()
    clock.now = 5
    second.close()
    clock.now = 9.9
    assert broker.get("a") is first and broker.get("b") is second
    clock.now = 10
    assert broker.get("a") is None and broker.get("b") is second
    clock.now = 15
    assert broker.get("b") is None


async def test_an_open_topic_never_expires() -> None:
    clock = FakeClock()
    broker = Broker(retention=0, clock=clock)
    topic = broker.open("t")
    clock.now = 10**9
    assert broker.get("t") is topic


async def test_a_name_can_be_opened_again_once_its_topic_closed() -> None:
    clock = FakeClock()
    broker = Broker(retention=10, clock=clock)
    old = broker.open("t")
    old.close()
    new = broker.open("t")
    clock.now = 10  # the old topic's expiry must not drop the new one
    assert broker.get("t") is new
