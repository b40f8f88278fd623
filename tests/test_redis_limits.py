"""Limits shared through a real Redis: each `SharedLimits` here, with a Redis client of its own,
stands for one process; the rate, the running-reply cap and the budgets hold across them."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

import pytest
from redis.asyncio import Redis

from chat.broker import Broker
from chat.config import Settings
from chat.errors import LiveUnavailable, QuotaExceeded, RateLimited
from chat.limits import Limits, live_limits
from chat.redis_broker import RedisBroker, open_redis
from chat.redis_keys import Keys
from chat.redis_limits import SharedLimits, shared_limits
from chat.settings_parsers import budget
from tests.live import until

if TYPE_CHECKING:  # imported as a plugin below, which must come first
    from tests.redis_server import RedisServer

pytest_plugins = ["tests.redis_server"]
pytestmark = pytest.mark.anyio

Process = Callable[..., SharedLimits]


@pytest.fixture
async def process(redis_server: RedisServer, redis_keys: Keys) -> AsyncIterator[Process]:
    """Makes a process's shared limits: its own Redis client, the test's prefix."""
    async with AsyncExitStack() as stack:

        def make(url: str | None = None, **settings: Any) -> SharedLimits:
            timings = {k: settings.pop(k) for k in ("lapse", "refresh", "check_seconds") if k in settings}
            client = open_redis(url or redis_server.url)
            stack.push_async_callback(client.aclose)
            return SharedLimits(Settings(**settings), client, redis_keys.prefix, **timings)

        yield make


async def refused(limits: Limits, user: str = "alice") -> RateLimited:
    with pytest.raises(RateLimited) as caught:
        await limits.admit_generation(user)
    return caught.value


async def running(redis: Redis, limits: SharedLimits, user: str = "alice") -> int:
    return int(await redis.zcard(limits.slots_key(user)))


async def test_one_rate_bucket_for_every_process(process: Process) -> None:
    a, b = (process(rate_limit=(3, 60.0), max_streams_per_user=10) for _ in range(2))
    await a.admit_generation("alice")
    await a.admit_generation("alice")
    await b.admit_generation("alice")
    limited = await refused(b)
    assert "SIDECHAT_RATE_LIMIT" in limited.message
    assert limited.retry_after == pytest.approx(20.0, abs=0.5)
    assert (await refused(a)).retry_after == pytest.approx(20.0, abs=0.5)
    await b.admit_generation("bob")  # each user's own bucket


async def test_running_replies_on_every_process_count_against_the_cap(process: Process, redis: Redis) -> None:
    a, b = process(max_streams_per_user=2), process(max_streams_per_user=2)
    await a.admit_generation("alice")
    await b.admit_generation("alice")
    limited = await refused(a)
    assert "SIDECHAT_MAX_STREAMS_PER_USER" in limited.message and limited.retry_after == 2.0
    b.generation_ended("alice")
    assert await b.send()
    assert await running(redis, a) == 1
    await a.admit_generation("alice")
    assert await running(redis, a) == 2


async def test_a_refusal_for_running_replies_spends_no_request(process: Process) -> None:
    a, b = (process(rate_limit=(2, 60.0), max_streams_per_user=1) for _ in range(2))
    await a.admit_generation("alice")
    assert "SIDECHAT_MAX_STREAMS_PER_USER" in (await refused(b)).message
    a.generation_ended("alice")
    assert await a.send()
    await b.admit_generation("alice")  # the second of two: the refusal took none
    b.generation_ended("alice")
    assert await b.send()
    assert "SIDECHAT_RATE_LIMIT" in (await refused(a)).message


@pytest.mark.parametrize("limit", [{"max_streams_per_user": 1}, {"rate_limit": (1, 60.0)}])
async def test_two_processes_racing_for_the_last_slot_one_wins(
    process: Process, limit: dict[str, Any]
) -> None:
    a, b = process(**limit), process(**limit)
    for n in range(20):
        user = f"user{n}"
        results = await asyncio.gather(
            a.admit_generation(user), b.admit_generation(user), return_exceptions=True
        )
        assert sorted(type(r).__name__ for r in results) == ["NoneType", "RateLimited"], results


async def test_the_slots_of_a_process_that_stopped_refreshing_lapse(process: Process) -> None:
    stopped = process(max_streams_per_user=1, lapse=0.5)  # no keeper: it refreshes nothing
    await stopped.admit_generation("alice")
    other = process(max_streams_per_user=1)
    await refused(other)

    async def admitted() -> bool:
        try:
            await other.admit_generation("alice")
        except RateLimited:
            return False
        return True

    await until(admitted, timeout=5.0, what="the stopped process's slot to lapse")


async def test_the_keeper_keeps_a_running_replys_slot_past_its_lapse(process: Process, redis: Redis) -> None:
    kept = process(max_streams_per_user=1, lapse=0.5, refresh=0.05)
    await kept.admit_generation("alice")
    first = await redis.zrange(kept.slots_key("alice"), 0, -1, withscores=True)
    keeper = asyncio.create_task(kept.keep_up())
    try:

        async def past_the_first_lapse() -> bool:
            seconds, micros = await redis.time()
            return bool(seconds + micros / 1e6 > first[0][1] + 0.1)

        await until(past_the_first_lapse, what="Redis's clock to pass the slot's first lapse")
        await refused(process(max_streams_per_user=1))
    finally:
        keeper.cancel()


async def test_a_slot_given_back_goes_within_moments_through_the_keeper(
    redis_server: RedisServer, redis_keys: Keys, redis: Redis
) -> None:
    client = open_redis(redis_server.url)
    try:
        async with shared_limits(Settings(max_streams_per_user=1), client, redis_keys.prefix) as limits:
            await limits.admit_generation("alice")
            await limits.admit_generation("bob")
            limits.generation_ended("alice")

            async def removed() -> bool:
                return await running(redis, limits, "alice") == 0

            await until(removed, what="alice's slot to be removed")
            assert await running(redis, limits, "bob") == 1
        assert await running(redis, limits, "bob") == 0  # what a process still held, given back as it ends
    finally:
        await client.aclose()


async def test_redis_down_at_admission_is_503_with_retry_after_and_admits_again_when_back(
    process: Process, own_redis_server: RedisServer
) -> None:
    limits = process(own_redis_server.url, user_budget=budget("100tokens/day"))
    await limits.admit_generation("alice")
    own_redis_server.stop()
    for admission in (limits.admit_generation("alice"), limits.budgets.check("alice", ledger(0))):
        with pytest.raises(LiveUnavailable) as caught:
            await admission
        assert caught.value.status == 503 and caught.value.retry_after == 2.0
        assert "Redis (SIDECHAT_REDIS_URL) is unreachable" in caught.value.message
    limits.generation_ended("alice")  # a reply's end does not fail on Redis
    limits.budgets.spent("alice", 10, None)
    assert not await limits.send()
    own_redis_server.start()
    await limits.admit_generation("alice")
    await limits.budgets.check("alice", ledger(0))
    assert await limits.send()
    assert limits.released == [] and limits.budgets.pending == []


async def test_a_release_redis_did_not_take_is_sent_again(process: Process, redis: Redis) -> None:
    limits = process(max_streams_per_user=1, check_seconds=0.3)
    await limits.admit_generation("alice")
    await redis.execute_command("CLIENT", "PAUSE", "10000", "WRITE")
    try:
        with pytest.raises(LiveUnavailable):  # a Redis that does not answer in time
            await limits.admit_generation("bob")
        limits.generation_ended("alice")
        assert not await limits.send()
    finally:
        await redis.execute_command("CLIENT", "UNPAUSE")
    assert limits.released != [] and await running(redis, limits) == 1
    assert await limits.send()
    assert limits.released == [] and await running(redis, limits) == 0


def ledger(tokens: int, reads: list[str] | None = None) -> Any:
    async def read(user: str, since: str) -> tuple[int, float]:
        if reads is not None:
            reads.append(since)
        return tokens, 0.0

    return read


async def test_a_budget_spent_on_one_process_refuses_on_another(process: Process) -> None:
    spec = budget("100tokens/day,1usd/month")
    a, b = process(user_budget=spec), process(user_budget=spec)
    reads: list[str] = []
    await a.budgets.check("alice", ledger(50, reads))
    await b.budgets.check("alice", ledger(50, reads))
    assert len(reads) == 2  # the day's and the month's, read once for every process
    a.budgets.spent("alice", 60, 0.25)
    assert await a.send()
    with pytest.raises(QuotaExceeded, match="110 of your 100 tokens today"):
        await b.budgets.check("alice", ledger(50, reads))
    await b.budgets.check("bob", ledger(0))
    assert len(reads) == 2


async def test_processes_seeding_a_tally_at_once_agree_on_it(process: Process, redis: Redis) -> None:
    spec = budget("100tokens/day")
    a, b = process(user_budget=spec), process(user_budget=spec)
    # Two reads of the ledger that disagree (a reply ended between them): one of them is kept.
    outcomes = await asyncio.gather(
        a.budgets.check("alice", ledger(99)), b.budgets.check("alice", ledger(120)), return_exceptions=True
    )
    (key,) = [k async for k in redis.scan_iter(f"{a.prefix}spent:*")]
    kept = float(await redis.hget(key, "tokens"))
    assert kept in (99.0, 120.0)
    expected = [None, None] if kept == 99.0 else ["QuotaExceeded", "QuotaExceeded"]
    assert [type(o).__name__ if o else None for o in outcomes] == expected
    assert 0 < await redis.ttl(key) <= 2 * 86400


async def test_a_reply_ending_before_its_users_tally_exists_leaves_it_to_the_database(
    process: Process, redis: Redis
) -> None:
    limits = process(user_budget=budget("100tokens/day"))
    limits.budgets.spent("alice", 500, None)
    assert await limits.send()
    await limits.budgets.check("alice", ledger(10))  # the ledger holds that reply: 10 in all
    (key,) = [k async for k in redis.scan_iter(f"{limits.prefix}spent:*")]
    assert float(await redis.hget(key, "tokens")) == 10.0


async def test_live_limits_are_this_processes_without_redis_and_shared_with_it(
    redis: Redis, redis_keys: Keys
) -> None:
    async with live_limits(Settings(), Broker(retention=1)) as own:
        assert type(own) is Limits
    broker = RedisBroker(redis, retention=1, keys=redis_keys)
    async with live_limits(Settings(), broker) as shared:
        assert isinstance(shared, SharedLimits) and shared.prefix == redis_keys.prefix


def test_the_limits_without_redis_import_no_redis() -> None:
    code = (
        "import sys, chat.limits, chat.turns; print(sorted(m for m in sys.modules if m.startswith('redis')))"
    )
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        == "[]\n"
    )


async def test_a_running_replys_slot_that_lapsed_while_redis_was_away_is_put_back(
    process: Process, redis: Redis
) -> None:
    limits = process(max_streams_per_user=1)
    await limits.admit_generation("alice")
    await redis.delete(limits.slots_key("alice"))  # as an admission elsewhere drops a lapsed slot
    assert await limits.send()
    assert await running(redis, limits) == 1
    assert 0 < await redis.pttl(limits.slots_key("alice")) <= limits.lapse * 1000
    await refused(process(max_streams_per_user=1))


async def test_shared_limits_cannot_admit_without_waiting(process: Process) -> None:
    with pytest.raises(TypeError, match="await admit_generation"):
        process().admit_here("alice")
