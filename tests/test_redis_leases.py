"""A process's lease in Redis: written at once, renewed before it expires, the replies it runs
registered under it as they start and end, put back whole when it was lost, and taken away
when the process stops, once it has ended its own replies."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from redis.asyncio import Redis

from chat import events
from chat.redis_broker import open_redis
from chat.redis_leases import TTL_SHARE, Lease
from chat.store import Store
from tests.conftest import settings_for
from tests.fakeupstream import FakeUpstream, Reply, openai_chunk, openai_reply
from tests.live import serve, until

if TYPE_CHECKING:
    from chat.redis_keys import Keys
    from tests.redis_server import RedisServer

pytest_plugins = ["tests.redis_server"]
pytestmark = pytest.mark.anyio

SECONDS = 0.5  # a short lease, so a test sees it renewed several times


@pytest.fixture
async def lease(redis: Redis, redis_keys: Keys) -> AsyncIterator[Lease]:
    held = Lease(redis, redis_keys, SECONDS)
    await held.take()
    yield held
    await held.drop()


async def registers(redis: Redis, keys: Keys, lease: Lease, expected: set[int]) -> bool:
    """Whether the lease's registry in Redis is `expected`, exactly."""
    return {int(raw) for raw in await redis.smembers(keys.runs(lease.id))} == expected


async def test_the_lease_is_written_at_once_and_outlives_its_ttl_by_being_renewed(
    lease: Lease, redis: Redis, redis_keys: Keys
) -> None:
    key = redis_keys.process(lease.id)
    assert 0 < await redis.pttl(key) <= SECONDS * TTL_SHARE * 1000
    assert await redis.smembers(redis_keys.processes) == {lease.id.encode()}
    ends = time.monotonic() + 4 * SECONDS * TTL_SHARE
    while time.monotonic() < ends:  # several lifetimes of the key: it is there throughout
        assert await redis.exists(key), "the lease expired although its process lives"
        await asyncio.sleep(0.01)


async def test_replies_are_registered_as_they_start_and_taken_off_as_they_end(
    lease: Lease, redis: Redis, redis_keys: Keys
) -> None:
    lease.started(7)
    lease.started(8)
    assert await until(lambda: registers(redis, redis_keys, lease, {7, 8}), what="both registered")
    lease.ended(7)
    assert await until(lambda: registers(redis, redis_keys, lease, {8}), what="7 taken off")
    lease.started(9)
    lease.ended(9)  # before any write: nothing of it is left either way
    lease.ended(8)
    assert await until(lambda: registers(redis, redis_keys, lease, set()), what="all taken off")


async def test_a_lease_found_gone_is_written_again_with_everything_it_runs(
    lease: Lease, redis: Redis, redis_keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    lease.started(3)
    assert await until(lambda: registers(redis, redis_keys, lease, {3}), what="3 registered")
    # As a reaper does when the lease has expired: the lease, the registry, the process, gone.
    await redis.delete(redis_keys.process(lease.id), redis_keys.runs(lease.id))
    await redis.srem(redis_keys.processes, lease.id)
    assert await until(lambda: registers(redis, redis_keys, lease, {3}), what="3 registered again")
    assert await redis.exists(redis_keys.process(lease.id))
    assert await redis.sismember(redis_keys.processes, lease.id)
    assert "lease" in caplog.text and "had expired" in caplog.text


async def test_dropping_the_lease_takes_it_and_its_registry_away(redis: Redis, redis_keys: Keys) -> None:
    lease = Lease(redis, redis_keys, SECONDS)
    await lease.take()
    lease.started(1)
    assert await until(lambda: registers(redis, redis_keys, lease, {1}), what="1 registered")
    await lease.drop()
    assert not await redis.exists(redis_keys.process(lease.id), redis_keys.runs(lease.id))
    assert not await redis.sismember(redis_keys.processes, lease.id)


async def test_while_redis_is_away_the_trouble_is_noted_and_everything_is_written_when_it_is_back(
    own_redis_server: RedisServer, redis_keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "sidechat.redis")
    redis = open_redis(own_redis_server.url)
    lease = Lease(redis, redis_keys, SECONDS)
    try:
        await lease.take()
        lease.started(1)
        assert await until(lambda: registers(redis, redis_keys, lease, {1}), what="1 registered")
        own_redis_server.stop()  # and with it every key: nothing is persisted
        lease.started(2)
        await until(lambda: lease.trouble_at is not None, what="the failure to be noted")
        own_redis_server.start()
        assert await until(
            lambda: registers(redis, redis_keys, lease, {1, 2}), timeout=15, what="all registered"
        )
        assert await redis.exists(redis_keys.process(lease.id))
        assert "could not renew this process's lease" in caplog.text
    finally:
        await lease.drop()
        await redis.aclose()


async def test_without_redis_at_start_the_lease_is_taken_once_it_answers(
    own_redis_server: RedisServer, redis_keys: Keys
) -> None:
    own_redis_server.stop()
    redis = open_redis(own_redis_server.url)
    lease = Lease(redis, redis_keys, SECONDS)
    try:
        await lease.take()  # does not raise: the writer keeps trying
        assert lease.trouble_at is not None
        own_redis_server.start()
        assert await until(lambda: redis.exists(redis_keys.process(lease.id)), timeout=15, what="the lease")
    finally:
        await lease.drop()
        await redis.aclose()


async def test_a_served_reply_is_registered_under_its_process_while_it_runs(
    upstream: FakeUpstream, tmp_path: Path, redis_server: RedisServer, redis_keys: Keys, redis: Redis
) -> None:
    going = asyncio.Event()
    upstream.add(Reply([openai_chunk("so "), going, *openai_reply("far")]))
    settings = settings_for(upstream, tmp_path, redis_url=redis_server.url, redis_prefix=redis_keys.prefix)
    async with serve(settings) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        (process_id,) = [raw.decode() for raw in await redis.smembers(redis_keys.processes)]
        lease = Lease(redis, redis_keys, settings.lease_seconds, process_id=process_id)  # to read it by
        message_id = (await client.post("/api/chat", json={"message": "hi"})).json()["message_id"]
        assert await until(lambda: registers(redis, redis_keys, lease, {message_id}), what="it registered")
        going.set()
        assert await until(lambda: registers(redis, redis_keys, lease, set()), what="it taken off")
    assert not await redis.exists(redis_keys.process(process_id))
    assert await redis.smembers(redis_keys.processes) == set()


async def test_a_process_stopping_ends_its_own_replies_then_drops_its_lease(
    upstream: FakeUpstream, tmp_path: Path, redis_server: RedisServer, redis_keys: Keys, redis: Redis
) -> None:
    upstream.add(Reply([openai_chunk("cut "), asyncio.Event()], finish=False))
    settings = settings_for(upstream, tmp_path, redis_url=redis_server.url, redis_prefix=redis_keys.prefix)
    async with serve(settings) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        accepted = (await client.post("/api/chat", json={"message": "hi"})).json()
        await until(lambda: upstream.requests, what="the upstream request")
        (process_id,) = [raw.decode() for raw in await redis.smembers(redis_keys.processes)]
    # As on SIGTERM: the grace period, the reply ended here as shut down, and only then no lease.
    store = await Store.open(settings.db)
    try:
        row = await store.get_message("local", accepted["message_id"])
    finally:
        await store.close()
    assert row is not None and (row.status, row.metadata["error"]) == ("interrupted", events.SHUTDOWN)
    assert not await redis.exists(redis_keys.process(process_id), redis_keys.runs(process_id))
    assert await redis.smembers(redis_keys.processes) == set()
