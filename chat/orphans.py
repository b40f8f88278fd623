"""Ending, with Redis, the replies whose process is gone: as `interrupted`, with the text it had
published, and with an `error` event and the end in their streams, so that whoever follows one
from another process hears how it ended instead of waiting forever.

Every process runs a `Reaper`. Every `LOOK_SHARE` of the lease it looks for processes whose
lease (`chat.redis_leases`) has expired, and ends the replies registered under them; every
`SWEEP_EVERY` looks it also sweeps the database for `streaming` rows that no process has
registered and that are older than a lease period (a process that died between storing a
turn and registering it, or before there was Redis to register in), and ends those.

Deliberate choices:
- Nothing is reaped until Redis has answered for a whole lease period, after start-up and
  after any failure to reach it, here or in this process's own lease writes: a lease that
  expired because Redis was away is not a dead process, and in that period every live one
  has renewed its lease and written its registry again. So start-up marks nothing at once:
  what a dead process left is ended within that first period. A Redis that restarted
  between two looks, without an error seen, has lost the registries too: the `epoch` key,
  set once, is then gone or another, and counts as a failure.
- A reply is ended in its database row first, by a conditional UPDATE (only a row still
  `streaming`; also when its stream has ended: its last write was lost with its process),
  and only if that changed the row do its followers get the `error` and the end; so a
  reply that ended normally while we looked (its stream's end not yet copied) is never
  told as interrupted. A store that keeps nothing has no row to ask: its stream is
  ended whenever it has not ended yet.
- The stream is WATCHed from the read of its text to the append of the end: had its process
  written more meanwhile (so it was not dead), the append is not made, and the next look
  tries again.
- Text comes from the stream (what followers saw) when it holds the reply from its first
  event; the row keeps its checkpoint when that is longer (`Store.interrupt_reply`).
- Only one process reaps a given dead one (a short SET NX lock); two that did would still
  end each reply once, by the two rules above.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError, WatchError

from . import events
from .database import StorageFailed, stamp
from .generations import topic_name
from .redis_keys import Keys, entry_id, event_id
from .redis_leases import Lease, still_wanted
from .sse import SSEDecoder, encode_event
from .store import Store

log = logging.getLogger("sidechat.redis")

LOOK_SHARE = 0.2  # of the lease: how often a reaper looks for expired leases
SWEEP_EVERY = 5  # looks: how often it sweeps the database for replies nobody registered
PAGE = 1000  # stream entries read at a time


@dataclass(slots=True)
class Published:
    """What a reply's stream holds."""

    text: str | None  # its tokens' text; None when the stream lacks some of it (trimmed)
    last_id: int  # the id of its last event
    closed: bool  # it has its `end` entry
    partial: bool  # it has a token


async def read_published(redis: Any, key: str) -> Published | None:
    """What the stream at `key` holds (`redis` may be a pipeline in immediate mode); None when
    there is no such stream."""
    decoder, parts = SSEDecoder(), []
    last, whole, closed, tokens, start = 0, True, False, False, "-"
    while not closed:
        entries: Any = await redis.xrange(key, min=start, max="+", count=PAGE)
        for raw_id, fields in entries:
            number = event_id(raw_id)
            whole = whole and number == last + 1
            if b"end" in fields:
                closed = True
                break
            last = number
            for event in decoder.feed(fields[b"e"]):
                if event.event == "token":
                    tokens = True
                    try:
                        parts.append(json.loads(event.data)["text"])
                    except (ValueError, KeyError, TypeError):
                        whole = False
        if len(entries) < PAGE:
            break
        start = "(" + entries[-1][0].decode()
    if last == 0 and not closed:
        return None
    return Published("".join(parts) if whole else None, last, closed, tokens)


class StreamMoved(Exception):
    """A reply's stream was written to while we ended it: its process is not dead after all,
    or not yet; the next look tries again."""


async def end_orphan(
    redis: Redis, keys: Keys, store: Store, message_id: int, *, retention: float, stored: bool
) -> bool:
    """End the reply `message_id` as interrupted, its process being gone: its row, then its
    stream; whether either was still open (`StreamMoved` when the stream moved meanwhile)."""
    key = keys.topic(topic_name(message_id))
    pipe: Any
    async with redis.pipeline(transaction=True) as pipe:
        await pipe.watch(key)
        published = await read_published(pipe, key)
        ended = await store.interrupt_reply(
            message_id,
            content=None if published is None else published.text,
            error=events.INTERRUPTED,
            last_event_id=None if published is None else published.last_id + 1,
        )
        if published is None or published.closed:
            return ended  # nobody follows a stream that is not there, or one that ended
        if stored and not ended:  # its end was stored, but its process died before copying it:
            await pipe.delete(key)  # its followers elsewhere end unfinished, and resume from the row
            return False
        last = published.last_id
        error = events.error(message_id, events.INTERRUPTED, partial=published.partial)
        pipe.multi()
        pipe.xadd(key, {"e": encode_event("error", error, last + 1)}, id=entry_id(last + 1))
        pipe.xadd(key, {"end": b""}, id=entry_id(last + 2))
        pipe.pexpire(key, max(1, round(retention * 1000)))
        try:
            await pipe.execute()
        except WatchError:
            raise StreamMoved(message_id) from None
    return True


class Reaper:
    """This process's watch over the others (see the module's docstring)."""

    def __init__(self, lease: Lease, store: Store, *, retention: float, stored: bool) -> None:
        self.lease = lease
        self.redis = lease.redis
        self.keys = lease.keys
        self.store = store
        self.seconds = lease.seconds
        self.retention = retention  # how long an ended stream is kept (SIDECHAT_REPLAY_SECONDS)
        self.stored = stored
        self.trouble_at = 0.0  # loop time of this reaper's last failure to reach Redis
        self.epoch: bytes | None = None  # the `epoch` key's value when it last looked

    def quiet(self) -> bool:
        """Whether Redis has answered for a whole lease period, to this reaper and the lease."""
        latest = max(self.trouble_at, self.lease.trouble_at or 0.0)
        return asyncio.get_running_loop().time() - latest >= self.seconds

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.trouble_at = loop.time()  # start-up waits a whole period too
        looks = 0
        while True:
            still_wanted()
            await asyncio.sleep(self.seconds * LOOK_SHARE)
            try:
                if await self.restarted():
                    log.warning("Redis lost its keys (it restarted?): the reaper waits a lease period")
                    self.trouble_at = loop.time()
                if not self.quiet():
                    continue
                await self.reap()
                if looks % SWEEP_EVERY == 0:
                    await self.sweep()
                looks += 1
            except (RedisError, OSError) as exc:
                still_wanted()
                if self.quiet():
                    log.warning("the reaper lost Redis (%s); it reaps nothing until it is back", exc)
                self.trouble_at = loop.time()
            except StorageFailed as exc:
                still_wanted()
                log.warning("the reaper could not end an orphaned reply (%s); trying again", exc)
            except Exception:  # whatever it was, the next look tries again: a reaper never stops
                still_wanted()
                log.exception("the reaper failed; it looks again in a moment")

    async def restarted(self) -> bool:
        """Whether Redis lost its keys since the last look (the first look learns the epoch)."""
        found: Any = await self.redis.get(self.keys.epoch)
        if found is None:
            await self.redis.set(self.keys.epoch, uuid.uuid4().hex, nx=True)  # new each time
            found = await self.redis.get(self.keys.epoch)
        known, self.epoch = self.epoch, found
        return known is not None and found != known

    async def reap(self) -> int:
        """End the replies of every process whose lease has expired; how many were ended."""
        found: Any = await self.redis.smembers(self.keys.processes)
        others = sorted(p.decode() for p in found if p.decode() != self.lease.id)
        if not others:
            return 0
        pipe: Any = self.redis.pipeline(transaction=False)
        for process_id in others:
            pipe.exists(self.keys.process(process_id))
        alive = await pipe.execute()
        ended = 0
        for process_id, live in zip(others, alive, strict=True):
            if not live:
                ended += await self.reap_process(process_id)
        return ended

    async def reap_process(self, process_id: str) -> int:
        """End the dead process's replies, unless another reaper does; then forget it."""
        keys = self.keys
        if not await self.redis.set(keys.reaping(process_id), self.lease.id, nx=True, px=self.lease.ttl_ms):
            return 0
        registered: Any = await self.redis.smembers(keys.runs(process_id))
        ended, left = 0, 0
        for message_id in sorted(int(raw) for raw in registered):
            try:
                ended += await self._end(message_id)
            except StreamMoved:
                left += 1
                continue
            await self.redis.srem(keys.runs(process_id), message_id)
        if not left:
            pipe: Any = self.redis.pipeline(transaction=True)
            pipe.delete(keys.runs(process_id))
            pipe.srem(keys.processes, process_id)
            await pipe.execute()
        log.warning(
            "process %s died (its lease expired): %d of its replies ended as interrupted", process_id, ended
        )
        return ended

    async def sweep(self) -> int:
        """End the `streaming` rows older than a lease period that no process has registered."""
        before = stamp(datetime.now(UTC) - timedelta(seconds=self.seconds))
        candidates = await self.store.streaming_replies(created_before=before)
        if not candidates:
            return 0
        found: Any = await self.redis.smembers(self.keys.processes)
        runs = [self.keys.runs(p.decode()) for p in found]
        registered: Any = await self.redis.sunion(runs) if runs else []
        known = {int(raw) for raw in registered} | self.lease.running
        orphans = [message_id for message_id in candidates if message_id not in known]
        ended = 0
        for message_id in orphans:
            try:
                ended += await self._end(message_id)
            except StreamMoved:
                continue
        if ended:
            log.warning("%d replies that no process was running ended as interrupted", ended)
        return ended

    async def _end(self, message_id: int) -> bool:
        return await end_orphan(
            self.redis, self.keys, self.store, message_id, retention=self.retention, stored=self.stored
        )
