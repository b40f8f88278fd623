"""A client attached to a reply: from its live topic, from its stored row, or told it has all."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from chat.attach import reply_events
from chat.broker import Broker
from chat.config import Settings
from chat.feeds import Feeds
from chat.generations import topic_name
from chat.keeping import Keeper
from chat.limits import Limits
from chat.records import Message
from chat.running import Generations
from chat.services import Services
from chat.sse import SSEDecoder
from chat.store import Store
from tests.providers.fakes import FakeClock

pytestmark = pytest.mark.anyio


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[Services]:
    store = await Store.open(str(tmp_path / "chat.db"))
    broker = Broker(retention=30, clock=FakeClock())
    settings = Settings(db=str(tmp_path / "chat.db"))
    yield Services(
        settings,
        store,
        broker,
        Generations(broker, Keeper(store, checkpoint_seconds=0)),
        {},
        Limits(settings),
        Feeds(broker, settings),
    )
    await store.close()


async def reply(app: Services) -> Message:
    conversation = await app.store.create_conversation("local")
    _, message = await app.store.start_turn(conversation.id, "hi", metadata={})
    return message


async def names(app: Services, message: Message, after: int, *, close: bool = False) -> list[str] | None:
    events = await reply_events(app, "local", message, after)
    if events is None:
        return None
    decoder = SSEDecoder()
    seen: list[str] = []
    async with events as chunks:
        topic = app.broker.get(topic_name(message.id))
        if close and topic is not None:
            topic.close()
        async for chunk in chunks:
            seen += [event.event for event in decoder.feed(chunk)]
    return seen


async def test_a_live_reply_is_followed_from_after_the_id_given(app: Services) -> None:
    message = await reply(app)
    topic = app.broker.open(topic_name(message.id))
    topic.publish("start", {})
    topic.publish("token", {"text": "a"})
    assert await names(app, message, 1, close=True) == ["token"]


async def test_an_id_a_live_reply_never_sent_starts_the_client_over(app: Services) -> None:
    message = await reply(app)
    topic = app.broker.open(topic_name(message.id))
    topic.publish("start", {})
    assert await names(app, message, 50, close=True) == ["reset", "start"]


async def test_a_client_with_every_event_is_told_so(app: Services) -> None:
    message = await reply(app)
    topic = app.broker.open(topic_name(message.id))
    topic.publish("done", {})
    topic.close()
    assert await names(app, message, 1) is None


async def test_without_a_topic_the_row_tells_the_reply(app: Services) -> None:
    message = await reply(app)
    await app.store.finish_message(
        message.id, status="completed", content="Hello", metadata={"finish_reason": "stop"}, last_event_id=4
    )
    stored = await app.store.get_message("local", message.id)
    assert stored is not None
    assert await names(app, stored, 0) == ["start", "token", "done"]
    assert await names(app, stored, 4) is None


async def test_a_row_read_as_streaming_after_its_topic_went_is_read_again(app: Services) -> None:
    message = await reply(app)  # as read while it still ran
    await app.store.finish_message(
        message.id, status="cancelled", content="", metadata={"finish_reason": "cancelled"}, last_event_id=2
    )
    assert await names(app, message, 0) == ["start", "done"]
