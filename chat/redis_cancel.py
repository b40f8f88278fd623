"""Cancel across processes: `POST /api/messages/{id}/cancel` reaches whichever process runs it,
and deleting a conversation stops its replies on every process.

    asker  → <prefix>cancel           {"message_id": 42, "answers": "<token>"}
    each   → <prefix>cancel:<token>   {"here": false}
    runner → <prefix>cancel:<token>   {"here": true, "stopped": …, "finished": …, "message": {…}}

    follower → <prefix>cancel         {"abandoned": "message:42"}: the last follower elsewhere left

    asker  → <prefix>cancel           {"conversation_id": 7, "answers": "<token>"}
    each   → <prefix>cancel:<token>   {"here": true}, once it stopped any it ran

Deliberate choices:
- One channel that every process listens on, not a registry of who runs what: cancels are
  rare, and the process running a generation is the one that knows it runs it.
- The asker listens for answers before it asks, and PUBLISH says how many processes heard the
  request, so it waits for exactly that many answers (or the one that runs it), never for a
  timeout to guess that nobody does. The timeout only covers a process that died between
  hearing and answering.
- The runner answers after `Generations.stop` returns, so its answer carries what the local
  cancel has: whether it stopped it, whether its end is stored, and the row as it ended.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from .outcome import CANCELLED
from .redis_follow import BrokerUnavailable
from .redis_keys import Keys
from .redis_leases import still_wanted
from .running import Generations

log = logging.getLogger("sidechat.redis")

RETRY_SECONDS = 1.0  # between tries to listen again, while Redis is away
LISTEN_SECONDS = 5.0  # the longest one read for requests waits before it looks again


@dataclass(frozen=True, slots=True)
class CancelAnswer:
    """What the process running the reply said: as `Generations.stop` and `final_row` tell it."""

    stopped: bool  # False: it had already ended, or was being stopped
    finished: bool  # its end is stored; else the database refuses it for now
    message: dict[str, Any] | None  # the row as it ended (`Message.as_json`)


async def cancel_elsewhere(
    redis: Redis, keys: Keys, message_id: int, *, timeout: float
) -> CancelAnswer | None:
    """Ask every process to stop `message_id`; the answer of the one that runs it, or None when
    none does."""
    try:
        async with _asking(redis, keys, {"message_id": message_id}, timeout) as (pubsub, heard):
            return await _answer(pubsub, heard, timeout)
    except (RedisError, OSError) as exc:
        raise BrokerUnavailable(f"could not ask the other processes to cancel {message_id}: {exc}") from exc


async def stop_conversation_elsewhere(
    redis: Redis, keys: Keys, conversation_id: int, *, timeout: float
) -> int:
    """Ask every process to stop the replies of `conversation_id` it runs, and wait until each
    that heard has; how many answered."""
    answered = 0
    try:
        async with _asking(redis, keys, {"conversation_id": conversation_id}, timeout) as (pubsub, heard):
            async for _ in _answers(pubsub, heard, timeout):
                answered += 1
    except (RedisError, OSError) as exc:
        raise BrokerUnavailable(
            f"could not ask the other processes to stop conversation {conversation_id}: {exc}"
        ) from exc
    return answered


@asynccontextmanager
async def _asking(
    redis: Redis, keys: Keys, request: dict[str, Any], timeout: float
) -> AsyncIterator[tuple[PubSub, int]]:
    """`request` sent to every process, with the channel their answers come on, and how many heard it."""
    token = uuid.uuid4().hex
    pubsub = redis.pubsub()
    try:
        await pubsub.subscribe(keys.cancel_answers(token))
        await _confirmed(pubsub, timeout)
        heard = int(await redis.publish(keys.cancel, json.dumps({**request, "answers": token})))
        yield pubsub, heard
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]  # untyped in redis-py 8.1


async def _confirmed(pubsub: PubSub, timeout: float) -> None:
    """Until Redis confirms the subscription: only then can no answer be missed."""
    async with asyncio.timeout(timeout):
        while (await pubsub.get_message(timeout=timeout)) is None:
            pass


async def _answer(pubsub: PubSub, heard: int, timeout: float) -> CancelAnswer | None:
    async for said in _answers(pubsub, heard, timeout):
        if said["here"]:
            return CancelAnswer(said["stopped"], said["finished"], said["message"])
    return None


async def _answers(pubsub: PubSub, heard: int, timeout: float) -> AsyncIterator[dict[str, Any]]:
    """The answers of the `heard` processes, as they come, for up to `timeout` seconds in all."""
    answers = 0
    try:
        async with asyncio.timeout(timeout):
            while answers < heard:
                found = await pubsub.get_message(ignore_subscribe_messages=True, timeout=timeout)
                if found is None:
                    continue
                answers += 1
                yield json.loads(found["data"])
    except TimeoutError:
        log.warning("%d of %d processes did not answer a cancel in %gs", heard - answers, heard, timeout)


@asynccontextmanager
async def listening(redis: Redis, keys: Keys, generations: Generations) -> AsyncIterator[None]:
    """Answer the other processes' cancel requests for as long as the block lasts."""
    task = asyncio.create_task(_listen(redis, keys, generations), name="cancel requests")
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _listen(redis: Redis, keys: Keys, generations: Generations) -> None:
    answering: set[asyncio.Task[None]] = set()
    try:
        while True:
            pubsub = redis.pubsub()
            try:
                await pubsub.subscribe(keys.cancel)
                while True:
                    still_wanted()  # redis-py can swallow a cancel mid-read: then we stop here
                    found = await pubsub.get_message(ignore_subscribe_messages=True, timeout=LISTEN_SECONDS)
                    if found is None:
                        continue
                    task = asyncio.create_task(_handle(redis, keys, generations, found["data"]))
                    answering.add(task)
                    task.add_done_callback(answering.discard)
            except (RedisError, OSError) as exc:
                log.warning("not hearing cancel requests from other processes (%s); retrying", exc)
            finally:
                await pubsub.aclose()  # type: ignore[no-untyped-call]  # untyped in redis-py 8.1
            await asyncio.sleep(RETRY_SECONDS)
    finally:
        for task in answering:
            task.cancel()


async def _handle(redis: Redis, keys: Keys, generations: Generations, raw: bytes) -> None:
    try:
        request = json.loads(raw)
        if "abandoned" in request:
            _abandoned(generations, str(request["abandoned"]))
            return
        channel = keys.cancel_answers(str(request["answers"]))
        if "conversation_id" in request:
            await generations.stop_conversation(int(request["conversation_id"]))
            await _say(redis, channel, {"here": True})
            return
        message_id = int(request["message_id"])
    except (ValueError, KeyError, TypeError):
        log.warning("a malformed cancel request on %s: %r", keys.cancel, raw[:200])
        return
    said: dict[str, Any] = {"here": False}
    generation = generations.get(message_id)
    if generation is not None:
        stopped = await generations.stop(generation, CANCELLED)
        final = generation.final_row()
        said = {
            "here": True,
            "stopped": stopped,
            "finished": generation.finished.is_set(),
            "message": None if final is None else final.as_json(),
        }
    await _say(redis, channel, said)


def _abandoned(generations: Generations, name: str) -> None:
    """The last client following `name` from another process left: if it runs here and nobody
    here follows it either, it is abandoned."""
    topic = generations.broker.get(name)
    if topic is not None and topic.subscribers == 0 and not topic.closed and topic.on_abandoned is not None:
        generations.broker.abandoned(topic)


async def _say(redis: Redis, channel: str, said: dict[str, Any]) -> None:
    try:
        await redis.publish(channel, json.dumps(said))
    except (RedisError, OSError) as exc:
        log.warning("could not answer a cancel request on %s: %s", channel, exc)
