"""Cancel across processes on a real Redis: the process running a reply hears the request,
stops it (the upstream call closed, the row cancelled) and answers; nobody running it is a
quick None, not a timeout; Redis away is a clear error, and the listener comes back with it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from redis.asyncio import Redis

from chat.keeping import Keeper
from chat.providers.base import ChatRequest, Turn
from chat.redis_broker import RedisBroker, open_redis
from chat.redis_cancel import cancel_elsewhere, listening
from chat.redis_follow import BrokerUnavailable
from chat.redis_keys import Keys
from chat.running import Generations
from chat.sse import SSEDecoder
from chat.store import Store
from tests.live import until
from tests.test_generations import DONE, Puppet

if TYPE_CHECKING:
    from chat.generations import Generation
    from tests.redis_server import RedisServer

pytest_plugins = ["tests.redis_server"]
pytestmark = pytest.mark.anyio


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(str(tmp_path / "chat.db"))
    yield opened
    await opened.close()


class Process:
    """What one sidechat process holds of the shared state: its own Redis client, broker and
    running generations, listening for cancels."""

    def __init__(self, url: str, keys: Keys, store: Store) -> None:
        self.redis: Redis = open_redis(url)
        self.keys = keys
        self.broker = RedisBroker(self.redis, retention=30, keys=keys)
        self.generations = Generations(self.broker, Keeper(store, checkpoint_seconds=0))

    async def close(self) -> None:
        await self.generations.begin_shutdown(0)
        await self.broker.aclose()
        await self.redis.aclose()


@pytest.fixture
async def processes(
    redis_server: RedisServer, redis_keys: Keys, store: Store
) -> AsyncIterator[tuple[Process, Process]]:
    running, other = (
        Process(redis_server.url, redis_keys, store),
        Process(redis_server.url, redis_keys, store),
    )
    async with listening(running.redis, redis_keys, running.generations):
        async with listening(other.redis, redis_keys, other.generations):
            await until(lambda: _listeners(running.redis, redis_keys, 2), what="both processes listening")
            yield running, other
    await running.close()
    await other.close()


async def _listeners(redis: Redis, keys: Keys, count: int) -> bool:
    found = await redis.pubsub_numsub(keys.cancel)
    return bool(found) and found[0][1] == count


async def start(store: Store, process: Process, provider: Puppet) -> Generation:
    conversation = await store.create_conversation("local")
    user, reply = await store.start_turn(
        conversation.id, "hi", metadata={"provider": "puppet", "model": "puppet-1"}
    )
    request = ChatRequest(model="puppet-1", turns=[Turn("user", "hi")])
    return process.generations.start(provider, request, reply, user_message_id=user.id)


async def test_a_cancel_on_another_process_stops_the_reply_where_it_runs(
    processes: tuple[Process, Process], store: Store
) -> None:
    running, other = processes
    provider = Puppet()
    generation = await start(store, running, provider)
    provider.hand("Hel", "lo")
    await until(lambda: generation.token_count == 2)
    topic = await until(lambda: other.broker.find(generation.topic.name), what="the stream")

    answer = await cancel_elsewhere(other.redis, other.keys, generation.message_id, timeout=10)

    assert answer is not None and answer.stopped and answer.finished
    assert answer.message is not None and answer.message["status"] == "cancelled"
    assert answer.message["content"] == "Hello"
    assert provider.closed.is_set()  # the upstream call was closed
    row = await store.get_message("local", generation.message_id)
    assert row is not None and row.status == "cancelled" and row.content == "Hello"
    async with other.broker.subscribe(topic, 0, 60) as subscription:  # its followers elsewhere hear it
        decoder = SSEDecoder()
        seen = [event for chunk in [c async for c in subscription] for event in decoder.feed(chunk)]
    assert [event.event for event in seen] == ["start", "token", "token", "done"]
    assert '"finish_reason":"cancelled"' in seen[-1].data.replace(" ", "")


async def test_a_reply_no_process_runs_is_none_as_soon_as_every_process_said_so(
    processes: tuple[Process, Process], store: Store
) -> None:
    running, other = processes
    provider = Puppet()
    generation = await start(store, running, provider)
    provider.hand("done", DONE)
    await generation.finished.wait()
    # Both answered "not here": no waiting for the timeout.
    assert (
        await asyncio.wait_for(
            cancel_elsewhere(other.redis, other.keys, generation.message_id, timeout=60), 5
        )
        is None
    )


async def test_a_malformed_request_is_ignored_and_the_next_one_answered(
    processes: tuple[Process, Process], store: Store
) -> None:
    running, other = processes
    await other.redis.publish(other.keys.cancel, b"{not json")
    provider = Puppet()
    generation = await start(store, running, provider)
    answer = await cancel_elsewhere(other.redis, other.keys, generation.message_id, timeout=10)
    assert answer is not None and answer.stopped


async def test_a_cancel_while_redis_is_away_is_a_clear_error_and_listening_resumes_when_it_is_back(
    own_redis_server: RedisServer, redis_keys: Keys, store: Store
) -> None:
    running, other = (
        Process(own_redis_server.url, redis_keys, store),
        Process(own_redis_server.url, redis_keys, store),
    )
    try:
        async with listening(running.redis, redis_keys, running.generations):
            await until(lambda: _listeners(other.redis, redis_keys, 1), what="the listener")
            own_redis_server.stop()
            with pytest.raises(BrokerUnavailable, match="could not ask the other processes to cancel 7"):
                await cancel_elsewhere(other.redis, redis_keys, 7, timeout=10)
            own_redis_server.start()
            await until(lambda: _listeners(other.redis, redis_keys, 1), what="the listener, back", timeout=20)
            provider = Puppet()
            generation = await start(store, running, provider)
            answer = await cancel_elsewhere(other.redis, redis_keys, generation.message_id, timeout=10)
            assert answer is not None and answer.stopped
    finally:
        await running.close()
        await other.close()
