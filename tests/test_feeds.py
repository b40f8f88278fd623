"""Feeds over the in-memory broker: windows, resets, presence, typing."""

from __future__ import annotations

import json
import subprocess
import sys
import tracemalloc
from collections.abc import AsyncIterable
from typing import Any

import pytest

from chat.broker import Broker, WindowedTopic
from chat.config import Settings
from chat.feeds import RESET, Feeds, conversation_feed
from chat.sse import SSEDecoder
from tests.live import until
from tests.processes import ROOT

pytestmark = pytest.mark.anyio


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def window(max_events: int = 10, max_seconds: float = 60.0) -> tuple[Broker, WindowedTopic, Clock]:
    clock = Clock()
    broker = Broker(retention=30, clock=clock)
    topic = broker.feed("user:alice", max_events=max_events, max_seconds=max_seconds)
    assert isinstance(topic, WindowedTopic)
    return broker, topic, clock


def decoded(chunks: list[bytes]) -> list[tuple[str, dict[str, Any], str | None]]:
    decoder = SSEDecoder()
    return [(e.event, json.loads(e.data), e.id) for chunk in chunks for e in decoder.feed(chunk)]


async def take(stream: AsyncIterable[bytes], count: int) -> list[bytes]:
    out: list[bytes] = []
    async for chunk in stream:
        out.append(chunk)
        if len(out) == count:
            break
    return out


def test_ids_start_from_the_clock_so_a_new_life_of_a_feed_never_reuses_one() -> None:
    _, topic, _ = window()
    first = topic.publish("x", {})
    assert first > 10**15 and first == topic.first + 1
    _, again, _ = window()
    assert again.first >= first - 1


def test_the_window_keeps_a_bounded_number_of_events() -> None:
    _, topic, _ = window(max_events=10)
    ids = [topic.publish("x", {"n": n}) for n in range(1000)]
    assert len(topic.events) <= 15 and topic.last_id == ids[-1]
    kept = decoded(topic.events)
    assert [d["n"] for _, d, _ in kept] == list(range(1000 - len(kept), 1000))


def test_the_window_lets_old_events_go_by_age() -> None:
    _, topic, clock = window(max_events=100, max_seconds=60)
    topic.publish("x", {"n": 0})
    clock.now = 30
    topic.publish("x", {"n": 1})
    clock.now = 61
    topic.publish("x", {"n": 2})
    assert [d["n"] for _, d, _ in decoded(topic.events)] == [1, 2]


async def test_a_subscriber_that_never_reads_holds_nothing_the_window_let_go() -> None:
    broker, topic, _ = window(max_events=1000)
    tracemalloc.start()
    try:
        async with broker.subscribe(topic, topic.last_id, heartbeat=60, reset=RESET):
            before = tracemalloc.get_traced_memory()[0]
            for n in range(20_000):
                topic.publish("message.created", {"message": {"id": n, "content": "x" * 100}})
            grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(topic.events) <= 1500
    assert grown < 1_500 * 400  # the window's worth of ~250-byte events, not 20,000 of them


async def test_a_subscriber_that_fell_out_of_the_window_gets_reset_then_what_is_new() -> None:
    broker, topic, _ = window(max_events=4)
    async with broker.subscribe(topic, topic.last_id, heartbeat=60, reset=RESET) as subscription:
        for n in range(20):
            topic.publish("x", {"n": n})
        assert await subscription.__anext__() == RESET
        topic.publish("x", {"n": 20})
        events = decoded(await take(subscription, 1))
        assert [d["n"] for _, d, _ in events] == [20]


async def names_until(stream: AsyncIterable[bytes], name: str) -> list[str]:
    """The names of the events read, up to and including the first called `name`."""
    names: list[str] = []
    decoder = SSEDecoder()
    async for chunk in stream:
        names += [event.event for event in decoder.feed(chunk)]
        if name in names:
            return names
    raise AssertionError(f"the stream ended before {name}: {names}")


def feeds(**changes: Any) -> Feeds:
    settings = Settings(**{"heartbeat_seconds": 60.0, **changes})
    return Feeds(Broker(retention=30), settings)


async def test_presence_is_who_follows_now_and_each_new_connection_hears_it() -> None:
    live = feeds()
    seen: list[list[str]] = []
    async with live.follow_conversation(7, "alice", 0) as alice:
        seen += [d["users"] for n, d, _ in decoded(await take(alice, 1)) if n == "presence"]
        async with live.follow_conversation(7, "bob", 0), live.follow_conversation(7, "bob", 0) as tab:
            seen += [d["users"] for n, d, _ in decoded(await take(alice, 1)) if n == "presence"]
            assert [d for n, d, _ in decoded(await take(tab, 1))] == [{"users": ["alice", "bob"]}]
        seen += [d["users"] for n, d, _ in decoded(await take(alice, 1)) if n == "presence"]
    # bob's two connections: each joined with a presence; he left once, with his last.
    assert seen == [["alice"], ["alice", "bob"], ["alice", "bob"], ["alice"]]


async def test_typing_is_said_once_and_ends_by_itself() -> None:
    live = feeds(typing_seconds=0.05)
    async with live.follow_conversation(7, "alice", 0) as alice:
        await take(alice, 1)  # presence
        live.typing(7, "bob", True)
        live.typing(7, "bob", True)  # again: the same typing, extended
        chunks = await take(alice, 2)
        assert [(n, d) for n, d, _ in decoded(chunks)] == [
            ("typing", {"user": "bob", "typing": True}),
            ("typing", {"user": "bob", "typing": False}),
        ]
        live.typing(7, "bob", False)  # not typing: nothing to say
        live.to_conversation(7, "x", {})
        assert [n for n, _, _ in decoded(await take(alice, 1))] == ["x"]


async def test_a_removed_member_is_let_go_and_a_deleted_conversation_ends_its_feed() -> None:
    live = feeds()
    async with live.follow_conversation(7, "alice", 0) as alice, live.follow_conversation(7, "bob", 0) as bob:
        live.member_removed(7, "bob")
        assert [chunk async for chunk in bob] == []  # ended at once; the topic goes on
        live.to_conversation(7, "x", {})
        assert await names_until(alice, "x")
        live.conversation_deleted(7, ["alice"])
        names = [n for n, _, _ in decoded([c async for c in alice])]
        assert names[-1] == "conversation.deleted"
    assert 7 not in live.watched


async def test_a_feed_nobody_follows_is_forgotten_after_the_window() -> None:
    live = feeds(feed_replay_seconds=0.05)
    async with live.follow_conversation(7, "alice", 0):
        assert 7 in live.watched
    assert live.broker.get(conversation_feed(7)) is not None  # kept a while, for a resume
    await until(lambda: live.broker.get(conversation_feed(7)) is None, what="the feed to be forgotten")
    assert 7 not in live.watched


async def test_shutting_down_ends_every_feed_and_starts_none() -> None:
    live = feeds()
    async with live.follow_user("alice", 0) as mine, live.follow_conversation(7, "bob", 0) as room:
        live.shut_down()
        assert [chunk async for chunk in mine] == []
        assert {n for n, _, _ in decoded([chunk async for chunk in room])} <= {"presence"}
    assert live.closing
    async with live.follow_user("carol", 0) as late:
        assert [chunk async for chunk in late] == []


def test_without_redis_the_feeds_are_this_processes_own_and_redis_is_not_imported() -> None:
    """In memory, `live_feeds` is the plain `Feeds`, and the base install (no `redis`) runs it."""
    code = (
        "import sys, asyncio\n"
        "from chat.broker import Broker\n"
        "from chat.config import Settings\n"
        "from chat.feeds import Feeds, live_feeds\n"
        "async def main():\n"
        "    async with live_feeds(Broker(retention=1), Settings()) as feeds:\n"
        "        assert type(feeds) is Feeds\n"
        "asyncio.run(main())\n"
        "print(sorted(m for m in sys.modules if m == 'redis' or m.startswith('redis.')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
