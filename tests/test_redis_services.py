"""Choosing the broker from the settings: in memory without SIDECHAT_REDIS_URL (as today), shared
through Redis under SIDECHAT_REDIS_PREFIX with it, and cancels heard only then."""

from __future__ import annotations

import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from chat.broker import Broker
from chat.config import Settings
from chat.keeping import Keeper
from chat.redis_broker import RedisBroker
from chat.redis_follow import read_end
from chat.redis_services import cancel_in_another_process, cancels_heard, live_broker
from chat.running import Generations
from chat.store_none import MemoryStore
from tests.live import until
from tests.processes import ROOT, free_port

if TYPE_CHECKING:
    from chat.redis_keys import Keys
    from tests.redis_server import RedisServer

pytest_plugins = ["tests.redis_server"]
pytestmark = pytest.mark.anyio


async def test_without_a_redis_url_the_broker_is_this_processes_own_and_cancels_stay_here() -> None:
    async with live_broker(Settings(replay_seconds=12)) as broker:
        assert type(broker) is Broker and broker.retention == 12
        generations = Generations(broker, Keeper(MemoryStore(keep_seconds=1)))
        async with cancels_heard(broker, generations):
            assert await cancel_in_another_process(broker, 1) is None


async def test_with_a_redis_url_topics_go_to_streams_under_the_prefix_and_cancels_are_heard(
    redis_server: RedisServer, redis_keys: Keys
) -> None:
    settings = Settings(redis_url=redis_server.url, redis_prefix=redis_keys.prefix)
    async with live_broker(settings) as broker:
        assert isinstance(broker, RedisBroker) and broker.keys == redis_keys
        topic = broker.open("message:1")
        topic.publish("start", {})
        assert await until(lambda: read_end(broker.redis, f"{redis_keys.prefix}topic:message:1")) == (
            1,
            False,
        )
        generations = Generations(broker, Keeper(MemoryStore(keep_seconds=1)))
        async with cancels_heard(broker, generations):
            await until(lambda: _heard_by(broker, redis_keys, 1), what="the listener")
            assert await cancel_in_another_process(broker, 99) is None  # heard, and nobody runs it


async def _heard_by(broker: RedisBroker, keys: Keys, count: int) -> bool:
    found = await broker.redis.pubsub_numsub(keys.cancel)
    return bool(found) and found[0][1] == count


async def test_a_redis_that_does_not_answer_at_start_up_does_not_stop_it(redis_keys: Keys) -> None:
    settings = Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_prefix=redis_keys.prefix)
    async with live_broker(settings) as broker:
        assert isinstance(broker, RedisBroker)
        topic = broker.open("message:1")  # publishing goes on: the copy retries in the background
        assert topic.publish("start", {}) == 1


def test_without_a_redis_url_the_redis_package_is_not_imported() -> None:
    """`redis` is the `scale` extra: sidechat on its base dependencies must start without it."""
    code = (
        "import sys, asyncio\n"
        "from chat.config import Settings\n"
        "from chat.redis_services import live_broker\n"
        "async def main():\n"
        "    async with live_broker(Settings()):\n"
        "        pass\n"
        "asyncio.run(main())\n"
        "print(sorted(m for m in sys.modules if m == 'redis' or m.startswith('redis.')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
