"""Asking the other processes (with SIDECHAT_REDIS_URL) to stop what they run: here, so that a
route calls it unconditionally and, without Redis, where this process runs everything, it costs
nothing and imports no `redis`."""

from __future__ import annotations

from .broker import Broker

STOP_SECONDS = 30.0  # how long to wait for the processes that heard to have stopped


async def stop_conversation_everywhere(broker: Broker, conversation_id: int) -> None:
    """Until every other process that runs a reply of `conversation_id` has stopped it."""
    if type(broker) is Broker:
        return
    from .redis_broker import RedisBroker
    from .redis_cancel import stop_conversation_elsewhere

    assert isinstance(broker, RedisBroker), broker
    await stop_conversation_elsewhere(broker.redis, broker.keys, conversation_id, timeout=STOP_SECONDS)
