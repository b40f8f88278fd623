"""What `chat.services` opens for live state: this process's broker, or with `SIDECHAT_REDIS_URL`
one shared through Redis, the cancel requests of other processes heard while it serves, and its
lease on the replies it generates, with the reaper that ends those of dead processes.

The helpers take the in-memory case as it is today (a plain `Broker`, nothing listened to), so
`open_services` calls them unconditionally and one process without Redis is unchanged. The
`redis` package (the `scale` extra) is imported only when SIDECHAT_REDIS_URL is set: without
it, sidechat runs on its base dependencies.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from .broker import Broker
from .config import Settings
from .running import Generations, Registry
from .store import Store

if TYPE_CHECKING:
    from .redis_cancel import CancelAnswer

log = logging.getLogger("sidechat.redis")

CANCEL_SECONDS = 30.0  # how long a cancel waits for the process running the reply to answer


@asynccontextmanager
async def live_broker(settings: Settings) -> AsyncIterator[Broker]:
    """The broker for `settings`; a shared one lets its copies finish writing on the way out."""
    if not settings.redis_url:
        yield Broker(retention=settings.replay_seconds)
        return
    from redis.exceptions import RedisError

    from .redis_broker import RedisBroker, open_redis
    from .redis_keys import Keys

    redis = open_redis(settings.redis_url)
    try:
        await redis.ping()
    except (RedisError, OSError) as exc:  # not fatal: the copies and listeners retry until it is back
        log.warning("Redis (SIDECHAT_REDIS_URL) does not answer yet: %s", exc)
    broker = RedisBroker(redis, retention=settings.replay_seconds, keys=Keys(settings.redis_prefix))
    try:
        yield broker
    finally:
        try:
            await broker.aclose(settings.shutdown_grace_seconds)
        finally:
            await redis.aclose()


@asynccontextmanager
async def cancels_heard(broker: Broker, generations: Generations) -> AsyncIterator[None]:
    """While the block lasts, other processes' cancels stop this one's generations."""
    if type(broker) is Broker:
        yield
        return
    from .redis_broker import RedisBroker
    from .redis_cancel import listening

    assert isinstance(broker, RedisBroker), broker
    async with listening(broker.redis, broker.keys, generations):
        yield


@asynccontextmanager
async def lease_held(settings: Settings, broker: Broker, store: Store) -> AsyncIterator[Registry | None]:
    """With Redis, this process's lease (`chat.redis_leases`), the registry its generations are
    told to, and its reaper (`chat.orphans`) running, until the block ends: then the lease is
    dropped, so enter it around everything that may still generate. Without, None."""
    if type(broker) is Broker:
        yield None
        return
    from .orphans import Reaper
    from .redis_broker import RedisBroker
    from .redis_leases import Lease

    assert isinstance(broker, RedisBroker), broker
    lease = Lease(broker.redis, broker.keys, settings.lease_seconds)
    await lease.take()
    reaper = Reaper(lease, store, retention=settings.replay_seconds, stored=settings.stored)
    task = asyncio.create_task(reaper.run(), name="reaper")
    try:
        yield lease
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await lease.drop()


async def cancel_in_another_process(broker: Broker, message_id: int) -> CancelAnswer | None:
    """Stop `message_id` wherever it runs, for a cancel this process could not do itself; None
    when no process runs it (and always, without Redis: then this process runs everything)."""
    if type(broker) is Broker:
        return None
    from .redis_broker import RedisBroker
    from .redis_cancel import cancel_elsewhere

    assert isinstance(broker, RedisBroker), broker
    return await cancel_elsewhere(broker.redis, broker.keys, message_id, timeout=CANCEL_SECONDS)
