"""Generations without a server: follow, stop, shutdown, checkpoints and the replay window.

The provider is a puppet the test hands items to, the database a real SQLite
file, and every wait is for something observable (an event read, a row written),
so nothing here depends on timing.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from chat import events
from chat.broker import Broker
from chat.generations import Generation, topic_name
from chat.keeping import Keeper
from chat.outcome import CANCELLED
from chat.prices import Price, Prices
from chat.providers.base import ChatRequest, Finish, ProviderError, Turn, Usage
from chat.records import Message
from chat.replay import stored_events
from chat.running import Generations
from chat.sse import SSEDecoder
from chat.store import Store
from chat.subscription import Subscription
from tests.live import until
from tests.providers.fakes import FakeClock

pytestmark = pytest.mark.anyio

DONE = Finish("stop", Usage(3, 2))


class Puppet:
    """A provider that yields what the test hands it, one item at a time."""

    name = "puppet"
    default_model = "puppet-1"

    def __init__(self) -> None:
        self.items: asyncio.Queue[str | Finish | Usage | ProviderError] = asyncio.Queue()
        self.calls = 0
        self.closed = asyncio.Event()

    def hand(self, *items: str | Finish | Usage | ProviderError) -> None:
        for item in items:
            self.items.put_nowait(item)

    async def stream(self, request: ChatRequest) -> AsyncIterator[str | Finish | Usage]:
        self.calls += 1
        try:
            while True:
                item = await self.items.get()
                if isinstance(item, ProviderError):
                    raise item
                yield item
                if isinstance(item, Finish):
                    return
        finally:
            self.closed.set()


class Reader:
    """Decodes what a subscription sends into (id, event, data) triples."""

    def __init__(self, subscription: Subscription) -> None:
        self.subscription = subscription
        self.decoder = SSEDecoder()
        self.seen: list[tuple[int, str, dict[str, Any]]] = []
        self.pings = 0

    async def read(self, count: int) -> list[tuple[int, str, dict[str, Any]]]:
        first = len(self.seen)
        while len(self.seen) - first < count:
            chunk = await anext(self.subscription)
            self.pings += chunk.count(b": ping")
            for event in self.decoder.feed(chunk):
                self.seen.append((int(event.id or 0), event.event, json.loads(event.data)))
        return self.seen[first:]

    async def rest(self) -> list[tuple[int, str, dict[str, Any]]]:
        first = len(self.seen)
        async for chunk in self.subscription:
            for event in self.decoder.feed(chunk):
                self.seen.append((int(event.id or 0), event.event, json.loads(event.data)))
        return self.seen[first:]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(str(tmp_path / "chat.db"))
    yield opened
    await opened.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def broker(clock: FakeClock) -> Broker:
    return Broker(retention=30, clock=clock)


@pytest.fixture
def generations(store: Store, broker: Broker) -> Generations:
    return Generations(broker, Keeper(store, checkpoint_seconds=0))


async def start(
    store: Store,
    generations: Generations,
    provider: Puppet,
    *,
    stop_when_abandoned: bool = False,
) -> Generation:
    conversation = await store.create_conversation("local")
    user, reply = await store.start_turn(
        conversation.id, "hi", metadata={"provider": provider.name, "model": "puppet-1"}
    )
    request = ChatRequest(model="puppet-1", turns=[Turn("user", "hi")])
    return generations.start(
        provider,
        request,
        reply,
        user_message_id=user.id,
        stop_when_abandoned=stop_when_abandoned,
    )


async def row(store: Store, generation: Generation) -> Message:
    message = await store.get_message("local", generation.message_id)
    assert message is not None
    return message


async def test_every_follower_gets_every_event_once_and_in_order(
    store: Store, generations: Generations, broker: Broker
) -> None:
    provider = Puppet()
    generation = await start(store, generations, provider)
    async with (
        broker.subscribe(generation.topic, 0, 60) as first,
        broker.subscribe(generation.topic, 0, 60) as second,
    ):
        a, b = Reader(first), Reader(second)
        provider.hand("Hel")
        assert [e[1] for e in await a.read(2)] == ["start", "token"]
        provider.hand("lo", DONE)
        await a.rest()
        await b.rest()
        assert a.seen == b.seen
    assert [(i, name) for i, name, _ in a.seen] == [(1, "start"), (2, "token"), (3, "token"), (4, "done")]
    assert a.seen[0][2] == events.start(
        generation.conversation_id, generation.message_id, generation.metadata
    )
    assert a.seen[0][2]["user_message_id"] == generation.metadata["user_message_id"]


async def test_a_follower_resumes_after_the_event_it_saw_last(
    store: Store, generations: Generations, broker: Broker
) -> None:
    provider = Puppet()
    generation = await start(store, generations, provider)
    provider.hand("a", "b", DONE)
    await generation.finished.wait()
    for after in range(5):
        async with broker.subscribe(generation.topic, after, 60) as subscription:
            ids = [i for i, _, _ in await Reader(subscription).rest()]
        assert ids == list(range(after + 1, 5))


async def test_the_row_is_finished_before_the_terminal_event_is_sent(
    store: Store, generations: Generations, broker: Broker
) -> None:
    provider = Puppet()
    generation = await start(store, generations, provider)
    async with broker.subscribe(generation.topic, 0, 60) as subscription:
        reader = Reader(subscription)
        await reader.read(1)
        provider.hand("all", " of it", DONE)
        terminal = (await reader.rest())[-1]
        stored = await row(store, generation)  # read the moment `done` arrived
    assert terminal[1] == "done"
    assert (stored.status, stored.content, stored.last_event_id) == ("completed", "all of it", terminal[0])
    assert stored.metadata["usage"] == {"input_tokens": 3, "output_tokens": 2}
    assert stored.metadata["user_message_id"] == generation.metadata["user_message_id"]


PRICES = Prices({"puppet": {"puppet-1": Price(input=1.0, output=2.0)}})


async def test_a_reply_stopped_or_failed_before_its_end_keeps_the_counts_told_so_far(
    store: Store, generations: Generations, broker: Broker
) -> None:
    endings: list[tuple[str, dict[str, Any]]] = []
    generations.prices = PRICES
    for how in ("stopped", "failed"):
        provider = Puppet()
        generation = await start(store, generations, provider)
        async with broker.subscribe(generation.topic, 0, 60) as subscription:
            reader = Reader(subscription)
            provider.hand(Usage(40, 1), "Hel", Usage(40, 3))
            await reader.read(2)  # start, and the token: the counts went in before it
            if how == "stopped":
                assert await generations.stop(generation, CANCELLED)
            else:
                provider.hand(ProviderError("overloaded", "Overloaded", retryable=True))
            terminal = (await reader.rest())[-1]
        stored = await row(store, generation)
        endings.append((stored.status, stored.metadata))
        assert terminal[1] == ("done" if how == "stopped" else "error")
    for status, metadata in endings:
        assert metadata["usage"] == {"input_tokens": 40, "output_tokens": 3}, status
        assert metadata["cost_usd"] == pytest.approx((40 * 1.0 + 3 * 2.0) / 1e6)
    assert [status for status, _ in endings] == ["cancelled", "failed"]


async def test_the_finishs_counts_are_the_ones_stored_and_priced(
    store: Store, generations: Generations, broker: Broker
) -> None:
    generations.prices = PRICES
    provider = Puppet()
    generation = await start(store, generations, provider)
    provider.hand(Usage(9, 0), "ok", Finish("stop", Usage(10, 2, cached_input_tokens=4)))
    await generation.finished.wait()
    metadata = (await row(store, generation)).metadata
    assert metadata["usage"] == {"input_tokens": 10, "output_tokens": 2, "cached_input_tokens": 4}
    assert metadata["cost_usd"] == pytest.approx((10 * 1.0 + 2 * 2.0) / 1e6)  # cache at the input price


async def test_stop_closes_the_provider_and_keeps_the_partial_text(
    store: Store, generations: Generations, broker: Broker
) -> None:
    provider = Puppet()
    generation = await start(store, generations, provider)
    async with broker.subscribe(generation.topic, 0, 60) as subscription:
        reader = Reader(subscription)
        provider.hand("half")
        await reader.read(2)
        assert await generations.stop(generation, CANCELLED)
        terminal = (await reader.rest())[-1]
    assert provider.closed.is_set()
    assert terminal[1:] == (
        "done",
        events.done(generation.message_id, (await row(store, generation)).metadata),
    )
    assert terminal[2]["finish_reason"] == "cancelled"
    stored = await row(store, generation)
    assert (stored.status, stored.content) == ("cancelled", "half")
    assert not await generations.stop(generation, CANCELLED)  # already over
    assert generations.get(generation.message_id) is None


async def test_stopped_before_it_began_the_provider_is_never_called(
    store: Store, generations: Generations
) -> None:
    provider = Puppet()
    generation = await start(store, generations, provider)
    assert generation.stop(CANCELLED)  # before its task took its first step
    await generation.finished.wait()
    assert provider.calls == 0
    assert (await row(store, generation)).status == "cancelled"


async def test_stopped_in_its_first_step_before_the_upstream_request_it_ends_as_cancelled(
    store: Store, generations: Generations
) -> None:
    provider = Puppet()
    generation = await start(store, generations, provider)
    await asyncio.sleep(0)  # one turn of the loop: its task's first step, which yields once
    assert generation._started and provider.calls == 0
    assert generation.stop(CANCELLED)
    await generation.finished.wait()
    assert provider.calls == 0
    assert (await row(store, generation)).status == "cancelled"


async def test_a_provider_error_fails_the_reply_with_its_partial_text(
    store: Store, generations: Generations, broker: Broker
) -> None:
    provider = Puppet()
    generation = await start(store, generations, provider)
    async with broker.subscribe(generation.topic, 0, 60) as subscription:
        provider.hand("so far", ProviderError("overloaded", "busy", status=529, retryable=True))
        terminal = (await Reader(subscription).rest())[-1]
    assert terminal[1] == "error"
    assert terminal[2] == {
        "message_id": generation.message_id,
        "error": {"type": "overloaded", "message": "busy", "status": 529},
        "partial": True,
    }
    stored = await row(store, generation)
    assert (stored.status, stored.content, stored.metadata["error"]["type"]) == (
        "failed",
        "so far",
        "overloaded",
    )


async def test_the_last_follower_leaving_stops_it_only_when_asked_to(
    store: Store, generations: Generations, broker: Broker
) -> None:
    kept, dropped = Puppet(), Puppet()
    continuing = await start(store, generations, kept)
    abandoned = await start(store, generations, dropped, stop_when_abandoned=True)
    for generation, provider in ((continuing, kept), (abandoned, dropped)):
        async with broker.subscribe(generation.topic, 0, 60) as subscription:
            provider.hand("x")
            await Reader(subscription).read(2)
    await abandoned.finished.wait()
    assert (await row(store, abandoned)).status == "cancelled"
    assert not continuing.finished.is_set()
    kept.hand(DONE)
    await continuing.finished.wait()
    assert (await row(store, continuing)).status == "completed"


async def test_shutdown_lets_replies_finish_within_the_grace_period(
    store: Store, generations: Generations
) -> None:
    provider = Puppet()
    generation = await start(store, generations, provider)
    shutdown = generations.begin_shutdown(grace=3600)
    assert generations.closing
    provider.hand("in time", DONE)
    await shutdown
    assert (await row(store, generation)).status == "completed"


async def test_asking_twice_ends_running_replies_now_with_their_text(
    store: Store, generations: Generations, broker: Broker
) -> None:
    provider = Puppet()
    generation = await start(store, generations, provider)
    async with broker.subscribe(generation.topic, 0, 60) as subscription:
        reader = Reader(subscription)
        provider.hand("partial")
        await reader.read(2)
        shutdown = generations.begin_shutdown(grace=3600)
        assert generations.begin_shutdown(grace=3600) is shutdown  # the same shutdown
        generations.hurry()  # the second Ctrl-C
        await asyncio.wait_for(shutdown, timeout=5)  # not the hour of grace
        terminal = (await reader.rest())[-1]
    assert terminal[1:] == (
        "error",
        {
            "message_id": generation.message_id,
            "error": {"type": "shutdown", "message": "the server shut down before this reply was finished"},
            "partial": True,
        },
    )
    stored = await row(store, generation)
    assert (stored.status, stored.content, stored.metadata["error"]) == (
        "interrupted",
        "partial",
        events.SHUTDOWN,
    )


async def test_a_turn_accepted_while_shutting_down_ends_at_once(
    store: Store, generations: Generations
) -> None:
    await generations.begin_shutdown(grace=0)
    provider = Puppet()
    generation = await start(store, generations, provider)
    await generation.finished.wait()
    assert provider.calls == 0
    assert (await row(store, generation)).status == "interrupted"


@pytest.mark.parametrize("by", ["size", "time"])
async def test_checkpoints_save_the_partial_text_while_it_runs(store: Store, broker: Broker, by: str) -> None:
    keeper = Keeper(
        store,
        checkpoint_seconds=3600 if by == "size" else 0.01,
        checkpoint_chars=6 if by == "size" else 10**6,
    )
    generations = Generations(broker, keeper)
    provider = Puppet()
    generation = await start(store, generations, provider)
    async with broker.subscribe(generation.topic, 0, 60) as subscription:
        reader = Reader(subscription)
        provider.hand("so ", "far")
        await reader.read(3)

        async def saved() -> Message | None:
            stored = await row(store, generation)
            return stored if stored.content else None

        stored = await until(saved, what="a checkpoint")
        assert (stored.status, stored.content) == ("streaming", "so far")
        provider.hand(" and the rest", DONE)
        await reader.rest()
    assert (await row(store, generation)).content == "so far and the rest"


async def test_a_finished_topic_stays_for_the_replay_window_then_goes(
    store: Store, generations: Generations, broker: Broker, clock: FakeClock
) -> None:
    provider = Puppet()
    generation = await start(store, generations, provider)
    provider.hand("x", DONE)
    await generation.finished.wait()
    name = topic_name(generation.message_id)
    clock.now += 29.9
    assert broker.get(name) is generation.topic
    clock.now += 0.1
    assert broker.get(name) is None


@pytest.mark.parametrize(
    "ending",
    ["done", "error", "cancelled", "shutdown"],
)
async def test_a_replayed_reply_ends_with_the_event_it_ended_with_live(
    store: Store, generations: Generations, broker: Broker, ending: str
) -> None:
    provider = Puppet()
    generation = await start(store, generations, provider)
    async with broker.subscribe(generation.topic, 0, 60) as subscription:
        reader = Reader(subscription)
        provider.hand("text")
        await reader.read(2)
        if ending == "done":
            provider.hand(DONE)
        elif ending == "error":
            provider.hand(ProviderError("timeout", "slow", retryable=True))
        elif ending == "cancelled":
            await generations.stop(generation, CANCELLED)
        else:
            await generations.begin_shutdown(grace=0)
        live = (await reader.rest())[-1]
    decoder = SSEDecoder()
    replayed = [
        (int(e.id or 0), e.event, json.loads(e.data))
        for chunk in stored_events(await row(store, generation), 0)
        for e in decoder.feed(chunk)
    ]
    assert replayed[-1] == live
    assert replayed[0][2] == events.start(
        generation.conversation_id, generation.message_id, generation.metadata
    )
