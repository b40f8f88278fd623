"""The feeds' events on their way to Redis: queued here without a wait, written by one task.

Deliberate choices:
- Publishing never waits for Redis: an event is encoded and queued in its feed's `Outbox` (a list
  append, as cheap as the in-memory topic's), and one task per process (`flush_forever`) appends
  whatever has queued, every feed's batch in one pipelined round trip, through the script that
  gives the ids (`chat.redis_feed_scripts.APPEND`). Tokens that come faster than Redis answers
  go in batches by themselves.
- A batch Redis did not take is dropped, never retried (it may have been taken: a retry could
  repeat it), and its feeds are marked: the next entry of each, or a `gap` written as soon as
  Redis answers, has `p = -1`, so every follower gets `reset` instead of missing events silently.
  A request that published is never failed by it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError

from .broker import Topic
from .redis_feed_scripts import APPEND, FeedKeys
from .sse import encode_event

log = logging.getLogger("sidechat.redis")

RETRY_SECONDS = (0.05, 0.2, 0.5, 1.0)  # between a failed write and the next, while Redis is away


class Outbox(Topic):
    """A feed as this process publishes to it: events wait here, encoded without their id (the
    script gives it), until the flusher appends them to the feed's stream."""

    def __init__(self, name: str, queue: Callable[[Outbox], None]) -> None:
        super().__init__(name, lambda topic: None)
        conversation = name.removeprefix("conversation:")
        self.conversation_id = None if conversation == name else int(conversation)  # None: a user's
        self.pending: list[bytes | str] = []  # (kind, value) pairs, flat
        self.lost = False  # events of it were dropped: its next entry tells the followers
        self.queued = False
        self._queue = queue

    def publish(self, event: str, data: dict[str, Any]) -> int:
        """Queue an event (the hot path for a watched conversation's tokens); 0: ids come later."""
        self.pending += ("e", encode_event(event, data))
        if not self.queued:
            self._queue(self)
        return 0

    def publish_text(self, event: str, text: str) -> int:
        return self.publish(event, {"text": text})

    def control(self, kind: str, value: str = "") -> None:
        """Queue an entry for the followers (`end`, `gone`) or presence (`join`, `leave`, `hold`)."""
        self.pending += (kind, value)
        if not self.queued:
            self._queue(self)


class Outboxes:
    """This process's outboxes, by feed name, and the task that empties them into Redis."""

    def __init__(self, redis: Redis, keys: FeedKeys, window: tuple[int, int], member: str, ttl: int) -> None:
        self.redis, self.keys = redis, keys
        self.window = window  # a stream's most entries, and its entries' longest life (ms)
        self.member, self.ttl = member, ttl  # this process's presence: its members' prefix, ttl (ms)
        self.keep: Callable[[Outbox], bool] = lambda outbox: False  # kept though nothing is queued
        self._append = redis.register_script(APPEND)
        self._boxes: dict[str, Outbox] = {}
        self._queued: list[Outbox] = []
        self._ready = asyncio.Event()  # something was queued
        self._idle = asyncio.Event()  # nothing queued, nothing being written
        self._idle.set()

    def get(self, name: str) -> Outbox:
        found = self._boxes.get(name)
        if found is None:
            found = self._boxes[name] = Outbox(name, self._queue)
        return found

    def _queue(self, outbox: Outbox) -> None:
        outbox.queued = True
        self._queued.append(outbox)
        self._idle.clear()
        self._ready.set()

    async def flush_forever(self) -> None:
        failures = 0
        while True:
            if not self._queued:
                self._idle.set()
                await self._ready.wait()
            self._ready.clear()
            batch, self._queued = self._queued, []
            taken = []
            for outbox in batch:
                outbox.queued = False
                taken.append((outbox, outbox.lost, outbox.pending))
                outbox.pending = []
            try:
                await self._write(taken)
            except (RedisError, OSError) as exc:
                if failures == 0:
                    log.warning(
                        "could not write %d feeds to Redis (%s): followers get reset", len(taken), exc
                    )
                for outbox, _, _ in taken:
                    outbox.lost = True
                    if not outbox.queued:
                        self._queue(outbox)  # its gap goes as soon as Redis answers
                await asyncio.sleep(RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)])
                failures += 1
                continue
            if failures:
                log.warning("writing feeds to Redis again, after %d failures", failures)
                failures = 0
            for outbox, lost, _ in taken:
                if lost:  # its gap is written: followers from now on read on exactly
                    outbox.lost = False
                if not (outbox.queued or self.keep(outbox)):  # nothing is kept for a feed nobody publishes to
                    self._boxes.pop(outbox.name, None)

    async def _write(self, taken: list[tuple[Outbox, bool, list[bytes | str]]]) -> None:
        """Every feed's batch in one round trip, by EVALSHA (a pipeline of `Script`s would ask
        SCRIPT EXISTS first, a second round trip each time); the script is loaded when Redis has
        not got it (NOSCRIPT: that batch did not run, so it is simply sent again)."""
        window, member, ttl = self.window, self.member, self.ttl
        calls = []
        for outbox, lost, items in taken:
            stream, cid = self.keys.feed(outbox.name), outbox.conversation_id
            presence = stream if cid is None else self.keys.presence(cid)
            calls.append((stream, presence, *window, int(lost), member, ttl, *items))
        for attempt in range(2):
            pipe: Any
            async with self.redis.pipeline(transaction=False) as pipe:  # let go of, however it ends
                for call in calls:
                    pipe.evalsha(self._append.sha, 2, *call)
                results = await pipe.execute(raise_on_error=False)
            missing = [
                call for call, got in zip(calls, results, strict=True) if isinstance(got, NoScriptError)
            ]
            failed = [
                got for got in results if isinstance(got, Exception) and not isinstance(got, NoScriptError)
            ]
            if failed or (missing and attempt):
                raise (failed or [NoScriptError("the feeds' script could not be loaded")])[0]
            if not missing:
                return
            await self.redis.script_load(APPEND)
            calls = missing

    async def flushed(self, timeout: float) -> None:
        """Until everything queued was written (or `timeout` seconds passed)."""
        with suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._idle.wait()
