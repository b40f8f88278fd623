"""Accepting turns on two "processes" (two `Services` over one database, each with its own shared
limits and Redis client, one Redis prefix): the rate, the running-reply cap and the budgets
are the same whichever process a request lands on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from chat.broker import Broker
from chat.config import Settings
from chat.errors import QuotaExceeded, RateLimited
from chat.feeds import Feeds
from chat.keeping import Keeper
from chat.providers import ProviderInfo
from chat.providers.base import ChatRequest, Finish, Item, Usage
from chat.redis_broker import open_redis
from chat.redis_keys import Keys
from chat.redis_limits import SharedLimits, shared_limits
from chat.running import Generations
from chat.services import Services
from chat.settings_parsers import budget
from chat.store import Store
from chat.turns import AcceptedTurn, TurnRequest, accept_turn
from tests.live import until

if TYPE_CHECKING:  # imported as a plugin below, which must come first
    from tests.redis_server import RedisServer

pytest_plugins = ["tests.redis_server"]
pytestmark = pytest.mark.anyio


class HeldProvider:
    """Replies "ok" with 6 + 6 tokens, each once `gate` is open."""

    name, default_model = "openai", "gpt-4o-mini"

    def __init__(self) -> None:
        self.gate = asyncio.Event()

    async def stream(self, request: ChatRequest) -> AsyncIterator[Item]:
        await self.gate.wait()
        yield "ok"
        yield Finish("stop", Usage(6, 6))


@asynccontextmanager
async def process(settings: Settings, provider: HeldProvider) -> AsyncIterator[Services]:
    store = await Store.open(settings.db)
    broker = Broker(retention=30)
    generations = Generations(broker, Keeper(store, checkpoint_seconds=0))
    registry = {"openai": ProviderInfo("openai", "gpt-4o-mini", "OPENAI_API_KEY", True, provider)}
    assert settings.redis_url is not None
    client = open_redis(settings.redis_url)
    try:
        async with shared_limits(settings, client, settings.redis_prefix) as limits:
            try:
                yield Services(
                    settings, store, broker, generations, registry, limits, Feeds(broker, settings)
                )
            finally:
                await generations.begin_shutdown(grace=0)
    finally:
        await client.aclose()
        await store.close()


@pytest.fixture
def provider() -> HeldProvider:
    return HeldProvider()


@pytest.fixture
def two(tmp_path: Path, redis_server: RedisServer, redis_keys: Keys, provider: HeldProvider) -> Any:
    @asynccontextmanager
    async def start(**changes: Any) -> AsyncIterator[tuple[Services, Services]]:
        settings = Settings(
            db=str(tmp_path / "chat.db"),
            provider="openai",
            redis_url=redis_server.url,
            redis_prefix=redis_keys.prefix,
            **changes,
        )
        async with AsyncExitStack() as stack:
            a = await stack.enter_async_context(process(settings, provider))
            b = await stack.enter_async_context(process(settings, provider))
            yield a, b

    return start


async def ask(services: Services, message: str = "hi") -> AcceptedTurn:
    return await accept_turn(services, TurnRequest(user="alice", message=message))


async def finished(services: Services, turn: AcceptedTurn) -> None:
    """Its generation has ended, its end told to the limits too (`on_end` runs last)."""
    generation = services.generations.get(turn.reply.id)
    if generation is not None and generation.task is not None:
        await generation.task


async def test_a_user_at_the_rate_limit_on_one_process_is_refused_on_the_other(
    two: Any, provider: HeldProvider
) -> None:
    provider.gate.set()
    async with two(rate_limit=(2, 60.0)) as (a, b):
        await finished(a, await ask(a))
        await finished(b, await ask(b))
        for services in (a, b):
            with pytest.raises(RateLimited, match="SIDECHAT_RATE_LIMIT"):
                await ask(services)


async def test_the_running_reply_cap_counts_replies_running_on_both(two: Any, provider: HeldProvider) -> None:
    async with two(max_streams_per_user=2) as (a, b):
        first = await ask(a)
        await ask(b)
        with pytest.raises(RateLimited, match="SIDECHAT_MAX_STREAMS_PER_USER"):
            await ask(a)
        provider.gate.set()
        await finished(a, first)
        assert isinstance(b.limits, SharedLimits)

        async def admitted() -> bool:
            try:
                await ask(b)
            except RateLimited:
                return False
            return True

        await until(admitted, what="the slot given back on one process to be free on the other")


async def test_a_budget_spent_on_one_process_refuses_on_the_other(two: Any, provider: HeldProvider) -> None:
    provider.gate.set()
    async with two(user_budget=budget("10tokens/day")) as (a, b):
        await finished(a, await ask(a))  # 12 tokens
        assert isinstance(a.limits, SharedLimits)
        budgets = a.limits.budgets
        await until(lambda: not budgets.pending, what="the reply's tokens to reach Redis")
        with pytest.raises(QuotaExceeded, match="12 of your 10 tokens today"):
            await ask(b)
