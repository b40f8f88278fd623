"""The shared limits as clients meet them: two sidechat servers (two processes) on one database
and one Redis prefix; a user's rate, running replies and budget count on both."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from chat.settings_parsers import budget
from tests.conftest import settings_for
from tests.fakeupstream import FakeUpstream, Reply, openai_chunk, openai_reply
from tests.live import serve, until

if TYPE_CHECKING:
    from chat.redis_keys import Keys
    from tests.redis_server import RedisServer

pytest_plugins = ["tests.redis_server"]
pytestmark = pytest.mark.anyio

Clients = tuple[httpx.AsyncClient, httpx.AsyncClient]


@pytest.fixture
def two(
    upstream: FakeUpstream, tmp_path: Path, redis_server: RedisServer, redis_keys: Keys
) -> Callable[..., Any]:
    @asynccontextmanager
    async def start(**changes: Any) -> AsyncIterator[Clients]:
        settings = settings_for(
            upstream, tmp_path, redis_url=redis_server.url, redis_prefix=redis_keys.prefix, **changes
        )
        async with AsyncExitStack() as stack:
            a, b = [
                await stack.enter_async_context(
                    httpx.AsyncClient(base_url=await stack.enter_async_context(serve(settings)), timeout=10)
                )
                for _ in range(2)
            ]
            yield a, b

    return start


def refused(response: httpx.Response, kind: str, variable: str) -> None:
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert error["type"] == kind and variable in error["message"]
    assert int(response.headers["retry-after"]) >= error["retry_after"] > 0


async def test_a_user_at_the_rate_limit_on_one_process_is_refused_on_the_other(
    two: Callable[..., Any], upstream: FakeUpstream
) -> None:
    upstream.add(*[Reply(openai_reply("ok")) for _ in range(2)])
    async with two(rate_limit=(2, 60.0)) as (a, b):
        for client in (a, b):
            assert (await client.post("/api/chat", json={"message": "hi", "wait": True})).status_code == 200
        refused(await a.post("/api/chat", json={"message": "more"}), "rate_limited", "SIDECHAT_RATE_LIMIT")
        refused(await b.post("/api/chat", json={"message": "more"}), "rate_limited", "SIDECHAT_RATE_LIMIT")
    assert len(upstream.requests) == 2


async def test_the_running_reply_cap_counts_replies_running_on_both(
    two: Callable[..., Any], upstream: FakeUpstream
) -> None:
    gate = asyncio.Event()
    upstream.add(*[Reply([openai_chunk("slow"), gate, *openai_reply(" end")]) for _ in range(2)])
    upstream.add(Reply(openai_reply("third")))
    async with two(max_streams_per_user=2) as (a, b):
        for client in (a, b):
            assert (await client.post("/api/chat", json={"message": "q"})).status_code == 202
        for client in (a, b):
            third = await client.post("/api/chat", json={"message": "q3"})
            refused(third, "rate_limited", "SIDECHAT_MAX_STREAMS_PER_USER")
        gate.set()

        async def admitted() -> bool:
            response = await b.post("/api/chat", json={"message": "q3", "wait": True})
            return response.status_code == 200

        await until(admitted, what="a slot given back to be free on either process")


async def test_a_budget_spent_on_one_process_refuses_on_the_other(
    two: Callable[..., Any], upstream: FakeUpstream
) -> None:
    upstream.add(*[Reply(openai_reply("an answer")) for _ in range(2)])  # 12 + 2 tokens each
    async with two(user_budget=budget("20tokens/day")) as (a, b):
        for client in (b, a):  # b's tally is read first, before a's reply ends
            done = await client.post("/api/chat", json={"message": "hi", "wait": True})
            assert done.status_code == 200, done.text

        async def spent_on_b() -> bool:
            response = await b.post("/api/chat", json={"message": "more"})
            return response.status_code == 429 and response.json()["error"]["type"] == "quota_exceeded"

        await until(spent_on_b, what="the tokens spent on one process to count on the other")


async def test_while_redis_is_away_a_chat_is_503_with_retry_after_and_admitted_when_it_is_back(
    upstream: FakeUpstream, tmp_path: Path, own_redis_server: RedisServer, redis_keys: Keys
) -> None:
    upstream.add(Reply(openai_reply("back")))
    settings = settings_for(
        upstream, tmp_path, redis_url=own_redis_server.url, redis_prefix=redis_keys.prefix
    )
    async with serve(settings) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        own_redis_server.stop()
        for path in ("/api/chat", "/api/chat/stream"):
            away = await client.post(path, json={"message": "hi"})
            assert away.status_code == 503, away.text
            error = away.json()["error"]
            assert error["type"] == "live_unavailable" and "limits shared" in error["message"]
            assert "SIDECHAT_REDIS_URL" in error["message"]
            assert int(away.headers["retry-after"]) >= error["retry_after"] > 0
        own_redis_server.start()
        back = await client.post("/api/chat", json={"message": "hi", "wait": True})
        assert back.status_code == 200, back.text
    assert len(upstream.requests) == 1
